"""`valle diagnose`: codec oracle, AR text dependence, NAR per stage vs the codec's floor (JSON)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evaluation import diagnose as dg
from valle.checkpoint import load_checkpoint
from valle.codec import CODECS, DEFAULT_CODEC, load_codec, load_codec_for
from valle.manifest import read_manifest
from valle.sampling import PAPER_RAS_THRESHOLD, SamplingOptions, ras_firing_rate

EXAMPLES = """examples:
  valle diagnose --checkpoint checkpoints/demo --manifest heldout/manifest.jsonl --out diag.json
  valle diagnose --codec contentvq_24khz --manifest heldout/manifest.jsonl \\
      --train-manifest data/corpus/manifest.jsonl --limit 40
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="generator diagnostics: codec oracle WER, AR text dependence, NAR per stage vs floor",
        description="Measure what a checkpoint and its codec can do on held-out manifests: Whisper WER "
        "of raw audio, all ground-truth codebooks, ground-truth codebook 1 + NAR-filled 2..8, and "
        "codebook 1 + neutral fill; the AR's cross-entropy with the right vs a wrong text; the NAR's "
        "per-stage accuracy next to the codec's conditional entropy. Without --checkpoint only the "
        "codec parts run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="VALL-E checkpoint folder")
    p.add_argument("--codec", choices=CODECS, default=None, help="default: the checkpoint's codec")
    p.add_argument("--codec-weights", type=Path, default=None)
    p.add_argument(
        "--manifest", type=Path, action="append", required=True, help="held-out JSONL manifest (repeatable)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N utterances (by id) of each manifest")
    p.add_argument("--train-manifest", type=Path, default=None, help="training audio for H(c_j | c_<j)")
    p.add_argument("--train-limit", type=int, default=600, help="training utterances for the estimate")
    p.add_argument("--entropy-epochs", type=float, default=2.0, help="classifier passes over the data")
    p.add_argument("--no-asr", action="store_true", help="skip the WER oracle (no Whisper)")
    p.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    p.set_defaults(func=run)


def set_name(manifest: Path) -> str:
    return manifest.parent.name if manifest.name == "manifest.jsonl" else manifest.stem


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a JSON file path")
    t0 = time.time()
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint is not None else None
    if ckpt is not None and args.codec in (None, ckpt.codec.name):
        codec = load_codec_for(ckpt.codec, weights=args.codec_weights)
    elif ckpt is not None:
        raise ValueError(f"{args.checkpoint} was trained with codec {ckpt.codec.name}, not {args.codec}")
    else:
        codec = load_codec(args.codec or DEFAULT_CODEC, weights=args.codec_weights)
    asr = None if args.no_asr else dg.FasterWhisperASR()
    # an AR-only checkpoint (trained or exported with --parts ar) has no trained NAR to measure or fill with
    nar_ckpt = ckpt if ckpt is not None and "nar" in ckpt.parts else None
    window = SamplingOptions().ras_window
    threshold = float(((ckpt.extra.get("ras") or {}) if ckpt else {}).get("threshold", PAPER_RAS_THRESHOLD))
    report: dict = {
        "checkpoint": str(args.checkpoint) if ckpt else None,
        "checkpoint_step": ckpt.step if ckpt else None,
        "codec": codec.card.to_json(),
        "ras": {"window": window, "threshold": threshold},
        "sets": {},
    }
    if ckpt is not None:
        report["embedding_rms"] = dg.embedding_rms(ckpt.model, ckpt.parts)
    heldout_codes = []
    names = [set_name(m) for m in args.manifest]
    for i, manifest in enumerate(args.manifest):
        name = names[i]
        if names.count(name) > 1:  # data/a/x.jsonl and data/b/x.jsonl: keep both, by folder
            name = f"{manifest.parent.name}/{name}"
        if name in report["sets"]:
            raise ValueError(f"--manifest {manifest} given twice")
        say(f"{name}: encoding {manifest}")
        examples = dg.encode_examples(dg.first_utterances(read_manifest(manifest), args.limit), codec, ckpt)
        heldout_codes += [e.codes for e in examples]
        figures: dict = {
            "n": len(examples),
            "ras_ground_truth_firing_rate": round(
                ras_firing_rate([e.codes[:, 0] for e in examples], window, threshold), 4
            ),
        }
        if asr is not None:
            say(f"{name}: codec oracle on {len(examples)} utterances")
            figures["oracle_wer"] = dg.codec_oracle(codec, examples, asr, nar_ckpt)
        if ckpt is not None:
            figures["ar"] = dg.ar_text_dependence(ckpt.model, examples)
        if nar_ckpt is not None:
            figures["nar"] = dg.nar_stage_stats(ckpt.model, examples)
        report["sets"][name] = figures
    if args.train_manifest is not None:
        say(f"conditional entropy: encoding {args.train_limit} training utterances")
        train = dg.spread_utterances(read_manifest(args.train_manifest), args.train_limit)
        train_codes = [e.codes for e in dg.encode_examples(train, codec, None)]
        report["conditional_entropy_nats"] = dg.conditional_entropy(
            train_codes, heldout_codes, codec.codebook_size, epochs=args.entropy_epochs, progress=say
        )
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
