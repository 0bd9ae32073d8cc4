"""CM metrics against answers known in closed form or worked out by hand (see each test's comments)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from detection.metrics import (
    CMReport,
    bootstrap_ci,
    cm_report,
    compute_cllr,
    compute_eer,
    compute_min_adcf,
    compute_min_cllr,
    compute_min_dcf,
    det_points,
    rates_at,
    roc_points,
    threshold_at_far,
)

# Hand-worked set without ties. Thresholds ascending (accept score >= t), the last one "reject all":
#   t      1    2    3    3.5  4    5    6    >6
#   miss   0    0    0    1/3  1/3  2/3  1    1
#   fa     1   3/4  1/2   1/2  1/4  1/4  1/4  0
BONA_A = [3.0, 4.0, 5.0]
SPOOF_A = [1.0, 2.0, 3.5, 6.0]

# Hand-worked set with ties: two bona fide and three spoof trials all score 2.
#   t      0    1    2    3    >3
#   miss   0    0   1/4  3/4   1
#   fa     1   3/4  3/4   0    0
BONA_T = [1.0, 2.0, 2.0, 3.0]
SPOOF_T = [0.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("d", [1.0, 2.0, 3.0])
def test_eer_of_two_unit_gaussians_is_phi_of_minus_half_separation(d):
    rng = np.random.default_rng(int(d))
    bona = rng.normal(d / 2, 1.0, 100_000)
    spoof = rng.normal(-d / 2, 1.0, 100_000)
    expected = norm.cdf(-d / 2)  # the crossing is at 0 by symmetry; P_miss = P_fa = Phi(-d/2)
    for method in ("asvspoof", "interpolate"):
        eer, thr = compute_eer(bona, spoof, method=method)
        assert eer == pytest.approx(expected, abs=0.005), method
        assert abs(thr) < 0.05, method


def test_identical_and_separable_classes():
    rng = np.random.default_rng(5)
    # independent draws from one distribution: chance level
    eer, _ = compute_eer(rng.normal(size=20_000), rng.normal(size=20_000))
    assert eer == pytest.approx(0.5, abs=0.01)
    # the very same scores in both classes: every threshold has miss = 1 - fa, so exactly 0.5 and a
    # normalised minDCF of exactly 1 (the best is the trivial "accept all", cost C_fa * P_spoof)
    x = rng.normal(size=500)
    assert compute_eer(x, x)[0] == 0.5
    assert compute_min_dcf(x, x) == (1.0, float(x.min()))
    # perfectly separable: zero error, and the returned thresholds really separate the classes
    bona, spoof = rng.uniform(1, 2, 300), rng.uniform(-2, 0.5, 300)
    eer, eer_thr = compute_eer(bona, spoof)
    dcf, dcf_thr = compute_min_dcf(bona, spoof)
    assert (eer, dcf) == (0.0, 0.0)
    assert rates_at(bona, spoof, eer_thr) == (0.0, 0.0)
    assert rates_at(bona, spoof, dcf_thr) == (0.0, 0.0)
    assert compute_min_cllr(bona, spoof) == 0.0
    # perfectly reversed: every bona fide below every spoof is the worst possible CM
    assert compute_eer([0.0, 1.0], [2.0, 3.0]) == (1.0, 2.0)


def test_roc_points_by_hand_without_and_with_ties():
    thr, miss, fa = roc_points(BONA_A, SPOOF_A)
    np.testing.assert_allclose(thr[:-1], [1, 2, 3, 3.5, 4, 5, 6])
    assert thr[-1] == np.nextafter(6.0, np.inf)
    np.testing.assert_allclose(miss, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(fa, [1, 0.75, 0.5, 0.5, 0.25, 0.25, 0.25, 0])
    # tied scores move together: one point per distinct score
    thr, miss, fa = roc_points(BONA_T, SPOOF_T)
    np.testing.assert_allclose(thr[:-1], [0, 1, 2, 3])
    np.testing.assert_allclose(miss, [0, 0, 0.25, 0.75, 1])
    np.testing.assert_allclose(fa, [1, 0.75, 0.75, 0, 0])


def test_eer_by_hand():
    # closest point is t=4 (|1/3 - 1/4| = 1/12 beats 1/6 at t=3.5): EER = (1/3 + 1/4)/2 = 7/24
    assert compute_eer(BONA_A, SPOOF_A) == (pytest.approx(7 / 24), 4.0)
    # interpolation between t=3.5 (1/3, 1/2) and t=4 (1/3, 1/4) meets miss = fa at 1/3, 2/3 of the way
    eer, thr = compute_eer(BONA_A, SPOOF_A, method="interpolate")
    assert eer == pytest.approx(1 / 3)
    assert thr == pytest.approx(3.5 + (2 / 3) * 0.5)
    # ties, as the reference cuts them: sorted 0s 1b 2b 2b 2s 2s 2s 3b, one point after every trial;
    # after both tied bona fide trials (miss 3/4) the three tied spoof trials are still accepted (fa 3/4)
    assert compute_eer(BONA_T, SPOOF_T) == (pytest.approx(0.75), 2.0)
    # interpolation between t=2 (d=-1/2) and t=3 (d=+3/4): alpha = 0.4, miss = fa = 0.45
    eer, thr = compute_eer(BONA_T, SPOOF_T, method="interpolate")
    assert (eer, thr) == (pytest.approx(0.45), pytest.approx(2.4))
    # a point on the crossing: both rules give it exactly
    assert compute_eer([0.2, 0.6, 0.7, 0.9], [0.1, 0.3, 0.5, 0.8]) == (0.25, 0.6)
    assert compute_eer([0.2, 0.6, 0.7, 0.9], [0.1, 0.3, 0.5, 0.8], method="interpolate") == (0.25, 0.6)
    with pytest.raises(ValueError, match="unknown EER method"):
        compute_eer(BONA_A, SPOOF_A, method="rocch")


def reference_compute_eer(target_scores, nontarget_scores):
    """A direct transcription of ASVspoof's reference ``compute_det_curve`` + ``compute_eer``
    (ASVspoof 2019/2021 ``eval_metrics.py``), returning the chosen index too."""
    n_scores = target_scores.size + nontarget_scores.size
    all_scores = np.concatenate((target_scores, nontarget_scores))
    labels = np.concatenate((np.ones(target_scores.size), np.zeros(nontarget_scores.size)))
    indices = np.argsort(all_scores, kind="mergesort")
    labels = labels[indices]
    tar_trial_sums = np.cumsum(labels)
    nontarget_trial_sums = nontarget_scores.size - (np.arange(1, n_scores + 1) - tar_trial_sums)
    frr = np.concatenate((np.atleast_1d(0), tar_trial_sums / target_scores.size))
    far = np.concatenate((np.atleast_1d(1), nontarget_trial_sums / nontarget_scores.size))
    thresholds = np.concatenate((np.atleast_1d(all_scores[indices[0]] - 0.001), all_scores[indices]))
    abs_diffs = np.abs(frr - far)
    min_index = np.argmin(abs_diffs)
    eer = np.mean((frr[min_index], far[min_index]))
    return eer, thresholds, min_index


@pytest.mark.parametrize("tied", [False, True])
def test_eer_equals_the_asvspoof_reference_on_random_and_tiny_sets(tied):
    """Exactly equal (==, not approx) on 2,000 random sets of 1-60 trials per class, half of them
    drawn from a few integer scores so that ties are everywhere; the threshold is the reference's
    cut in this module's convention (the lowest accepted score)."""
    rng = np.random.default_rng(int(tied))
    for _ in range(1000):
        nb, ns = rng.integers(1, 61, 2)
        if tied:
            bona, spoof = rng.integers(0, 4, nb).astype(float), rng.integers(-1, 3, ns).astype(float)
        else:
            bona, spoof = rng.normal(0.5, 1, nb), rng.normal(-0.5, 1, ns)
        ref_eer, ref_thr, k = reference_compute_eer(bona, spoof)
        eer, thr = compute_eer(bona, spoof)
        assert eer == ref_eer
        pooled = np.concatenate([bona, spoof])
        assert thr == (ref_thr[k + 1] if k + 1 < ref_thr.size else np.nextafter(pooled.max(), np.inf))


