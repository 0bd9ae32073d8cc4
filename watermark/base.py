"""The watermark protocol: every backend embeds into and detects from mono float32 audio.

``valle`` marks every generated waveform through this protocol (see ``valle.synthesize``), so no
public path returns unmarked generated audio. Backends differ in capacity: some carry payload bits
(AudioSeal, 16 bits), some only presence (Perth); ``payload_bits`` says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class WatermarkError(ValueError):
    """A backend that cannot be loaded, or a payload the backend cannot carry."""


@dataclass(frozen=True)
class Detection:
    """What a detector says about one waveform."""

    score: float  # confidence that a mark is present, in [0, 1]
    detected: bool  # score >= the backend's decision threshold
    payload: tuple[int, ...] | None = None  # decoded bits, for backends that carry a payload
    frame_probs: np.ndarray | None = None  # per-frame/sample presence probabilities when available


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
