"""Countermeasure (CM) metrics in the ASVspoof convention: EER, minDCF, Cllr, ROC/DET points, bootstrap CIs.

Score convention (all of ``detection/``): a CM score is HIGHER for BONA FIDE speech, and every metric
takes ``(bonafide_scores, spoof_scores)`` like ASVspoof's ``compute_eer(target_scores, nontarget_scores)``.
A trial is accepted as bona fide when ``score >= threshold``. Rates:

* miss rate ``P_miss(t)`` = share of bona fide trials rejected (``score < t``);
* false-alarm rate ``P_fa(t)`` = share of spoof trials accepted (``score >= t``).

The operating points are those of ``sklearn.metrics.roc_curve`` (one point per DISTINCT score, so tied
scores always move together), ordered by ascending threshold and closed at the top by a "reject all"
threshold, the next float above the highest score: the curve runs from (P_miss, P_fa) = (0, 1) to (1, 0).

Definitions and sources
-----------------------
* **EER** (``compute_eer``). The default ``method="asvspoof"`` equals the ASVspoof reference evaluation
  code (``compute_det_curve`` + ``compute_eer`` in ASVspoof 2019/2021 ``eval_metrics.py``, kept in the
  ASVspoof 5 evaluation package) on every input, ties and tiny sets included: the pooled scores
  (bona fide first, then spoof) are sorted with a stable sort, there is one operating point after
  every trial (so among tied scores the bona fide trials are rejected first), and the point where
  ``|P_miss - P_fa|`` is smallest (the first such) gives the EER, the mean of the two rates there.
  That code does NOT interpolate. The returned threshold states that cut in this module's convention
  (accept ``score >= threshold``): the lowest accepted score, which makes exactly the reference's
  decisions unless tied scores straddle the cut (then no threshold can: the reference splits a tie).
  One consequence of the reference rule: a constant score (a CM that says nothing) gets EER 1.0, not
  0.5, since every tied bona fide trial is rejected before any spoof trial.
  ``method="interpolate"`` instead interpolates linearly between the two distinct-score operating
  points (:func:`roc_points`) on either side of the crossing ``P_miss = P_fa`` (the EER of the
  piecewise-linear DET curve); its threshold is interpolated the same way and is nominal: every
  threshold strictly between two adjacent distinct scores makes the same decisions. Without ties the
  two agree when a point lies on the crossing and otherwise differ by at most half the jump of the
  step that crosses, i.e. at most 1 / (2 * smaller class size).
* **minDCF** (``compute_min_dcf``), as defined for Track 1 in the ASVspoof 5 evaluation plan (X. Wang,
  H. Delgado, H. Tak et al., "ASVspoof 5 evaluation plan", 2024) and its reference ``compute_mindcf``:
  ``DCF(t) = C_miss * (1 - P_spoof) * P_miss(t) + C_fa * P_spoof * P_fa(t)``, normalised by the cost of
  the better trivial system (accept all or reject all), ``min(C_miss * (1 - P_spoof), C_fa * P_spoof)``,
  minimised over thresholds. Defaults are the ASVspoof 5 costs P_spoof = 0.05, C_miss = 1, C_fa = 10.
  A normalised minDCF of 1 means the CM is no better than a trivial system.
* **Cllr** (``compute_cllr``), Brümmer & du Preez, "Application-independent evaluation of speaker
  detection", Computer Speech & Language 20 (2006):
  ``Cllr = 1/(2 ln 2) * [mean_bona log(1 + e^-llr) + mean_spoof log(1 + e^llr)]`` bits. Only meaningful
  when scores are log-likelihood ratios (natural log, bona fide vs spoof). A constant LLR of 0 (a system
  that says nothing) costs exactly 1 bit. ``compute_min_cllr`` is the Cllr after the best monotone
  recalibration: the pool-adjacent-violators (PAV) fit of P(bona fide | score)
  (``sklearn.isotonic.IsotonicRegression``; tied scores are pooled into one value), turned into LLRs by
  removing the empirical prior log-odds ``log(n_bona / n_spoof)``. Cllr - minCllr is the calibration loss.
* **DET points** (``det_points``): rates on the probit (normal deviate) scale, ``scipy.stats.norm.ppf``,
  with rates clipped to [1e-6, 1 - 1e-6] so that 0 and 1 stay finite.
* **Bootstrap CIs** (``bootstrap_ci``): percentile intervals. Trial-level: the two classes are resampled
  independently, each at its own size (stratified: the bona fide / spoof mix is fixed by the protocol,
  not a random quantity), via ``scipy.stats.bootstrap``. Speaker-level (``groups=``): see the function.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import bootstrap as scipy_bootstrap
from scipy.stats import norm
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_curve

# ASVspoof 5 Track 1 cost model (evaluation plan): prior of a spoof trial and the two decision costs.
ASVSPOOF5_P_SPOOF = 0.05
ASVSPOOF5_C_MISS = 1.0
ASVSPOOF5_C_FA = 10.0
ASVSPOOF5_COSTS = {"p_spoof": ASVSPOOF5_P_SPOOF, "c_miss": ASVSPOOF5_C_MISS, "c_fa": ASVSPOOF5_C_FA}
DET_CLIP = 1e-6
# a-DCF cost model of the reference implementation (github.com/shimhz/a_DCF, used by ASVspoof 5 Track 2)
ADCF_P_TARGET, ADCF_P_NONTARGET, ADCF_P_SPOOF = 0.9, 0.05, 0.05
ADCF_C_MISS, ADCF_C_FA_ASV, ADCF_C_FA_CM = 1.0, 10.0, 20.0


def _scores(values, name: str) -> np.ndarray:
    """1-D float64 copy of ``values``; ValueError naming ``name`` when empty, not 1-D, or not finite."""
    x = np.asarray(values, dtype=np.float64)
    # a column or row vector (n, 1) / (1, n) is accepted as 1-D; a scalar or a real matrix is not
    if x.ndim == 0 or sum(d > 1 for d in x.shape) > 1:
        raise ValueError(f"{name} scores must be a 1-D array, got shape {x.shape}")
    x = x.reshape(-1)
    if x.size == 0:
        raise ValueError(f"no {name} scores: the {name} class is empty")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(f"{name} scores contain {bad} NaN/Inf value(s) out of {x.size}")
    return x


def _pair(bonafide, spoof) -> tuple[np.ndarray, np.ndarray]:
    return _scores(bonafide, "bona fide"), _scores(spoof, "spoof")


def roc_points(bonafide, spoof) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All operating points of a CM, by ascending threshold.

    Args:
        bonafide: (n_bona,) scores of bona fide trials (higher = more bona fide).
        spoof: (n_spoof,) scores of spoof trials.

    Returns:
        ``(thresholds, miss, fa)``, each (k,) with k = number of distinct scores + 1. ``thresholds`` are
        the distinct scores ascending, then the next float above the highest score ("reject all");
        ``miss[i]`` = share of bona fide with score < thresholds[i]; ``fa[i]`` = share of spoof with
        score >= thresholds[i]. ``miss`` rises from 0 to 1 and ``fa`` falls from 1 to 0.
    """
    bona, spf = _pair(bonafide, spoof)
    labels = np.concatenate([np.ones(bona.size), np.zeros(spf.size)])
    # drop_intermediate=False keeps every distinct threshold: the EER's closest-point rule needs them.
    fpr, tpr, thr = roc_curve(labels, np.concatenate([bona, spf]), drop_intermediate=False)
    thr = thr.copy()
    # sklearn's first threshold is +inf ("accept nothing"); a finite equivalent keeps JSON and plots sane.
    thr[0] = np.nextafter(max(bona.max(), spf.max()), np.inf)
    return thr[::-1].copy(), (1.0 - tpr)[::-1].copy(), fpr[::-1].copy()


