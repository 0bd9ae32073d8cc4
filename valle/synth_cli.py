"""``valle synth``: the command around :class:`valle.synthesize.Generator`, and the watermark options
every command that writes generated audio shares (``valle score`` uses them too)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from valle.generate import GenerationOptions
from valle.sampling import SamplingOptions
from valle.synthesize import MODES, Generator
from watermark import load_watermarker
from watermark.keys import ENV_VAR, default_key, load_key
from watermark.provenance import load_signing_key


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="synthesise speech in a prompt's voice (every file watermarked and verified)",
        description="Zero-shot TTS with a VALL-E checkpoint. Every output is watermarked; after writing, "
        "each file is read back and its mark detected. There is no option to write unmarked audio.",
        epilog="example:\n  valle synth --checkpoint checkpoints/demo --prompt-audio prompt.wav \\\n"
        '    --prompt-text "What the prompt says." --text "Hello there." --out runs/synth',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (config.json + weights)")
    p.add_argument("--prompt-audio", type=Path, required=True)
    p.add_argument("--prompt-text", default=None, help="transcript of the prompt (cross-sentence mode)")
    p.add_argument("--text", action="append", default=[], help="text to speak (repeatable)")
    p.add_argument("--texts-file", type=Path, default=None, help="one text per line")
    p.add_argument("--mode", choices=MODES, default="cross_sentence")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--no-ras", action="store_true", help="disable repetition-aware sampling")
    add_ar_decoding_args(p)
    p.add_argument("--max-seconds", type=float, default=20.0)
    add_watermark_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--codec-weights", type=Path, default=None)
    p.set_defaults(func=run)


def add_ar_decoding_args(p, help_prefix: str = "") -> None:
    """``--greedy`` / ``--no-greedy`` and ``--repeat-penalty``; left out, the checkpoint's
    recommendation decides (``valle.sampling.calibrated``)."""
    p.add_argument(
        "--greedy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"{help_prefix}argmax AR decoding (no randomness, no RAS); "
        "default: what the checkpoint recommends",
    )
    p.add_argument(
        "--repeat-penalty",
        type=float,
        default=None,
        help=f"{help_prefix}subtract this from the logit of the previous frame's code (not in the "
        "paper; 0 = off); default: what the checkpoint recommends",
    )


def add_watermark_args(p) -> None:
    """The options every command that writes generated audio shares."""
    p.add_argument(
        "--watermark",
        default="keyed",
        help="watermark backend: keyed (default; offline, keyed, p-value) | perth (offline) | audioseal",
    )
    p.add_argument("--watermark-generator", type=Path, default=None, help="audioseal: generator .pth")
    p.add_argument("--watermark-detector", type=Path, default=None, help="audioseal: detector .pth")
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="watermark key (JSON; default: $VALLE_WATERMARK_KEY if set, else $VALLE_HOME/keys/"
        "watermark.key.json, created on first use)",
    )
    p.add_argument(
        "--signing-key", type=Path, default=None, help="Ed25519 PEM: sign a provenance manifest per file"
    )


def watermark_setup(args, device: str = "cpu") -> dict:
    """Generator keyword arguments (watermarker, key, signer) from :func:`add_watermark_args` options."""
    kwargs = {}
    if args.watermark == "audioseal":
        kwargs = {"generator": args.watermark_generator, "detector": args.watermark_detector}
    key = None
    if args.key_file is not None or os.environ.get(ENV_VAR):
        key = load_key(args.key_file)
    if args.watermark == "keyed":
        key = key or default_key()
        kwargs = {"key": key}  # the same key places the mark and derives its payload
    signer = load_signing_key(args.signing_key) if args.signing_key else None
    return {"watermarker": load_watermarker(args.watermark, device, **kwargs), "key": key, "signer": signer}


def run(args) -> int:
    texts = list(args.text)
    if args.texts_file:
        texts += [line.strip() for line in args.texts_file.read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError("give at least one --text or a --texts-file")
    if args.mode == "cross_sentence" and not args.prompt_text:
        raise ValueError("cross-sentence mode needs --prompt-text (the prompt's transcript)")
    options = GenerationOptions(
        sampling=SamplingOptions(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            ras=not args.no_ras,
            greedy=args.greedy,
            repeat_penalty=args.repeat_penalty,
        ),
        max_seconds=args.max_seconds,
        seed=args.seed,
    )
    wm = watermark_setup(args, args.device)
    gen = Generator(args.checkpoint, device=args.device, codec_weights=args.codec_weights, **wm)
    records = gen.synthesize(texts, args.prompt_audio, args.prompt_text or "", options, mode=args.mode)
    paths = gen.save(records, args.out)
    failed = 0
    for rec, path in zip(records, paths, strict=True):
        ok = rec.verification["detected"]
        failed += not ok
        print(
            f"{path}  {len(rec.audio) / rec.sample_rate:5.2f} s  stop={rec.stop_reason}  "
            f"watermark={'verified' if ok else 'NOT DETECTED'} ({rec.verification['score']:.3f})"
        )
    if failed:
        print(f"{failed} file(s) failed watermark verification", file=sys.stderr)
        return 3
    return 0
