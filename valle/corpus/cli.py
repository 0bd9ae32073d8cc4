"""``valle corpus``: build the offline multi-speaker training corpus."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from valle.corpus.build import SUMMARY_NAME, CorpusConfig, build_corpus

PRESETS = {"default": CorpusConfig(), "tiny": CorpusConfig.tiny()}

EPILOG = """\
examples:
  valle corpus                                  # 48 speakers, 75 min, into data/corpus
  valle corpus --out data/corpus --speakers 60 --minutes 120 --seed 1
  valle corpus --real ../shared/data/real_speech/manifest.jsonl
  valle corpus --preset tiny --out /tmp/tiny-corpus

Re-running with the same options skips every utterance whose wav already exists.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``corpus`` subcommand."""
    p = subparsers.add_parser(
        "corpus",
        help="synthesise the offline multi-speaker training corpus (eSpeak NG + Piper)",
        description=(
            "Synthesise a multi-speaker English corpus on CPU from the CMU ARCTIC training "
            "sentences, with eSpeak NG voices and voices derived from the bundled Piper voice; "
            "optionally add real recordings from a manifest. Writes wavs/, manifest.jsonl and "
            "corpus.json under --out."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, default=Path("data/corpus"), help="output folder (default: %(default)s)"
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="starting config")
    p.add_argument("--speakers", type=int, help="number of synthetic speakers (default: 48)")
    p.add_argument("--minutes", type=float, help="minutes of synthetic audio to aim for (default: 75)")
    p.add_argument("--seed", type=int, help="seed for sentence order and Piper noise (default: 0)")
    p.add_argument(
        "--engines",
        help="comma-separated engines to draw speakers from (default: espeak,piper)",
    )
    p.add_argument("--real", type=Path, metavar="MANIFEST", help="JSONL manifest of real recordings to add")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the corpus described by ``args``; prints a one-line summary."""
    overrides = {
        "n_speakers": args.speakers,
        "minutes": args.minutes,
        "seed": args.seed,
        "engines": tuple(e.strip() for e in args.engines.split(",") if e.strip()) if args.engines else None,
    }
    config = dataclasses.replace(
        PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.real is not None and not args.real.is_file():
        raise FileNotFoundError(f"--real {args.real}: manifest not found")
    manifest = build_corpus(args.out, config, real_manifest=args.real, progress=not args.quiet)
    counts = json.loads((args.out / SUMMARY_NAME).read_text())["counts"]
    print(
        f"{manifest}: {counts['utterances']} utterances, {counts['speakers']} speakers, "
        f"{counts['hours']:.2f} h ({counts['synthesized']} synthesised, {counts['reused']} reused, "
        f"{counts['real']} real)"
    )
    return 0
