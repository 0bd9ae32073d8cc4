"""Watermark backends, keyed payloads, signed provenance and the attack bank (a leaf package).

Backends (:data:`WATERMARKERS`):

- ``perth``: Resemble AI's PerthNet, weights bundled in the ``resemble-perth`` wheel; presence only.
  Keyword arguments: ``threshold``.
- ``audioseal``: Meta's AudioSeal, 16-bit payload; weights downloaded by the user (see
  :mod:`watermark.audioseal_backend`). Keyword arguments: ``generator``, ``detector`` (paths; default:
  audioseal's cache), ``threshold``, ``generator_sha256``, ``detector_sha256``.
"""

from __future__ import annotations

import inspect

from watermark.base import Detection, Watermarker, WatermarkError

WATERMARKERS = ("perth", "audioseal")
DEFAULT_WATERMARKER = "perth"


def load_watermarker(name: str = DEFAULT_WATERMARKER, device: str = "cpu", **kwargs) -> Watermarker:
    """Build a watermark backend by name (each loaded once per process by the caller).

    ``kwargs`` go to the backend's constructor (see the module docstring); an unknown one raises
    :class:`WatermarkError` naming it.
    """
    if name == "perth":
        from watermark.perth_backend import PerthWatermarker as backend
    elif name == "audioseal":
        from watermark.audioseal_backend import AudioSealWatermarker as backend
    else:
        raise WatermarkError(f"unknown watermark backend {name!r}; choose one of {', '.join(WATERMARKERS)}")
    options = [p for p in inspect.signature(backend).parameters if p != "device"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:  # a misspelt option should name itself, not surface as a TypeError
        raise WatermarkError(
            f"watermark backend {name!r} has no option {', '.join(unknown)}; it takes {', '.join(options)}"
        )
    return backend(device=device, **kwargs)


__all__ = [
    "DEFAULT_WATERMARKER",
    "WATERMARKERS",
    "Detection",
    "WatermarkError",
    "Watermarker",
    "load_watermarker",
]
