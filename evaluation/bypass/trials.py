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

The metrics and the report: :mod:`evaluation.bypass.report`; audio files -> report:
:mod:`evaluation.bypass.asv`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.scorers.speaker import DEFAULT_SPEAKER, load_speaker_encoder

KINDS = ("target", "nontarget", "spoof")
MIN_SECONDS = 0.5  # the speaker encoders' minimum input (evaluation.scorers.speaker.MIN_SECONDS)


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


def split_enrolment(ids_by_speaker: Mapping[str, Sequence[str]], k: int) -> tuple[dict, dict, dict]:
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


def check_ids(real: Sequence, spoofs: Sequence) -> None:
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
    check_ids(real, spoofs)
    if not real:
        raise ValueError("no real utterances: the ASV needs real speech to enrol and calibrate")
    emb = {uid: np.asarray(e, dtype=np.float64) for uid, _, e in [*real, *spoofs]}
    dims = {e.shape for e in emb.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise ValueError(f"embeddings must all be [D] vectors of one size, got shapes {sorted(dims)}")
    ids_by_speaker: dict[str, list[str]] = {}
    for uid, spk, _ in real:
        ids_by_speaker.setdefault(spk, []).append(uid)
    enrol_ids, test_ids, skipped = split_enrolment(ids_by_speaker, config.enrol_per_speaker)
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


def embed_audio(encoder, audio: Sequence[tuple[np.ndarray, int]], batch_size: int) -> np.ndarray:
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
    check_ids(real, spoofs)
    encoder = encoder if encoder is not None else load_encoder(config)
    rows = [*real, *spoofs]
    emb = embed_audio(encoder, [(r[2], r[3]) for r in rows], config.batch_size)
    n = len(real)
    prints, trials = trials_from_embeddings(
        [(r[0], r[1], e) for r, e in zip(real, emb[:n], strict=True)],
        [(r[0], r[1], e) for r, e in zip(spoofs, emb[n:], strict=True)],
        config,
    )
    trials.encoder_card = encoder.card()
    return prints, trials