def reference_min_adcf(
    trg, nontrg, spf, p_spf=0.05, p_non=0.05, p_trg=0.9, c_miss=1, c_fa_asv=10, c_fa_cm=20
):
    """A direct transcription of the a-DCF reference (shimhz/a_DCF: compute_a_det_curve, normalize,
    argmin), returning the chosen index and the reference's thresholds too."""
    all_scores = np.concatenate((trg, nontrg, spf))
    labels = np.concatenate((np.ones_like(trg), np.zeros_like(nontrg), np.ones_like(spf) + 1))
    indices = np.argsort(all_scores, kind="mergesort")
    labels = labels[indices]
    scores_sorted = all_scores[indices]
    fp_nontrg, fp_spf, fn = len(nontrg), len(spf), 0
    far_asvs, far_cms, frrs, thresh = [1.0], [1.0], [0.0], [float(np.min(scores_sorted)) - 1e-8]
    for sco, lab in zip(scores_sorted, labels, strict=True):
        if lab == 0:
            fp_nontrg -= 1
        elif lab == 1:
            fn += 1
        else:
            fp_spf -= 1
        far_asvs.append(fp_nontrg / len(nontrg))
        far_cms.append(fp_spf / len(spf))
        frrs.append(fn / len(trg))
        thresh.append(sco)
    a_dcfs = (
        np.array([c_miss * p_trg]) * np.array(frrs)
        + np.array([c_fa_asv * p_non]) * np.array(far_asvs)
        + np.array([c_fa_cm * p_spf]) * np.array(far_cms)
    )
    normed = a_dcfs / min(np.array([c_fa_asv * p_non + c_fa_cm * p_spf]), np.array([c_miss * p_trg]))
    i = np.argmin(normed)
    return normed[i], thresh, i


