"""Evaluate a detector ASVspoof-style: scores under clean audio and under each degradation (callables
passed in: ``attack(wav, sr) -> wav`` with ``name``, ``family`` and ``params``), EER / minDCF / Cllr /
DET points per generator and per condition with speaker-level bootstrap intervals, and ``eval.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from detection.metrics import (
    ASVSPOOF5_COSTS,
    bootstrap_ci,
    cm_report,
    compute_eer,
    compute_min_dcf,
    det_points,
    rates_at,
)
from detection.split import Clip
from detection.train import labels_of, p_spoof_of, stored_threshold

EVAL_FILE = "eval.json"
SCORES_FILE = "scores.parquet"
EVAL_FORMAT = "valle-detect-eval"
EVAL_VERSION = 1
CLEAN = "clean"
MAX_CURVE_POINTS = 400
DEFINITIONS = {
    "score": "log-odds of bona fide (higher = more bona fide)",
    "p_spoof": "sigmoid(-(a * score + b)), a and b fitted (Platt) on the scores the threshold was set on",
    "decision": "bona fide when score >= threshold",
    "eer": "equal error rate, ASVspoof rule (detection.metrics.compute_eer)",
    "min_dcf": "normalised minimum DCF, ASVspoof 5 costs (P_spoof 0.05, C_miss 1, C_fa 10)",
    "cllr": "Brummer's Cllr in bits, scores read as natural-log LLRs; min_cllr after PAV recalibration",
    "eer_ci": "percentile bootstrap interval of the EER; ci_unit 'speaker': speakers drawn with "
    "replacement, all their bona fide and spoof trials together; 'trial': each class resampled",
    "per_generator": "each spoof generator vs all test bona fide clips (clean audio)",
    "per_condition": "all spoofs vs all bona fide, both classes under the same degradation",
    "grid": "condition x generator, point estimates",
    "curves": "DET points by ascending threshold (miss, fa and their probits); ROC: tpr = 1 - miss, fpr = fa",
    "at_stored_threshold": "rates at the EER threshold fixed on the training split (stored with the model)",
}


def degrade(
    clips: Sequence[Clip], audio: Sequence[tuple[np.ndarray, int]], attacks: Sequence
) -> dict[str, list[tuple[np.ndarray, int]]]:
    """``{"clean": audio, attack.name: attacked audio}``; each attack is applied to every clip."""
    out = {CLEAN: list(audio)}
    for attack in attacks:
        if attack.name == CLEAN:
            raise ValueError(f"a degradation may not be called {CLEAN!r}")
        attacked = []
        for c, (wav, sr) in zip(clips, audio, strict=True):
            try:
                attacked.append(attack(wav, sr))
            except Exception as err:
                raise RuntimeError(f"degradation {attack.name!r} failed on clip {c.id!r}: {err}") from err
        out[attack.name] = attacked
    return out


def score_conditions(detector, clips: Sequence[Clip], conditions: dict[str, list]) -> pd.DataFrame:
    """One row per clip x condition: id, speaker, generator, label, condition, score, p_spoof."""
    frames = []
    for cond, audio in conditions.items():
        scores = np.asarray(detector.score(audio), dtype=np.float64)
        frames.append(
            pd.DataFrame(
                {
                    "id": [c.id for c in clips],
                    "speaker": [c.speaker for c in clips],
                    "generator": [c.generator for c in clips],
                    "label": labels_of(clips),
                    "condition": cond,
                    "score": scores,
                    "p_spoof": p_spoof_of(detector, scores),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _thin(curve: dict, n: int = MAX_CURVE_POINTS) -> dict:
    k = len(curve["threshold"])
    idx = np.unique(np.linspace(0, k - 1, n).round().astype(int)) if k > n else np.arange(k)
    return {key: [round(float(v), 6) for v in np.asarray(values)[idx]] for key, values in curve.items()}


def cm_metrics(
    bona: pd.DataFrame, spoof: pd.DataFrame, bootstrap: int, seed: int, threshold: float | None
) -> dict:
    """EER (+ speaker-level bootstrap CI), minDCF, Cllr, minCllr and the rates at the stored threshold
    of one bona fide vs spoof comparison (rows of ``scores.parquet``)."""
    b, s = bona["score"].to_numpy(float), spoof["score"].to_numpy(float)
    rep = cm_report(b, s, llr=True, bootstrap=0)
    out = {
        "eer": rep.eer,
        "eer_threshold": rep.eer_threshold,
        "eer_ci": None,
        "ci_unit": None,
        "min_dcf": rep.min_dcf,
        "min_dcf_threshold": rep.min_dcf_threshold,
        "cllr": rep.cllr,
        "min_cllr": rep.min_cllr,
        "n_bonafide": rep.n_bonafide,
        "n_spoof": rep.n_spoof,
        "n_bonafide_speakers": int(bona["speaker"].nunique()),
        "n_spoof_speakers": int(spoof["speaker"].nunique()),
        "dcf_costs": ASVSPOOF5_COSTS,
    }
    if bootstrap > 0:
        groups = (bona["speaker"].to_numpy(str), spoof["speaker"].to_numpy(str))
        try:
            _, low, high = bootstrap_ci(b, s, compute_eer, n=bootstrap, seed=seed, groups=groups)
            out["ci_unit"] = "speaker"
        except ValueError:  # one speaker in all (or almost every draw misses a class): resample trials
            _, low, high = bootstrap_ci(b, s, compute_eer, n=bootstrap, seed=seed)
            out["ci_unit"] = "trial"
        out["eer_ci"] = [low, high]
    if threshold is not None:
        miss, fa = rates_at(b, s, threshold)
        out["at_stored_threshold"] = {
            "threshold": threshold,
            "bonafide_rejection": miss,
            "spoof_acceptance": fa,
        }
    return out


def summarize(
    scores: pd.DataFrame, bootstrap: int = 1000, seed: int = 0, threshold: float | None = None
) -> dict:
    """The metric sections of ``eval.json`` from a ``scores.parquet`` table (module docstring)."""
    conditions = list(dict.fromkeys(scores["condition"]))
    generators = sorted(set(scores.loc[scores["label"] == 0, "generator"]))
    per_condition, per_generator, grid, curves = {}, {}, {}, {}
    for cond in conditions:
        rows = scores[scores["condition"] == cond]
        bona, spoof = rows[rows["label"] == 1], rows[rows["label"] == 0]
        per_condition[cond] = cm_metrics(bona, spoof, bootstrap, seed, threshold)
        curves[f"{cond}/all"] = _thin(det_points(bona["score"], spoof["score"]))
        grid[cond] = {}
        for gen in generators:
            g = spoof[spoof["generator"] == gen]
            if cond == CLEAN:
                per_generator[gen] = cm_metrics(bona, g, bootstrap, seed, threshold)
                curves[f"{cond}/{gen}"] = _thin(det_points(bona["score"], g["score"]))
            grid[cond][gen] = {
                "eer": compute_eer(bona["score"], g["score"])[0],
                "min_dcf": compute_min_dcf(bona["score"], g["score"])[0],
                "n_spoof": len(g),
            }
    return {
        "conditions": conditions,
        "generators": generators,
        "overall": per_condition.get(CLEAN),
        "per_generator": per_generator,
        "per_condition": per_condition,
        "grid": grid,
        "curves": curves,
    }


def write_eval(out: str | Path, report: dict, scores: pd.DataFrame) -> tuple[Path, Path]:
    """``eval.json`` + ``scores.parquet`` in ``out``, written under temporary names and renamed when
    both are complete (the report last), so a failure leaves no half-written output."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path, table_path = out / EVAL_FILE, out / SCORES_FILE
    tmp_report, tmp_table = (p.with_name(f".{p.name}.partial") for p in (report_path, table_path))
    try:
        scores.to_parquet(tmp_table, index=False)
        tmp_report.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    except BaseException:
        for p in (tmp_report, tmp_table):
            p.unlink(missing_ok=True)
        raise
    tmp_table.replace(table_path)
    tmp_report.replace(report_path)
    return report_path, table_path


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def format_eval(report: dict) -> str:
    """A compact table: one row per condition, EER% [CI] / minDCF / Cllr of all spoofs, then the EER%
    of each generator."""
    gens = report["generators"]
    head = f"{'condition':<20}{'EER%':>6} {'95% CI':<13}{'minDCF':>7}{'Cllr':>7}" + "".join(
        f"{g[:10]:>11}" for g in gens
    )
    lines = [head]
    for cond in report["conditions"]:
        m = report["per_condition"][cond]
        ci = m["eer_ci"]
        ci_s = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
        cllr = f"{m['cllr']:7.3f}" if m["cllr"] is not None else "    n/a"
        row = f"{cond:<20}{_pct(m['eer']):>6} {ci_s:<13}{m['min_dcf']:7.3f}{cllr}"
        row += "".join(f"{_pct(report['grid'][cond][g]['eer']):>11}" for g in gens)
        lines.append(row)
    return "\n".join(lines)


