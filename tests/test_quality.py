"""DNSMOS through speechmos's bundled ONNX models, on a real clip and the same clip in noise."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from evaluation.scorers.quality import DNSMOS
from valle.audio import load_audio

KEYS = {"sig", "bak", "ovrl", "p808"}


@pytest.fixture(scope="module")
def dnsmos() -> DNSMOS:
    return DNSMOS()


@pytest.fixture(scope="module")
def clips(real_speech_dir, real_speech_rows) -> tuple[np.ndarray, np.ndarray, int]:
    """A 3 s LibriTTS clip (24 kHz) and the same clip in white noise at 0 dB SNR."""
    row = next(r for r in real_speech_rows if r["id"].startswith("libritts_"))
    wav, sr = load_audio(real_speech_dir / row["audio"])
    noise = np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32)
    noise *= np.sqrt(np.mean(wav**2) / np.mean(noise**2))  # equal power: SNR 0 dB
    noisy = wav + noise
    noisy /= max(1.0, float(np.abs(noisy).max()))  # keep within [-1, 1] without clipping
    return wav, noisy, sr


@pytest.fixture(scope="module")
def singles(dnsmos, clips) -> list[dict[str, float]]:
    wav, noisy, sr = clips
    return [dnsmos.score(wav, sr), dnsmos.score(noisy, sr)]


def test_scores_and_noise(singles):
    clean, noisy = singles
    for s in singles:
        assert set(s) == KEYS
        assert all(1.0 <= v <= 5.0 for v in s.values()), s
    # measured: clean ovrl 2.96 / bak 3.79, noisy ovrl 1.58 / bak 1.58
    assert clean["ovrl"] > noisy["ovrl"] + 0.5
    assert clean["bak"] > noisy["bak"] + 1.0


def test_batch_equals_single(dnsmos, clips, singles):
    wav, noisy, sr = clips
    assert dnsmos.score_batch([wav, noisy], sr) == singles


def test_card_hashes_the_loaded_files(dnsmos):
    from speechmos import dnsmos as package

    card = dnsmos.card()
    assert card["backend"] == "dnsmos"
    assert card["model"] == ["sig_bak_ovr.onnx", "model_v8.onnx"]
    folder = Path(package.__file__).parent / "dnsmos_models"
    for name, digest in card["sha256"].items():
        assert digest == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_bad_input_names_the_clip(dnsmos):
    with pytest.raises(ValueError, match=r"clip 1.*empty"):
        dnsmos.score_batch([np.zeros(1600, np.float32), np.zeros(0, np.float32)], 16000)
    with pytest.raises(ValueError, match=r"clip 0.*\[-1, 1\]"):
        dnsmos.score_batch([np.full(1600, 1.5, np.float32)], 16000)
    with pytest.raises(ValueError, match="shape"):
        dnsmos.score(np.zeros((1600, 2), np.float32), 16000)