@pytest.mark.parametrize("tied", [False, True])
def test_min_adcf_equals_the_reference_on_random_and_tiny_sets(tied):
    rng = np.random.default_rng(10 + int(tied))
    for _ in range(300):
        n = rng.integers(1, 25, 3)
        if tied:
            tgt, non, spf = (
                rng.integers(lo, lo + 4, k).astype(float) for lo, k in zip((1, -1, 0), n, strict=True)
            )
        else:
            tgt, non, spf = rng.normal(1, 1, n[0]), rng.normal(-1, 1, n[1]), rng.normal(0, 1, n[2])
        ref, ref_thr, k = reference_min_adcf(tgt, non, spf)
        got, thr = compute_min_adcf(tgt, non, spf)
        assert got == pytest.approx(float(ref[0]) if np.ndim(ref) else float(ref), abs=1e-12)
        pooled = np.concatenate([tgt, non, spf])
        assert thr == (ref_thr[k + 1] if k + 1 < len(ref_thr) else np.nextafter(pooled.max(), np.inf))


def test_min_adcf_by_hand():
    # a perfect SASV system costs nothing; one that accepts everything costs the trivial system's 1.0
    assert compute_min_adcf([3.0, 4.0], [0.0, 1.0], [1.5, 2.0])[0] == 0.0
    # all scores equal: only "accept all" (0.5 + 1.0 = 1.5) or "reject all" (0.9) exist; 0.9 / 0.9 = 1
    assert compute_min_adcf([1.0], [1.0], [1.0]) == (1.0, np.nextafter(1.0, np.inf))


def test_ties_do_not_depend_on_input_order():
    # the reference's stable sort puts bona fide before spoof among ties, whatever the order in a class
    rng = np.random.default_rng(0)
    bona = rng.integers(0, 5, 40).astype(float)
    spoof = rng.integers(-2, 3, 40).astype(float)
    ref = (compute_eer(bona, spoof), compute_min_dcf(bona, spoof), compute_min_cllr(bona, spoof))
    for _ in range(3):
        b, s = rng.permutation(bona), rng.permutation(spoof)
        assert (compute_eer(b, s), compute_min_dcf(b, s), compute_min_cllr(b, s)) == ref


