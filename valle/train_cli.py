"""``valle train``: the command around :mod:`valle.train` (token cache, then training), and
``python -m valle.train_cli`` for ``torchrun``, which starts one such process per rank; ``valle
export`` turns a training checkpoint into a distributable one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from valle.checkpoint import WEIGHTS, export_checkpoint, read_config
from valle.codec import CODECS, DEFAULT_CODEC, load_codec
from valle.data import PrepareOptions, prepare_tokens
from valle.distributed import setup_distributed
from valle.model import PRESETS
from valle.phonemes import Phonemizer, SymbolTable
from valle.train import PARTS, TrainConfig, train
from valle.train_checkpoint import LAST


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``: prepare (or reuse) the token cache, then train / resume."""
    p = subparsers.add_parser(
        "train",
        help="train VALL-E (AR + NAR) on a manifest; resumes from OUT/last",
        description="Encode a manifest's audio once into a token cache, then train VALL-E. "
        "Run under torchrun for several GPUs; re-run the same command to resume.",
        epilog="examples:\n"
        "  valle train --manifest data/corpus/manifest.jsonl --out runs/tiny --preset tiny "
        "--max-steps 20000\n"
        "  torchrun --nproc-per-node 4 -m valle.train_cli --manifest data/corpus/manifest.jsonl "
        "--out runs/small --preset small",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig()
    p.add_argument("--manifest", type=Path, required=True, help="JSONL manifest of training utterances")
    p.add_argument("--out", type=Path, required=True, help="run folder: last/ checkpoint, log.jsonl")
    p.add_argument("--preset", choices=list(PRESETS), default=d.preset)
    p.add_argument("--max-steps", type=int, default=d.max_steps)
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--codec-weights", type=Path, default=None, help="codec weights (default: packaged/cache)")
    p.add_argument("--cache-dir", type=Path, default=None, help="token cache (default: OUT/tokens)")
    p.add_argument("--language", default="en-us", help="eSpeak NG language for phonemes")
    p.add_argument("--strict-symbols", action="store_true", help="skip rows with unknown phoneme symbols")
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--clip-norm", type=float, default=d.clip_norm)
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="padded frames per micro-batch")
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device)
    p.add_argument("--parts", choices=PARTS, default=d.parts, help="train both models or only one")
    p.add_argument(
        "--no-bf16", action="store_true", help="train in float32 (default: bf16 autocast where native)"
    )
    p.add_argument(
        "--ar-pointer",
        action="store_true",
        help="the AR's phone pointer (not in the paper; needs a corpus with phones files)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from another checkpoint's weights (e.g. a trained NAR, with --parts ar)",
    )
    p.add_argument(
        "--cross-sentence",
        type=float,
        default=d.cross_sentence,
        help="share of items trained after another utterance of their speaker (not in the paper)",
    )
    p.add_argument(
        "--ar-self-feed",
        type=float,
        default=d.ar_self_feed,
        help="share of the AR's input codes replaced by its own draws (scheduled sampling; not in the paper)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``valle train``: rank 0 prepares the token cache, every rank trains."""
    cfg = TrainConfig(
        preset=args.preset,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        grad_accum=args.grad_accum,
        clip_norm=args.clip_norm,
        max_frames=args.max_frames,
        max_batch=args.max_batch,
        seed=args.seed,
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        device=args.device,
        bf16=not args.no_bf16,
        parts=args.parts,
        ar_pointer=args.ar_pointer,
        init_from=None if args.init_from is None else str(args.init_from),
        cross_sentence=args.cross_sentence,
        ar_self_feed=args.ar_self_feed,
    )
    cache_dir = args.cache_dir or args.out / "tokens"
    info = setup_distributed(cfg.device)
    try:
        error = None
        if info.is_master:
            try:
                prepare_tokens(
                    args.manifest,
                    cache_dir,
                    load_codec(args.codec, weights=args.codec_weights),
                    Phonemizer(args.language),
                    SymbolTable.default(),
                    PrepareOptions(
                        args.strict_symbols, args.min_seconds, args.max_seconds, alignments=args.ar_pointer
                    ),
                    progress=not args.no_progress,
                )
            except ValueError as err:
                error = str(err)
        if info.distributed:  # tell the other ranks whether the cache is there, instead of hanging
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise ValueError(error)
        result = train(cfg, cache_dir, args.out, progress=not args.no_progress)
        if info.is_master:
            print(json.dumps({"step": result.step, "out": str(result.out_dir / LAST), **result.last_metrics}))
        return 0
    finally:
        if info.distributed and dist.is_initialized():
            dist.destroy_process_group()


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export``: a training checkpoint -> a distributable one (weights only)."""
    p = subparsers.add_parser(
        "export",
        help="copy a training checkpoint for distribution (weights only, fp16 by default)",
        epilog="example:\n  valle export runs/demo/last checkpoints/demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", type=Path, help="checkpoint folder written by `valle train`")
    p.add_argument("dst", type=Path, help="new checkpoint folder")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    p.add_argument(
        "--nar-min-confidence",
        type=float,
        default=0.0,
        help="record the NAR confidence gate (not in the paper) as the checkpoint's generation default",
    )
    p.add_argument(
        "--ar-greedy",
        action="store_true",
        help="record argmax AR decoding (not in the paper) as the checkpoint's generation default",
    )
    p.add_argument(
        "--ar-repeat-penalty",
        type=float,
        default=0.0,
        help="record a repeat penalty (not in the paper: subtracted from the logit of the previous "
        "frame's code) as the checkpoint's AR decoding default",
    )
    p.add_argument(
        "--nar-from",
        type=Path,
        default=None,
        help="take the NAR from this checkpoint (same architecture, codec and symbols): an AR "
        "trained alone (`--parts ar`) put beside a NAR that exists",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=("ar", "nar"),
        default=["ar", "nar"],
        help="keep only these halves of the model (`--parts ar`: an AR trained alone, to train on "
        "further; such a checkpoint cannot generate)",
    )
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    out = export_checkpoint(
        args.src,
        args.dst,
        getattr(torch, args.dtype),
        args.nar_min_confidence,
        tuple(args.parts),
        ar_greedy=args.ar_greedy,
        ar_repeat_penalty=args.ar_repeat_penalty,
        nar_from=args.nar_from,
    )
    meta = read_config(out)
    size = (out / WEIGHTS).stat().st_size / 2**20
    parts = "+".join(meta["parts"])
    print(f"{out}: step {meta['step']}, {parts}, {size:.1f} MB, sha256 {meta['weights_sha256']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m valle.train_cli ...`` (what ``torchrun -m valle.train_cli`` runs on each rank)."""
    parser = argparse.ArgumentParser(prog="valle")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except ValueError as err:
        print(f"valle train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