def compute_eer(
    bonafide, spoof, *, method: Literal["asvspoof", "interpolate"] = "asvspoof"
) -> tuple[float, float]:
    """Equal error rate and its threshold (see the module docstring for the two ``method`` rules).

    Returns:
        ``(eer, threshold)``; eer is a rate in [0, 1] (not a percentage).
    """
    if method == "asvspoof":
        bona, spf = _pair(bonafide, spoof)
        thr, (rej_bona, rej_spf) = _reference_cuts(bona, spf)
        miss = rej_bona / bona.size  # rejected bona fide
        fa = (spf.size - rej_spf) / spf.size  # accepted spoof
        k = int(np.argmin(np.abs(miss - fa)))
        return float((miss[k] + fa[k]) / 2.0), float(thr[k])
    thr, miss, fa = roc_points(bonafide, spoof)
    diff = miss - fa  # non-decreasing from -1 to +1
    if method != "interpolate":
        raise ValueError(f"unknown EER method {method!r}; use 'asvspoof' or 'interpolate'")
    k = int(np.argmax(diff >= 0))  # first point at or past the crossing; k >= 1 since diff[0] = -1
    if diff[k] == 0:
        return float(miss[k]), float(thr[k])
    alpha = -diff[k - 1] / (diff[k] - diff[k - 1])
    eer = miss[k - 1] + alpha * (miss[k] - miss[k - 1])
    return float(eer), float(thr[k - 1] + alpha * (thr[k] - thr[k - 1]))