def test_min_dcf_by_hand():
    # ASVspoof 5 costs: DCF = 0.95 miss + 0.5 fa, normalised by 0.5 -> 1.9 miss + fa; rows of BONA_A:
    #   1.0, 0.75, 0.5, 1.133, 0.883, 1.517, 2.15, 1.9 -> 0.5 at t=3
    assert compute_min_dcf(BONA_A, SPOOF_A) == (pytest.approx(0.5), 3.0)
    # P_spoof 0.5, C_fa 2: (0.5 miss + fa)/0.5 = miss + 2 fa:
    #   2, 1.5, 1, 1.333, 0.833, 1.167, 1.5, 1 -> 5/6 at t=4
    assert compute_min_dcf(BONA_A, SPOOF_A, p_spoof=0.5, c_miss=1.0, c_fa=2.0) == (pytest.approx(5 / 6), 4.0)
    # ties, default costs (1.9 miss + fa): 1, 0.75, 1.225, 2.175, 1.9 -> 0.75 at t=1
    assert compute_min_dcf(BONA_T, SPOOF_T) == (pytest.approx(0.75), 1.0)
    with pytest.raises(ValueError, match="p_spoof"):
        compute_min_dcf(BONA_A, SPOOF_A, p_spoof=1.0)


def test_eer_and_min_dcf_agree_with_brute_force_over_thresholds():
    rng = np.random.default_rng(3)
    bona, spoof = rng.normal(0.7, 1, 150), rng.normal(-0.7, 1.3, 170)
    cands = np.concatenate([np.sort(np.concatenate([bona, spoof])), [np.inf]])
    rates = np.array([rates_at(bona, spoof, t) for t in cands])
    i = np.argmin(np.abs(rates[:, 0] - rates[:, 1]))
    eer, thr = compute_eer(bona, spoof)
    assert eer == pytest.approx(rates[i].mean())
    assert rates_at(bona, spoof, thr) == pytest.approx(tuple(rates[i]))
    dcf = (0.95 * rates[:, 0] + 0.5 * rates[:, 1]) / 0.5
    assert compute_min_dcf(bona, spoof)[0] == pytest.approx(dcf.min())
    # no ties: the interpolated EER is within half a step, 1 / (2 * 150), of the closest-point EER
    assert abs(compute_eer(bona, spoof, method="interpolate")[0] - eer) <= 1 / 300 + 1e-12


def test_cllr_of_calibrated_gaussian_llrs():
    # bona ~ N(mu, 2mu), spoof ~ N(-mu, 2mu): log N(x; mu, 2mu) - log N(x; -mu, 2mu) = x, so x IS the LLR
    mu = 1.0
    rng = np.random.default_rng(11)
    bona = rng.normal(mu, np.sqrt(2 * mu), 40_000)
    spoof = rng.normal(-mu, np.sqrt(2 * mu), 40_000)
    # closed form: by symmetry both class terms equal E_bona[log2(1 + e^-x)]
    exact = integrate.quad(lambda x: norm.pdf(x, mu, np.sqrt(2 * mu)) * np.logaddexp(0, -x), -30, 30)[0]
    cllr, min_cllr = compute_cllr(bona, spoof), compute_min_cllr(bona, spoof)
    assert cllr == pytest.approx(exact / np.log(2), abs=0.01)
    assert 0.0 <= cllr - min_cllr < 0.01  # calibrated: almost no calibration loss
    # miscalibrated by a factor 10: same ordering (same minCllr), far worse actual Cllr
    assert compute_min_cllr(10 * bona, 10 * spoof) == pytest.approx(min_cllr, abs=1e-12)
    assert compute_cllr(10 * bona, 10 * spoof) > min_cllr + 1.0


