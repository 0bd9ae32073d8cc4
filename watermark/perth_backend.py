"""Perth (Resemble AI's PerthNet implicit watermarker): bundled weights, presence only.

``perth`` imports ``pkg_resources``; with setuptools >= 81 its watermarker silently becomes None,
so the project pins setuptools<81 and this module fails loudly if the class is missing.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from watermark.base import MIN_MARK_SECONDS, Detection, WatermarkError, check_payload, check_wav, fit_length

MIN_SECONDS = MIN_MARK_SECONDS  # PerthNet needs this much audio; shorter clips are padded


class PerthWatermarker:
    name = "perth"
    payload_bits = 0

    def __init__(self, device: str = "cpu", threshold: float = 0.5) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation noise from perth's import
            # Perth (and pkg_resources) load only when this backend is chosen
            import perth
        if getattr(perth, "PerthImplicitWatermarker", None) is None:
            raise WatermarkError(
                "perth.PerthImplicitWatermarker is None: setuptools >= 81 removed pkg_resources; "
                "install 'setuptools<81'"
            )
        self._impl = perth.PerthImplicitWatermarker(device=device)
        self.threshold = threshold
        self._sha256 = _weights_sha256(Path(perth.__file__).parent)

    def card(self) -> dict:
        return {"name": self.name, "weights_sha256": self._sha256, "threshold": self.threshold}

    def embed(self, wav: np.ndarray, sr: int, payload: Sequence[int] | None = None) -> np.ndarray:
        check_payload(payload, self.payload_bits, self.name)
        # PerthNet returns digital silence unchanged (nothing to hide a mark in): refuse it loudly
        check_wav(wav, sr, "audio to watermark", allow_silent=False)
        padded = _pad_to_min(np.asarray(wav, dtype=np.float32), sr)
        marked = self._impl.apply_watermark(padded, sample_rate=sr)
        return fit_length(np.asarray(marked, dtype=np.float32), len(wav))

    def detect(self, wav: np.ndarray, sr: int) -> Detection:
        check_wav(wav, sr, "audio to check")
        padded = _pad_to_min(np.asarray(wav, dtype=np.float32), sr)
        score = float(np.mean(self._impl.get_watermark(padded, sr, round=False)))
        if not np.isfinite(score):  # PerthNet scores digital silence as NaN (seen here): no mark there
            score = 0.0
        return Detection(score=score, detected=score >= self.threshold)


def _pad_to_min(wav: np.ndarray, sr: int) -> np.ndarray:
    """PerthNet's STFT (n_fft 2048 at 32 kHz) fails on clips under ~32 ms: zero-pad to 0.25 s."""
    return fit_length(wav, max(len(wav), int(MIN_SECONDS * sr)))


def _weights_sha256(package_dir: Path) -> str:
    """sha256 over the bundled model files (sorted), so a changed perth release is visible."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        if path.suffix in {".pth", ".pt", ".tar", ".ckpt", ".onnx"}:
            h.update(path.read_bytes())
    return h.hexdigest()
