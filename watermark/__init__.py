"""Watermark backends, keyed payloads, signed provenance and the attack bank (a leaf package)."""

from __future__ import annotations

from watermark.base import Detection, Watermarker, WatermarkError

WATERMARKERS = ("perth",)
DEFAULT_WATERMARKER = "perth"


def load_watermarker(name: str = DEFAULT_WATERMARKER, device: str = "cpu") -> Watermarker:
    """Build a watermark backend by name (each loaded once per process by the caller)."""
    if name == "perth":
        from watermark.perth_backend import PerthWatermarker

        return PerthWatermarker(device=device)
    raise WatermarkError(f"unknown watermark backend {name!r}; choose one of {', '.join(WATERMARKERS)}")


__all__ = [
    "DEFAULT_WATERMARKER",
    "WATERMARKERS",
    "Detection",
    "WatermarkError",
    "Watermarker",
    "load_watermarker",
]
