"""EnCodec 24 kHz at 6 kbps: the paper's codec (Défossez et al., 2022), 75 Hz x 8 x 1024.

Weights are the official ``encodec_24khz-d7cc33bc.th``, read from an explicit path or from the torch
hub cache where the ``encodec`` package puts them, always checked by sha256 and loaded with
``weights_only=True``. There is no silent fallback to random weights: a missing file is an error
that says which file, which hash, and where it goes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from valle.codec.base import Codec, CodecCard, CodecError, verify_sha256

CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
CHECKPOINT_SHA256 = "d7cc33bcf1aad7f2dad9836f36431530744abeace3ca033005e3290ed4fa47bf"
CHECKPOINT_URL = f"https://dl.fbaipublicfiles.com/encodec/v0/{CHECKPOINT_NAME}"
BANDWIDTH_KBPS = 6.0  # 8 codebooks x 10 bits x 75 Hz


def default_checkpoint_path() -> Path:
    """Where ``torch.hub`` (and so the ``encodec`` package) caches the official checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME


def build_encodec_24khz():
    """The 24 kHz architecture with freshly initialised weights (callers must load a state dict)."""
    # heavy backend, imported when the model is built
    from encodec import EncodecModel

    return EncodecModel._get_model(
        [1.5, 3.0, 6.0, 12.0, 24.0],
        24_000,
        1,
        causal=True,
        model_norm="weight_norm",
        audio_normalize=False,
        name="encodec_24khz",
    )


class EncodecCodec(Codec):
    """EnCodec 24 kHz, 6 kbps, on ``device``."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        sha256: str = CHECKPOINT_SHA256,
        device: str | torch.device = "cpu",
    ) -> None:
        path = Path(checkpoint) if checkpoint is not None else default_checkpoint_path()
        verify_sha256(
            path,
            sha256,
            where_from=f"{CHECKPOINT_URL} -> save it as {default_checkpoint_path()} or pass its path",
        )
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_encodec_24khz()
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CodecError(f"{path}: not an EnCodec 24 kHz state dict ({err})") from err
        model.set_target_bandwidth(BANDWIDTH_KBPS)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.card = CodecCard(
            name="encodec_24khz_6kbps",
            sample_rate=24_000,
            frame_rate=75.0,
            n_codebooks=8,
            codebook_size=1024,
            weights_sha256=sha256,
        )

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        frames = self.model.encode(wav.to(self.device)[None, None])  # one frame: segment=None at 24 kHz
        codes = frames[0][0]  # [1, Q, T]
        return codes[0].T.cpu()  # [T, Q]

    def neutral_codes(self) -> torch.Tensor:
        layers = self.model.quantizer.vq.layers[: self.n_codebooks]
        return torch.stack([(layer._codebook.embed**2).sum(-1).argmin() for layer in layers]).cpu()

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        wav = self.model.decode([(codes.T[None].to(self.device), None)])  # [1, 1, T * 320]
        return wav[0, 0, : codes.shape[0] * self.hop_length]
