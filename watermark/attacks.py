"""The attack bank: signal edits a watermark should survive, kept apart from the backends.

Each :class:`Attack` maps mono float32 audio ``[N]`` at rate ``sr`` to mono float32 audio at a rate
it returns (every attack here returns ``sr`` again; some change the length). Outputs are finite and
clipped to [-1, 1], as a file written to disk would be. The bank follows the augmentation families of
AudioSeal (San Roman et al., "Proactive Detection of Voice Cloning with Localized Watermarking", ICML
2024, appendix on augmentations, and ``audiocraft/utils/audio_effects.py``) and WavMark (Chen et al., 2023):

- ``noise``: white or pink (1/f power) Gaussian noise scaled to an SNR over the whole clip. The noise
  is seeded by (seed, attack name), so a marked clip and its unmarked original get the same noise.
- ``codec``: MP3 (LAME), AAC (FFmpeg's native encoder) and Opus (libopus) encoded and decoded in process
  with PyAV into an in-memory container; Vorbis with libvorbis through soundfile/libsndfile (PyAV's wheel
  has no libvorbis, and FFmpeg's own Vorbis encoder is experimental, stereo-only and ignores the
  bitrate, so Vorbis is set by libvorbis VBR quality: q0 ~ 30-60 kbit/s and q5 ~ 50-95 kbit/s on mono
  speech at 16-48 kHz). Opus runs at 48 kHz (resampled in and out), the others at the clip's rate
  when the codec supports it (else 48 kHz). Every codec delays its output by an encoder priming delay
  that the container may or may not undo (AAC in ADTS keeps 1024 samples); the delay is measured once
  per (codec, rate, bitrate) by cross-correlating a noise probe and removed, and the output is cut or
  zero-padded to the input length, so attacked audio is time-aligned with the input.
- ``resample``: a round trip through a lower rate (``torchaudio.functional.resample``, windowed sinc):
  removes everything above the intermediate Nyquist frequency. A target at or above ``sr`` is a no-op.
- ``filter``: zero-phase Butterworth low-, high- and band-pass (order 8, ``scipy.signal.sosfiltfilt``),
  including the 300-3400 Hz telephone band (ITU-T G.712).
- ``speed``: speed change with pitch change (resample-based, like playing a tape faster: a factor
  ``f`` gives ``N / f`` samples), and time stretch without pitch change (``librosa.effects.time_stretch``,
  phase vocoder; also ``N / f`` samples).
- ``echo``: one reflection, ``y[n] = x[n] + gain * x[n - delay]`` (same length).
- ``amplitude``: gain x0.1 and x10; x10 drives speech past full scale, so it is hard-clipped at +-1
  (what saving to PCM does): this is a clipping-distortion attack, not only a level change. Polarity
  inversion. Requantisation to 8-bit PCM (256 levels, ``round(128 x) / 128`` clipped to [-128, 127]).
- ``edit``: crop (keep the middle 50%), shift (prepend 0.5 s of silence / drop the first 0.1 s) and
  splice: ``marked[:N // 2] + original[N // 2:]``, the first half marked and the second half the same
  span of the unmarked original. Splice needs the unmarked original, passed as
  ``attack(wav, sr, original=clean)``; ``Attack.needs_original`` says which attacks need it.
- ``neural_codec``: EnCodec 24 kHz at 6 kbit/s (Defossez et al., 2022), only when ``encodec_weights``
  names an existing state-dict file (loaded with ``torch.load(weights_only=True)``); otherwise it is left
  out of the bank and :func:`skipped_attacks` says why.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from scipy import fft, signal

NOISE_SNRS_DB = (40, 30, 20, 10)
# (codec, bitrate in bit/s); Vorbis is set by libvorbis quality (0-10 scale), see the module docstring
LOSSY = (
    ("mp3", 32_000),
    ("mp3", 64_000),
    ("mp3", 128_000),
    ("aac", 32_000),
    ("aac", 64_000),
    ("opus", 16_000),
    ("opus", 32_000),
)
VORBIS_QUALITIES = (0, 5)
RESAMPLE_RATES = (8000, 16000, 22050)
SPEEDS = (0.9, 1.1, 1.25)
ENCODEC_KBPS = 6.0
ENCODEC_SR = 24000

# PyAV encoder name, container, sample rates the encoder accepts
_PYAV_CODECS = {
    "mp3": ("libmp3lame", "mp3", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "aac": (
        "aac",
        "adts",
        (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000),
    ),
    "opus": ("libopus", "ogg", (48000,)),
}
_MAX_CODEC_DELAY = 8192  # samples searched when measuring a codec's priming delay


@dataclass(frozen=True)
class Attack:
    """One named signal edit. ``fn(wav [N] float32, sr) -> (wav [M] float32, sr_out)``; attacks with
    ``needs_original`` also take ``original=`` (the unmarked clip, same length as ``wav``)."""

    name: str
    family: str
    params: dict = field(hash=False)
    fn: Callable[..., tuple[np.ndarray, int]]
    needs_original: bool = False

    def __call__(
        self, wav: np.ndarray, sr: int, original: np.ndarray | None = None
    ) -> tuple[np.ndarray, int]:
        """Apply the attack; ``original`` is used only by attacks that need it. Returns mono float32
        audio clipped to [-1, 1] and its sample rate."""
        wav = _check(wav, sr, f"input to attack {self.name!r}")
        if self.needs_original:
            if original is None:
                raise ValueError(f"attack {self.name!r} needs the unmarked original: call it with original=")
            out, out_sr = self.fn(
                wav, sr, original=_check(original, sr, f"original for attack {self.name!r}")
            )
        else:
            out, out_sr = self.fn(wav, sr)
        return _finish(out), int(out_sr)


def attack_bank(encodec_weights: str | Path | None = None, seed: int = 0) -> list[Attack]:
    """Every attack, in table order. EnCodec is included only when ``encodec_weights`` is an existing
    file (see :func:`skipped_attacks`)."""
    bank: list[Attack] = []
    for kind in ("white", "pink"):
        for snr in NOISE_SNRS_DB:
            name = f"{kind}_noise_{snr}db"
            bank.append(
                Attack(name, "noise", {"kind": kind, "snr_db": snr, "seed": seed},
                       functools.partial(add_noise, snr_db=snr, kind=kind, seed=_seed(seed, name)))
            )  # fmt: skip
    for codec, bitrate in LOSSY:
        bank.append(
            Attack(f"{codec}_{bitrate // 1000}k", "codec", {"codec": codec, "bitrate": bitrate},
                   functools.partial(lossy_codec, codec=codec, bitrate=bitrate))
        )  # fmt: skip
    for q in VORBIS_QUALITIES:
        bank.append(
            Attack(f"vorbis_q{q}", "codec", {"codec": "vorbis", "quality": q},
                   functools.partial(vorbis, quality=q))
        )  # fmt: skip
    for rate in RESAMPLE_RATES:
        bank.append(
            Attack(f"resample_{rate / 1000:g}k", "resample", {"via_hz": rate},
                   functools.partial(resample_round_trip, via=rate))
        )  # fmt: skip
    bands = (("lowpass_3k", None, 3000), ("lowpass_5k", None, 5000), ("highpass_500", 500, None),
             ("bandpass_300_3400", 300, 3400))  # fmt: skip
    for name, low, high in bands:
        bank.append(Attack(name, "filter", {"low_hz": low, "high_hz": high},
                           functools.partial(band_filter, low=low, high=high)))  # fmt: skip
    for f in SPEEDS:
        bank.append(Attack(f"speed_{f:g}", "speed", {"factor": f, "pitch": "changes"},
                           functools.partial(speed, factor=f)))  # fmt: skip
    for f in SPEEDS:
        bank.append(Attack(f"stretch_{f:g}", "speed", {"factor": f, "pitch": "kept"},
                           functools.partial(time_stretch, factor=f)))  # fmt: skip
    bank += [
        Attack(
            "echo", "echo", {"delay_s": 0.25, "gain": 0.3}, functools.partial(echo, delay_s=0.25, gain=0.3)
        ),
        Attack("gain_0.1", "amplitude", {"gain": 0.1}, functools.partial(gain, factor=0.1)),
        Attack("gain_10", "amplitude", {"gain": 10.0, "clipped": True}, functools.partial(gain, factor=10.0)),
        Attack("polarity", "amplitude", {}, invert_polarity),
        Attack("requantize_8bit", "amplitude", {"bits": 8}, requantize_8bit),
        Attack("crop_middle_50", "edit", {"keep": 0.5}, crop_middle),
        Attack("shift_pad_0.5s", "edit", {"prepend_s": 0.5}, functools.partial(shift, seconds=0.5)),
        Attack("shift_drop_0.1s", "edit", {"drop_s": 0.1}, functools.partial(shift, seconds=-0.1)),
        Attack("splice_clean_50", "edit", {"marked_fraction": 0.5}, splice, needs_original=True),
    ]
    if _encodec_file(encodec_weights) is not None:
        path = str(Path(encodec_weights).resolve())  # type: ignore[arg-type]
        params = {"bandwidth_kbps": ENCODEC_KBPS, "weights": path}
        fn = functools.partial(encodec_round_trip, weights=path, bandwidth=ENCODEC_KBPS)
        bank.append(Attack(f"encodec_{ENCODEC_KBPS:g}kbps", "neural_codec", params, fn))
    return bank


def skipped_attacks(encodec_weights: str | Path | None = None) -> dict[str, str]:
    """Attacks that :func:`attack_bank` leaves out with these arguments, and why."""
    if _encodec_file(encodec_weights) is not None:
        return {}
    why = (
        "no EnCodec weights given (pass the 24 kHz state dict, e.g. encodec_24khz-d7cc33bc.th)"
        if encodec_weights is None
        else f"EnCodec weights file not found: {encodec_weights}"
    )
    return {f"encodec_{ENCODEC_KBPS:g}kbps": why}


def select(bank: list[Attack], names: str | list[str] | None) -> list[Attack]:
    """The attacks named (comma-separated string or list), in bank order; ``None`` keeps all."""
    if names is None:
        return list(bank)
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    known = {a.name for a in bank}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(
            f"unknown attack(s) {', '.join(unknown)}; available: {', '.join(a.name for a in bank)}"
        )
    return [a for a in bank if a.name in wanted]


# ---------------------------------------------------------------- noise


def add_noise(
    wav: np.ndarray, sr: int, snr_db: float, kind: str = "white", seed: int = 0
) -> tuple[np.ndarray, int]:
    """Add white or pink Gaussian noise at ``snr_db`` (mean power of the clip over mean noise power)."""
    if kind not in ("white", "pink"):
        raise ValueError(f"noise kind must be 'white' or 'pink', got {kind!r}")
    rng = np.random.default_rng(seed)
    noise = _pink(rng, len(wav)) if kind == "pink" else rng.standard_normal(len(wav))
    p_signal = float(np.mean(wav.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise**2))
    if p_signal == 0.0 or p_noise == 0.0:
        return wav.copy(), sr
    noise *= np.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return (wav + noise).astype(np.float32), sr


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum: white noise shaped by 1/sqrt(f) in the frequency
    domain (DC gets the lowest bin's gain); made at an FFT-friendly length, then cut to ``n``."""
    m = fft.next_fast_len(n, real=True)
    spec = fft.rfft(rng.standard_normal(m))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    return fft.irfft(spec / np.sqrt(f), n=m)[:n]


