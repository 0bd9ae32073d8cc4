"""The codec contract every VALL-E component relies on.

A codec turns a waveform into a ``[T, Q]`` grid of integer codes (T frames at ``frame_rate`` Hz,
Q codebooks of ``codebook_size`` entries each) and back. VALL-E's paper codec is EnCodec 24 kHz at
6 kbps: 75 Hz x 8 codebooks x 1024. Any codec with the same shape slots in without the model code
branching on which one it is.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from valle.audio import AudioError, check_audio, resample


class CodecError(ValueError):
    """Wrong codes, missing or corrupted weights, or a codec mismatch."""


@dataclass(frozen=True)
class CodecCard:
    """What identifies a codec: saved in every checkpoint and every run config."""

    name: str
    sample_rate: int
    frame_rate: float
    n_codebooks: int
    codebook_size: int
    weights_sha256: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CodecCard:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except KeyError as err:
            raise CodecError(f"codec card is missing field {err}") from err

    def check_compatible(self, other: CodecCard, what: str = "checkpoint") -> None:
        """Raise if codes made by ``other`` cannot be decoded by this codec (or vice versa)."""
        if self != other:
            diff = {
                k: (getattr(other, k), getattr(self, k))
                for k in self.__dataclass_fields__
                if getattr(self, k) != getattr(other, k)
            }
            details = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise CodecError(
                f"{what} was made with codec {other.name!r} but codec {self.name!r} is loaded ({details})"
            )


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_sha256(path: Path, expected: str, where_from: str) -> str:
    """Check a weights file's sha256; the error says which file, which hash, and where to get it."""
    if not path.is_file():
        raise CodecError(
            f"weights file not found: {path}\n  expected sha256: {expected}\n  get it from: {where_from}"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise CodecError(
            f"weights file {path} has sha256 {actual}, expected {expected} "
            f"(corrupted, truncated or a different model).\n  get the right file from: {where_from}"
        )
    return actual


def check_shapes(shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> None:
    """``{table name: (shape found, shape the config says)}``: raise on the first mismatch."""
    for name, (got, want) in shapes.items():
        if got != want:
            raise CodecError(f"{name} has shape {got}, config says {want}")


def read_tables(path: Path, fmt: str, version: int, names: tuple[str, ...], hint: str) -> tuple[dict, dict]:
    """Read an offline codec's fitted tables from safetensors (never unpickled).

    Checks that the file exists (else ``hint`` says how to get one), its format tag and version, and
    that every tensor in ``names`` is there. Returns ``(config dict, {name: tensor})``.
    """
    if not path.is_file():
        raise CodecError(f"{fmt} tables not found: {path}; {hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for a corrupt header
        raise CodecError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != fmt or meta.get("version") != str(version):
        raise CodecError(
            f"{path}: expected format {fmt} v{version}, found {meta.get('format')!r} v{meta.get('version')!r}"
        )
    missing = set(names) - set(tensors)
    if missing:
        raise CodecError(f"{path}: missing tensors {sorted(missing)}")
    return json.loads(meta["config"]), tensors


def write_tables(path: str | Path, tensors: dict, fmt: str, version: int, config: dict) -> Path:
    """Write fitted tables as float16 safetensors with the format tag, version and config.

    float16 halves the committed files; its error (~1e-3 in log-mel) is far below the k-means error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": fmt, "version": str(version), "config": json.dumps(config)}
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


class Codec(ABC):
    """Base class: validates inputs and codes, resamples; subclasses implement the transform."""

    card: CodecCard

    @property
    def sample_rate(self) -> int:
        return self.card.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.card.frame_rate

    @property
    def n_codebooks(self) -> int:
        return self.card.n_codebooks

    @property
    def codebook_size(self) -> int:
        return self.card.codebook_size

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate / self.frame_rate)

    @torch.inference_mode()
    def encode(self, wav: np.ndarray | torch.Tensor, sr: int, name: str = "audio") -> torch.Tensor:
        """Mono waveform ``[N]`` at any rate -> codes ``LongTensor[T, Q]``, T = ceil(N' / hop)."""
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().float().numpy()
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise AudioError(f"{name}: expected mono audio of shape [N], got {wav.shape}")
        check_audio(wav, sr, name, allow_silent=True)
        wav = resample(wav, sr, self.sample_rate)
        if len(wav) < self.hop_length:
            raise AudioError(f"{name}: {len(wav)} samples is shorter than one codec frame")
        codes = self._encode(torch.from_numpy(wav))
        assert codes.shape[1] == self.n_codebooks, codes.shape
        return codes.long()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> tuple[np.ndarray, int]:
        """Codes ``[T, Q]`` -> (mono float32 waveform ``[T * hop]``, sample rate)."""
        codes = torch.as_tensor(codes)
        if codes.ndim != 2 or codes.shape[1] != self.n_codebooks or codes.shape[0] == 0:
            raise CodecError(f"expected codes of shape [T>0, {self.n_codebooks}], got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise CodecError(f"codes must be integers, got {codes.dtype}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise CodecError(f"codes out of range [0, {self.codebook_size}): min {lo}, max {hi}")
        wav = self._decode(codes.long())
        return wav.float().cpu().numpy().reshape(-1), self.sample_rate

    @abstractmethod
    def neutral_codes(self) -> torch.Tensor:
        """Per codebook, the code that changes the decoded frame least (``LongTensor[Q]``).

        Filling codebooks 2..Q with these is the "neutral fill" of the codec oracle: what codebook 1
        alone says. For residual quantisers it is the entry nearest zero."""

    @abstractmethod
    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [N]`` at ``sample_rate`` -> ``codes [T, Q]``."""

    @abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [T, Q]`` -> ``wav [T * hop]``."""
