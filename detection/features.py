"""Front ends for the synthetic-speech detectors: shortcut controls, LFCC and log-mel features.

Shortcut controls (``Controls``, ``preprocess``)
    A countermeasure learns whatever separates its two training classes. When bona fide and spoofed
    clips differ in nuisance properties, it learns those instead of synthesis artefacts: in ASVspoof 2019
    LA the duration of leading/trailing silence alone gives ~15 % EER (Müller et al., "Speech is
    Silver, Silence is Golden: What do ASVspoof-trained Models Really Learn?", ASVspoof 2021 workshop).
    Three controls remove the nuisances we can name:

    * sample rate: every clip is resampled (``torchaudio.functional.resample``, windowed sinc) to one
      working rate, so no class carries a different bandwidth or frame resolution. This control *is* the
      resampling: ``Controls.match_rate`` is true whenever ``sample_rate`` is set;
    * silence: leading and trailing silence is trimmed with ``librosa.effects.trim`` (25 ms frames whose
      RMS is more than ``top_db`` = 40 dB below the clip's loudest frame);
    * loudness: each clip is scaled to the same RMS level (``target_dbfs`` = -26 dBFS, the ITU-T P.56
      nominal active speech level) measured *after* trimming, so it is the level of the speech. We use
      RMS rather than LUFS (pyloudnorm) because BS.1770 gating needs >= 400 ms blocks and short
      clips must work too.

    ``Controls.none()`` turns trimming and loudness off but keeps resampling to 16 kHz: LFCCs from
    different rates are not comparable (frame lengths in samples, FFT resolution and the power scale
    change with the rate), so a detector without a common rate would be comparing front ends, not
    speech. ``Controls(sample_rate=None, trim_silence=False, loudness=False)`` is the truly raw pipeline:
    features are then computed at each clip's native rate (window and hop in ms, filters in Hz), which
    reproduces the sample-rate shortcut for studies of it.

LFCC (``LfccConfig``, ``lfcc``)
    ``torchaudio.transforms.LFCC`` with the front end of the ASVspoof 2021 LFCC-GMM baseline
    (asvspoof-challenge/2021, ``LA/Baseline-LFCC-GMM``: ``matlab/LFCC/lfcc_bp.m`` and
    ``python/LFCC_pipeline.py``): 30 ms Hamming window, 15 ms hop, 1024-point FFT, 70 triangular
    filters linearly spaced on 0-4 kHz, DCT-II (orthonormal), 20 coefficients (the python port's
    ``num_ceps=20``; the MATLAB script keeps 19) plus deltas and double deltas over a +-1 frame window
    (HTK deltas with ``hlen = 1``: d_t = (c_{t+1} - c_{t-1}) / 2, edges replicated), so 60 dims.
    ``LfccConfig.lcnn()`` is the ASVspoof 2021 LFCC-LCNN baseline front end (``LA/Baseline-LFCC-LCNN``,
    ``project/baseline_LA/model.py``): 20 ms Hann window, 10 ms hop, 1024-point FFT, 20 filters on 0-4 kHz.
    Differences from the references, kept on purpose: natural log of (power + 1e-6) (torchaudio's
    ``log_lf=True``) instead of ``log10(power + eps)`` (a constant factor ln 10 and a floor), and no
    replacement of c0 by frame energy in the LCNN preset.

Log-mel (``logmel``)
    ``torchaudio.transforms.MelSpectrogram`` (20 ms Hann window, 10 ms hop, 512-point FFT, HTK mel scale,
    0 Hz to Nyquist) and natural log of (power + 1e-6).

Shapes: waveforms are mono float arrays ``[N]``; features are ``[T, D]`` (frames first), float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import librosa
import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as AT

LOG_OFFSET = 1e-6  # torchaudio's log_lf offset; power spectra of float audio in [-1, 1]


@dataclass(frozen=True)
class Controls:
    """Shortcut controls applied to every clip, in this order: resample, trim, loudness."""

    sample_rate: int | None = 16000  # working rate; None keeps each clip's native rate (no rate control)
    trim_silence: bool = True
    top_db: float = 40.0  # trim threshold below the clip's loudest frame (librosa.effects.trim)
    loudness: bool = True
    target_dbfs: float = -26.0  # RMS level of every clip after trimming

    def __post_init__(self) -> None:
        if self.sample_rate is not None and (
            int(self.sample_rate) != self.sample_rate or self.sample_rate < 8000
        ):
            raise ValueError(
                f"Controls.sample_rate must be an integer >= 8000 Hz or None, got {self.sample_rate!r}"
            )
        if not self.top_db > 0:
            raise ValueError(f"Controls.top_db must be > 0, got {self.top_db!r}")
        if not math.isfinite(self.target_dbfs) or self.target_dbfs >= 0:
            raise ValueError(
                f"Controls.target_dbfs must be a finite level below 0 dBFS, got {self.target_dbfs!r}"
            )

    @property
    def match_rate(self) -> bool:
        """True when every clip is resampled to one working rate (the sample-rate control)."""
        return self.sample_rate is not None

    @classmethod
    def none(cls, sample_rate: int | None = 16000) -> Controls:
        """No silence or loudness control. Resampling stays on by default (see the module docstring)."""
        return cls(sample_rate=sample_rate, trim_silence=False, loudness=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Controls:
        known = {
            k: d[k] for k in ("sample_rate", "trim_silence", "top_db", "loudness", "target_dbfs") if k in d
        }
        return cls(**known)


def check_wav(wav: np.ndarray, sr: int, what: str = "clip") -> np.ndarray:
    """Validate one mono clip and return it as float32 ``[N]``; errors name ``what``."""
    wav = np.asarray(wav)
    if wav.ndim == 2 and 1 in wav.shape:
        wav = wav.reshape(-1)
    if wav.ndim != 1:
        raise ValueError(f"{what}: expected mono audio [samples], got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError(f"{what}: empty audio")
    if not np.issubdtype(wav.dtype, np.number):
        raise ValueError(f"{what}: audio must be numeric, got dtype {wav.dtype}")
    wav = wav.astype(np.float32, copy=False)
    if not np.isfinite(wav).all():
        raise ValueError(f"{what}: audio has {int((~np.isfinite(wav)).sum())} NaN/Inf samples")
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"{what}: invalid sample rate {sr!r}")
    return wav


def preprocess(wav: np.ndarray, sr: int, controls: Controls) -> tuple[np.ndarray, int]:
    """Apply ``controls`` to one clip: ``wav [N]`` at ``sr`` -> ``(wav [M] float32, new sr)``."""
    wav = check_wav(wav, sr)
    sr = int(sr)
    if controls.sample_rate is not None and sr != controls.sample_rate:
        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), sr, controls.sample_rate).numpy()
        sr = controls.sample_rate
    if controls.trim_silence:
        # 25 ms frames, 6.25 ms hop (as valle.audio.trim_silence): librosa's default 2048-sample frames
        # would leave up to ~100 ms of the silence we want gone.
        frame = max(256, int(0.025 * sr))
        trimmed, _ = librosa.effects.trim(
            wav, top_db=controls.top_db, frame_length=frame, hop_length=frame // 4
        )
        # An all-silent clip trims to nothing; keep it whole rather than invent audio.
        if trimmed.size >= int(0.03 * sr):
            wav = trimmed
    if controls.loudness:
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        if rms > 0:  # digital silence cannot be brought to a level
            wav = wav * np.float32(10 ** (controls.target_dbfs / 20) / rms)
    return np.ascontiguousarray(wav, dtype=np.float32), sr


@dataclass(frozen=True)
class LfccConfig:
    """LFCC front end; defaults are the ASVspoof 2021 LFCC-GMM baseline (see module docstring)."""

    win_ms: float = 30.0
    hop_ms: float = 15.0
    n_fft: int = 1024  # at 16 kHz; raised to the next power of two >= the window at higher rates
    n_filter: int = 70
    n_lfcc: int = 20
    f_min: float = 0.0
    f_max: float | None = 4000.0  # None = Nyquist
    window: str = "hamming"  # "hamming" | "hann"
    deltas: bool = True  # append deltas and double deltas (x3 dims)

    @classmethod
    def gmm(cls) -> LfccConfig:
        """ASVspoof 2021 LFCC-GMM baseline front end."""
        return cls()

    @classmethod
    def lcnn(cls) -> LfccConfig:
        """ASVspoof 2021 LFCC-LCNN baseline front end."""
        return cls(win_ms=20.0, hop_ms=10.0, n_fft=1024, n_filter=20, window="hann")

    @property
    def dim(self) -> int:
        return self.n_lfcc * (3 if self.deltas else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LfccConfig:
        return cls(**d)


_WINDOWS = {"hamming": torch.hamming_window, "hann": torch.hann_window}
_LFCC_CACHE: dict[tuple, torch.nn.Module] = {}


def _frame_sizes(sr: int, win_ms: float, hop_ms: float, n_fft: int) -> tuple[int, int, int]:
    win = round(sr * win_ms / 1000)
    hop = round(sr * hop_ms / 1000)
    return win, hop, max(n_fft, 1 << (win - 1).bit_length())


def _frame_pad(wav: np.ndarray, win: int, n_fft: int) -> np.ndarray:
    """Zero-pad so ``torch.stft(center=False)`` frames are the baseline's: ``x[k*hop : k*hop + win]``.

    stft centres a ``win``-long window in each ``n_fft``-long frame; ``(n_fft - win) // 2`` zeros in
    front put the window over the signal's first ``win`` samples, and the FFT's zero padding stays
    zero padding. A clip shorter than one window still yields one (zero-padded) frame.
    """
    left = (n_fft - win) // 2
    short = max(0, win - wav.size)
    return np.pad(wav, (left, n_fft - win - left + short))


def lfcc(
    wav: np.ndarray, sr: int, n_lfcc: int = 20, deltas: bool = True, config: LfccConfig | None = None
) -> np.ndarray:
    """LFCCs of one clip: ``wav [N]`` -> ``[T, 3 * n_lfcc]`` (statics, deltas, double deltas) float32.

    ``T = 1 + (N - win) // hop`` (no centre padding, as in the baseline's framing). ``n_lfcc`` and
    ``deltas`` override ``config`` (default ``LfccConfig.gmm()``).
    """
    cfg = config or LfccConfig()
    if n_lfcc != cfg.n_lfcc or deltas != cfg.deltas:
        cfg = LfccConfig(**{**cfg.to_dict(), "n_lfcc": n_lfcc, "deltas": deltas})
    if cfg.window not in _WINDOWS:
        raise ValueError(f"LfccConfig.window must be one of {sorted(_WINDOWS)}, got {cfg.window!r}")
    wav = check_wav(wav, sr)
    win, hop, n_fft = _frame_sizes(int(sr), cfg.win_ms, cfg.hop_ms, cfg.n_fft)
    f_max = sr / 2 if cfg.f_max is None else min(cfg.f_max, sr / 2)
    key = (int(sr), win, hop, n_fft, cfg.n_filter, cfg.n_lfcc, cfg.f_min, f_max, cfg.window)
    transform = _LFCC_CACHE.get(key)
    if transform is None:
        transform = AT.LFCC(
            sample_rate=int(sr),
            n_filter=cfg.n_filter,
            n_lfcc=cfg.n_lfcc,
            f_min=cfg.f_min,
            f_max=f_max,
            log_lf=True,
            speckwargs={
                "n_fft": n_fft,
                "win_length": win,
                "hop_length": hop,
                "window_fn": _WINDOWS[cfg.window],
                "center": False,
                "power": 2.0,
            },
        )
        _LFCC_CACHE[key] = transform
    with torch.no_grad():
        feats = transform(torch.from_numpy(_frame_pad(wav, win, n_fft)))  # [n_lfcc, T]
        if cfg.deltas:
            d1 = AF.compute_deltas(feats, win_length=3)
            d2 = AF.compute_deltas(d1, win_length=3)
            feats = torch.cat([feats, d1, d2], dim=0)
    return feats.T.contiguous().numpy().astype(np.float32, copy=False)


_MEL_CACHE: dict[tuple, torch.nn.Module] = {}


def logmel(
    wav: np.ndarray, sr: int, n_mels: int = 64, win_ms: float = 20.0, hop_ms: float = 10.0
) -> np.ndarray:
    """Log-mel spectrogram of one clip: ``wav [N]`` -> ``[T, n_mels]`` float32 (ln of power + 1e-6)."""
    wav = check_wav(wav, sr)
    win, hop, n_fft = _frame_sizes(int(sr), win_ms, hop_ms, 512)
    key = (int(sr), win, hop, n_fft, n_mels)
    transform = _MEL_CACHE.get(key)
    if transform is None:
        transform = AT.MelSpectrogram(
            sample_rate=int(sr),
            n_fft=n_fft,
            win_length=win,
            hop_length=hop,
            n_mels=n_mels,
            center=False,
            power=2.0,
        )
        _MEL_CACHE[key] = transform
    with torch.no_grad():
        mel = transform(torch.from_numpy(_frame_pad(wav, win, n_fft)))  # [n_mels, T]
    return torch.log(mel + LOG_OFFSET).T.contiguous().numpy()