def test_cllr_fixed_points():
    # a system that always says LLR 0 carries no information: exactly 1 bit
    assert compute_cllr(np.zeros(7), np.zeros(3)) == 1.0
    assert compute_min_cllr(np.zeros(7), np.zeros(3)) == pytest.approx(1.0, abs=1e-12)
    # confident and right: ~0; confident and wrong: huge (no overflow at |LLR| = 1000)
    assert compute_cllr([1000.0], [-1000.0]) == 0.0
    assert compute_cllr([-1000.0], [1000.0]) == pytest.approx(1000 / np.log(2))
    # one error in each class, LLR +-log 3 elsewhere: hand value (ln(4/3)+ln 4)/2/ln 2 per class mean
    b, s = [np.log(3), -np.log(3)], [-np.log(3), np.log(3)]
    per_class = (np.log(4 / 3) + np.log(4)) / 2
    assert compute_cllr(b, s) == pytest.approx(per_class / np.log(2))
    # minCllr never exceeds 1 bit (a constant LLR of 0 is one of the monotone maps)
    assert compute_min_cllr(b, s) <= 1.0 + 1e-12


def test_det_points():
    det = det_points(BONA_A, SPOOF_A)
    np.testing.assert_allclose(det["miss"], roc_points(BONA_A, SPOOF_A)[1])
    np.testing.assert_allclose(det["fa_probit"][1:3], norm.ppf([0.75, 0.5]))
    # rates 0 and 1 are clipped to 1e-6 / 1 - 1e-6, finite on the probit scale
    assert det["miss_probit"][0] == pytest.approx(norm.ppf(1e-6))
    assert det["fa_probit"][0] == pytest.approx(norm.ppf(1 - 1e-6))
    assert np.all(np.isfinite(det["miss_probit"])) and np.all(np.diff(det["miss_probit"]) >= 0)


def test_threshold_at_far_on_constructed_trials():
    rng = np.random.default_rng(7)
    nontarget = rng.normal(0, 1, 1000)
    t = threshold_at_far(nontarget, 0.01)
    assert rates_at([10.0], nontarget, t)[1] == 0.01  # exactly 10 of 1000 accepted
    # ...and it is the smallest such threshold: one float lower admits the 11th impostor
    assert rates_at([10.0], nontarget, np.nextafter(t, -np.inf))[1] > 0.01
    # FAR x n is compared in counts: 0.29 * 100 = 28.999...96 in floats must still allow 29 accepts
    hundred = rng.normal(0, 1, 100)
    assert rates_at([10.0], hundred, threshold_at_far(hundred, 0.29))[1] == 0.29
    # with ties: scores 0.1, 0.2, 0.2, 0.5, 0.9; FA at the distinct scores = 1, 0.8, 0.4, 0.2
    x = [0.1, 0.2, 0.2, 0.5, 0.9]
    assert threshold_at_far(x, 0.25) == np.nextafter(0.5, 1)  # accept only 0.9 (FA 0.2)
    assert threshold_at_far(x, 0.5) == np.nextafter(0.2, 1)  # FA 0.4; 0.2 itself would give 0.8
    assert threshold_at_far(x, 0.0) == np.nextafter(0.9, 1)  # reject all
    assert threshold_at_far(x, 1.0) == 0.1  # accept all
    with pytest.raises(ValueError, match="far"):
        threshold_at_far(x, 1.5)


def test_rates_at_by_hand():
    # accept when score >= threshold: bona fide 0.5 is accepted at t=0.5, spoof 0.5 too
    assert rates_at([0.2, 0.5, 0.9, 1.0], [0.1, 0.5, 0.6], 0.5) == (0.25, pytest.approx(2 / 3))


