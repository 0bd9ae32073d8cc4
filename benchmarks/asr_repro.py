"""Do transcripts reproduce across CPU thread counts and CTranslate2 compute types?

Transcribes every clip of ``../shared/data/real_speech`` with the offline Whisper (faster-whisper,
bundled tiny.en) under each compute type (int8, int8_float32, float32) and 1, 2 and 4 CPU threads,
with the scorer's own decoding options (``evaluation.scorers.asr.ASROptions``). Records, per compute
type, how many transcripts differ between thread counts, how many differ from float32 at 1 thread,
the corpus WER, fallback-exhausted clips and wall time; plus the CPU's SIMD flags, since CTranslate2
picks kernels by CPU (int8 GEMM on AVX-512 VNNI here), which is what can differ between machines.

    python benchmarks/asr_repro.py [--data DIR] [--threads 1 2 4] [--compute-types int8 float32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from results_io import write_result

from evaluation.scorers.asr import WHISPER_SR, FasterWhisperASR
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio
from valle.hardware import cpu_simd_flags

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--compute-types", nargs="+", default=["int8", "int8_float32", "float32"])
    ap.add_argument("--name", default="asr_repro")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl") if line.strip()]
    wavs = [load_audio(args.data / r["audio"], sample_rate=WHISPER_SR)[0] for r in rows]
    refs = [r["text"] for r in rows]
    texts: dict[tuple[str, int], list[str]] = {}
    figures: dict = {"cpu_simd_flags": cpu_simd_flags(), "n_clips": len(rows)}
    for ct in args.compute_types:
        for n in args.threads:
            asr = FasterWhisperASR(compute_type=ct, cpu_threads=n)
            t0 = time.perf_counter()
            out = asr.transcribe_batch(wavs, WHISPER_SR, names=[r["id"] for r in rows])
            wall = time.perf_counter() - t0
            texts[(ct, n)] = [t.text for t in out]
            key = f"{ct}_t{n}"
            figures[f"wer_{key}"] = word_error_rate(refs, texts[(ct, n)]).wer
            figures[f"fallback_exhausted_{key}"] = [
                r["id"] for r, t in zip(rows, out, strict=True) if t.fallback_exhausted
            ]
            figures[f"seconds_per_clip_{key}"] = wall / len(rows)
            print(key, figures[f"wer_{key}"], figures[f"fallback_exhausted_{key}"], flush=True)
    base = texts.get(("float32", args.threads[0]))
    for ct in args.compute_types:
        first = texts[(ct, args.threads[0])]
        differ = {
            i
            for n in args.threads[1:]
            for i, (a, b) in enumerate(zip(first, texts[(ct, n)], strict=True))
            if a != b
        }
        figures[f"clips_differing_across_threads_{ct}"] = sorted(rows[i]["id"] for i in differ)
        if base is not None:
            figures[f"clips_differing_from_float32_{ct}"] = sum(
                a != b for a, b in zip(first, base, strict=True)
            )
    path = write_result(
        args.name, figures, data=f"{args.data.name}: {len(rows)} clips, faster-whisper tiny.en"
    )
    print(json.dumps(figures, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
