"""The `valle` command. It sits on top of every package, so it lives here in ``evaluation``
(the package that may import all the others) and gathers each package's subcommands."""

from __future__ import annotations

import argparse
import sys

from evaluation.cli import asv as asv_cli
from evaluation.cli import audit as audit_cli
from evaluation.cli import compare as compare_cli
from evaluation.cli import detect as detect_cli
from evaluation.cli import diagnose as diagnose_cli
from evaluation.cli import score as score_cli
from evaluation.cli import smoke
from valle import __version__
from valle import synth_cli as synth
from valle import train_cli as train
from valle.codec import cli as codec_cli
from valle.corpus import cli as corpus_cli
from watermark import bench_cli as wm_bench
from watermark import verify_cli as wm_verify

EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valle",
        description="VALL-E generator with evaluation, detection, watermarking and audit harnesses.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    audit_cli.add_parser(sub)
    compare_cli.add_parser(sub)
    smoke.add_parser(sub)
    diagnose_cli.add_parser(sub)
    corpus_cli.add_parser(sub)
    codec_cli.add_parser(sub)
    train.add_parser(sub)
    synth.add_parser(sub)
    train.add_export_parser(sub)
    score_cli.add_parser(sub)
    detect_cli.add_parser(sub)
    asv_cli.add_parser(sub)
    wm_verify.add_parser(sub)
    wm_bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as err:
        # bad input: one clear line, no traceback, non-zero exit for scripts
        print(f"valle {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"valle {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
