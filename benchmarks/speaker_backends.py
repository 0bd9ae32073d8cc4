"""Speaker-verification EER of the offline speaker backends on real speech (which to make default).

Embeds every clip of ``../shared/data/real_speech`` (50 clips, 16 speakers: LibriTTS, VCTK, LJSpeech,
CMU ARCTIC, a Piper-corpus reader) with each backend and scores every pair of clips by cosine
similarity: same-speaker pairs are target trials, the rest non-target trials. Reports the EER
(ASVspoof reference rule, :func:`detection.metrics.compute_eer`) over all pairs and over the harder
non-target pairs from the same corpus (same recording conditions, so the channel gives nothing away),
the mean target / non-target cosine, and the embedding time per clip.

    python benchmarks/speaker_backends.py [--data DIR] [--backends resemblyzer campplus]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from results_io import write_result

from detection.metrics import compute_eer
from evaluation.scorers.speaker import load_speaker_encoder
from valle.audio import load_audio

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"


def corpus(speaker: str) -> str:
    return speaker.split("-")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backends", nargs="+", default=["resemblyzer", "campplus"])
    ap.add_argument("--name", default="speaker_backends")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl") if line.strip()]
    wavs = [load_audio(args.data / r["audio"], sample_rate=16_000)[0] for r in rows]
    pairs = list(itertools.combinations(range(len(rows)), 2))
    same = np.array([rows[i]["speaker"] == rows[j]["speaker"] for i, j in pairs])
    same_corpus = np.array([corpus(rows[i]["speaker"]) == corpus(rows[j]["speaker"]) for i, j in pairs])
    figures: dict = {
        "n_clips": len(rows),
        "n_speakers": len({r["speaker"] for r in rows}),
        "n_target_trials": int(same.sum()),
        "n_nontarget_trials": int((~same).sum()),
        "n_nontarget_trials_same_corpus": int((~same & same_corpus).sum()),
    }
    for name in args.backends:
        encoder = load_speaker_encoder(name)
        encoder.embed_batch(wavs[:1], 16_000)  # warm-up: first-call allocations are not the model's cost
        t0 = time.perf_counter()
        emb = encoder.embed_batch(wavs, 16_000)
        seconds = time.perf_counter() - t0
        cos = np.array([float(emb[i] @ emb[j]) for i, j in pairs])
        eer, _ = compute_eer(cos[same], cos[~same])
        eer_hard, _ = compute_eer(cos[same], cos[~same & same_corpus])
        figures |= {
            f"{name}_sv_eer": round(eer, 4),
            f"{name}_sv_eer_same_corpus_nontargets": round(eer_hard, 4),
            f"{name}_mean_target_cosine": round(float(cos[same].mean()), 4),
            f"{name}_mean_nontarget_cosine": round(float(cos[~same].mean()), 4),
            f"{name}_seconds_per_clip": round(seconds / len(rows), 4),
            f"{name}_sha256": encoder.card()["sha256"],
        }
    path = write_result(args.name, figures, f"all {len(rows)} clips of {args.data}, every pair of clips")
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
