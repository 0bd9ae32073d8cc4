"""``valle testset``, ``valle score`` and ``valle merge``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.runs.run import STAGES, build_run_options, rank_world, score
from evaluation.runs.summary import merge
from evaluation.scorers.asr import ASR_COMPAT
from evaluation.scorers.registry import describe
from evaluation.scorers.speaker import DEFAULT_SPEAKER
from evaluation.testsets.testset import (
    PROTOCOLS,
    TestSet,
    TestSetOptions,
    build_test_set,
    seed_tts_eval_test_set,
)
from valle.manifest import read_manifest
from valle.synth_cli import add_ar_decoding_args, add_watermark_args, watermark_setup

RAW = argparse.RawDescriptionHelpFormatter


def add_testset_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--manifest", type=Path, help="utterance manifest (JSONL) to build a test set from")
    src.add_argument("--testset", type=Path, help="a test set written by `valle testset`")
    src.add_argument(
        "--seed-tts-meta", type=Path, help="a seed-tts-eval meta.lst (utt|prompt_text|prompt_wav|text[|gt])"
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="cross_sentence")
    p.add_argument("--min-seconds", type=float, default=4.0, help="shortest target (paper: 4 s)")
    p.add_argument("--max-seconds", type=float, default=10.0, help="longest target (paper: 10 s)")
    p.add_argument(
        "--prompt-seconds", type=float, default=3.0, help="continuation: prompt = the target's first N s"
    )
    p.add_argument(
        "--max-prompt-seconds",
        type=float,
        default=4.0,
        help="cross-sentence: draw the (whole) prompt utterance among those of at most N s",
    )
    p.add_argument("--max-items", type=int, default=None)
    p.add_argument("--testset-seed", type=int, default=0, help="seed of the prompt choice")


def load_testset(args) -> TestSet:
    if args.testset:
        return TestSet.load(args.testset)
    if args.seed_tts_meta:
        return seed_tts_eval_test_set(args.seed_tts_meta)

    opts = TestSetOptions(
        protocol=args.protocol,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        prompt_seconds=args.prompt_seconds,
        max_prompt_seconds=args.max_prompt_seconds,
        seed=args.testset_seed,
        max_items=args.max_items,
    )
    # files are checked per row by the builder, so one bad row is a failure row, not a crash
    return build_test_set(read_manifest(args.manifest, check_files=False), opts, source=str(args.manifest))


def format_summary(summary: dict) -> str:
    c = summary["counts"]
    lines = [
        f"items {c['items']} x seeds {c['seeds']} = {c['rows']} rows: scored {c['scored_rows']}, "
        f"invalid items {c['invalid_items']}, generation failed {c['generation_failed']}, "
        f"invalid audio {c['invalid_audio']}, ASR failed {c['asr_failed']}",
        f"backends: {summary['backends']}",
    ]
    for name, e in summary["metrics"].items():
        if e["n"]:
            lines.append(f"  {name:<28} {e['value']:8.4f}  [{e['low']:.4f}, {e['high']:.4f}]  n={e['n']}")
    for reason, n in summary.get("invalid_item_reasons", {}).items():
        lines.append(f"  invalid: {n} x {reason}")
    return "\n".join(lines)


def add_asr_compat_arg(p: argparse.ArgumentParser) -> None:
    """``--asr-compat`` (shared by ``valle score`` and ``valle audit``)."""
    p.add_argument(
        "--asr-compat",
        default="project",
        choices=ASR_COMPAT,
        help="ASR convention: project (beam 5, temperature fallback, Whisper's text normaliser) or "
        "seed-tts-eval (its run_wer.py: FFT resampling, greedy, no fallback, punctuation-stripping "
        "normaliser; pair with --asr openai-whisper --asr-model large-v3 for a paper's model)",
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "testset",
        help="build a zero-shot test set (cross-sentence / continuation) from a manifest",
        description="Targets of 4-10 s; cross-sentence: another utterance of the same speaker\n"
        "(whole, <= 4 s) with its transcript; continuation: the first 3 s of the target.\n"
        "Unusable rows are kept with a reason.",
        epilog="example:\n  valle testset --manifest data/corpus/manifest.jsonl --min-seconds 3 \\\n"
        "      --out runs/ts.jsonl",
        formatter_class=RAW,
    )
    add_testset_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_testset)

    p = sub.add_parser(
        "score",
        help="generate and score a test set: WER, speaker similarity, loop/hallucination flags, DNSMOS",
        description="Resumable (re-run the same command after an interruption) and sharded under torchrun "
        "(each rank writes its own table; then `valle merge`). Every number gets a 95%% bootstrap interval.",
        epilog="examples:\n"
        "  valle score --generator valle:checkpoints/demo --manifest data/corpus/manifest.jsonl \\\n"
        "      --min-seconds 3 --max-items 20 --seeds 0 1 --out runs/demo_score\n"
        "  valle score --generator folder:outputs/ --seed-tts-meta meta.lst --out runs/other\n"
        "  valle score --generator 'command:mytts --text {text} --prompt {prompt_wav} --out {out_wav}' ...\n"
        "  torchrun --nproc-per-node 4 -m evaluation.cli.main score ... && valle merge runs/x",
        formatter_class=RAW,
    )
    p.add_argument(
        "--generator", required=True, help="valle:<checkpoint> | command:<template> | folder:<dir>"
    )
    add_testset_args(p)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--stage", action="append", choices=("generate", "score"), help="run only this stage (repeatable)"
    )
    p.add_argument("--asr", default="faster-whisper", choices=("faster-whisper", "openai-whisper"))
    p.add_argument(
        "--asr-model",
        default=None,
        help="CTranslate2 dir, Whisper model name or .pt (default: bundled tiny.en)",
    )
    add_asr_compat_arg(p)
    p.add_argument("--speaker", default=DEFAULT_SPEAKER, choices=("campplus", "resemblyzer", "ecapa"))
    p.add_argument("--speaker-model", default=None, help="local SpeechBrain ECAPA model dir")
    p.add_argument("--no-quality", action="store_true", help="skip DNSMOS")
    p.add_argument("--no-vad", action="store_true", help="skip Silero VAD (no silence flag)")
    p.add_argument("--chunk-size", type=int, default=8, help="items per batch and per resume step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--top-p", type=float, default=0.8, help="valle: nucleus sampling")
    p.add_argument("--temperature", type=float, default=1.0, help="valle: sampling temperature")
    p.add_argument("--no-ras", action="store_true", help="valle: disable repetition-aware sampling")
    add_ar_decoding_args(p, help_prefix="valle: ")
    add_watermark_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_score)

    p = sub.add_parser(
        "scorers",
        help="list the scorers, their backends and every metric they produce (meaning, direction, unit)",
        epilog="example:\n  valle scorers",
        formatter_class=RAW,
    )
    p.set_defaults(func=lambda args: print(describe()) or 0)

    p = sub.add_parser(
        "merge",
        help="join the rank tables of a sharded `valle score` run and write summary.json (idempotent)",
        epilog="example:\n  valle merge runs/demo_score",
        formatter_class=RAW,
    )
    p.add_argument("run", type=Path)
    p.set_defaults(func=run_merge)


def run_testset(args) -> int:
    ts = load_testset(args)
    ts.save(args.out)
    bad = ts.problems
    print(f"{args.out}: {len(ts.items)} items ({len(bad)} unusable), excluded {ts.excluded or 'none'}")
    for iid, why in list(bad.items())[:20]:
        print(f"  {iid}: {why}")
    return 0


def run_score(args) -> int:
    valle = args.generator.startswith("valle:")
    options = build_run_options(
        args.generator,
        seeds=tuple(args.seeds),
        chunk_size=args.chunk_size,
        device=args.device,
        asr=args.asr,
        asr_model=args.asr_model,
        asr_compat=args.asr_compat,
        speaker=args.speaker,
        speaker_model=args.speaker_model,
        quality=not args.no_quality,
        vad=not args.no_vad,
        sampling={
            "top_p": args.top_p,
            "temperature": args.temperature,
            "ras": not args.no_ras,
            "greedy": args.greedy,
            "repeat_penalty": args.repeat_penalty,
        }
        if valle
        else None,
        watermark=watermark_setup(args, args.device) if valle else None,
    )
    stages = tuple(args.stage) if args.stage else STAGES
    score(args.out, load_testset(args), options, stages, progress=not args.quiet)
    rank, world = rank_world()
    if world > 1:
        print(f"rank {rank} of {world} done; when every rank has finished: valle merge {args.out}")
    elif (args.out / "summary.json").is_file():
        print(format_summary(json.loads((args.out / "summary.json").read_text())))
        print(f"tables in {args.out / 'tables'}; summary in {args.out / 'summary.json'}")
    return 0


def run_merge(args) -> int:
    summary = merge(args.run)
    if not summary:
        raise ValueError(f"{args.run}: no score tables to merge")
    print(format_summary(summary))
    return 0
