"""``valle audit``: the main job (see :mod:`evaluation.audit.state`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.audit.stages import run_audit
from evaluation.audit.state import STAGES, AuditOptions, timing_summary
from evaluation.cli.score import add_asr_compat_arg, add_testset_args, load_testset
from evaluation.testsets.demo_set import demo_testset
from valle.synth_cli import add_ar_decoding_args

EXAMPLES = """examples:
  valle audit                                   # demo checkpoint + committed demo test set, offline
  valle audit --out runs/audit --stage score    # redo one stage of an existing audit
  valle audit --skip watermark --skip asv       # leave stages out
  valle audit --generator valle:checkpoints/mine --manifest data/test/manifest.jsonl --out runs/mine
  valle audit --generator folder:outputs/ --seed-tts-meta meta.lst --out runs/other
  valle audit --profile paper --generator valle:checkpoints/encodec_ckpt \\
      --asr-model ~/.cache/whisper/large-v3.pt --speaker-model models/spkrec-ecapa-voxceleb
  valle audit --no-ras --out runs/audit_no_ras  # same checkpoint, another decoding setting
  valle compare runs/audit runs/audit_no_ras    # paired differences, same test set

A killed audit resumes when the same command is run again. Stages: """ + ", ".join(STAGES)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="the main job: generate -> verify -> score -> detect -> ASV bypass -> watermark -> scorecard",
        description="Runs every stage of the audit into one run directory and writes "
        "scorecard.{json,md,html}.\nWithout a test set option it uses the committed demo test set "
        "(plus --extra-real recordings when given).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--generator",
        default="valle:checkpoints/demo",
        help="valle:<checkpoint> | command:<template> | folder:<dir> (default: %(default)s)",
    )
    p.add_argument("--profile", choices=("offline", "paper"), default="offline", help="default: %(default)s")
    add_testset_args(p, required=False)  # default: the demo test set
    p.add_argument(
        "--extra-real",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="demo test set only: add real recordings of up to 6 speakers from this manifest "
        "(e.g. ../shared/data/real_speech/manifest.jsonl); default: none",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/audit"), help="run directory (default: %(default)s)"
    )
    p.add_argument(
        "--stage", action="append", choices=STAGES, default=[], help="run only this stage (repeatable)"
    )
    p.add_argument(
        "--skip", action="append", choices=STAGES, default=[], help="leave this stage out (repeatable)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--no-quality", action="store_true", help="skip DNSMOS")
    add_asr_compat_arg(p)
    s = p.add_argument_group(
        "sampling (valle: generators; defaults: top-p 0.8, temperature 1, RAS on; "
        "greedy where the checkpoint recommends it)"
    )
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--no-ras", action="store_true", help="disable repetition-aware sampling (VALL-E 2)")
    add_ar_decoding_args(s)
    p.add_argument("--watermark-clips", type=int, default=6, help="generated files attacked (default 6)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    g = p.add_argument_group("model files (paper profile; override the default cache locations)")
    g.add_argument("--asr-model", help="Whisper large-v3 .pt")
    g.add_argument("--speaker-model", help="SpeechBrain ECAPA model directory")
    g.add_argument("--watermark-generator", help="AudioSeal generator .pth")
    g.add_argument("--watermark-detector", help="AudioSeal detector .pth")
    g.add_argument("--codec-weights", help="EnCodec 24 kHz checkpoint (encodec_24khz-d7cc33bc.th)")
    k = p.add_argument_group("keys (default: $VALLE_HOME/keys, created on first use)")
    k.add_argument("--signing-key", help="Ed25519 private key PEM that signs every output's manifest")
    k.add_argument("--key-file", help="watermark key JSON (valle keys new)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _testset(args):
    if args.manifest or args.testset or args.seed_tts_meta:
        return load_testset(args)
    return demo_testset(args.extra_real)


def run(args: argparse.Namespace) -> int:
    paths = {
        k: str(getattr(args, k))
        for k in ("asr_model", "speaker_model", "watermark_generator", "watermark_detector", "codec_weights")
        if getattr(args, k)
    }
    sampling = {
        "top_p": args.top_p,
        "temperature": args.temperature,
        "ras": False if args.no_ras else None,
        "greedy": args.greedy,
        "repeat_penalty": args.repeat_penalty,
    }
    options = AuditOptions(
        generator=args.generator,
        profile=args.profile,
        seeds=tuple(args.seeds),
        chunk_size=args.chunk_size,
        device=args.device,
        sampling=tuple(sorted((k, v) for k, v in sampling.items() if v is not None)),
        quality=not args.no_quality,
        asr_compat=args.asr_compat,
        watermark_clips=args.watermark_clips,
        bootstrap=args.bootstrap,
        model_paths=tuple(sorted(paths.items())),
        signing_key=args.signing_key,
        key_file=args.key_file,
    )
    audit = run_audit(
        args.out, _testset(args), options, tuple(args.stage), tuple(args.skip), progress=not args.quiet
    )
    print()
    print(timing_summary(audit))
    md = args.out / "scorecard.md"
    if md.is_file():
        print()
        print(md.read_text())
    html = args.out / "scorecard.html"
    print(f"scorecard: {html if html.is_file() else '(not written: see the report stage above)'}")
    failed = [n for n, st in audit.stages.items() if st.status == "failed"]
    if failed:
        print(f"failed stages: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
