"""Voice-authentication bypass: can a cloned voice pass a speaker-embedding voice-print check, and
does a synthetic-speech detector (countermeasure, CM) in front of it stop the clone?

The automatic speaker verification (ASV) system is the usual embedding + cosine back end: every
target speaker is *enrolled* from the first ``enrol_per_speaker`` of their real utterances (sorted
by id): the embeddings are averaged and the mean is L2-normalised. A *trial* pairs one test
utterance with one claimed (enrolled) speaker and is scored by ``cos(enrolment, embedding)``.
There are three kinds of trial, as in SASV 2022 (Jung et al., "SASV 2022: The first
spoofing-aware speaker verification challenge", Interspeech 2022, arXiv:2203.14732):

``target``     a real, not enrolled utterance of the claimed speaker (should be accepted);
``nontarget``  a real utterance of another speaker (a zero-effort impostor; should be rejected);
``spoof``      a clone of the claimed speaker, made by a TTS / VC system (should be rejected).

Speakers with fewer than ``enrol_per_speaker + 1`` real utterances cannot be targets (enrolment
plus at least one target trial); they are listed in ``skipped_speakers`` and their utterances are
used as non-target (impostor) trials against every target speaker, which needs no enrolment.

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

Reading manifests / run directories, the plain-text summary, the output files and the ``valle asv``
command are in :mod:`evaluation.cli.asv`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detection.metrics import compute_eer, compute_min_adcf, rates_at, threshold_at_far
from detection.models import load_detector
from evaluation.scorers.speaker import DEFAULT_SPEAKER, load_speaker_encoder
from valle.audio import load_audio

KINDS = ("target", "nontarget", "spoof")
GATED_SCORE = -2.0  # below every cosine in [-1, 1]: a CM-rejected trial is rejected at any threshold
REPORT_FORMAT = "valle-asv-report"
REPORT_VERSION = 1
REPORT_FILE = "asv_report.json"
TRIALS_FILE = "asv_trials.parquet"
MIN_SECONDS = 0.5  # the speaker encoders' minimum input (evaluation.scorers.speaker.MIN_SECONDS)
# keys under which a saved detector may carry its own EER threshold (detector attribute or json)
CM_THRESHOLD_KEYS = ("eer_threshold", "cm_threshold")


@dataclass(frozen=True)
class AsvConfig:
    """Settings of one ASV bypass evaluation."""

    encoder: str = DEFAULT_SPEAKER  # evaluation.scorers.speaker backend: campplus | resemblyzer | ecapa
    encoder_model: str | None = None  # ecapa: local model dir or HF id in the cache
    enrol_per_speaker: int = 3  # utterances averaged (then L2-normalised) per target speaker
    far: float = 0.01  # false-acceptance rate on non-target trials that fixes t_far
    seed: int = 0  # bootstrap seed
    bootstrap: int = 1000  # bootstrap resamples for the intervals (0 = none)
    confidence: float = 0.95
    min_bootstrap_speakers: int = 5  # fewer target speakers -> resample trials, not speakers
    batch_size: int = 16  # utterances loaded and embedded at a time
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.enrol_per_speaker < 1:
            raise ValueError(f"enrol_per_speaker must be >= 1, got {self.enrol_per_speaker}")
        if not 0.0 < self.far < 1.0:
            raise ValueError(f"far must be in (0, 1), got {self.far}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Trial:
    """One verification attempt: ``utterance`` presented as ``speaker`` (the claimed target)."""

    id: str  # "<utterance>@<speaker>", unique within a trial set
    speaker: str  # claimed identity (an enrolled target speaker)
    kind: str  # target | nontarget | spoof
    utterance: str  # id of the test recording (the key of cm_scores)
    true_speaker: str | None  # who really spoke (None for a spoof: a machine did)
    embedding: np.ndarray  # [D] speaker embedding of the test recording
    cosine: float  # cos(enrolment[speaker], embedding)


@dataclass
class TrialSet:
    """The trials of one evaluation plus what could not become a trial, and why."""

    trials: list[Trial]
    enrolment_ids: dict[str, list[str]]  # target speaker -> utterance ids averaged into its voice print
    skipped_speakers: dict[str, str]  # speaker -> reason it is not a target
    skipped_spoofs: dict[str, str]  # spoof id -> reason it is not a trial
    config: AsvConfig
    encoder_card: dict | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # provenance added by run_asv / the CLI

    def __len__(self) -> int:
        return len(self.trials)

    def __iter__(self):
        return iter(self.trials)

    def scores(self, kind: str) -> np.ndarray:
        """Cosine scores ``[n]`` of the trials of one kind."""
        return np.array([t.cosine for t in self.trials if t.kind == kind], dtype=np.float64)


# --------------------------------------------------------------------------- enrolment and trials


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise ValueError(f"{what}: embedding is zero or not finite")
    return x / norms


def enrol(embeddings_by_speaker: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Voice prints: speaker -> ``[n, D]`` enrolment embeddings -> speaker -> ``[D]`` unit vector,
    the L2-normalised mean of the (L2-normalised) rows."""
    out = {}
    dim = None
    for spk, emb in embeddings_by_speaker.items():
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"speaker {spk!r}: enrolment embeddings must be [n >= 1, D], got {emb.shape}")
        if dim is not None and emb.shape[1] != dim:
            raise ValueError(f"speaker {spk!r}: embedding dimension {emb.shape[1]}, others have {dim}")
        dim = emb.shape[1]
        mean = _unit_rows(emb, f"speaker {spk!r}").mean(axis=0)
        out[spk] = _unit_rows(mean[None], f"speaker {spk!r} (mean of enrolment)")[0]
    return out


