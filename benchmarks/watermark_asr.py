"""What does the keyed mark cost the recogniser? WER of real speech before and after marking.

On the demo's half-intelligible clones the mark changes Whisper tiny.en's transcript of most outputs
(``benchmarks/demo_checkpoint.py``, ``transcript_changed_by_mark_rate``), which makes a clone's WER
depend on the key. This asks the same of real speech: every clip of ``../shared/data/real_speech``
(or ``--data``) is transcribed as it is and after the keyed mark under ``--keys`` public benchmark
keys (rebuilt from their index, never a product key), each with its own 32-bit payload; reported:
WER against the transcripts for the original and each marked version, the share of clips whose
transcript the mark changes, and the spread of the marked WERs over keys.

    python benchmarks/watermark_asr.py [--data DIR] [--keys 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from public_key import public_key
from results_io import write_result

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio
from valle.manifest import read_manifest
from watermark import load_watermarker

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "real_speech")
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--name", default="watermark_asr")
    args = ap.parse_args()
    utts = read_manifest(args.data / "manifest.jsonl")
    asr = FasterWhisperASR()
    refs, plain, marked = [], [], {k: [] for k in range(args.keys)}
    keys = [public_key(f"watermark-asr-benchmark-{k}") for k in range(args.keys)]
    marks = {k: load_watermarker("keyed", key=key) for k, key in enumerate(keys)}
    for u in utts:
        wav, sr = load_audio(u.audio)
        refs.append(u.text)
        plain.append(asr.transcribe(wav, sr).text)
        for k, mark in marks.items():
            payload = keys[k].payload(u.id, "watermark-asr-benchmark", mark.payload_bits)
            marked[k].append(asr.transcribe(mark.embed(wav, sr, payload=payload), sr).text)
    figures: dict = {
        "n_clips": len(utts),
        "keys": args.keys,
        "wer_original": round(word_error_rate(refs, plain).wer, 4),
    }
    wers = []
    for k, hyps in marked.items():
        wers.append(word_error_rate(refs, hyps).wer)
        figures[f"wer_marked_key{k}"] = round(wers[-1], 4)
        figures[f"transcript_changed_rate_key{k}"] = round(
            float(np.mean([h != p for h, p in zip(hyps, plain, strict=True)])), 4
        )
    figures["wer_marked_min"], figures["wer_marked_max"] = round(min(wers), 4), round(max(wers), 4)
    path = write_result(
        args.name,
        figures,
        data=f"every clip of {args.data} ({len(utts)}), Whisper tiny.en (the project's ASR settings), "
        f"keyed mark at its default strength under {args.keys} public benchmark keys",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
