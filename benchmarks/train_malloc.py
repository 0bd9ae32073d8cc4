"""Does glibc's allocator slow CPU training? ``valle train`` with the default malloc and tuned.

A CPU training step allocates and frees activations of many different sizes; glibc returns big
blocks to the kernel (``mmap``/``munmap``, heap trimming) and takes them back on the next step, so a
step pays page faults and kernel time. The tuned setting keeps them (mmap threshold 32 MiB, no trim)
and asks for transparent huge pages, with glibc's own tunables and no code change:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736

Runs the same short training (same seed, so the same batches) alternately with each setting, in
the order A B B A, each a fresh process, and compares training tokens per second over the logged
intervals after the first (start-up and the first step left out), kernel-time share, minor page
faults per step and peak RSS. Speeds are only compared within this one run.

    python benchmarks/train_malloc.py --manifest data/corpus_onevoice/piper-joe-vtl1.00.train.jsonl \\
        --cache-dir runs/ar_one_voice_1049/tokens -- --preset tiny --parts ar --codec vqvae_24khz \\
        --ar-pointer --cross-sentence 0.5 --ar-self-feed 0.9 --init-from checkpoints/one_voice_ar
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from results_io import write_result

REPO = Path(__file__).resolve().parents[1]
ORDER = ("default", "tuned", "tuned", "default")  # A B B A: drift over the run hits both alike
TUNED = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=68719476736"


def run_once(cmd: list[str], env: dict[str, str], out: Path) -> dict:
    """One training process; its own resource usage from ``wait4`` (not its siblings')."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        raise SystemExit(f"training failed ({code}): {' '.join(cmd)}")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steady = rows[1:]  # the first interval holds start-up and the first step
    steps = rows[-1]["step"]
    return {
        "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
        "sys_share": usage.ru_stime / (usage.ru_utime + usage.ru_stime),
        "minor_faults_per_step": usage.ru_minflt / steps,
        "peak_rss_gb": usage.ru_maxrss / 2**20,  # ru_maxrss is in KiB on Linux
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, required=True, help="a token cache (no encoding is timed)")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("train_args", nargs="*", help="after --: more `valle train` options")
    args = ap.parse_args()
    settings = {"default": None, "tuned": TUNED}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory(prefix="train_malloc_") as tmp:
        for i, name in enumerate(ORDER):
            out = Path(tmp) / f"run{i}"
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            if settings[name] is not None:
                env["GLIBC_TUNABLES"] = settings[name]
            cmd = [
                sys.executable, "-m", "evaluation.cli.main", "train", "--manifest", str(args.manifest),
                "--cache-dir", str(args.cache_dir), "--out", str(out), "--max-steps", str(args.steps),
                "--log-every", str(args.log_every), "--ckpt-every", str(10 * args.steps), "--no-progress",
                *args.train_args,
            ]  # fmt: skip
            results[name].append(run_once(cmd, env, out))
            print(name, json.dumps(results[name][-1]), flush=True)
    figures: dict = {
        "steps_per_run": args.steps,
        "runs_per_setting": ORDER.count("tuned"),
        "tuned_glibc_tunables": TUNED,
    }
    for name, runs in results.items():
        for k in runs[0]:
            figures[f"{name}_{k}"] = round(sum(r[k] for r in runs) / len(runs), 4)
    figures["tokens_per_s_ratio_tuned_over_default"] = round(
        figures["tuned_tokens_per_s"] / figures["default_tokens_per_s"], 3
    )
    path = write_result(
        "train_malloc",
        figures,
        data=f"`valle train` on {args.manifest} (token cache {args.cache_dir}), {args.steps} steps per run, "
        f"options {' '.join(args.train_args) or '(defaults)'}; run order {', '.join(ORDER)}",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
