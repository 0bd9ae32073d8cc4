"""Robustness and quality metrics for a watermark backend under the attack bank.

Definitions (following AudioSeal, San Roman et al. 2024, Sec. 5, and the calibration its issues
#14/#15/#79 ask for):

- **Thresholds are fixed once, on clean unmarked real speech**: for a target false-positive rate
  ``fpr``, :func:`fix_threshold` returns the smallest threshold ``t`` such that at most
  ``floor(fpr * n)`` of the ``n`` clean scores satisfy ``score >= t``. The same ``t`` is then used,
  unchanged, under every attack. With ``n`` clean clips an FPR below ``1 / n`` cannot be resolved:
  both 1% and 0.1% then allow zero false positives and give the same threshold (just above the
  largest clean score); the reports say so and give ``n``.
- **FPR on clean speech** is reported three ways: in-sample (on the clips that fixed the threshold, so
  at most the target by construction), leave-one-out (each clip judged by the threshold fixed on the
  others: an honest held-out estimate), and a Clopper-Pearson 95% upper bound on the in-sample count.
- **TPR** at each fixed threshold: the fraction of attacked *marked* clips with ``score >= t``; and
  ``tpr``/``fpr`` at the backend's own decision with Wilson intervals (:func:`decision_rates`, the
  computation the audit's scorecard uses too).
- **AUC** (``sklearn.metrics.roc_auc_score``): positives are the attacked marked clips, negatives the
  *same attack applied to the unmarked originals*, so an attack that itself makes audio look marked
  (or unmarked) is not mistaken for robustness. ``fpr_attacked_*`` is the share of those negatives
  flagged at the clean thresholds.
- **Bit accuracy** (payload backends only; NaN for presence-only ones): decoded bits equal to the
  embedded payload, over the payload length. **p-value**: ``scipy.stats.binomtest(k, n, 0.5,
  alternative="greater")``, the chance of at least ``k`` of ``n`` bits right by guessing.
- **Quality** of marked vs original (before any attack): SNR in dB, wide-band PESQ (ITU-T P.862.2,
  ``pesq`` package, both signals resampled to 16 kHz) and STOI (Taal et al. 2011, ``pystoi``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pandas as pd
from pesq import PesqError, pesq
from pystoi import stoi
from scipy.signal import resample_poly
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from watermark.attacks import Attack

FPRS = (0.01, 0.001)
PESQ_SR = 16000


def fpr_key(fpr: float) -> str:
    """0.01 -> '1pct', 0.001 -> '0.1pct' (column and key suffix)."""
    return f"{fpr * 100:g}pct"


def fix_threshold(clean_scores: Sequence[float], fpr: float) -> float:
    """Smallest threshold with at most ``floor(fpr * n)`` clean scores ``>= threshold`` (see module doc)."""
    scores = np.sort(np.asarray(clean_scores, dtype=np.float64))[::-1]
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("fix_threshold needs at least one finite clean score")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"target FPR must be in [0, 1), got {fpr}")
    # 1e-9 absorbs float error (0.001 * 3000 is 3.0000000000000004, 0.07 * 100 is 7.000000000000001)
    allowed = min(math.floor(fpr * scores.size + 1e-9), scores.size - 1)
    # the (allowed+1)-th largest score must fall below the threshold; ties below it too
    return float(np.nextafter(scores[allowed], np.inf))


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of ``k`` successes in ``n`` trials; (None, None) when ``n == 0``."""
    if n == 0:
        return None, None
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def decision_rates(detected_marked: Sequence[bool], detected_unmarked: Sequence[bool]) -> dict:
    """TPR on marked and FPR on unmarked audio at the backend's *own* decision, with Wilson 95%
    intervals. The one computation behind both ``valle watermark-bench`` and the audit's scorecard,
    so the two can never disagree."""
    m, u = np.asarray(detected_marked, bool), np.asarray(detected_unmarked, bool)
    (tl, th), (fl, fh) = wilson(int(m.sum()), m.size), wilson(int(u.sum()), u.size)
    return {
        "n": int(m.size),
        "tpr": float(m.mean()) if m.size else None,
        "tpr_low": tl,
        "tpr_high": th,
        "n_unmarked": int(u.size),
        "fpr": float(u.mean()) if u.size else None,
        "fpr_low": fl,
        "fpr_high": fh,
    }


def rate_at(scores: Sequence[float], threshold: float) -> float:
    """Share of ``scores >= threshold`` (a TPR on marked scores, an FPR on unmarked ones)."""
    s = np.asarray(scores, dtype=np.float64)
    return float(np.mean(s >= threshold)) if s.size else float("nan")


def auc(marked_scores: Sequence[float], unmarked_scores: Sequence[float]) -> float:
    """ROC AUC of marked (positive) vs unmarked (negative) scores."""
    pos, neg = np.asarray(marked_scores, float), np.asarray(unmarked_scores, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg]))