def _split(ids_by_speaker: Mapping[str, Sequence[str]], k: int) -> tuple[dict, dict, dict]:
    """(enrolment ids, test ids, skipped reasons) per speaker: the first ``k`` ids (sorted) enrol;
    a speaker needs ``k + 1`` utterances to be a target, otherwise all its utterances are tests
    (non-target trials only). ValueError with fewer than 2 speakers or no possible target."""
    if len(ids_by_speaker) < 2:
        raise ValueError(
            f"the real set has {len(ids_by_speaker)} speaker(s) ({', '.join(ids_by_speaker)}); at least 2 "
            "are needed for non-target trials (and so for any calibrated threshold)"
        )
    enrol_ids, test_ids, skipped = {}, {}, {}
    for spk in sorted(ids_by_speaker):
        ids = sorted(ids_by_speaker[spk])
        if len(ids) >= k + 1:
            enrol_ids[spk], test_ids[spk] = ids[:k], ids[k:]
        else:
            test_ids[spk] = ids
            skipped[spk] = (
                f"{len(ids)} real utterance{'s' if len(ids) != 1 else ''} < enrol_per_speaker + 1 = {k + 1}: "
                "not a target; its utterances are used as non-target trials only"
            )
    if not enrol_ids:
        counts = {spk: len(ids) for spk, ids in ids_by_speaker.items()}
        raise ValueError(
            f"no speaker has the {k + 1} real utterances a target needs (enrol_per_speaker={k} + 1 test); "
            f"utterances per speaker: {counts}"
        )
    return enrol_ids, test_ids, skipped


def _check_ids(real: Sequence, spoofs: Sequence) -> None:
    seen: dict[str, str] = {}
    dups = []
    for what, rows in (("real", real), ("spoof", spoofs)):
        for row in rows:
            uid = row[0]
            if not isinstance(uid, str) or not uid:
                raise ValueError(f"{what} utterance id must be a non-empty string, got {uid!r}")
            if not isinstance(row[1], str) or not row[1]:
                raise ValueError(f"{what} utterance {uid!r}: speaker must be a non-empty string")
            if uid in seen:
                dups.append(f"{uid!r} ({seen[uid]} and {what})")
            seen[uid] = what
    if dups:
        raise ValueError(f"duplicate utterance ids: {', '.join(dups[:10])}")


