"""Speed against a plain loop, throughput, harness overhead and memory of `valle score` (offline stack).

Three parts (``--parts``), each written to its own results file:

0. **loop** (``scoring.json``): every real_speech clip scored as its own output (a folder generator)
   by `valle score` and by a plain Python loop making the same model calls with the same loaded
   models, interleaved; ratio = loop seconds / score seconds (goal >= 1: the harness costs nothing).
   Both include everything each does after the models are loaded; transcripts must be identical.

The other two need the offline corpus and run each `valle score` in a fresh process, so model
loading and peak memory are its own:

1. **stages** (``scoring_stages.json``). The demo checkpoint generates and the full offline stack
   scores N items (faster-whisper tiny.en, CAM++, Silero VAD, DNSMOS): utterances per minute and
   seconds per utterance of each stage. Harness overhead = wall time of the two stages minus the
   time spent inside model calls (generation, ASR, embeddings, VAD, DNSMOS), over the model time.
   Model loading is reported apart (it is paid once per process, not per utterance).
2. **memory** (``scoring_memory.json``). Peak RSS of scoring 100 and 1000 utterances (a folder
   "generator" that returns each item's own recording, so only the harness and scorers run). DNSMOS
   is off here (it costs ~1 s per clip, which would make the 1000-item run take hours); the goal is
   that memory stays flat as the run grows, which depends on the harness, not on the scorers.

    python benchmarks/scoring.py [--parts loop stages memory] [--real M] [--corpus data/corpus]
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

import pandas as pd
from results_io import write_result

from evaluation.runs.run import RunOptions, score
from evaluation.scorers.scoring import SR, Scorers, ScoringConfig, load16k
from evaluation.testsets.testset import TestSetOptions, build_test_set
from valle.manifest import read_manifest

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


def plain_loop(scorers: Scorers, ts, run_dir: Path) -> list[dict]:
    """The same model calls as `valle score` makes for a folder generator, item by item, with no
    harness: read audio, Whisper on the output and on the real target, speaker embeddings of output,
    prompt and target, VAD on the output, DNSMOS on output and target."""
    out = []
    for it in ts.items:
        if it.problem is not None:
            continue
        wav = load16k(it.target_audio)  # the folder "generator" returns the item's own recording
        prompt = load16k(run_dir / "prompts" / f"{it.id}.wav")
        target = load16k(it.target_audio)
        hyp, ref = scorers.asr.transcribe_batch([wav, target], SR)
        emb = scorers.speaker.embed_batch([wav, prompt, target], SR)
        vad = scorers.vad.measure(wav, SR)
        mos = scorers.dnsmos.score_batch([wav, target], SR)
        out.append({"id": it.id, "hyp": hyp.text, "ref": ref.text, "sim": float(emb[0] @ emb[1]),
                    "vad": vad, "mos": mos[0]})  # fmt: skip
    return out


def score_vs_loop(real: Path, tmp: Path, repeats: int) -> dict:
    """`valle score` (folder generator) and the plain loop on the same items with the same loaded
    models, interleaved ``repeats`` times; fastest of each (what the code costs without noise)."""
    ts = build_test_set(read_manifest(real), TestSetOptions(min_seconds=1.0, max_seconds=30.0))
    folder = tmp / "own_recordings"
    folder.mkdir(parents=True)
    for it in ts.items:
        if it.problem is None:
            os.symlink(it.target_audio, folder / f"{it.id}.wav")
    scorers = Scorers(ScoringConfig())
    options = RunOptions(generator=f"folder:{folder}", chunk_size=8)
    warm = [load16k(it.target_audio) for it in ts.items[:2]]  # warm-up: first-call costs of each model
    scorers.asr.transcribe_batch(warm, SR), scorers.speaker.embed_batch(warm, SR)
    scorers.vad.measure(warm[0], SR), scorers.dnsmos.score_batch(warm, SR)
    score_s, loop_s = [], []
    for r in range(repeats):  # ABBA order, so a drift in machine speed does not favour either
        for what in ("score", "loop") if r % 2 == 0 else ("loop", "score"):
            t0 = time.perf_counter()
            if what == "score":
                score(tmp / f"run{r}", ts, options, progress=False, scorers=scorers)
                score_s.append(time.perf_counter() - t0)
            else:  # the loop reads the prompts score cut, so its first pass follows a score pass
                looped = plain_loop(scorers, ts, tmp / ("run0" if r else f"run{r}"))
                loop_s.append(time.perf_counter() - t0)
    rows = pd.read_parquet(tmp / "run0" / "tables" / "scores.parquet").set_index("id")
    same_text = all(rows.loc[x["id"], "hyp"] == x["hyp"] for x in looped)
    return {
        "loop_items": len(looped),
        "loop_invalid_items": sum(it.problem is not None for it in ts.items),
        "score_seconds": round(min(score_s), 2),
        "plain_loop_seconds": round(min(loop_s), 2),
        "score_seconds_all": [round(x, 2) for x in score_s],
        "plain_loop_seconds_all": [round(x, 2) for x in loop_s],
        "score_vs_loop_speed_ratio": round(min(loop_s) / min(score_s), 3),
        "score_vs_loop_speed_ratio_goal": 1.0,
        "score_and_loop_transcripts_identical": same_text,
    }


def report(name: str, figures: dict, data: str) -> None:
    path = write_result(name, figures, data=data)
    print(json.dumps(figures, indent=2), f"wrote {path}", sep="\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["loop"], choices=("loop", "stages", "memory"))
    ap.add_argument(
        "--real", type=Path, default=ROOT.parent / "shared" / "data" / "real_speech" / "manifest.jsonl"
    )
    ap.add_argument("--repeats", type=int, default=2, help="loop part: interleaved repeats (fastest kept)")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo")
    ap.add_argument("--n-stage", type=int, default=24)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count()
    if {"stages", "memory"} & set(args.parts) and not (args.corpus / "manifest.jsonl").is_file():
        raise SystemExit(f"no corpus at {args.corpus}: build it with `valle corpus --out {args.corpus}`")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "loop" in args.parts:
            figures = {"threads": threads, **score_vs_loop(args.real, tmp / "loop", args.repeats)}
            report(
                "scoring",
                figures,
                data=f"{args.real} as a cross-sentence test set, each item's own recording as its output "
                "(folder generator); offline stack (faster-whisper tiny.en int8, CAM++, Silero VAD, DNSMOS)",
            )
        if "stages" in args.parts:
            # our checkpoint generating, the full offline stack scoring
            ts = testset(args.corpus, args.n_stage, tmp)
            run = tmp / "stages"
            t0 = time.perf_counter()
            wall, _, _ = run_child(["score", "--generator", f"valle:{args.checkpoint}", "--testset", str(ts),
                                    "--out", str(run), "--quiet"])  # fmt: skip
            gen_t = json.loads((run / "timings.generate.rank0.json").read_text())["seconds"]
            score_t = json.loads((run / "timings.score.rank0.json").read_text())["seconds"]
            n = json.loads((run / "summary.json").read_text())["counts"]["rows"]
            # model loading: the same command again finds every chunk done and only loads models
            load_wall, _, _ = run_child(["score", "--generator", f"valle:{args.checkpoint}", "--testset",
                                         str(ts), "--out", str(run), "--quiet"])  # fmt: skip
            model = gen_t["generate"] + sum(v for k, v in score_t.items() if k != "io")
            work = wall - load_wall  # both runs pay the same start-up and model loading
            figures = dict(
                threads=threads,
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
            report(
                "scoring_stages",
                figures,
                data=f"{args.corpus} (offline synthetic corpus; targets 1-10 s, cross-sentence prompts): "
                f"{args.n_stage} items generated by {args.checkpoint.name}",
            )
        if "memory" in args.parts:
            figures = {}
            for size in sorted(args.sizes):
                ts = testset(args.corpus, size, tmp)
                folder = folder_of_targets(ts, tmp)
                out = tmp / f"mem_{size}"
                wall, peak, _ = run_child(["score", "--generator", f"folder:{folder}", "--testset", str(ts),
                                           "--out", str(out), "--no-quality", "--quiet"])  # fmt: skip
                figures[f"peak_rss_mib_{size}"] = round(peak, 1)
                figures[f"wall_seconds_{size}"] = round(wall, 1)
            lo, hi = min(args.sizes), max(args.sizes)
            figures["peak_rss_growth"] = round(
                figures[f"peak_rss_mib_{hi}"] / figures[f"peak_rss_mib_{lo}"] - 1, 4
            )
            figures["peak_rss_growth_goal"] = 0.10
            report(
                "scoring_memory",
                figures,
                data=f"{args.corpus}: {lo} vs {hi} items with a folder generator returning each item's own "
                "recording, DNSMOS off",
            )


if __name__ == "__main__":
    main()
