"""The voice-authentication bypass report: thresholds, error rates, SASV gating, intervals.

Thresholds are calibrated on bona fide trials only, never on spoofs and never a fixed cosine
constant, so they are what a deployer without access to the attack would set:

- ``t_eer``: the threshold at the equal error rate of target vs non-target trials;
- ``t_far``: the threshold where the false-acceptance rate on non-target trials is at most
  ``far`` (default 1 %) (``detection.metrics.threshold_at_far``).

A trial is accepted when ``score >= threshold``. At each threshold the report gives the false
rejection rate of targets (FRR), the false acceptance rate of non-targets (FAR) and the **spoof
acceptance rate** (share of spoof trials accepted: how often a clone passes the voice-print
check). The equal error rates are the SASV 2022 metrics:

- SV-EER: target vs non-target;  SPF-EER: target vs spoof;
- SASV-EER: target vs (non-target and spoof) on one SASV score.

**SASV score.** SASV 2022's baseline B1 sums the ASV and CM scores; our ASV cosine and a CM's
log-likelihood ratio live on unrelated scales, so a sum would be dominated by whichever is wider.
We use the *gate* (a cascade: the CM decides first, then the ASV, the tandem set-up assumed by
the t-DCF, Kinnunen et al. 2020, arXiv:1804.09618)::

    sasv(trial) = cosine(trial)   if cm_score(utterance) >= cm_threshold   (CM says bona fide)
                  GATED_SCORE     otherwise

``GATED_SCORE = -2`` lies below every possible cosine, so a trial the CM rejects is rejected at
every ASV threshold (it plays the role of minus infinity while keeping the EER code's finite-score
check). The CM threshold is the CM's own EER threshold, stored with the detector by
``valle detect train`` (``training.eer_threshold``: fixed on its training split, from out-of-fold
scores by default; see ``evaluation.cli.detect``); when the detector carries none it is computed as
the CM EER over this run's bona fide test utterances vs its spoofs, and the report says so (that
threshold has seen the test data).
With a CM the report adds, at each ASV threshold, spoof acceptance after gating (the clone
passes the ASV *and* the CM takes it for bona fide), target acceptance after gating (the false
rejections the CM adds) and the SV/SPF/SASV EERs of the gated score.

``cm_scores`` are keyed by *utterance* id (a non-target utterance appears in one trial per
claimed speaker but is one recording, with one CM score). CM scores follow the project
convention: higher = more bona fide.

Confidence intervals are percentile bootstrap intervals that redo the whole computation
(thresholds included) on each resample. With at least ``min_bootstrap_speakers`` target speakers
the resampling unit is the claimed speaker (all its target, non-target and spoof trials move
together, because trials of one speaker share an enrolment and are not independent); with fewer,
trials are resampled within each kind, and the interval is then too narrow by the neglected
speaker correlation. The report names the unit used. (``detection.metrics.bootstrap_ci`` resamples
two score classes for one metric; here three trial kinds and the thresholds move together.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from detection.metrics import compute_eer, compute_min_adcf, rates_at, threshold_at_far
from evaluation.bypass.trials import KINDS, AsvConfig, TrialSet

GATED_SCORE = -2.0  # below every cosine in [-1, 1]: a CM-rejected trial is rejected at any threshold
REPORT_FORMAT = "valle-asv-report"
REPORT_VERSION = 1


# --------------------------------------------------------------------------- metrics


def _cm_accept(trials: TrialSet, cm_scores: Mapping[str, float] | None, cm_threshold: float | None):
    """``[n]`` bool: the CM takes the trial's recording for bona fide; None without a CM."""
    if cm_scores is None and cm_threshold is None:
        return None, None
    if cm_scores is None or cm_threshold is None:
        raise ValueError("cm_scores and cm_threshold go together: give both or neither")
    if not math.isfinite(float(cm_threshold)):
        raise ValueError(f"cm_threshold must be finite, got {cm_threshold}")
    missing = sorted({t.utterance for t in trials if t.utterance not in cm_scores})
    if missing:
        raise ValueError(f"cm_scores has no score for {len(missing)} trial utterance(s): {missing[:10]}")
    scores = np.array([float(cm_scores[t.utterance]) for t in trials], dtype=np.float64)
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ValueError(f"cm_scores: {bad} trial score(s) are NaN or infinite")
    return scores, scores >= float(cm_threshold)


