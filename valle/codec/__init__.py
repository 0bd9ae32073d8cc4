"""Codecs behind one contract (see :mod:`valle.codec.base`), chosen by name.

``vqvae_24khz`` is the offline default, built for VALL-E's AR/NAR split: a learned codebook 1 that
carries the content, one voice code per utterance in codebook 2, residual detail in 3..8;
``contentvq_24khz`` is its k-means predecessor (codebook 1 from k-means of a content view);
``melvq_24khz`` is the earlier offline codec, kept so checkpoints trained on it still decode;
``encodec_24khz_6kbps`` is the paper's codec (official weights, sha256 checked). The weights of
every offline codec ship in the package.
"""

from __future__ import annotations

from pathlib import Path

from valle.codec import contentvq, encodec, melvq, vqvae
from valle.codec.base import Codec, CodecCard, CodecError

# the offline codecs: (class, packaged weights)
_OFFLINE = {
    "contentvq_24khz": (contentvq.ContentVQCodec, contentvq.DEFAULT_ASSET),
    "vqvae_24khz": (vqvae.VQVAECodec, vqvae.DEFAULT_ASSET),
    "melvq_24khz": (melvq.MelVQCodec, melvq.DEFAULT_ASSET),
}
CODECS = (*_OFFLINE, "encodec_24khz_6kbps")
DEFAULT_CODEC = "vqvae_24khz"


def load_codec(
    name: str = DEFAULT_CODEC,
    weights: str | Path | None = None,
    sha256: str | None = None,
    device: str = "cpu",
) -> Codec:
    """Build a codec by name. ``weights`` overrides the default file; ``sha256`` the expected hash."""
    if name in _OFFLINE:
        cls, default_asset = _OFFLINE[name]
        codec = cls.load(weights or default_asset)
        if sha256 is not None and codec.card.weights_sha256 != sha256:
            raise CodecError(
                f"{name} tables {weights or default_asset} have sha256 {codec.card.weights_sha256}, "
                f"expected {sha256}"
            )
        return codec
    if name == "encodec_24khz_6kbps":
        return encodec.EncodecCodec(weights, sha256=sha256 or encodec.CHECKPOINT_SHA256, device=device)
    raise CodecError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}")


def load_codec_for(card: CodecCard, weights: str | Path | None = None, device: str = "cpu") -> Codec:
    """The codec a checkpoint was trained with; refuses a codec whose card differs."""
    codec = load_codec(card.name, weights=weights, sha256=card.weights_sha256, device=device)
    codec.card.check_compatible(card)
    return codec


__all__ = ["CODECS", "DEFAULT_CODEC", "Codec", "CodecCard", "CodecError", "load_codec", "load_codec_for"]
