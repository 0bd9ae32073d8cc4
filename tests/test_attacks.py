"""The attack bank does to audio what each attack says (real codecs, filters and resamplers)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import tone
from watermark.attacks import (
    SPEEDS,
    Attack,
    attack_bank,
    codec_delay,
    lag_of,
    select,
    skipped_attacks,
)

SR = 16000


@pytest.fixture(scope="module")
def bank() -> dict[str, Attack]:
    return {a.name: a for a in attack_bank(seed=0)}


def babble(seconds: float = 2.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Non-periodic speech-like test signal: 2 kHz band-limited noise under a 4 Hz syllable envelope
    (a periodic tone would make cross-correlation lags ambiguous)."""
    from scipy import signal

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = signal.sosfilt(
        signal.butter(4, [100, 2000], btype="bandpass", fs=sr, output="sos"), rng.standard_normal(n)
    )
    env = np.clip(np.sin(2 * np.pi * 4 * np.arange(n) / sr + rng.uniform(0, 6)), 0, None)
    return (0.3 * x * env / np.max(np.abs(x))).astype(np.float32)


def band_energy(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum())


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return 10 * np.log10(np.sum(clean.astype(float) ** 2) / np.sum((noisy - clean).astype(float) ** 2))


def test_every_attack_returns_finite_clipped_mono_float32(bank):
    sr = 24000  # above every resampling target, so no attack is a no-op
    x, other = babble(1.0, sr), babble(1.0, sr, seed=9)
    families = {a.family for a in bank.values()}
    assert families == {"noise", "codec", "resample", "filter", "speed", "echo", "amplitude", "edit"}
    assert len(bank) == 39  # EnCodec is absent without weights
    for name, atk in bank.items():
        y, out_sr = atk(x, sr, original=other)
        assert y.dtype == np.float32 and y.ndim == 1 and out_sr == sr, name
        assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0, name
        assert len(y) > 0 and not np.array_equal(y, x), name


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_hits_the_target_snr_and_is_seeded(bank, kind):
    x = tone(2.0, SR, amp=0.1)
    for snr in (40, 30, 20, 10):
        atk = bank[f"{kind}_noise_{snr}db"]
        y, _ = atk(x, SR)
        assert abs(snr_db(x, y) - snr) < 0.5, (kind, snr)
        y2, _ = atk(x, SR)
        assert np.array_equal(y, y2)  # seeded: a marked clip and its original get the same noise
    white = bank["white_noise_20db"](x, SR)[0] - x
    pink = bank["pink_noise_20db"](x, SR)[0] - x
    # pink noise puts far more of its power below 1 kHz than white noise does
    low = lambda n: band_energy(n, SR, 0, 1000) / band_energy(n, SR, 0, SR / 2)  # noqa: E731
    assert low(pink) > 2 * low(white)


def test_filters_remove_energy_outside_their_band(bank):
    noise = (0.1 * np.random.default_rng(1).standard_normal(2 * SR)).astype(np.float32)
    y, _ = bank["lowpass_3k"](noise, SR)
    assert band_energy(y, SR, 4500, SR / 2) < 1e-5 * band_energy(noise, SR, 4500, SR / 2)
    assert band_energy(y, SR, 0, 2000) > 0.9 * band_energy(noise, SR, 0, 2000)
    y, _ = bank["highpass_500"](noise, SR)
    assert band_energy(y, SR, 0, 300) < 1e-4 * band_energy(noise, SR, 0, 300)
    assert band_energy(y, SR, 1000, 8000) > 0.9 * band_energy(noise, SR, 1000, 8000)
    y, _ = bank["bandpass_300_3400"](noise, SR)
    assert band_energy(y, SR, 0, 150) < 1e-4 * band_energy(noise, SR, 0, 150)
    assert band_energy(y, SR, 5000, SR / 2) < 1e-5 * band_energy(noise, SR, 5000, SR / 2)
    y, _ = bank["resample_8k"](noise, SR)  # a round trip through 8 kHz keeps nothing above 4 kHz
    assert len(y) == len(noise)
    # torchaudio's windowed sinc (width 6) leaves a narrow transition band just above 4 kHz
    assert band_energy(y, SR, 4600, SR / 2) < 1e-3 * band_energy(noise, SR, 4600, SR / 2)
    assert band_energy(y, SR, 0, 3500) > 0.9 * band_energy(noise, SR, 0, 3500)


@pytest.mark.parametrize("sr", [16000, 22050, 48000])
def test_codecs_are_lossy_time_aligned_and_keep_the_length(bank, sr):
    x = babble(2.0, sr, seed=sr)
    for atk in (a for a in bank.values() if a.family == "codec"):
        y, out_sr = atk(x, sr)
        assert out_sr == sr and len(y) == len(x), atk.name
        assert abs(lag_of(y, x, max_lag=4000)) <= 1, atk.name  # priming delay measured and removed
        assert 3 < snr_db(x, y) < 60, atk.name  # changed, but still the same signal