def _metrics(cos: np.ndarray, kind: np.ndarray, cm_ok: np.ndarray | None, far: float) -> dict[str, float]:
    """Every number of the report for one set of trials, as a flat dict (NaN = not defined)."""
    nan = float("nan")
    tgt, non, spf = (cos[kind == k] for k in KINDS)
    m: dict[str, float] = {}
    m["sv_eer"], m["t_eer"] = map(float, compute_eer(tgt, non))
    m["t_far"] = float(threshold_at_far(non, far))
    m["spf_eer"] = float(compute_eer(tgt, spf)[0]) if spf.size else nan
    m["sasv_eer"] = float(compute_eer(tgt, np.concatenate([non, spf]))[0]) if spf.size else nan
    m["min_adcf"] = float(compute_min_adcf(tgt, non, spf)[0]) if spf.size else nan
    gated = None if cm_ok is None else np.where(cm_ok, cos, GATED_SCORE)
    if gated is not None:
        g_tgt, g_non, g_spf = (gated[kind == k] for k in KINDS)
        m["gated.sv_eer"] = float(compute_eer(g_tgt, g_non)[0])
        m["gated.spf_eer"] = float(compute_eer(g_tgt, g_spf)[0]) if spf.size else nan
        m["gated.sasv_eer"] = (
            float(compute_eer(g_tgt, np.concatenate([g_non, g_spf]))[0]) if spf.size else nan
        )
        m["gated.min_adcf"] = float(compute_min_adcf(g_tgt, g_non, g_spf)[0]) if spf.size else nan
    for op in ("eer", "far"):
        t = m[f"t_{op}"]
        m[f"{op}.frr"], m[f"{op}.far"] = map(float, rates_at(tgt, non, t))
        m[f"{op}.spoof_acceptance"] = float(rates_at(tgt, spf, t)[1]) if spf.size else nan
        if gated is not None:
            m[f"{op}.gated_frr"], m[f"{op}.gated_far"] = map(float, rates_at(g_tgt, g_non, t))
            m[f"{op}.gated_spoof_acceptance"] = float(rates_at(g_tgt, g_spf, t)[1]) if spf.size else nan
            m[f"{op}.cm_added_frr"] = m[f"{op}.gated_frr"] - m[f"{op}.frr"]
    return m