def compute_min_dcf(
    bonafide,
    spoof,
    p_spoof: float = ASVSPOOF5_P_SPOOF,
    c_miss: float = ASVSPOOF5_C_MISS,
    c_fa: float = ASVSPOOF5_C_FA,
) -> tuple[float, float]:
    """Normalised minimum detection cost (ASVspoof 5 definition) and the threshold that attains it.

    Ties between thresholds go to the lowest one, as in the ASVspoof 5 reference loop.
    """
    if not 0.0 < p_spoof < 1.0:
        raise ValueError(f"p_spoof must be in (0, 1), got {p_spoof}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    thr, miss, fa = roc_points(bonafide, spoof)
    dcf = c_miss * (1.0 - p_spoof) * miss + c_fa * p_spoof * fa
    i = int(np.argmin(dcf))
    return float(dcf[i] / min(c_miss * (1.0 - p_spoof), c_fa * p_spoof)), float(thr[i])


def compute_min_adcf(
    target,
    nontarget,
    spoof,
    *,
    p_target: float = ADCF_P_TARGET,
    p_nontarget: float = ADCF_P_NONTARGET,
    p_spoof: float = ADCF_P_SPOOF,
    c_miss: float = ADCF_C_MISS,
    c_fa_asv: float = ADCF_C_FA_ASV,
    c_fa_cm: float = ADCF_C_FA_CM,
) -> tuple[float, float]:
    """Normalised minimum a-DCF of a spoofing-aware speaker verification (SASV) system.

    a-DCF (Shim, Jung, Kinnunen et al., "a-DCF: an architecture agnostic metric with application to
    spoofing-robust speaker verification", Odyssey 2024; the SASV metric of ASVspoof 5):

        a-DCF(t) = C_miss * p_target * P_miss(t) + C_fa,asv * p_nontarget * P_fa,non(t)
                   + C_fa,cm * p_spoof * P_fa,spoof(t)

    normalised by the better trivial system, ``min(C_miss * p_target, C_fa,asv * p_nontarget +
    C_fa,cm * p_spoof)``, and minimised over thresholds. The operating points are those of the
    reference ``compute_a_det_curve`` (one after every trial of the pooled scores, sorted stably in
    the order target, non-target, spoof), so the value equals the reference's on every input, ties
    included; the defaults are its cost model. Scores are the SASV system's (higher = accept).

    Returns:
        ``(min_adcf, threshold)``, the threshold in this module's convention (accept ``score >=
        threshold``): the lowest accepted score at the minimum.
    """
    tgt = _scores(target, "target")
    non, spf = _scores(nontarget, "non-target"), _scores(spoof, "spoof")
    thr, rejected = _reference_cuts(tgt, non, spf)
    # the reference's arithmetic, so that equal costs at two cuts round alike and the same cut wins
    miss = rejected[0] / tgt.size
    fa_non = (non.size - rejected[1]) / non.size
    fa_spf = (spf.size - rejected[2]) / spf.size
    dcf = c_miss * p_target * miss + c_fa_asv * p_nontarget * fa_non + c_fa_cm * p_spoof * fa_spf
    dcf /= min(c_fa_asv * p_nontarget + c_fa_cm * p_spoof, c_miss * p_target)
    k = int(np.argmin(dcf))
    return float(dcf[k]), float(thr[k])


def _reference_cuts(*classes: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The operating points of the ASVspoof / a-DCF reference DET code: the pooled scores sorted with
    a stable sort (so among ties, classes in argument order), one point after every trial.

    Returns ``(thresholds, rejected)``: point ``k`` rejects the ``k`` lowest trials; ``thresholds[k]``
    is its lowest accepted score (accept ``score >= threshold``; the last is above every score) and
    ``rejected[c][k]`` the number of class ``c`` trials it rejects; each ``[n + 1]``.
    """
    scores = np.concatenate(classes)
    order = np.argsort(scores, kind="mergesort")
    label = np.concatenate([np.full(c.size, i) for i, c in enumerate(classes)])[order]
    rejected = [np.concatenate([[0.0], np.cumsum(label == i)]) for i in range(len(classes))]
    thresholds = np.append(scores[order], np.nextafter(scores.max(), np.inf))
    return thresholds, rejected


def compute_cllr(bonafide_llr, spoof_llr) -> float:
    """Brümmer's log-likelihood-ratio cost in bits; scores must be natural-log LLRs (bona fide vs spoof)."""
    bona, spf = _pair(bonafide_llr, spoof_llr)
    # logaddexp(0, -x) = log(1 + e^-x) without overflow for large |x|.
    return float((np.mean(np.logaddexp(0.0, -bona)) + np.mean(np.logaddexp(0.0, spf))) / (2.0 * np.log(2.0)))


def pav_llr(bonafide, spoof) -> tuple[np.ndarray, np.ndarray]:
    """Optimally recalibrated LLRs (PAV) for the bona fide and spoof trials, in that order.

    Values may be +-inf where PAV gives a posterior of exactly 1 or 0 (only ever on the side that costs
    nothing: +inf for bona fide, -inf for spoof).
    """
    bona, spf = _pair(bonafide, spoof)
    x = np.concatenate([bona, spf])
    y = np.concatenate([np.ones(bona.size), np.zeros(spf.size)])
    post = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True).fit_transform(x, y)
    with np.errstate(divide="ignore"):
        llr = np.log(post) - np.log1p(-post) - np.log(bona.size / spf.size)
    return llr[: bona.size], llr[bona.size :]


def compute_min_cllr(bonafide, spoof) -> float:
    """Cllr after the best monotone calibration (PAV); depends only on the ordering of the scores."""
    bona_llr, spoof_llr = pav_llr(bonafide, spoof)
    # +inf bona fide / -inf spoof LLRs cost 0; logaddexp handles them exactly.
    cost = np.mean(np.logaddexp(0.0, -bona_llr)) + np.mean(np.logaddexp(0.0, spoof_llr))
    return float(cost / (2.0 * np.log(2.0)))


def det_points(bonafide, spoof) -> dict:
    """Points for a DET plot: rates and their probits (normal deviates), by ascending threshold.

    Returns:
        dict of (k,) arrays ``threshold``, ``miss``, ``fa``, ``miss_probit``, ``fa_probit``; probits use
        rates clipped to [1e-6, 1 - 1e-6]. Axis tick labels are ``norm.cdf`` of the probit values.
    """
    thr, miss, fa = roc_points(bonafide, spoof)
    return {
        "threshold": thr,
        "miss": miss,
        "fa": fa,
        "miss_probit": norm.ppf(np.clip(miss, DET_CLIP, 1.0 - DET_CLIP)),
        "fa_probit": norm.ppf(np.clip(fa, DET_CLIP, 1.0 - DET_CLIP)),
    }


def _scalar(metric: Callable, bona: np.ndarray, spf: np.ndarray) -> float:
    value = metric(bona, spf)
    return float(value[0] if isinstance(value, tuple) else value)


def bootstrap_ci(
    bonafide,
    spoof,
    metric: Callable,
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: tuple | None = None,
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``metric`` on all trials and its percentile bootstrap interval.

    Args:
        bonafide, spoof: (n_bona,), (n_spoof,) scores.
        metric: ``metric(bonafide, spoof)`` returning a float or a tuple whose first item is the value
            (so ``compute_eer`` and ``compute_min_dcf`` can be passed as they are).
        n: bootstrap replicates. seed: RNG seed (same inputs, same interval). confidence: e.g. 0.95.
        groups: ``None`` for the trial-level stratified bootstrap (each class resampled independently at
            its own size). Or ``(bonafide_speakers, spoof_speakers)``, arrays of speaker ids aligned with
            the scores, for the speaker-level (cluster) bootstrap: each replicate draws speakers with
            replacement from all speakers and takes every bona fide AND spoof trial of each draw. The two
            classes are drawn jointly because one speaker's bona fide and cloned trials share that
            speaker's voice, so their errors are correlated; trials of one speaker are not independent,
            and treating them as such gives intervals that are too narrow. Class sizes then vary between
            replicates; a replicate that happens to hold no trial of one class is drawn again.
    """
    bona, spf = _pair(bonafide, spoof)
    if n < 1:
        raise ValueError(f"n (bootstrap replicates) must be >= 1, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point = _scalar(metric, bona, spf)
    if groups is None:
        res = scipy_bootstrap(
            (bona, spf),
            lambda b, s: _scalar(metric, b, s),
            n_resamples=n,
            vectorized=False,
            paired=False,
            confidence_level=confidence,
            method="percentile",
            # the resample matrix is (batch, n_trials): bound its memory for large score sets
            batch=max(1, int(2_000_000 // (bona.size + spf.size))),
            rng=np.random.default_rng(seed),
        )
        return point, float(res.confidence_interval.low), float(res.confidence_interval.high)
    stats = _group_replicates(bona, spf, metric, groups, n, np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def _group_replicates(
    bona: np.ndarray, spf: np.ndarray, metric: Callable, groups: tuple, n: int, rng: np.random.Generator
) -> np.ndarray:
    if len(groups) != 2:
        raise ValueError("groups must be (bonafide_speakers, spoof_speakers)")
    g_bona, g_spf = (np.asarray(g) for g in groups)
    for g, x, name in ((g_bona, bona, "bona fide"), (g_spf, spf, "spoof")):
        if g.shape != x.shape:
            raise ValueError(f"{name} speaker ids: {g.size} ids for {x.size} scores")
    speakers, inverse = np.unique(np.concatenate([g_bona, g_spf]), return_inverse=True)
    if speakers.size < 2:
        raise ValueError(f"speaker-level bootstrap needs at least two speakers, got {speakers.size}")
    inv_bona, inv_spf = inverse[: bona.size], inverse[bona.size :]
    # trial indices of each speaker, per class
    by_spk_bona = [np.flatnonzero(inv_bona == k) for k in range(speakers.size)]
    by_spk_spf = [np.flatnonzero(inv_spf == k) for k in range(speakers.size)]
    stats = np.empty(n)
    done = redraws = 0
    while done < n:
        draw = rng.integers(0, speakers.size, speakers.size)
        ib = np.concatenate([by_spk_bona[k] for k in draw])
        isp = np.concatenate([by_spk_spf[k] for k in draw])
        if ib.size == 0 or isp.size == 0:
            redraws += 1
            if redraws > 100 * n:
                raise ValueError(
                    "speaker-level bootstrap: almost every draw misses a class; too few speakers"
                )
            continue
        stats[done] = _scalar(metric, bona[ib], spf[isp])
        done += 1
    return stats


def threshold_at_far(nontarget_scores, far: float) -> float:
    """Smallest threshold whose false-accept rate on ``nontarget_scores`` is <= ``far``.

    With acceptance at ``score >= t``, FA(t) = share of nontarget scores >= t. When the answer falls in a
    gap between two distinct scores ``u_k < u_(k+1)`` (reject everything up to u_k), the smallest such
    threshold is the next float above u_k, which is what is returned: it accepts exactly the same
    calibration trials as u_(k+1) but is the lenient end of the gap, so clone acceptance measured with
    it is not understated. ``far >= 1`` gives the lowest score (accept all). Used for ASV at FAR = 1%.
    """
    x = _scores(nontarget_scores, "nontarget")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    u = np.unique(x)  # ascending distinct scores
    # number of trials >= u[i] for each distinct score. Compared as counts: 1 - 990/1000 > 0.01 in floats.
    n_accepted = x.size - np.searchsorted(np.sort(x), u, side="left")
    max_accepted = int(np.floor(far * x.size + 1e-9))  # 0.29 * 100 = 28.999...96 must still allow 29
    ok = np.flatnonzero(n_accepted <= max_accepted)
    if ok.size and ok[0] == 0:
        return float(u[0])
    # the largest score that must be rejected: the one just below the first acceptable score (or the max)
    reject_up_to = u[ok[0] - 1] if ok.size else u[-1]
    return float(np.nextafter(reject_up_to, np.inf))


def rates_at(bonafide_or_target, impostor, threshold: float) -> tuple[float, float]:
    """``(miss_rate, false_accept_rate)`` at a fixed threshold (accept when ``score >= threshold``).

    The first array holds trials that should be accepted (bona fide for a CM, target for ASV), the
    second those that should be rejected (spoof, nontarget or clones).
    """
    pos, neg = _scores(bonafide_or_target, "bona fide/target"), _scores(impostor, "impostor")
    return float(np.mean(pos < threshold)), float(np.mean(neg >= threshold))


@dataclass(frozen=True)
class CMReport:
    """A CM's headline numbers; rates are in [0, 1]. ``cllr`` is None when scores are not LLRs and
    ``eer_ci`` is None when no bootstrap was run."""

    eer: float
    eer_threshold: float
    min_dcf: float
    min_dcf_threshold: float
    cllr: float | None
    min_cllr: float
    n_bonafide: int
    n_spoof: int
    eer_ci: tuple[float, float] | None
    dcf_costs: dict = field(
        default_factory=lambda: {
            "p_spoof": ASVSPOOF5_P_SPOOF,
            "c_miss": ASVSPOOF5_C_MISS,
            "c_fa": ASVSPOOF5_C_FA,
        }
    )

    def to_json(self) -> dict:
        """A JSON-serialisable dict (``json.dumps`` works on it as is)."""
        out = asdict(self)
        if self.eer_ci is not None:
            out["eer_ci"] = [float(v) for v in self.eer_ci]
        json.dumps(out, allow_nan=False)  # fail here, not in a caller's writer
        return out


def cm_report(bonafide, spoof, *, llr: bool = True, bootstrap: int = 1000, seed: int = 0) -> CMReport:
    """EER (ASVspoof rule), minDCF (ASVspoof 5 costs), Cllr (when ``llr``), minCllr and a trial-level
    bootstrap interval for the EER (``bootstrap`` replicates; 0 skips it)."""
    bona, spf = _pair(bonafide, spoof)
    eer, eer_thr = compute_eer(bona, spf)
    dcf, dcf_thr = compute_min_dcf(bona, spf)
    ci = None
    if bootstrap > 0:
        _, low, high = bootstrap_ci(bona, spf, compute_eer, n=bootstrap, seed=seed)
        ci = (low, high)
    return CMReport(
        eer=eer,
        eer_threshold=eer_thr,
        min_dcf=dcf,
        min_dcf_threshold=dcf_thr,
        cllr=compute_cllr(bona, spf) if llr else None,
        min_cllr=compute_min_cllr(bona, spf),
        n_bonafide=int(bona.size),
        n_spoof=int(spf.size),
        eer_ci=ci,
    )