def test_aac_priming_delay_is_measured_not_assumed():
    # FFmpeg's AAC encoder primes 1024 samples and ADTS has no field to undo it: the bank must remove it
    assert codec_delay("aac", 16000, 32000) == 1024
    assert codec_delay("mp3", 16000, 64000) == 0  # LAME's delay is undone by the decoder (Xing/LAME tag)


def test_speed_changes_length_and_pitch_stretch_keeps_pitch(bank):
    t = np.arange(2 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

    def peak_hz(y):
        return np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y)))))]

    for f in SPEEDS:
        y, _ = bank[f"speed_{f:g}"](x, SR)
        assert len(y) == round(len(x) / f)
        assert peak_hz(y) == pytest.approx(440 * f, rel=0.01)
        y, _ = bank[f"stretch_{f:g}"](x, SR)
        assert len(y) == round(len(x) / f)
        assert peak_hz(y) == pytest.approx(440, rel=0.01)


def test_amplitude_attacks(bank):
    x = tone(1.0, SR, amp=0.3)
    y, _ = bank["gain_0.1"](x, SR)
    np.testing.assert_allclose(y, 0.1 * x, rtol=1e-6)
    y, _ = bank["gain_10"](x, SR)
    assert y.max() == 1.0 and y.min() == -1.0  # driven past full scale and hard-clipped
    np.testing.assert_array_equal(bank["polarity"](x, SR)[0], -x)
    y, _ = bank["requantize_8bit"](x, SR)
    assert len(np.unique(y)) <= 256 and np.all(y * 128 == np.round(y * 128))
    assert 40 < snr_db(x, y) < 50  # 8-bit quantisation noise on a -10 dBFS tone
    d = round(0.25 * SR)
    y, _ = bank["echo"](x, SR)
    np.testing.assert_allclose(y[d:] - x[d:], 0.3 * x[:-d], atol=1e-6)
    np.testing.assert_array_equal(y[:d], x[:d])


def test_edits(bank):
    x, original = babble(2.0), babble(2.0, seed=7)
    n = len(x)
    y, _ = bank["crop_middle_50"](x, SR)
    np.testing.assert_array_equal(y, x[n // 4 : n // 4 + n // 2])
    y, _ = bank["shift_pad_0.5s"](x, SR)
    assert len(y) == n + SR // 2 and not y[: SR // 2].any()
    np.testing.assert_array_equal(bank["shift_drop_0.1s"](x, SR)[0], x[SR // 10 :])
    y, _ = bank["splice_clean_50"](x, SR, original=original)
    np.testing.assert_array_equal(y[: n // 2], x[: n // 2])
    np.testing.assert_array_equal(y[n // 2 :], original[n // 2 :])
    with pytest.raises(ValueError, match="needs the unmarked original"):
        bank["splice_clean_50"](x, SR)
    with pytest.raises(ValueError, match="same length"):
        bank["splice_clean_50"](x, SR, original=original[:-1])


def test_bad_input_and_unknown_names_are_refused(bank):
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        bank["echo"](np.zeros((2, 100), np.float32), SR)
    with pytest.raises(ValueError, match="NaN"):
        bank["echo"](np.array([0.1, np.nan], np.float32), SR)
    with pytest.raises(ValueError, match=r"unknown attack.*nope"):
        select(list(bank.values()), "echo,nope")
    assert [a.name for a in select(list(bank.values()), "polarity, echo")] == ["echo", "polarity"]


def test_encodec_is_skipped_without_weights_and_runs_with_a_state_dict(tmp_path, one_torch_thread):
    assert "encodec_6kbps" in skipped_attacks(None)
    assert "not found" in skipped_attacks(tmp_path / "missing.th")["encodec_6kbps"]
    assert not any(a.family == "neural_codec" for a in attack_bank(tmp_path / "missing.th"))

    import torch
    from encodec import EncodecModel

    # randomly initialised weights: only to exercise the loading path, never to measure anything
    path = tmp_path / "encodec_random.th"
    torch.save(EncodecModel.encodec_model_24khz(pretrained=False).state_dict(), path)
    assert skipped_attacks(path) == {}
    (atk,) = [a for a in attack_bank(path) if a.family == "neural_codec"]
    x = babble(0.5)
    y, sr = atk(x, SR)
    assert sr == SR and len(y) == len(x) and np.all(np.isfinite(y))

    bad = tmp_path / "encodec_24khz-d7cc33bc.th"  # hub-style name whose sha256 prefix cannot match
    bad.write_bytes(path.read_bytes())
    (atk,) = [a for a in attack_bank(bad) if a.family == "neural_codec"]
    with pytest.raises(ValueError, match="sha256 prefix"):
        atk(x, SR)
