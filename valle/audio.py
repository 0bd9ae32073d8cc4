"""Audio I/O and conditioning shared by every package.

Everything here works on mono float32 numpy arrays in [-1, 1] (shape ``[T]``) plus an integer
sample rate. Files are read and written with soundfile (torchaudio >= 2.9 delegates file I/O to
torchcodec, which we do not depend on); resampling uses ``torchaudio.functional.resample``.

Bad input raises :class:`AudioError`, whose message always names the file (or the caller's
label) and the specific problem, so a run can record it per utterance and carry on.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pyloudnorm
import soundfile as sf
import torch
import torchaudio.functional as AF

# Rates outside this range are almost certainly a mislabelled header or a wrong argument
# (telephone audio is 8 kHz; studio masters top out at 192 kHz).
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 192_000
# Peak below this (-80 dBFS) is treated as digital silence.
SILENCE_PEAK = 1e-4


class AudioError(ValueError):
    """Audio that cannot be used, with the file (or label) and reason in the message."""


def check_sample_rate(sr: int, name: str = "audio") -> int:
    if not isinstance(sr, (int, np.integer)) or not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {sr!r} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    return int(sr)


def check_audio(wav: np.ndarray, sr: int, name: str = "audio", allow_silent: bool = False) -> None:
    """Raise :class:`AudioError` for empty, non-finite, silent or absurd-rate audio."""
    check_sample_rate(sr, name)
    if wav.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    if not np.all(np.isfinite(wav)):
        n_bad = int((~np.isfinite(wav)).sum())
        raise AudioError(f"{name}: audio contains {n_bad} NaN/Inf samples")
    if not allow_silent and float(np.abs(wav).max()) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent (peak below {SILENCE_PEAK:g}, i.e. -80 dBFS)")


def to_mono(wav: np.ndarray) -> np.ndarray:
    """Average channels: ``[T]`` or ``[T, C]`` (soundfile's layout) -> ``[T]``."""
    if wav.ndim == 1:
        return wav
    if wav.ndim == 2:
        return wav.mean(axis=1)
    raise AudioError(f"expected audio of shape [T] or [T, C], got {wav.shape}")


def resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio's default Hann-windowed kernel)."""
    if orig_sr == new_sr:
        return wav
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), orig_sr, new_sr)
    return out.numpy()


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    allow_silent: bool = False,
) -> tuple[np.ndarray, int]:
    """Read a file as mono float32, optionally resampled to ``sample_rate``.

    Returns ``(wav [T], sr)``. Raises :class:`AudioError` naming the file when it is missing,
    unreadable, empty, non-finite, silent (unless ``allow_silent``) or has an absurd rate.
    """
    path = Path(path)
    if sample_rate is not None:
        check_sample_rate(sample_rate, f"{path} (requested rate)")
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: unreadable audio file ({err})") from err
    check_sample_rate(sr, str(path))
    wav = to_mono(np.asarray(wav, dtype=np.float32))
    check_audio(wav, sr, str(path), allow_silent=allow_silent)
    if sample_rate is not None:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, sr


def save_audio(path: str | Path, wav: np.ndarray | torch.Tensor, sr: int) -> Path:
    """Write mono audio as 16-bit PCM WAV (clipped to [-1, 1]); parent folders are created.

    The file is written to a temporary name and renamed, so a killed process never leaves a
    half-written file under the final name.
    """
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    check_audio(wav, sr, str(path), allow_silent=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    sf.write(str(tmp), np.clip(wav, -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    tmp.replace(path)
    return path


def peak_normalize(wav: np.ndarray, peak_db: float = -1.0) -> np.ndarray:
    """Scale so the absolute peak sits at ``peak_db`` dBFS."""
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError("cannot peak-normalise silent audio")
    return (wav * (10 ** (peak_db / 20) / peak)).astype(np.float32)


def loudness(wav: np.ndarray, sr: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, via pyloudnorm)."""
    return float(pyloudnorm.Meter(sr, block_size=min(0.400, len(wav) / sr)).integrated_loudness(wav))


def loudness_normalize(wav: np.ndarray, sr: int, target_lufs: float = -23.0) -> np.ndarray:
    """Scale to ``target_lufs`` integrated loudness (EBU R128 default -23 LUFS), then clip-guard.

    If the gain would push the peak above 0 dBFS the result is peak-limited by scaling down,
    because clipping would add distortion that downstream detectors could key on.
    """
    current = loudness(wav, sr)
    if not np.isfinite(current):
        raise AudioError("cannot loudness-normalise silent audio")
    out = wav * (10 ** ((target_lufs - current) / 20))
    peak = float(np.abs(out).max())
    if peak > 1.0:
        out = out / peak * 0.999
    return out.astype(np.float32)


def trim_silence(wav: np.ndarray, sr: int, top_db: float = 40.0) -> np.ndarray:
    """Cut leading and trailing audio quieter than ``top_db`` below the peak (librosa's trim)."""
    frame = max(256, int(0.025 * sr))
    trimmed, _ = librosa.effects.trim(wav, top_db=top_db, frame_length=frame, hop_length=frame // 4)
    return trimmed


def duration(path: str | Path) -> float:
    """Duration in seconds from the header, without decoding the samples."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: unreadable audio file ({err})") from err
    return info.frames / info.samplerate