def bits_correct(decoded: Sequence[int] | None, payload: Sequence[int] | None) -> tuple[int, int]:
    """(correct, total) bits; (0, 0) when there is nothing to compare."""
    if decoded is None or payload is None or len(payload) == 0:
        return 0, 0
    if len(decoded) != len(payload):
        raise ValueError(f"decoded payload has {len(decoded)} bits, embedded {len(payload)}")
    return int(sum(int(a) == int(b) for a, b in zip(decoded, payload, strict=True))), len(payload)


def binomial_p(correct: int, total: int) -> float:
    """P(at least ``correct`` of ``total`` bits right by chance, p = 1/2); NaN when ``total == 0``."""
    if total == 0:
        return float("nan")
    return float(binomtest(correct, total, 0.5, alternative="greater").pvalue)


def clean_fpr_stats(clean_scores: Sequence[float], fpr: float) -> dict:
    """Threshold for ``fpr`` plus in-sample, leave-one-out and upper-bound FPR on the clean scores."""
    s = np.asarray(clean_scores, dtype=np.float64)
    n = s.size
    thr = fix_threshold(s, fpr)
    k = int(np.sum(s >= thr))
    loo = [s[i] >= fix_threshold(np.delete(s, i), fpr) for i in range(n)] if n > 1 else []
    return {
        "fpr_target": fpr,
        "threshold": thr,
        "n_clean": n,
        "false_positives": k,
        "fpr_clean": k / n,
        "fpr_clean_loo": float(np.mean(loo)) if loo else float("nan"),
        "fpr_clean_upper95": float(binomtest(k, n).proportion_ci(0.95, method="exact").high),
        "resolvable": bool(fpr * n >= 1),  # fewer clips than 1/fpr: the target cannot be measured
    }


def quality(marked: np.ndarray, original: np.ndarray, sr: int) -> dict:
    """SNR (dB), wide-band PESQ and STOI of ``marked [N]`` against ``original [N]``."""
    x, y = np.asarray(original, np.float64), np.asarray(marked, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"quality needs equal lengths, got {x.shape} and {y.shape}")
    err = float(np.sum((y - x) ** 2))
    snr = float("inf") if err == 0 else 10 * math.log10(max(float(np.sum(x**2)), 1e-20) / err)
    return {"snr_db": snr, "pesq_wb": _pesq_wb(x, y, sr), "stoi": float(stoi(x, y, sr, extended=False))}