# ---------------------------------------------------------------- lossy codecs


def lossy_codec(wav: np.ndarray, sr: int, codec: str, bitrate: int) -> tuple[np.ndarray, int]:
    """Encode and decode with PyAV (in memory); output time-aligned with and as long as the input."""
    if codec not in _PYAV_CODECS:
        raise ValueError(f"codec must be one of {', '.join(_PYAV_CODECS)}, got {codec!r}")
    rates = _PYAV_CODECS[codec][2]
    rate = sr if sr in rates else 48000
    x = _resample(wav, sr, rate)
    y = _pyav_round_trip(x, rate, codec, bitrate)
    y = _align(y, codec_delay(codec, rate, bitrate), len(x))
    return fit(_resample(y, rate, sr), len(wav)), sr


def vorbis(wav: np.ndarray, sr: int, quality: int) -> tuple[np.ndarray, int]:
    """Ogg Vorbis (libvorbis VBR, ``quality`` on its 0-10 scale) through libsndfile, in memory."""
    y = _vorbis_round_trip(wav, sr, quality)
    return _align(y, codec_delay("vorbis", sr, quality), len(wav)), sr


def _pyav_round_trip(x: np.ndarray, sr: int, codec: str, bitrate: int) -> np.ndarray:
    # PyAV loads FFmpeg's libraries; only the lossy-codec attacks need them
    import av

    encoder, container, _ = _PYAV_CODECS[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=sr, layout="mono")
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x[None], dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = sr
        # PyAV converts the sample format and cuts the frame into encoder-sized frames itself
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buf.seek(0)
    chunks = []
    with av.open(buf, "r") as inp:
        dec_rate = inp.streams.audio[0].rate
        to_mono = av.AudioResampler(format="flt", layout="mono", rate=dec_rate)
        for fr in inp.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in to_mono.resample(fr)]
        chunks += [f.to_ndarray().reshape(-1) for f in to_mono.resample(None)]
    if dec_rate != sr:
        raise RuntimeError(f"{codec} decoded at {dec_rate} Hz, encoded at {sr} Hz")
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _vorbis_round_trip(x: np.ndarray, sr: int, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    # libsndfile maps compression_level c to libvorbis VBR quality 1 - c (0 = q10 ... 1 = q0)
    sf.write(buf, x, sr, format="OGG", subtype="VORBIS", compression_level=1.0 - quality / 10)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32", always_2d=True)
    return y.mean(axis=1)


@functools.lru_cache(maxsize=64)
def codec_delay(codec: str, sr: int, setting: int) -> int:
    """Samples the decoded output lags the input, from the cross-correlation peak on a seeded noise
    probe (band-limited to 2 kHz so every bitrate keeps it). Constant for a (codec, rate, setting)."""
    rng = np.random.default_rng(1234)
    probe = np.zeros(2 * sr, np.float32)
    burst = signal.sosfilt(signal.butter(4, 2000, fs=sr, output="sos"), rng.standard_normal(sr))
    probe[sr // 2 : sr // 2 + sr] = 0.3 * burst / np.max(np.abs(burst))
    y = (
        _vorbis_round_trip(probe, sr, setting)
        if codec == "vorbis"
        else _pyav_round_trip(probe, sr, codec, setting)
    )
    return lag_of(y, probe, max_lag=_MAX_CODEC_DELAY)


def lag_of(y: np.ndarray, x: np.ndarray, max_lag: int | None = None) -> int:
    """Lag (samples) at which ``y`` best matches ``x`` (peak of |cross-correlation|): positive when
    ``y`` is late."""
    corr = np.abs(signal.correlate(y, x, mode="full", method="fft"))
    lags = signal.correlation_lags(len(y), len(x), mode="full")
    if max_lag is not None:
        keep = np.abs(lags) <= max_lag
        corr, lags = corr[keep], lags[keep]
    return int(lags[int(np.argmax(corr))])


def _align(y: np.ndarray, delay: int, n: int) -> np.ndarray:
    y = y[delay:] if delay >= 0 else np.concatenate([np.zeros(-delay, y.dtype), y])
    return fit(y, n)


# ---------------------------------------------------------------- resampling, filters, speed


def resample_round_trip(wav: np.ndarray, sr: int, via: int) -> tuple[np.ndarray, int]:
    """Down to ``via`` Hz and back to ``sr`` (no-op when ``via >= sr``)."""
    if via >= sr:
        return wav.copy(), sr
    return fit(_resample(_resample(wav, sr, via), via, sr), len(wav)), sr


def band_filter(
    wav: np.ndarray, sr: int, low: float | None = None, high: float | None = None
) -> tuple[np.ndarray, int]:
    """Zero-phase Butterworth (order 8): low-pass below ``high``, high-pass above ``low``, band-pass
    with both. An edge at or above Nyquist is dropped (nothing there to remove)."""
    nyq = sr / 2
    high = high if high is not None and high < nyq else None
    low = low if low is not None and 0 < low < nyq else None
    if low is None and high is None:
        return wav.copy(), sr
    if low is not None and high is not None:
        sos = signal.butter(8, [low, high], btype="bandpass", fs=sr, output="sos")
    elif high is not None:
        sos = signal.butter(8, high, btype="lowpass", fs=sr, output="sos")
    else:
        sos = signal.butter(8, low, btype="highpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, wav).astype(np.float32), sr


def speed(wav: np.ndarray, sr: int, factor: float) -> tuple[np.ndarray, int]:
    """Play ``factor`` times faster, pitch shifted by the same factor: ``round(N / factor)`` samples."""
    ratio = Fraction(factor).limit_denominator(100)
    y = _resample(wav, ratio.numerator, ratio.denominator)
    return fit(y, round(len(wav) / factor)), sr


def time_stretch(wav: np.ndarray, sr: int, factor: float) -> tuple[np.ndarray, int]:
    """Phase-vocoder time stretch, ``factor`` times faster at the same pitch: ``round(N / factor)``."""
    y = librosa.effects.time_stretch(np.asarray(wav, np.float32), rate=factor)
    return fit(y, round(len(wav) / factor)), sr


def _resample(wav: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return np.asarray(wav, np.float32)

    return AF.resample(torch.from_numpy(np.ascontiguousarray(wav, np.float32)), orig, new).numpy()


# ---------------------------------------------------------------- echo, amplitude


def echo(wav: np.ndarray, sr: int, delay_s: float = 0.25, gain: float = 0.3) -> tuple[np.ndarray, int]:
    """One reflection ``delay_s`` later at ``gain``; same length."""
    d = round(delay_s * sr)
    y = wav.astype(np.float32).copy()
    if d < len(wav):
        y[d:] += gain * wav[: len(wav) - d]
    return y, sr


def gain(wav: np.ndarray, sr: int, factor: float) -> tuple[np.ndarray, int]:
    """Scale by ``factor``; the result is clipped to [-1, 1] by ``Attack.__call__``."""
    return (wav * np.float32(factor)).astype(np.float32), sr


def invert_polarity(wav: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    return -wav, sr


def requantize_8bit(wav: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """Signed 8-bit PCM: 256 levels k / 128, k in [-128, 127]."""
    return (np.clip(np.round(wav * 128.0), -128, 127) / 128.0).astype(np.float32), sr


# ---------------------------------------------------------------- edits


def crop_middle(wav: np.ndarray, sr: int, keep: float = 0.5) -> tuple[np.ndarray, int]:
    """Keep the middle ``keep`` fraction."""
    n = max(1, round(len(wav) * keep))
    start = (len(wav) - n) // 2
    return wav[start : start + n].copy(), sr


def shift(wav: np.ndarray, sr: int, seconds: float) -> tuple[np.ndarray, int]:
    """Positive: prepend that much silence (longer); negative: drop that much from the start."""
    k = round(abs(seconds) * sr)
    if seconds >= 0:
        return np.concatenate([np.zeros(k, np.float32), wav]), sr
    return wav[min(k, len(wav) - 1) :].copy(), sr


def splice(wav: np.ndarray, sr: int, original: np.ndarray) -> tuple[np.ndarray, int]:
    """``wav[:N // 2] + original[N // 2:]``: the second half replaced by the unmarked original."""
    if len(original) != len(wav):
        raise ValueError(
            f"splice needs the original at the same length ({len(original)} != {len(wav)} samples)"
        )
    half = len(wav) // 2
    return np.concatenate([wav[:half], original[half:]]).astype(np.float32), sr


# ---------------------------------------------------------------- EnCodec


def encodec_round_trip(
    wav: np.ndarray, sr: int, weights: str, bandwidth: float = ENCODEC_KBPS
) -> tuple[np.ndarray, int]:
    """EnCodec 24 kHz encode + decode at ``bandwidth`` kbit/s (resampled to 24 kHz and back)."""
    model = _encodec_model(weights, bandwidth)
    x = _resample(wav, sr, ENCODEC_SR)
    with torch.inference_mode():
        y = model.decode(model.encode(torch.from_numpy(x)[None, None]))[0, 0].numpy()
    return fit(_resample(fit(y, len(x)), ENCODEC_SR, sr), len(wav)), sr


@functools.lru_cache(maxsize=2)
def _encodec_model(weights: str, bandwidth: float):
    # the encodec package is heavy; only the codec attack needs it
    from encodec import EncodecModel

    path = Path(weights)
    # torch hub names carry the first sha256 hex digits (encodec_24khz-d7cc33bc.th): check them
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", path.name)
    if m and not hashlib.sha256(path.read_bytes()).hexdigest().startswith(m.group(1)):
        raise ValueError(f"EnCodec weights {path} do not match the sha256 prefix {m.group(1)} in their name")
    model = EncodecModel.encodec_model_24khz(pretrained=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.set_target_bandwidth(bandwidth)
    return model.eval()


def _encodec_file(weights: str | Path | None) -> Path | None:
    return Path(weights) if weights is not None and Path(weights).is_file() else None


# ---------------------------------------------------------------- helpers


def fit(wav: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad to ``n`` samples."""
    wav = np.asarray(wav, np.float32)
    return wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))


def _seed(seed: int, name: str) -> int:
    return int(seed) * 1_000_003 + zlib.crc32(name.encode())


def _check(wav: np.ndarray, sr: int, what: str) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1 or len(wav) == 0:
        raise ValueError(f"{what}: expected mono audio of shape [N] with N > 0, got shape {wav.shape}")
    if not isinstance(sr, int | np.integer) or sr <= 0:
        raise ValueError(f"{what}: sample rate must be a positive integer, got {sr!r}")
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"{what}: audio contains NaN or inf")
    return wav.astype(np.float32, copy=False)


def _finish(wav: np.ndarray) -> np.ndarray:
    """Mono float32, finite, clipped to [-1, 1] (what a saved PCM file would hold)."""
    y = np.nan_to_num(np.asarray(wav, np.float32).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(y, -1.0, 1.0).astype(np.float32)