def evaluate(
    detector,
    clips: Sequence[Clip],
    audio: Sequence[tuple[np.ndarray, int]],
    attacks: Sequence = (),
    bootstrap: int = 1000,
    seed: int = 0,
    conditions: dict[str, list] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Score ``clips`` under clean audio and each attack (or under ``conditions`` already degraded)
    and summarise; returns (the metric sections of ``eval.json``, the scores table)."""
    t0 = time.perf_counter()
    conditions = conditions if conditions is not None else degrade(clips, audio, attacks)
    t_degrade = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_conditions(detector, clips, conditions)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = summarize(scores, bootstrap, seed, stored_threshold(detector))
    report["seconds"] = {
        "degrade": round(t_degrade, 3),
        "score": round(t_score, 3),
        "metrics": round(time.perf_counter() - t0, 3),
    }
    return report, scores


def eval_report(
    model_path: str | Path,
    detector,
    description: dict,
    attacks: Sequence,
    bootstrap: int,
    seed: int,
    metrics: dict,
    **extra,
) -> dict:
    """``eval.json``: the model, its split, the degradations and the metric sections of :func:`evaluate`;
    ``extra`` keys (e.g. ``inputs``) are appended."""
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "model": {
            "path": str(model_path),
            "kind": detector.kind,
            "name": detector.name,
            "controls": detector.controls.to_dict(),
            "eer_threshold": stored_threshold(detector),
        },
        "split": {
            **{k: description.get(k) for k in ("seed", "test_fraction", "holdout_generator", "counts")},
            "test_speakers": description.get("test_speakers"),
        },
        "degradations": {a.name: {"family": a.family, **a.params} for a in attacks},
        "bootstrap": {"n": bootstrap, "seed": seed},
        **metrics,
        "definitions": DEFINITIONS,
        **extra,
    }
