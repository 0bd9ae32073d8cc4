"""The keyed watermark on real speech: robustness, false alarms at scale, wrong keys, quality, cost.

For every clip of ``../shared/data/real_speech`` (or ``--data``) under every attack of
``watermark.attacks`` (and unattacked), with a fresh random key that is never written anywhere:

- **TPR**: the attacked *marked* clip is detected at the backend's analytic threshold (p <= 1e-6);
  reported over the clips of at least 3 s (the issue's target set) and over all clips, with the
  bit accuracy of the decoded 32-bit payload.
- **False alarms, right key**: the same attack applied to the *unmarked* original, plus ``--crops``
  random 1-3 s crops of each unmarked clip. Zero "marked" verdicts are expected; the Clopper-Pearson
  95% upper bound on the rate is reported.
- **Null distribution**: ``--keys`` fresh random keys per unmarked clip; a Kolmogorov-Smirnov test of
  their single-hypothesis p-values (``p_unsearched``) against the uniform distribution.
- **Wrong key**: every attacked marked clip checked with a second random key (same figures).
- **Quality** (marked vs original): SNR, wide-band PESQ, STOI. **Cost**: seconds per second of audio to
  embed; to detect a marked clip (the search stops at p <= 1e-12), an unmarked one (the whole speed
  and alignment search: the worst case), and an unmarked one without the speed search.

    python benchmarks/watermark_keyed.py [--data DIR] [--max-clips N] [--workers 2] [--crops 8]
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from results_io import write_result

from watermark.attacks import attack_bank, skipped_attacks
from watermark.bench_cli import jsonable, read_mono
from watermark.keyed import MIN_SECONDS, P_THRESHOLD, KeyedWatermarker, viterbi
from watermark.keys import WatermarkKey
from watermark.robustness import quality

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"
# the attacks the issue sets TPR >= 95% for (clips >= 3 s)
TARGET = (
    "mp3_32k", "mp3_64k", "mp3_128k", "aac_32k", "aac_64k", "opus_32k", "resample_16k", "resample_22.05k",
    "white_noise_20db", "pink_noise_20db", "white_noise_30db", "pink_noise_30db", "white_noise_40db",
    "pink_noise_40db", "lowpass_3k", "lowpass_5k", "highpass_500", "bandpass_300_3400", "gain_0.1",
    "gain_10", "polarity", "crop_middle_50", "shift_pad_0.5s", "shift_drop_0.1s", "splice_clean_50",
    "speed_0.9", "speed_1.1",
)  # fmt: skip


def clip_trials(job: tuple) -> list[dict]:
    """Every trial of one clip (run in a worker process)."""
    import torch

    torch.set_num_threads(1)
    wav, sr, clip_id, secret_a, secret_b, n_crops, n_keys, seed = job
    right = KeyedWatermarker(key=WatermarkKey("bench-a", secret_a))
    wrong = KeyedWatermarker(key=WatermarkKey("bench-b", secret_b))
    plain = KeyedWatermarker(key=WatermarkKey("bench-a", secret_a), speed_search=False)
    rng = np.random.default_rng(seed)
    payload = tuple(int(b) for b in rng.integers(0, 2, right.payload_bits))
    t0 = time.perf_counter()
    marked = right.embed(wav, sr, payload)
    t1 = time.perf_counter()
    right.evidence(marked, sr)  # marked: the search stops once p <= 1e-12
    t2 = time.perf_counter()
    right.evidence(wav, sr)  # unmarked: every speed and alignment is searched (the worst case)
    t3 = time.perf_counter()
    plain.evidence(wav, sr)  # unmarked, alignment search only
    t4 = time.perf_counter()
    base = {"clip_id": clip_id, "seconds": len(wav) / sr, **quality(marked, wav, sr)}
    base |= {"embed_s": t1 - t0, "detect_s": t2 - t1, "detect_full_s": t3 - t2, "detect_plain_s": t4 - t3}
    rows = []
    for atk in [None, *attack_bank()]:
        name = "none" if atk is None else atk.name
        am, am_sr = (marked, sr) if atk is None else atk(marked, sr, original=wav)
        au, au_sr = (wav, sr) if atk is None else atk(wav, sr, original=wav)
        ev_m, ev_u, ev_w = right.evidence(am, am_sr), right.evidence(au, au_sr), wrong.evidence(am, am_sr)
        bits = viterbi(ev_m.soft_bits)
        rows.append(
            base
            | {
                "attack": name,
                "family": "none" if atk is None else atk.family,
                "out_seconds": len(am) / am_sr,
                "z_marked": ev_m.z,
                "p_marked": ev_m.p_value,
                "bit_acc": float(np.mean(bits == np.array(payload))),
                "speed_found": ev_m.speed,
                "z_unmarked": ev_u.z,
                "p_unmarked": ev_u.p_value,
                "p_unmarked_unsearched": ev_u.p_unsearched,
                "p_wrong_key": ev_w.p_value,
            }
        )
    # independent null draws for the uniformity test: fresh random keys on this unmarked clip
    for _ in range(n_keys):
        ev = KeyedWatermarker(key=WatermarkKey("null", secrets.token_bytes(32)), speed_search=False).evidence(
            wav, sr
        )
        rows.append(base | {"attack": "random_key", "family": "random_key", "p_random_key": ev.p_unsearched})
    for c in range(n_crops):  # random crops of the unmarked clip: more false-alarm trials
        n = int(rng.uniform(MIN_SECONDS, min(3.0, len(wav) / sr)) * sr)
        start = int(rng.integers(0, len(wav) - n + 1))
        ev = right.evidence(wav[start : start + n], sr)
        rows.append(
            base
            | {"attack": f"crop_unmarked_{c}", "family": "crop", "out_seconds": n / sr}
            | {"p_unmarked": ev.p_value, "p_unmarked_unsearched": ev.p_unsearched}
        )
    return rows


def main() -> None:
    from scipy.stats import binomtest, kstest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--max-clips", type=int, default=None, help="evenly spaced subset of the manifest")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--crops", type=int, default=8, help="random unmarked crops per clip (false alarms)")
    ap.add_argument("--keys", type=int, default=40, help="random keys per clip for the uniformity test")
    ap.add_argument("--tables", type=Path, default=None, help="also write the per-trial parquet here")
    ap.add_argument("--name", default="watermark_keyed")
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl") if line.strip()]
    if args.max_clips is not None and args.max_clips < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, args.max_clips).round().astype(int)]
    secret_a, secret_b = secrets.token_bytes(32), secrets.token_bytes(32)  # fresh, never stored
    jobs = [
        (*read_mono(args.data / r["audio"]), r["id"], secret_a, secret_b, args.crops, args.keys, i)
        for i, r in enumerate(rows)
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        trials = pd.DataFrame([row for rs in pool.map(clip_trials, jobs) for row in rs])
    wall = time.perf_counter() - t0
    if args.tables:
        args.tables.mkdir(parents=True, exist_ok=True)
        trials.to_parquet(args.tables / "keyed_trials.parquet", index=False)

    thr = P_THRESHOLD
    null = trials[trials["family"] == "random_key"]
    trials = trials[trials["family"] != "random_key"]
    attacked = trials[trials["family"] != "crop"]
    base = attacked[attacked["attack"] == "none"]
    long = attacked[attacked["seconds"] >= 3.0]
    fp_p = trials["p_unmarked"].to_numpy()
    fp_k = int(np.sum(fp_p <= thr))
    wk_p = attacked["p_wrong_key"].to_numpy()
    wk_k = int(np.sum(wk_p <= thr))
    seconds = float(base["seconds"].sum())
    figures = {
        "watermarker": "keyed (watermark.keyed: dither modulation of tile energies, 32-bit payload)",
        "decision": f"p_value <= {thr:g} (union-bound analytic, speed and alignment search)",
        "n_clips": len(base),
        "n_clips_ge_3s": int((base["seconds"] >= 3.0).sum()),
        "n_speakers": len({r["speaker"] for r in rows}),
        "audio_seconds": round(seconds, 1),
        "n_attacks": int(attacked["attack"].nunique() - 1),
        "skipped_attacks": skipped_attacks(None),
        "fp_trials": len(fp_p),
        "fp_marked_verdicts": fp_k,
        "fp_rate_upper95": float(binomtest(fp_k, len(fp_p)).proportion_ci(0.95, method="exact").high),
        "fp_min_p_value": float(fp_p.min()),
        "fp_share_p_le_0.01": float(np.mean(fp_p <= 0.01)),
        # trials of one clip share its audio and the key, so they are not independent: the uniformity
        # test uses fresh random keys instead (independent given the audio; the null is over keys)
        "null_draws_random_keys": len(null),
        "null_ks_p_uniform": float(kstest(null["p_random_key"], "uniform").pvalue),
        "null_share_p_le_0.05": float(np.mean(null["p_random_key"] <= 0.05)),
        "null_share_p_le_0.01": float(np.mean(null["p_random_key"] <= 0.01)),
        "wrong_key_trials": len(wk_p),
        "wrong_key_marked_verdicts": wk_k,
        "wrong_key_rate_upper95": float(binomtest(wk_k, len(wk_p)).proportion_ci(0.95, method="exact").high),
        "wrong_key_min_p_value": float(wk_p.min()),
        "wrong_key_share_p_le_0.01": float(np.mean(wk_p <= 0.01)),
        "snr_db_mean": float(base["snr_db"].mean()),
        "snr_db_min": float(base["snr_db"].min()),
        "pesq_wb_mean": float(np.nanmean(base["pesq_wb"])),
        "pesq_wb_min": float(np.nanmin(base["pesq_wb"])),
        "stoi_mean": float(base["stoi"].mean()),
        "embed_seconds_per_audio_second": float(base["embed_s"].sum()) / seconds,
        "detect_marked_seconds_per_audio_second": float(base["detect_s"].sum()) / seconds,
        "detect_unmarked_seconds_per_audio_second": float(base["detect_full_s"].sum()) / seconds,
        "detect_no_speed_search_seconds_per_audio_second": float(base["detect_plain_s"].sum()) / seconds,
        "battery_wall_seconds": round(wall, 1),
        "fp_rate_upper95_one_sided": float(1 - 0.05 ** (1 / len(fp_p))) if fp_k == 0 else float("nan"),
        "workers": args.workers,
    }
    missed = []
    for name, g in attacked.groupby("attack", sort=False):
        gl = long[long["attack"] == name]
        tpr = float(np.mean(gl["p_marked"] <= thr)) if len(gl) else float("nan")
        figures[f"tpr_{name}"] = tpr
        figures[f"tpr_all_clips_{name}"] = float(np.mean(g["p_marked"] <= thr))
        figures[f"bitacc_{name}"] = float(gl["bit_acc"].mean()) if len(gl) else float("nan")
        if name in TARGET and not tpr >= 0.95:
            missed.append(name)
    figures["target_attacks_below_95pct"] = missed
    path = write_result(
        args.name,
        jsonable(
            {k: round(v, 4) if isinstance(v, float) and "p_value" not in k else v for k, v in figures.items()}
        ),
        data=f"{args.data.name}: {len(base)} clips, {len(trials)} trials",
    )
    print(json.dumps(jsonable(figures), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
