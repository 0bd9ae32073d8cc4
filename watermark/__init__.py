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

from watermark.audioseal_backend import AudioSealWatermarker
from watermark.base import Detection, Watermarker, WatermarkError
from watermark.keyed import KeyedWatermarker
from watermark.perth_backend import PerthWatermarker

_BACKENDS: dict[str, type] = {
    "perth": PerthWatermarker,
    "audioseal": AudioSealWatermarker,
    "keyed": KeyedWatermarker,
}
WATERMARKERS = tuple(_BACKENDS)
DEFAULT_WATERMARKER = "perth"


def backend_class(name: str) -> type:
    """The class that implements backend ``name`` (each loads its model library when built)."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    raise WatermarkError(f"unknown watermark backend {name!r}; choose one of {', '.join(WATERMARKERS)}")


def check_registered(watermarker: object) -> Watermarker:
    """``watermarker`` itself if it is an instance of a registered backend's own class, else
    :class:`WatermarkError`. An object that merely has the right method names (or a subclass that
    overrides them) could claim a mark it never embedded, so generation accepts only these."""
    name = getattr(watermarker, "name", None)
    if name not in WATERMARKERS or type(watermarker) is not backend_class(name):
        raise WatermarkError(
            f"{type(watermarker).__module__}.{type(watermarker).__qualname__} is not a registered watermark "
            f"backend; use watermark.load_watermarker({'|'.join(WATERMARKERS)})"
        )
    return watermarker


def load_watermarker(name: str = DEFAULT_WATERMARKER, device: str = "cpu", **kwargs) -> Watermarker:
    """Build a watermark backend by name (each loaded once per process by the caller).

    ``kwargs`` go to the backend's constructor (see the module docstring); an unknown one raises
    :class:`WatermarkError` naming it.
    """
    backend = backend_class(name)
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
    "backend_class",
    "check_registered",
    "load_watermarker",
]
