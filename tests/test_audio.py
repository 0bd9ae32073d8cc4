from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import tone
from valle import audio
from valle.audio import AudioError


def test_save_load_round_trip_with_resample_and_downmix(tmp_path):
    stereo = np.stack([tone(1.0, sr=48000), tone(1.0, sr=48000, freq=330.0)], axis=1)
    sf.write(tmp_path / "st.wav", stereo, 48000)
    wav, sr = audio.load_audio(tmp_path / "st.wav", sample_rate=16000)
    assert sr == 16000 and wav.dtype == np.float32 and wav.shape == (16000,)
    # the downmix is the channel mean, so its energy sits between the channels'
    assert 0.1 < np.abs(wav).max() < 1.0
    path = audio.save_audio(tmp_path / "sub" / "out.wav", wav, sr)
    back, sr2 = audio.load_audio(path)
    assert sr2 == 16000 and np.abs(back - wav).max() < 1e-3  # 16-bit quantisation only
    assert not list((tmp_path / "sub").glob(".*partial"))


def test_resample_preserves_a_tone_frequency():
    wav = tone(1.0, sr=48000, freq=440.0, amp=0.5)
    out = audio.resample(wav, 48000, 16000)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440.0) < 2.0


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(16000, dtype=np.float32), "silent"),
    ],
)
def test_load_rejects_empty_and_silent_files(tmp_path, content, match):
    path = tmp_path / "bad.wav"
    sf.write(path, content, 16000)
    with pytest.raises(AudioError, match=match) as err:
        audio.load_audio(path)
    assert str(path) in str(err.value)


def test_load_rejects_missing_unreadable_nan_and_absurd_rate(tmp_path):
    with pytest.raises(AudioError, match="file not found"):
        audio.load_audio(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("this is not audio")
    with pytest.raises(AudioError, match="unreadable"):
        audio.load_audio(tmp_path / "text.wav")
    nan = tone(0.5)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN/Inf"):
        audio.load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "slow.wav", tone(0.5, sr=1000), 1000)
    with pytest.raises(AudioError, match="outside the supported range"):
        audio.load_audio(tmp_path / "slow.wav")
    sf.write(tmp_path / "ok.wav", tone(0.5), 24000)
    with pytest.raises(AudioError, match="1000000 Hz is outside the supported range"):
        audio.load_audio(tmp_path / "ok.wav", sample_rate=1_000_000)


def test_silent_allowed_when_asked(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(800, dtype=np.float32), 16000)
    wav, _ = audio.load_audio(tmp_path / "quiet.wav", allow_silent=True)
    assert wav.shape == (800,)


def test_peak_and_loudness_normalisation():
    wav = tone(2.0, amp=0.05)
    peaked = audio.peak_normalize(wav, peak_db=-3.0)
    assert abs(20 * np.log10(np.abs(peaked).max()) + 3.0) < 1e-3
    leveled = audio.loudness_normalize(wav, 24000, target_lufs=-23.0)
    assert abs(audio.loudness(leveled, 24000) + 23.0) < 0.1
    loud = audio.loudness_normalize(wav, 24000, target_lufs=0.0)  # would clip: peak-limited instead
    assert np.abs(loud).max() < 1.0
    with pytest.raises(AudioError, match="silent"):
        audio.peak_normalize(np.zeros(100, dtype=np.float32))


def test_trim_silence_cuts_leading_and_trailing_quiet():
    sr = 16000
    wav = np.concatenate([np.zeros(sr, np.float32), tone(1.0, sr=sr), np.zeros(sr // 2, np.float32)])
    trimmed = audio.trim_silence(wav, sr)
    assert abs(len(trimmed) / sr - 1.0) < 0.1


def test_duration_reads_header(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.5, sr=22050), 22050)
    assert abs(audio.duration(tmp_path / "a.wav") - 1.5) < 1e-6
