from __future__ import annotations

import numpy as np
import pytest

from valle.audio import load_audio
from watermark import WATERMARKERS, Watermarker, WatermarkError, load_watermarker
from watermark.base import check_wav


@pytest.fixture(scope="module")
def perth() -> Watermarker:
    return load_watermarker("perth")


def test_perth_marks_real_speech_and_leaves_clean_speech_unflagged(perth, real_speech_dir, real_speech_rows):
    assert isinstance(perth, Watermarker) and perth.payload_bits == 0
    row = next(r for r in real_speech_rows if r["id"] == "vctk_p226_003")
    wav, sr = load_audio(real_speech_dir / row["audio"], 24000)
    marked = perth.embed(wav, sr)
    assert marked.shape == wav.shape and marked.dtype == np.float32
    snr = 10 * np.log10(np.sum(wav**2) / np.sum((marked - wav) ** 2))
    assert snr > 15  # imperceptibility: the mark is well below the speech
    assert perth.detect(marked, sr).detected
    assert not perth.detect(wav, sr).detected
    assert len(perth.card()["weights_sha256"]) == 64


def test_presence_only_backend_refuses_a_payload(perth):
    with pytest.raises(WatermarkError, match="presence only"):
        perth.embed(np.ones(24000, np.float32) * 0.1, 24000, payload=[1, 0])
    with pytest.raises(WatermarkError, match="unknown watermark backend"):
        load_watermarker("wavmark")


def test_very_short_clips_are_marked_without_error(perth):
    from tests.conftest import tone

    clip = tone(0.03)  # two codec frames: what a generator that stops at once produces
    marked = perth.embed(clip, 24000)
    assert marked.shape == clip.shape
    assert 0.0 <= perth.detect(marked, 24000).score <= 1.0


def test_silence_is_refused_for_marking_and_scores_zero(perth):
    silence = np.zeros(24000, np.float32)
    with pytest.raises(WatermarkError, match="audio to watermark: audio is silent"):
        perth.embed(silence, 24000)
    det = perth.detect(silence, 24000)  # PerthNet itself scores silence NaN
    assert det.score == 0.0 and not det.detected
    with pytest.raises(WatermarkError, match=r"'perth' has no option generator"):
        load_watermarker("perth", generator="x.pth")


@pytest.mark.parametrize(
    ("wav", "sr", "message"),
    [
        (np.zeros(0, np.float32), 24000, "empty"),
        (np.array([0.1, np.nan, np.inf], np.float32), 24000, "2 NaN/Inf samples"),
        (np.ones(100, np.float32) * 0.1, 1000, "sample rate 1000 Hz is outside"),
        (np.ones(100, np.float32) * 0.1, 24000.0, "sample rate 24000.0 Hz"),
        (np.ones((100, 2), np.float32) * 0.1, 24000, r"shape \(100, 2\)"),
        (np.ones(100, np.int16), 24000, "dtype int16"),
    ],
)
def test_check_wav_names_the_audio_and_the_problem(wav, sr, message):
    with pytest.raises(WatermarkError, match=f"clip.wav: .*{message}"):
        check_wav(wav, sr, "clip.wav")


def test_check_wav_accepts_usable_audio():
    check_wav(np.zeros(10, np.float32), 16000, "silence")  # silence is fine unless refused explicitly
    check_wav(np.ones(10, np.float64) * 0.1, np.int64(48000), "clip", allow_silent=False)
    assert WATERMARKERS == ("perth", "audioseal", "keyed")