def test_bootstrap_ci_contains_point_narrows_and_repeats():
    rng = np.random.default_rng(2)
    small = (rng.normal(1, 1, 300), rng.normal(-1, 1, 300))
    large = (rng.normal(1, 1, 3000), rng.normal(-1, 1, 3000))
    p1, lo1, hi1 = bootstrap_ci(*small, compute_eer, n=200, seed=0)
    p2, lo2, hi2 = bootstrap_ci(*large, compute_eer, n=200, seed=0)
    assert lo1 <= p1 <= hi1 and lo2 <= p2 <= hi2
    assert lo1 < hi1 and lo2 < hi2
    assert (hi2 - lo2) < 0.6 * (hi1 - lo1)  # ~1/sqrt(10) in theory
    assert bootstrap_ci(*small, compute_eer, n=200, seed=0) == (p1, lo1, hi1)
    # a metric returning a plain float works too
    p, lo, hi = bootstrap_ci(*small, compute_cllr, n=100)
    assert p == compute_cllr(*small) and lo <= p <= hi


def test_speaker_bootstrap_is_wider_when_speakers_differ():
    # 12 speakers whose clones differ in how detectable they are (per-speaker separation 0..4): the EER
    # depends on which speakers were sampled, which the trial-level bootstrap cannot see
    rng = np.random.default_rng(1)
    seps = rng.uniform(0, 4, 12)
    bona = np.concatenate([rng.normal(d / 2, 1, 100) for d in seps])
    spoof = np.concatenate([rng.normal(-d / 2, 1, 100) for d in seps])
    spk = np.repeat([f"spk{k}" for k in range(12)], 100)
    p_t, lo_t, hi_t = bootstrap_ci(bona, spoof, compute_eer, n=200)
    p_g, lo_g, hi_g = bootstrap_ci(bona, spoof, compute_eer, n=200, groups=(spk, spk))
    assert p_t == p_g and lo_g <= p_g <= hi_g
    assert (hi_g - lo_g) > 2 * (hi_t - lo_t)
    with pytest.raises(ValueError, match="at least two speakers"):
        bootstrap_ci(bona, spoof, compute_eer, n=10, groups=(np.zeros(1200), np.zeros(1200)))
    with pytest.raises(ValueError, match="spoof speaker ids"):
        bootstrap_ci(bona, spoof, compute_eer, n=10, groups=(spk, spk[:-1]))


@pytest.mark.parametrize("fn", [compute_eer, compute_min_dcf, compute_cllr, compute_min_cllr, roc_points])
def test_bad_scores_are_named(fn):
    with pytest.raises(ValueError, match="no bona fide scores"):
        fn([], [1.0, 2.0])
    with pytest.raises(ValueError, match="no spoof scores"):
        fn([1.0, 2.0], np.array([]))
    with pytest.raises(ValueError, match="spoof scores contain 2 NaN/Inf"):
        fn([1.0, 2.0], [np.nan, 0.5, np.inf])
    with pytest.raises(ValueError, match="bona fide scores contain 1 NaN/Inf"):
        fn([1.0, -np.inf], [0.5])
    with pytest.raises(ValueError, match="1-D"):
        fn(np.ones((2, 2)), [0.5])


def test_cm_report():
    rng = np.random.default_rng(4)
    bona, spoof = rng.normal(1, 1, 400), rng.normal(-1, 1, 400)
    rep = cm_report(bona, spoof, bootstrap=200, seed=1)
    assert isinstance(rep, CMReport)
    assert (rep.eer, rep.eer_threshold) == compute_eer(bona, spoof)
    assert (rep.min_dcf, rep.min_dcf_threshold) == compute_min_dcf(bona, spoof)
    assert rep.cllr == compute_cllr(bona, spoof) and rep.min_cllr == compute_min_cllr(bona, spoof)
    assert (rep.n_bonafide, rep.n_spoof) == (400, 400)
    assert rep.eer_ci[0] <= rep.eer <= rep.eer_ci[1]
    blob = json.loads(json.dumps(rep.to_json()))
    assert blob["eer"] == rep.eer and blob["eer_ci"] == list(rep.eer_ci)
    assert blob["dcf_costs"] == {"p_spoof": 0.05, "c_miss": 1.0, "c_fa": 10.0}
    plain = cm_report(bona, spoof, llr=False, bootstrap=0)
    assert plain.cllr is None and plain.eer_ci is None and plain.to_json()["cllr"] is None
