"""Codecs behind one contract (see :mod:`valle.codec.base`), chosen by name.

``melvq_24khz`` is the offline default (its fitted codebooks ship in the package);
``encodec_24khz_6kbps`` is the paper's codec (official weights, sha256 checked).
"""

from __future__ import annotations

from pathlib import Path

from valle.codec.base import Codec, CodecCard, CodecError

CODECS = ("melvq_24khz", "encodec_24khz_6kbps")
DEFAULT_CODEC = "melvq_24khz"


def load_codec(
    name: str = DEFAULT_CODEC,
    weights: str | Path | None = None,
    sha256: str | None = None,
    device: str = "cpu",
) -> Codec:
    """Build a codec by name. ``weights`` overrides the default file; ``sha256`` the expected hash."""
    if name == "melvq_24khz":
        from valle.codec.melvq import DEFAULT_ASSET, MelVQCodec

        codec = MelVQCodec.load(weights or DEFAULT_ASSET)
        if sha256 is not None and codec.card.weights_sha256 != sha256:
            raise CodecError(
                f"melvq codebooks {weights or DEFAULT_ASSET} have sha256 {codec.card.weights_sha256}, "
                f"expected {sha256}"
            )
        return codec
    if name == "encodec_24khz_6kbps":
        from valle.codec.encodec import CHECKPOINT_SHA256, EncodecCodec

        return EncodecCodec(weights, sha256=sha256 or CHECKPOINT_SHA256, device=device)
    raise CodecError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")


def load_codec_for(card: CodecCard, weights: str | Path | None = None, device: str = "cpu") -> Codec:
    """The codec a checkpoint was trained with; refuses a codec whose card differs."""
    codec = load_codec(card.name, weights=weights, sha256=card.weights_sha256, device=device)
    codec.card.check_compatible(card)
    return codec


__all__ = ["CODECS", "DEFAULT_CODEC", "Codec", "CodecCard", "CodecError", "load_codec", "load_codec_for"]
