"""Throughput, harness overhead and memory of `valle score` with the offline stack on this machine.

Three measurements, each in a fresh process so model loading and peak memory are its own:

1. **Stages.** The demo checkpoint generates and the full offline stack scores N items
   (faster-whisper tiny.en, Resemblyzer, Silero VAD, DNSMOS): utterances per minute overall and
   seconds per utterance of each stage. Harness overhead = wall time of the two stages minus the
   time spent inside model calls (generation, ASR, embeddings, VAD, DNSMOS), over the model time.
   Model loading is reported apart (it is paid once per process, not per utterance).
2. **Memory.** Peak RSS of scoring 100 and 1000 utterances (a folder "generator" that returns each
   item's own recording, so only the harness and scorers run). DNSMOS is off in this measurement
   (it costs ~1 s per clip here, which would make the 1000-item run take hours); the goal is that
   memory stays flat as the run grows, which depends on the harness, not on which scorers run.

    python benchmarks/scoring.py [--corpus data/corpus] [--n-stage 24] [--sizes 100 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import write_result

ROOT = Path(__file__).resolve().parents[1]


# The child reports its own peak: RUSAGE_CHILDREN would give the max over every child so far.
CHILD = (
    "import resource, sys\n"
    "from evaluation.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def run_child(args: list[str]) -> tuple[float, float, str]:
    """Run `valle ...` in a fresh process; returns (wall seconds, that process's peak RSS MiB, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"valle {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak_kib = int(proc.stderr.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0])
    return wall, peak_kib / 1024, proc.stdout


def testset(corpus: Path, n: int, out: Path) -> Path:
    path = out / f"testset_{n}.jsonl"
    run_child(["testset", "--manifest", str(corpus / "manifest.jsonl"), "--min-seconds", "1",
               "--max-items", str(n), "--out", str(path)])  # fmt: skip
    return path


def folder_of_targets(ts_path: Path, out: Path) -> Path:
    folder = out / f"targets_{ts_path.stem}"
    folder.mkdir(exist_ok=True)
    for line in ts_path.read_text().splitlines()[1:]:
        item = json.loads(line)
        if item["target_audio"] and not (folder / f"{item['id']}.wav").exists():
            os.symlink(item["target_audio"], folder / f"{item['id']}.wav")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo")
    ap.add_argument("--n-stage", type=int, default=24)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = ap.parse_args()
    if not (args.corpus / "manifest.jsonl").is_file():
        raise SystemExit(f"no corpus at {args.corpus}: build it with `valle corpus --out {args.corpus}`")
    figures: dict = {"threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. stages, with our checkpoint generating
        ts = testset(args.corpus, args.n_stage, tmp)
        run = tmp / "stages"
        t0 = time.perf_counter()
        wall, _, _ = run_child(["score", "--generator", f"valle:{args.checkpoint}", "--testset", str(ts),
                                "--out", str(run), "--quiet"])  # fmt: skip
        gen_t = json.loads((run / "timings.generate.rank0.json").read_text())["seconds"]
        score_t = json.loads((run / "timings.score.rank0.json").read_text())["seconds"]
        n = json.loads((run / "summary.json").read_text())["counts"]["rows"]
        # model loading: the same command again finds every chunk done and only loads models
        load_wall, _, _ = run_child(["score", "--generator", f"valle:{args.checkpoint}", "--testset", str(ts),
                                     "--out", str(run), "--quiet"])  # fmt: skip
        model = gen_t["generate"] + sum(v for k, v in score_t.items() if k != "io")
        work = wall - load_wall  # both runs pay the same start-up and model loading
        figures.update(
            n_stage_utterances=n,
            utterances_per_minute=round(n / (work / 60), 2),
            **{f"seconds_per_utt_{k}": round(v / n, 3) for k, v in {**gen_t, **score_t}.items()},
            model_seconds=round(model, 1),
            harness_seconds=round(work - model, 1),
            harness_overhead=round((work - model) / model, 4),
            harness_overhead_goal=0.10,
            startup_and_model_loading_seconds=round(load_wall, 1),
            wall_seconds_stage_run=round(time.perf_counter() - t0, 1),
        )
        # 2. memory vs run size
        for size in sorted(args.sizes):
            ts = testset(args.corpus, size, tmp)
            folder = folder_of_targets(ts, tmp)
            out = tmp / f"mem_{size}"
            wall, peak, _ = run_child(["score", "--generator", f"folder:{folder}", "--testset", str(ts),
                                       "--out", str(out), "--no-quality", "--quiet"])  # fmt: skip
            figures[f"peak_rss_mib_{size}"] = round(peak, 1)
            figures[f"wall_seconds_{size}"] = round(wall, 1)
        lo, hi = min(args.sizes), max(args.sizes)
        growth = figures[f"peak_rss_mib_{hi}"] / figures[f"peak_rss_mib_{lo}"] - 1
        figures["peak_rss_growth"] = round(growth, 4)
        figures["peak_rss_growth_goal"] = 0.10
    path = write_result(
        "scoring",
        figures,
        data=f"{args.corpus} (offline synthetic corpus; targets 1-10 s, cross-sentence prompts): "
        f"stages on {args.n_stage} items generated by {args.checkpoint.name}; memory on {lo} vs {hi} "
        "items with a folder generator returning each item's own recording, DNSMOS off",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