def _pesq_wb(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    if sr != PESQ_SR:
        r = Fraction(PESQ_SR, sr)
        ref, deg = (
            resample_poly(ref, r.numerator, r.denominator),
            resample_poly(deg, r.numerator, r.denominator),
        )
    try:
        return float(pesq(PESQ_SR, ref, deg, "wb"))
    except PesqError:  # e.g. no utterance found in a near-silent clip
        return float("nan")


def detect_under_attacks(
    watermarker,
    wav: np.ndarray,
    sr: int,
    attacks: Sequence[Attack],
    *,
    original: np.ndarray | None = None,
    errors: str = "raise",
    clip_id: str = "clip",
) -> list[dict]:
    """``wav`` as it is (attack ``"none"``) and under each attack, each read by the backend's detector:
    the one attack loop of the battery (:func:`run_battery`) and of the audit's watermark stage.

    ``original``: the unmarked signal, for attacks that splice it in (default ``wav``). Returns one
    dict per condition, ``{"attack", "family", "out_seconds", "detection", "detect_seconds",
    "error"}``. A failing attack or detector raises (``errors="raise"``, naming the attack and clip) or
    becomes a row with ``detection`` None and the error text (``errors="record"``).
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', got {errors!r}")
    wav = np.asarray(wav, np.float32)
    original = wav if original is None else original
    out = []
    for atk in [None, *attacks]:
        row = {"attack": "none" if atk is None else atk.name, "family": "none" if atk is None else atk.family}
        try:
            aw, asr = (wav, sr) if atk is None else atk(wav, sr, original=original)
            t0 = time.perf_counter()
            det = watermarker.detect(np.asarray(aw, np.float32), asr)
            row |= {
                "out_seconds": len(aw) / asr,
                "detection": det,
                "detect_seconds": time.perf_counter() - t0,
            }
            row["error"] = None
        except Exception as err:
            if errors == "raise":
                raise RuntimeError(f"attack {row['attack']!r} failed on clip {clip_id!r}: {err}") from err
            row |= {"out_seconds": None, "detection": None, "detect_seconds": None}
            row["error"] = f"{type(err).__name__}: {err}"
        out.append(row)
    return out


def run_battery(
    watermarker,
    clips: Sequence[tuple[np.ndarray, int, str]],
    attacks: Sequence[Attack],
    payloads: Sequence[Sequence[int]] | None = None,
    *,
    fprs: Sequence[float] = FPRS,
    with_quality: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Mark each clip, run every attack on the marked clip and on its unmarked original, detect both.

    ``clips``: ``(wav [N] float32 mono, sr, clip_id)``. ``payloads``: one per clip for payload
    backends (random bits from ``seed`` when omitted; must stay None for presence-only backends).
    Returns ``(per_clip, per_attack, thresholds)``: one row per (clip, attack) with the unattacked
    condition as attack ``"none"``; one row per attack (``"none"`` first, then bank order) with
    TPR/FPR at the thresholds fixed on the clean originals' scores, AUC, bit accuracy and p-value;
    and ``{fpr_key: clean_fpr_stats}`` plus the backend's own threshold.
    """
    bits = int(getattr(watermarker, "payload_bits", 0))
    if not clips:
        raise ValueError("run_battery needs at least one clip")
    if payloads is None and bits:
        rng = np.random.default_rng(seed)
        payloads = [tuple(int(b) for b in rng.integers(0, 2, bits)) for _ in clips]
    if payloads is not None and len(payloads) != len(clips):
        raise ValueError(f"got {len(payloads)} payloads for {len(clips)} clips")
    names = [a.name for a in attacks]
    if "none" in names or len(set(names)) != len(names):
        raise ValueError("attack names must be unique and must not be 'none' (the unattacked condition)")

    rows = []
    for i, (wav, sr, clip_id) in enumerate(
        tqdm(clips, desc=f"{watermarker.name} battery", disable=not progress)
    ):
        wav = np.asarray(wav, np.float32)
        payload = None if payloads is None else tuple(payloads[i])
        t0 = time.perf_counter()
        marked = watermarker.embed(wav, sr, payload)
        embed_s = time.perf_counter() - t0
        on_marked = detect_under_attacks(watermarker, marked, sr, attacks, original=wav, clip_id=clip_id)
        on_original = detect_under_attacks(watermarker, wav, sr, attacks, original=wav, clip_id=clip_id)
        per_clip = {
            "clip_id": clip_id,
            "sr": sr,
            "seconds": len(wav) / sr,
            "score_original": on_original[0]["detection"].score,
            "embed_s": embed_s,
            "detect_s": on_original[0]["detect_seconds"],
            **(quality(marked, wav, sr) if with_quality else {}),
        }
        for m, u in zip(on_marked, on_original, strict=True):
            det, unmarked_det = m["detection"], u["detection"]
            k, n = bits_correct(det.payload, payload)
            rows.append(
                {
                    **per_clip,
                    "attack": m["attack"],
                    "family": m["family"],
                    "out_seconds": m["out_seconds"],
                    "score_marked": det.score,
                    "score_unmarked": unmarked_det.score,
                    "detected_marked": bool(det.detected),
                    "detected_unmarked": bool(unmarked_det.detected),
                    "bits_correct": k,
                    "bits_total": n,
                    "bit_acc": k / n if n else float("nan"),
                    "p_value": binomial_p(k, n),
                }
            )
    per_clip_df = pd.DataFrame(rows)
    clean = per_clip_df.loc[per_clip_df["attack"] == "none", "score_original"].to_numpy()
    thresholds = {fpr_key(f): clean_fpr_stats(clean, f) for f in fprs}
    thresholds["backend"] = {"threshold": float(watermarker.threshold)}
    params = {"none": {}} | {a.name: a.params for a in attacks}
    return per_clip_df, summarize(per_clip_df, thresholds, params), thresholds


def summarize(per_clip: pd.DataFrame, thresholds: dict, params: dict | None = None) -> pd.DataFrame:
    """One row per attack (in first-seen order) from the per-clip rows and the fixed thresholds."""
    out = []
    for name, g in per_clip.groupby("attack", sort=False):
        row = {"attack": name, "family": g["family"].iloc[0]}
        row |= decision_rates(g["detected_marked"], g["detected_unmarked"])
        for key, t in thresholds.items():
            if key == "backend":
                continue
            row[f"tpr_{key}"] = rate_at(g["score_marked"], t["threshold"])
            row[f"fpr_attacked_{key}"] = rate_at(g["score_unmarked"], t["threshold"])
        row["auc"] = auc(g["score_marked"], g["score_unmarked"])
        row["bit_acc"] = float(g["bit_acc"].mean()) if g["bits_total"].gt(0).any() else float("nan")
        row["p_value_median"] = float(g["p_value"].median()) if g["bits_total"].gt(0).any() else float("nan")
        row["score_marked_mean"] = float(g["score_marked"].mean())
        row["score_unmarked_mean"] = float(g["score_unmarked"].mean())
        row["params"] = json.dumps((params or {}).get(name, {}), sort_keys=True)
        out.append(row)
    return pd.DataFrame(out)


def markdown_table(per_attack: pd.DataFrame, fprs: Sequence[float] = FPRS) -> str:
    """The per-attack table as GitHub markdown: TPR and FPR at the backend's own decision (the
    scorecard's figures), TPR at each fixed clean FPR, AUC and bit accuracy."""
    cols = [("attack", "attack"), ("tpr", "TPR (decision)"), ("fpr", "FPR (decision, attacked clean)")]
    cols += [(f"tpr_{fpr_key(f)}", f"TPR@{f * 100:g}%") for f in fprs]
    cols += [("auc", "AUC"), ("bit_acc", "bit acc")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in per_attack.iterrows():
        cells = [r[c] if c == "attack" else ("n/a" if pd.isna(r[c]) else f"{r[c]:.3f}") for c, _ in cols]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
