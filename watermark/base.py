"""The watermark protocol: every backend embeds into and detects from mono float32 audio.

``valle`` marks every generated waveform through this protocol (see ``valle.synthesize``), so no
public path returns unmarked generated audio. Backends differ in capacity: some carry payload bits
(AudioSeal, 16 bits), some only presence (Perth); ``payload_bits`` says which.

``watermark`` is a leaf package (it imports none of the project's other packages), so the input checks
every backend runs (:func:`check_wav`) live here rather than in ``valle.audio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# Rates outside this range are almost certainly a mislabelled header or a wrong argument
# (telephone audio is 8 kHz; studio masters top out at 192 kHz). Same bounds as valle.audio.
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 192_000
# Peak below this (-80 dBFS) is treated as digital silence.
SILENCE_PEAK = 1e-4
# The shortest clip any backend here marks (Perth's minimum): shorter audio can neither carry nor show
# a mark, so verification and the robustness bench refuse it.
MIN_MARK_SECONDS = 0.25


class WatermarkError(ValueError):
    """A backend that cannot be loaded, or a payload the backend cannot carry."""


@dataclass(frozen=True)
class Detection:
    """What a detector says about one waveform."""

    score: float  # confidence that a mark is present, in [0, 1]
    detected: bool  # score >= the backend's decision threshold
    payload: tuple[int, ...] | None = None  # decoded bits, for backends that carry a payload
    frame_probs: np.ndarray | None = None  # per-frame/sample presence probabilities when available
    # analytic bound on the probability that audio not marked with this key scores this high (keyed
    # backend); None where the backend states no false-alarm rate
    p_value: float | None = None
    # per-channel-bit soft values of the payload (keyed backend): lets a verifier score candidate
    # payloads (a ledger's) against the audio instead of comparing hard-decoded bits
    payload_soft: np.ndarray | None = None


@runtime_checkable
class Watermarker(Protocol):
    name: str
    payload_bits: int  # 0 = presence only
    threshold: float

    def card(self) -> dict:
        """Name, weights sha256 and decision threshold: recorded with every marked file."""
        ...

    def embed(self, wav: np.ndarray, sr: int, payload: Sequence[int] | None = None) -> np.ndarray:
        """Return a marked copy of ``wav [N]`` (same length and rate)."""
        ...

    def detect(self, wav: np.ndarray, sr: int) -> Detection: ...


# A payload is "carried" when its soft score reaches this z (keyed backend; exp(-z^2 / 2) = 3.7e-6 for a
# payload the key did not embed): hard-decoded bits of a short clip can be wrong while the mark is clear.
PAYLOAD_Z = 5.0


def carries_payload(watermarker: Watermarker, det: Detection, payload: Sequence[int] | None) -> bool:
    """Does audio in which ``det`` was detected carry ``payload``? Backends with soft payload scores
    (``payload_z``, the keyed mark) test the claimed payload directly (``z >= PAYLOAD_Z``); the others
    compare their decoded bits with it."""
    if payload is None or not det.detected:
        return False
    score = getattr(watermarker, "payload_z", None)
    if score is not None and det.payload_soft is not None:
        return score(det.payload_soft, payload) >= PAYLOAD_Z
    return det.payload is not None and tuple(det.payload) == tuple(payload)


def check_wav(wav: np.ndarray, sr: int, name: str = "audio", allow_silent: bool = True) -> None:
    """Raise :class:`WatermarkError` naming ``name`` unless ``wav`` is usable mono audio.

    Refused: anything but a 1-D floating-point array ``[N]``, no samples, NaN/Inf samples, a sample
    rate outside 4-192 kHz, and (only with ``allow_silent=False``) a peak below -80 dBFS.
    """
    if not isinstance(sr, (int, np.integer)) or not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise WatermarkError(
            f"{name}: sample rate {sr!r} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    if not isinstance(wav, np.ndarray) or wav.ndim != 1 or not np.issubdtype(wav.dtype, np.floating):
        got = f"shape {wav.shape}, dtype {wav.dtype}" if isinstance(wav, np.ndarray) else type(wav).__name__
        raise WatermarkError(f"{name}: expected mono float audio of shape [N], got {got}")
    if wav.size == 0:
        raise WatermarkError(f"{name}: audio is empty (0 samples)")
    if not np.all(np.isfinite(wav)):
        raise WatermarkError(f"{name}: audio contains {int((~np.isfinite(wav)).sum())} NaN/Inf samples")
    if not allow_silent and float(np.abs(wav).max()) < SILENCE_PEAK:
        raise WatermarkError(f"{name}: audio is silent (peak below {SILENCE_PEAK:g}, i.e. -80 dBFS)")


def check_payload(payload: Sequence[int] | None, bits: int, backend: str) -> tuple[int, ...] | None:
    if bits == 0:
        if payload is not None:
            raise WatermarkError(f"{backend} marks presence only and cannot carry a payload")
        return None
    if payload is None or len(payload) != bits or any(b not in (0, 1) for b in payload):
        raise WatermarkError(f"{backend} needs an explicit payload of exactly {bits} bits (0/1)")
    return tuple(int(b) for b in payload)


def fit_length(wav: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to ``n`` samples (resampling inside backends can be off by one)."""
    if len(wav) >= n:
        return wav[:n]
    return np.pad(wav, (0, n - len(wav)))