def _bootstrap(
    cos: np.ndarray, kind: np.ndarray, speaker: np.ndarray, cm_ok: np.ndarray | None, config: AsvConfig
) -> dict:
    """Percentile intervals of every metric; see the module docstring for the resampling unit."""
    rng = np.random.default_rng(config.seed)
    speakers = np.unique(speaker[kind == "target"])
    by_speaker = len(speakers) >= config.min_bootstrap_speakers
    if by_speaker:
        clusters = [np.flatnonzero(speaker == s) for s in speakers]
    else:
        strata = [np.flatnonzero(kind == k) for k in KINDS]
    draws: dict[str, list[float]] = {}
    for _ in range(config.bootstrap):
        if by_speaker:
            idx = np.concatenate([clusters[i] for i in rng.integers(0, len(clusters), len(clusters))])
        else:
            idx = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata if len(s)])
        sub_ok = None if cm_ok is None else cm_ok[idx]
        if not np.any(kind[idx] == "nontarget"):  # possible only with speaker resampling of one target
            continue
        for key, value in _metrics(cos[idx], kind[idx], sub_ok, config.far).items():
            draws.setdefault(key, []).append(value)
    alpha = (1.0 - config.confidence) / 2.0
    intervals = {}
    for key, values in draws.items():
        v = np.asarray(values)
        v = v[np.isfinite(v)]
        intervals[key] = [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if v.size else None
    return {
        "unit": "speaker" if by_speaker else "trial",
        "n": config.bootstrap,
        "confidence": config.confidence,
        "seed": config.seed,
        "intervals": intervals,
    }


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _rate(x: np.ndarray, t: float) -> float | None:
    # per-speaker breakdowns: acceptance = share of scores >= t, the rule rates_at applies
    return float(np.mean(x >= t)) if x.size else None


def asv_report(
    trials: TrialSet,
    cm_scores: Mapping[str, float] | None = None,
    cm_threshold: float | None = None,
    cm_threshold_source: str = "given",
) -> dict:
    """The ASV bypass report (a JSON-able dict); see the module docstring for every definition.

    ``cm_scores``: utterance id -> CM score (higher = bona fide), for every trial utterance;
    ``cm_threshold``: the CM's decision threshold (its EER threshold); ``cm_threshold_source``
    says where it came from.
    """

    config = trials.config
    cos = np.array([t.cosine for t in trials], dtype=np.float64)
    kind = np.array([t.kind for t in trials])
    speaker = np.array([t.speaker for t in trials])
    cm_score, cm_ok = _cm_accept(trials, cm_scores, cm_threshold)
    m = _metrics(cos, kind, cm_ok, config.far)
    ci = _bootstrap(cos, kind, speaker, cm_ok, config) if config.bootstrap else None

    def op(name: str) -> dict:
        entry = {
            "threshold": m[f"t_{name}"],
            "frr": m[f"{name}.frr"],
            "far": m[f"{name}.far"],
            "spoof_acceptance": _none_if_nan(m[f"{name}.spoof_acceptance"]),
        }
        if cm_ok is not None:
            entry["gated"] = {
                "frr": m[f"{name}.gated_frr"],
                "far": m[f"{name}.gated_far"],
                "spoof_acceptance": _none_if_nan(m[f"{name}.gated_spoof_acceptance"]),
                "cm_added_frr": m[f"{name}.cm_added_frr"],
            }
        return entry

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "sv_eer": m["sv_eer"],
        "t_eer": m["t_eer"],
        "t_far": m["t_far"],
        "far_target": config.far,
        "spf_eer": _none_if_nan(m["spf_eer"]),
        "sasv_eer": _none_if_nan(m["sasv_eer"]),
        "min_adcf": _none_if_nan(m["min_adcf"]),
        "operating_points": {"eer": op("eer"), "far": op("far")},
        "cm": None,
        "gated": None,
    }
    if cm_ok is not None:
        assert cm_score is not None
        # the CM on its own, over distinct recordings (a non-target recording is in several trials)
        first = {}
        for i, t in enumerate(trials):
            first.setdefault(t.utterance, i)
        uniq = np.array(sorted(first.values()))
        bona = cm_score[uniq][kind[uniq] != "spoof"]
        spoof = cm_score[uniq][kind[uniq] == "spoof"]
        report["cm"] = {
            "threshold": float(cm_threshold),
            "threshold_source": cm_threshold_source,
            "eer_on_this_run": float(compute_eer(bona, spoof)[0]) if spoof.size else None,
            "bonafide_rejection_rate": float(np.mean(bona < cm_threshold)),
            "spoof_acceptance_rate": float(np.mean(spoof >= cm_threshold)) if spoof.size else None,
            "n_bonafide_utterances": int(bona.size),
            "n_spoof_utterances": int(spoof.size),
        }
        report["gated"] = {
            "score": f"cosine if cm_score >= cm_threshold else {GATED_SCORE} (below every cosine)",
            "sv_eer": m["gated.sv_eer"],
            "spf_eer": _none_if_nan(m["gated.spf_eer"]),
            "sasv_eer": _none_if_nan(m["gated.sasv_eer"]),
            "min_adcf": _none_if_nan(m["gated.min_adcf"]),
        }
    per_speaker = {}
    for spk in sorted(trials.enrolment_ids):
        mine = speaker == spk
        tgt, non, spf = (cos[mine & (kind == k)] for k in KINDS)
        entry = {
            "n_target": int(tgt.size),
            "n_nontarget": int(non.size),
            "n_spoof": int(spf.size),
            "mean_cosine_target": float(tgt.mean()),
            "mean_cosine_spoof": float(spf.mean()) if spf.size else None,
        }
        for name in ("eer", "far"):
            t = m[f"t_{name}"]
            entry[f"frr@{name}"] = 1.0 - _rate(tgt, t)
            entry[f"spoof_acceptance@{name}"] = _rate(spf, t)
            if cm_ok is not None:
                ok = cm_ok[mine & (kind == "spoof")]
                entry[f"gated_spoof_acceptance@{name}"] = _rate(np.where(ok, spf, GATED_SCORE), t)
        per_speaker[spk] = entry
    report["per_speaker"] = per_speaker
    report["counts"] = {
        "target_speakers": len(trials.enrolment_ids),
        "speakers": len({t.true_speaker for t in trials if t.true_speaker is not None}),
        "enrolment_utterances": sum(len(v) for v in trials.enrolment_ids.values()),
        **{k: int(np.sum(kind == k)) for k in KINDS},
        "skipped_speakers": len(trials.skipped_speakers),
        "skipped_spoofs": len(trials.skipped_spoofs),
    }
    report["skipped_speakers"] = dict(trials.skipped_speakers)
    report["skipped_spoofs"] = dict(trials.skipped_spoofs)
    report["enrolment"] = {spk: list(ids) for spk, ids in trials.enrolment_ids.items()}
    report["ci"] = ci
    report["encoder"] = trials.encoder_card
    report["config"] = asdict(config)
    report["definitions"] = {
        "decision": "accept when score >= threshold",
        "t_eer": "EER threshold of target vs non-target cosines (bona fide trials only)",
        "t_far": f"threshold with FAR <= {config.far} on non-target trials (bona fide only)",
        "spoof_acceptance": "share of spoof trials with cosine >= threshold",
        "sv_eer": "EER target vs non-target (SASV 2022)",
        "spf_eer": "EER target vs spoof (SASV 2022)",
        "sasv_eer": "EER target vs non-target + spoof (SASV 2022); on the cosine alone here, gated below",
        "min_adcf": "normalised minimum a-DCF of the SASV score (Shim et al., Odyssey 2024; ASVspoof 5 "
        "Track 2): costs C_miss 1, C_fa,asv 10, C_fa,cm 20, priors target 0.9, non-target 0.05, spoof "
        "0.05 (detection.metrics.compute_min_adcf)",
        "gated": "trial accepted only if the CM accepts the recording (cm_score >= cm_threshold) and "
        "cosine >= threshold",
        "reference": "Jung et al., SASV 2022: the first spoofing-aware speaker verification challenge, "
        "Interspeech 2022, arXiv:2203.14732",
    }
    report["notes"] = dict(trials.notes)
    return report


def trial_table(trials: TrialSet, report: dict, cm_scores: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per trial: ids, kind, cosine, CM score and the accept decisions at the report's
    thresholds (for score-distribution plots)."""
    cm = report.get("cm")
    rows = []
    for t in trials:
        cm_score = float(cm_scores[t.utterance]) if cm is not None and cm_scores is not None else np.nan
        cm_ok = bool(cm_score >= cm["threshold"]) if cm is not None else None
        row = {
            "id": t.id,
            "utterance": t.utterance,
            "speaker": t.speaker,
            "true_speaker": t.true_speaker,
            "kind": t.kind,
            "cosine": t.cosine,
            "cm_score": cm_score,
            "cm_accept": cm_ok,
            "sasv_score": (t.cosine if cm_ok else GATED_SCORE) if cm is not None else np.nan,
        }
        for name in ("eer", "far"):
            accepted = t.cosine >= report[f"t_{name}"]
            row[f"accepted_{name}"] = accepted
            row[f"accepted_gated_{name}"] = (accepted and cm_ok) if cm is not None else None
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("cm_accept", "accepted_gated_eer", "accepted_gated_far"):
        df[col] = df[col].astype("boolean")
    return df
