"""Our ASR convention next to seed-tts-eval's, on the same recogniser and the same clips.

Transcribes every clip of ``../shared/data/real_speech`` with the offline Whisper (faster-whisper,
bundled tiny.en, int8) under each convention of ``evaluation.scorers.asr.ASR_COMPAT``: ``project``
(sinc resampling, beam 5 + temperature fallback, Whisper's English normaliser) and ``seed-tts-eval``
(its ``run_wer.py``: FFT resampling from the file's rate, greedy, no fallback, no timestamps,
punctuation-stripping normaliser). Records corpus WER and mean per-utterance WER (seed-tts-eval's
headline) for each, and how many transcripts differ.

    python benchmarks/asr_compat.py [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from results_io import write_result

from evaluation.scorers.asr import ASR_COMPAT, FasterWhisperASR, compat_options, to_whisper_rate
from evaluation.scorers.scoring import text_scheme
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--name", default="asr_compat")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl") if line.strip()]
    native = [load_audio(args.data / r["audio"]) for r in rows]
    refs = [r["text"] for r in rows]
    figures: dict = {"n_clips": len(rows)}
    texts = {}
    for compat in ASR_COMPAT:
        options = compat_options(compat)
        asr = FasterWhisperASR(options=options)
        t0 = time.perf_counter()
        out = [
            asr.transcribe(to_whisper_rate(w, sr, compat), 16_000, r["id"])
            for (w, sr), r in zip(native, rows, strict=True)
        ]
        wall = time.perf_counter() - t0
        texts[compat] = [t.text for t in out]
        wer = word_error_rate(refs, texts[compat], text_scheme(options))
        key = compat.replace("-", "_")
        figures[f"wer_{key}"] = round(wer.wer, 5)
        figures[f"mean_utt_wer_{key}"] = round(wer.mean_utterance_wer, 5)
        figures[f"fallback_exhausted_{key}"] = sum(t.fallback_exhausted for t in out)
        figures[f"seconds_per_clip_{key}"] = round(wall / len(rows), 4)
    # the two conventions' effects taken apart: the project's decode scored with seed-tts-eval's text
    # normaliser, and seed-tts-eval's decode scored with Whisper's
    figures["wer_project_decode_seed_tts_eval_normaliser"] = round(
        word_error_rate(refs, texts["project"], "seed-tts-eval").wer, 5
    )
    figures["wer_seed_tts_eval_decode_whisper_normaliser"] = round(
        word_error_rate(refs, texts["seed-tts-eval"], "whisper").wer, 5
    )
    figures["clips_with_different_transcripts"] = sum(
        a != b for a, b in zip(texts["project"], texts["seed-tts-eval"], strict=True)
    )
    path = write_result(
        args.name,
        figures,
        f"all {len(rows)} clips of {args.data}; faster-whisper tiny.en int8 (bundled), 2 threads",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