def trials_from_embeddings(
    real: Sequence[tuple[str, str, np.ndarray]],
    spoofs: Sequence[tuple[str, str, np.ndarray]],
    config: AsvConfig = AsvConfig(),
) -> tuple[dict[str, np.ndarray], TrialSet]:
    """Enrolment and trials from embeddings: ``real`` rows ``(id, speaker, embedding [D])``,
    ``spoofs`` rows ``(id, target_speaker, embedding [D])``. See the module docstring for the
    protocol. Raises ValueError when no speaker can be a target or fewer than two speakers have
    real audio (no non-target trial is then possible)."""
    _check_ids(real, spoofs)
    if not real:
        raise ValueError("no real utterances: the ASV needs real speech to enrol and calibrate")
    emb = {uid: np.asarray(e, dtype=np.float64) for uid, _, e in [*real, *spoofs]}
    dims = {e.shape for e in emb.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise ValueError(f"embeddings must all be [D] vectors of one size, got shapes {sorted(dims)}")
    ids_by_speaker: dict[str, list[str]] = {}
    for uid, spk, _ in real:
        ids_by_speaker.setdefault(spk, []).append(uid)
    enrol_ids, test_ids, skipped = _split(ids_by_speaker, config.enrol_per_speaker)
    prints = enrol({spk: np.stack([emb[u] for u in ids]) for spk, ids in enrol_ids.items()})

    unit = {uid: _unit_rows(e[None], f"utterance {uid!r}")[0] for uid, e in emb.items()}

    def trial(uid: str, claimed: str, kind: str, true_speaker: str | None) -> Trial:
        cos = float(prints[claimed] @ unit[uid])  # both unit vectors
        return Trial(f"{uid}@{claimed}", claimed, kind, uid, true_speaker, emb[uid], cos)

    trials = []
    for spk in sorted(enrol_ids):
        trials += [trial(u, spk, "target", spk) for u in test_ids[spk]]
        for other in sorted(test_ids):
            if other != spk:
                trials += [trial(u, spk, "nontarget", other) for u in test_ids[other]]
    skipped_spoofs = {}
    for uid, target, _ in sorted(spoofs, key=lambda r: r[0]):
        if target in prints:
            trials.append(trial(uid, target, "spoof", None))
        elif target in skipped:
            skipped_spoofs[uid] = f"target speaker {target!r} is not enrolled ({skipped[target]})"
        else:
            skipped_spoofs[uid] = f"target speaker {target!r} has no real utterances to enrol from"
    return prints, TrialSet(trials, enrol_ids, skipped, skipped_spoofs, config)


def _embed(encoder, audio: Sequence[tuple[np.ndarray, int]], batch_size: int) -> np.ndarray:
    """``[(wav, sr)]`` -> ``[N, D]``; utterances of one sample rate share an ``embed_batch`` call."""
    out: list[np.ndarray | None] = [None] * len(audio)
    for start in range(0, len(audio), batch_size):
        by_sr: dict[int, list[int]] = {}
        for i in range(start, min(start + batch_size, len(audio))):
            by_sr.setdefault(int(audio[i][1]), []).append(i)
        for sr, idx in by_sr.items():
            for i, e in zip(idx, encoder.embed_batch([audio[i][0] for i in idx], sr), strict=True):
                out[i] = e
    return np.stack(out) if out else np.zeros((0, 0))


def load_encoder(config: AsvConfig):
    """The speaker encoder named by ``config`` (evaluation.scorers.speaker)."""
    return load_speaker_encoder(config.encoder, config.encoder_model, config.device)


def build_trials(
    real: Sequence[tuple[str, str, np.ndarray, int]],
    spoofs: Sequence[tuple[str, str, np.ndarray, int]],
    config: AsvConfig = AsvConfig(),
    encoder=None,
) -> tuple[dict[str, np.ndarray], TrialSet]:
    """Embed ``real`` rows ``(id, speaker, wav [T], sr)`` and ``spoofs`` rows ``(id, target_speaker,
    wav [T], sr)`` with ``encoder`` (default: the one ``config`` names) and build the trials
    (:func:`trials_from_embeddings`)."""
    _check_ids(real, spoofs)
    encoder = encoder if encoder is not None else load_encoder(config)
    rows = [*real, *spoofs]
    emb = _embed(encoder, [(r[2], r[3]) for r in rows], config.batch_size)
    n = len(real)
    prints, trials = trials_from_embeddings(
        [(r[0], r[1], e) for r, e in zip(real, emb[:n], strict=True)],
        [(r[0], r[1], e) for r, e in zip(spoofs, emb[n:], strict=True)],
        config,
    )
    trials.encoder_card = encoder.card()
    return prints, trials


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


# --------------------------------------------------------------------------- audio files -> report


def _load(row: Mapping) -> tuple[np.ndarray, int]:
    wav, sr = load_audio(row["audio"])
    if wav.size < MIN_SECONDS * sr:
        raise ValueError(
            f"{row['audio']}: {wav.size / sr:.3f} s is shorter than the {MIN_SECONDS} s a speaker "
            "embedding needs"
        )
    return wav, sr


def _check_rows(rows: Sequence[Mapping], what: str) -> None:
    for i, row in enumerate(rows):
        missing = [k for k in ("id", "speaker", "audio") if not row.get(k)]
        if missing:
            raise ValueError(f"{what} row {i}: missing {', '.join(missing)}")


def _stored_cm_threshold(detector, path: str | Path | None) -> float | None:
    """The detector's own EER threshold, looked up under ``CM_THRESHOLD_KEYS``: an attribute, a key of
    a dict attribute (e.g. its training summary), or a key in ``detector.json`` at the top level or one
    level down; None when it carries none."""
    places: list[Mapping] = [{k: getattr(detector, k, None) for k in CM_THRESHOLD_KEYS}]
    places += (
        [v for v in vars(detector).values() if isinstance(v, Mapping)]
        if hasattr(detector, "__dict__")
        else []
    )
    if path is not None and (Path(path) / "detector.json").is_file():
        meta = json.loads((Path(path) / "detector.json").read_text(encoding="utf-8"))
        places += [meta, *(v for v in meta.values() if isinstance(v, Mapping))]
    for place in places:
        for key in CM_THRESHOLD_KEYS:
            value = place.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
    return None


def run_asv(
    real_rows: Sequence[Mapping],
    spoof_rows: Sequence[Mapping],
    config: AsvConfig = AsvConfig(),
    cm=None,
    *,
    cm_threshold: float | None = None,
    encoder=None,
) -> tuple[dict, pd.DataFrame]:
    """Load, embed, score: rows are mappings with ``id``, ``speaker`` and ``audio`` (a file path);
    a spoof row's ``speaker`` is the cloned target. ``cm``: a detector (``.score([(wav, sr)]) ->
    [n]``, higher = bona fide) or a detector directory (``detection.models.load_detector``).
    ``cm_threshold`` defaults to the detector's stored EER threshold, else to the CM EER threshold
    over this run's bona fide test utterances vs spoofs (the report says which).

    Audio is read in batches (one encoder, loaded once). An unreadable or too-short real file is
    an error (the calibration would silently change); such a spoof is listed in
    ``skipped_spoofs`` and left out of the rates. Returns ``(report, trials DataFrame)``.
    """
    _check_rows(real_rows, "real")
    _check_rows(spoof_rows, "spoof")
    _check_ids([(r["id"], r["speaker"]) for r in real_rows], [(r["id"], r["speaker"]) for r in spoof_rows])
    if cm is None and cm_threshold is not None:
        raise ValueError("cm_threshold was given without a CM (detector)")
    cm_path = None
    if isinstance(cm, (str, Path)):
        cm_path, cm = Path(cm), load_detector(cm)
    encoder = encoder if encoder is not None else load_encoder(config)
    ids_by_speaker: dict[str, list[str]] = {}
    for r in real_rows:
        ids_by_speaker.setdefault(r["speaker"], []).append(r["id"])
    enrol_ids, _, _ = _split(ids_by_speaker, config.enrol_per_speaker)
    enrolment = {u for ids in enrol_ids.values() for u in ids}

    embeddings: dict[str, np.ndarray] = {}
    cm_scores: dict[str, float] = {}
    problems: dict[str, str] = {}
    timing = {"load": 0.0, "embed": 0.0, "cm": 0.0}
    rows = [("real", r) for r in real_rows] + [("spoof", r) for r in spoof_rows]
    real_failed = False
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start : start + config.batch_size]
        if real_failed:  # only read the rest of the real set, to list every problem in one error
            chunk = [(what, row) for what, row in chunk if what == "real"]
        batch = []
        t0 = time.perf_counter()
        for what, row in chunk:
            try:
                batch.append((row, _load(row)))
            except ValueError as err:  # AudioError included
                problems[row["id"]] = f"{what}: {err}"
                real_failed = real_failed or what == "real"
        timing["load"] += time.perf_counter() - t0
        if real_failed or not batch:
            continue
        t0 = time.perf_counter()
        for (row, _), e in zip(batch, _embed(encoder, [a for _, a in batch], config.batch_size), strict=True):
            embeddings[row["id"]] = e
        timing["embed"] += time.perf_counter() - t0
        if cm is not None:  # enrolment recordings are never trials: no CM score needed
            scored = [(row, a) for row, a in batch if row["id"] not in enrolment]
            if scored:
                t0 = time.perf_counter()
                values = np.asarray(cm.score([a for _, a in scored]), dtype=np.float64).reshape(-1)
                timing["cm"] += time.perf_counter() - t0
                if values.shape != (len(scored),):
                    raise ValueError(f"CM returned {values.shape[0]} scores for {len(scored)} recordings")
                cm_scores.update({row["id"]: float(v) for (row, _), v in zip(scored, values, strict=True)})
    real_problems = {k: v for k, v in problems.items() if v.startswith("real:")}
    if real_problems:  # (checked after the loop so the message lists them all)
        listed = "\n  ".join(f"{k}: {v}" for k, v in list(real_problems.items())[:20])
        raise ValueError(f"{len(real_problems)} real utterance(s) cannot be used:\n  {listed}")

    _, trials = trials_from_embeddings(
        [(r["id"], r["speaker"], embeddings[r["id"]]) for r in real_rows],
        [(r["id"], r["speaker"], embeddings[r["id"]]) for r in spoof_rows if r["id"] in embeddings],
        config,
    )
    trials.skipped_spoofs.update({k: v for k, v in problems.items() if v.startswith("spoof:")})
    trials.encoder_card = encoder.card()
    trials.notes["seconds"] = {k: round(v, 3) for k, v in timing.items()}

    source = "given"
    if cm is not None:
        trial_utts = {t.utterance for t in trials}
        cm_scores = {k: v for k, v in cm_scores.items() if k in trial_utts}
        bad = sorted(k for k, v in cm_scores.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"the CM returned NaN/Inf scores for {len(bad)} recording(s): {bad[:10]}")
        if cm_threshold is None:
            cm_threshold = _stored_cm_threshold(cm, cm_path)
            source = "stored with the detector (its own EER threshold)"
        if cm_threshold is None:
            # distinct recordings: a non-target recording appears in one trial per claimed speaker
            bona = list({t.utterance: cm_scores[t.utterance] for t in trials if t.kind != "spoof"}.values())
            spoof = list({t.utterance: cm_scores[t.utterance] for t in trials if t.kind == "spoof"}.values())
            if not spoof:
                raise ValueError(
                    "the detector stores no EER threshold and there are no spoof trials to set one"
                )
            cm_threshold = float(compute_eer(np.array(bona), np.array(spoof))[1])
            source = (
                "computed here: the CM EER threshold over this run's bona fide test utterances vs its "
                "spoofs (the detector stores none); it has seen the test data, so gated rates are optimistic"
            )
        trials.notes["cm"] = {
            "detector": getattr(cm, "name", type(cm).__name__),
            "path": None if cm_path is None else str(cm_path),
        }
    report = asv_report(trials, cm_scores if cm is not None else None, cm_threshold, source)
    return report, trial_table(trials, report, cm_scores if cm is not None else None)


def write_outputs(out: str | Path, report: dict, table: pd.DataFrame) -> tuple[Path, Path]:
    """``asv_report.json`` and ``asv_trials.parquet`` in ``out``: both are written under temporary
    names first and renamed only when both are complete, so a failure leaves no half-written file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path, table_path = out / REPORT_FILE, out / TRIALS_FILE
    tmp_report, tmp_table = (p.with_name(f".{p.name}.partial") for p in (report_path, table_path))
    try:
        table.to_parquet(tmp_table, index=False)
        tmp_report.write_text(json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
    except BaseException:
        for p in (tmp_report, tmp_table):
            p.unlink(missing_ok=True)
        raise
    tmp_table.replace(table_path)
    tmp_report.replace(report_path)  # last: the report marks a complete output
    return report_path, table_path
