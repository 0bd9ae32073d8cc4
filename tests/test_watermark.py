from __future__ import annotations

import numpy as np
import pytest

from valle.audio import load_audio
from watermark import Watermarker, WatermarkError, load_watermarker


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
