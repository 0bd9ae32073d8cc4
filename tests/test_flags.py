"""Failure flags: code repetition and loops, transcript repetition, silence, and the calibration
check that real speech encoded by the offline codec raises no code flag."""

from __future__ import annotations

import math
import time
import zlib

import numpy as np
import pytest
import torch

from evaluation.scorers.flags import (
    FLAG_NAMES,
    FlagThresholds,
    SpeechActivity,
    gzip_compression_ratio,
    periodic_repeat,
    repeated_ngrams,
    repetition_ratio,
    utterance_flags,
)
from valle.audio import load_audio

FPS = 75.0
RNG_TOKENS = 1024


def random_codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, RNG_TOKENS, n)


def looped_codes(seed: int = 1, period: int = 30, copies: int = 5, pad: int = 100) -> np.ndarray:
    """Random tokens with one ``period``-frame segment played ``copies`` times in the middle."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, RNG_TOKENS, period)
    return np.concatenate(
        [rng.integers(0, RNG_TOKENS, pad), np.tile(seg, copies), rng.integers(0, RNG_TOKENS, pad)]
    )


# --- repetition ratio -------------------------------------------------------------------------------


def test_repetition_ratio_extremes():
    assert repetition_ratio(np.full(50, 3)) == 1.0
    assert repetition_ratio(np.arange(50)) == 0.0
    assert repetition_ratio(np.array([4])) == 0.0  # no previous token


def test_repetition_ratio_analytic():
    # t=1: window [5] holds 5 -> 1; t=2: window [5, 5] holds no 7 -> 0
    assert repetition_ratio(np.array([5, 5, 7]), window=2) == pytest.approx(0.5)
    # alternating a b a b ..., K=2: t=1 -> 0/1; every later frame -> 1/2
    alt = np.tile([1, 2], 6)
    assert repetition_ratio(alt, window=2) == pytest.approx(5 / 11)
    # with K=10, frame t >= 1 sees min(t, 10) tokens of which floor(min(t, 10) / 2) equal it
    want = np.mean([(min(t, 10) // 2) / min(t, 10) for t in range(1, 12)])
    assert repetition_ratio(alt) == pytest.approx(want)


def test_repetition_ratio_bad_input():
    with pytest.raises(ValueError, match=r"codes\[:, 0\]"):
        repetition_ratio(np.zeros((10, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        repetition_ratio(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="window"):
        repetition_ratio(np.arange(10), window=0)


# --- periodic repeat --------------------------------------------------------------------------------


def test_periodic_repeat_finds_injected_loop():
    seconds, period = periodic_repeat(looped_codes(), FPS)
    # 5 copies of 0.4 s: 4 replayed copies = 1.6 s (a chance match at the edges may add a few frames)
    assert period == pytest.approx(0.4)
    assert 1.55 <= seconds <= 1.75


def test_periodic_repeat_long_period_and_jitter():
    codes = looped_codes(seed=2, period=150, copies=3)  # a 2 s phrase said three times
    rng = np.random.default_rng(3)
    hit = rng.random(len(codes)) < 0.08  # sampling noise: 8% of frames replaced
    codes = np.where(hit, rng.integers(0, RNG_TOKENS, len(codes)), codes)
    seconds, period = periodic_repeat(codes, FPS)
    assert period == pytest.approx(2.0)
    assert 3.5 <= seconds <= 4.2


def test_periodic_repeat_random_constant_and_silence():
    assert periodic_repeat(random_codes(1500), FPS)[0] < 0.1
    assert periodic_repeat(np.full(600, 7), FPS) == (0.0, 0.0)
    # codec room silence: long runs of two tokens with a stray token now and then
    rng = np.random.default_rng(4)
    runs = [np.full(rng.integers(20, 70), (810, 318)[k % 2]) for k in range(12)]
    runs.insert(5, np.array([1008, 1008, 310]))
    assert periodic_repeat(np.concatenate(runs), FPS)[0] < 0.1
    assert periodic_repeat(np.arange(5), FPS) == (0.0, 0.0)  # shorter than the shortest period


def test_periodic_repeat_is_fast():
    codes = np.concatenate([random_codes(600), np.tile(random_codes(45, seed=5), 20)])  # T=1500, P=211
    start = time.perf_counter()
    seconds, _ = periodic_repeat(codes, FPS)
    assert time.perf_counter() - start < 1.5  # ~0.06 s measured on 2 busy cores
    assert seconds > 10


def test_periodic_repeat_bad_input():
    with pytest.raises(ValueError, match="frame_rate"):
        periodic_repeat(random_codes(100), 0.0)
    with pytest.raises(ValueError, match="codes"):
        periodic_repeat(np.zeros((100, 8), dtype=np.int64), FPS)


# --- transcript checks ------------------------------------------------------------------------------


def test_gzip_ratio_matches_whisper():
    from whisper.utils import compression_ratio

    text = "please call stella ask her to bring these things with her from the store"
    b = text.encode("utf-8")
    assert gzip_compression_ratio(text) == len(b) / len(zlib.compress(b)) == compression_ratio(text)
    assert gzip_compression_ratio(text) < 2.4
    assert gzip_compression_ratio("the cat sat on the mat " * 5) > 2.4
    assert gzip_compression_ratio("") == 0.0


def test_repeated_ngrams():
    hyp = "a b a b a b c".split()
    assert repeated_ngrams(hyp, "a b c".split()) == [("a b", 3, 1)]
    assert repeated_ngrams(hyp, hyp) == []  # the reference repeats it as often
    assert repeated_ngrams(hyp, [], n_values=(2,), min_count=4) == []
    loop = "and then and then and then and then".split()
    got = repeated_ngrams(loop, "and then".split())
    assert ("and then", 4, 1) in got
    assert ("and then and then", 3, 0) in got


# --- utterance flags --------------------------------------------------------------------------------

REF = "please call stella ask her to bring these things"


def clean_inputs() -> dict:
    return dict(
        stop_reason="eos",
        codes=random_codes(300),
        frame_rate=FPS,
        ref_norm=REF,
        hyp_norm=REF,
        wer=0.0,
        deletions=0,
        seconds=3.0,
        expected_seconds=3.2,
        speech_ratio=0.8,
        longest_pause=0.3,
    )


LOOP_TEXT = "the cat sat on the mat " * 5
FAILURES = {
    "max_length": dict(stop_reason="max_length"),
    "code_repetition": dict(codes=np.full(300, 17)),
    "code_loop": dict(codes=looped_codes()),
    "transcript_repetition": dict(hyp_norm=REF + " these things these things these things"),
    "transcript_compression": dict(hyp_norm=LOOP_TEXT, ref_norm=LOOP_TEXT),  # same repeats as the ref
    "wer_failure": dict(wer=0.8),
    "duration": dict(seconds=9.0),
    "silence": dict(speech_ratio=0.1),
    "truncation": dict(deletions=6),
}


def test_flag_names():
    assert FLAG_NAMES == tuple(FAILURES)
    assert utterance_flags(**clean_inputs()) == {}


@pytest.mark.parametrize("name", list(FAILURES))
def test_each_flag_raised_alone(name):
    flags = utterance_flags(**(clean_inputs() | FAILURES[name]))
    assert list(flags) == [name]
    assert any(ch.isdigit() for ch in flags[name]) or name == "max_length"


def test_reasons_and_order():
    kw = clean_inputs() | dict(stop_reason="max_length", wer=0.8, deletions=6, longest_pause=3.0)
    flags = utterance_flags(**kw)
    assert list(flags) == ["max_length", "wer_failure", "silence", "truncation"]
    assert flags["wer_failure"] == "WER 0.80 > 0.50"
    assert "pause 3.00 s > 2.00 s" in flags["silence"]
    assert flags["truncation"].startswith("6/9 reference words deleted")
    rep = utterance_flags(**(clean_inputs() | dict(codes=np.full(300, 17))))
    assert rep["code_repetition"] == "repetition ratio 1.00 > 0.60"
    loose = FlagThresholds(repetition_ratio_max=1.0)
    assert utterance_flags(**(clean_inputs() | dict(codes=np.full(300, 17))), t=loose) == {}


def test_missing_inputs_skip_their_flags():
    none = dict(
        stop_reason=None,
        codes=None,
        frame_rate=None,
        wer=None,
        deletions=None,
        seconds=None,
        expected_seconds=None,
        speech_ratio=None,
        longest_pause=None,
    )
    assert utterance_flags(**(clean_inputs() | none)) == {}
    # codes without a frame rate: repetition is checked, the loop (needs seconds) is not
    kw = clean_inputs() | dict(codes=looped_codes(copies=12), frame_rate=None)
    assert utterance_flags(**kw) == {}
    kw = clean_inputs() | dict(codes=np.full(300, 17), frame_rate=None)
    assert list(utterance_flags(**kw)) == ["code_repetition"]
    # a duration needs both numbers; no speech at all gives a nan pause, which is no pause flag
    assert utterance_flags(**(clean_inputs() | dict(seconds=20.0, expected_seconds=None))) == {}
    assert utterance_flags(**(clean_inputs() | dict(speech_ratio=0.5, longest_pause=math.nan))) == {}


def test_utterance_flags_bad_input():
    with pytest.raises(ValueError, match="stop_reason"):
        utterance_flags(**(clean_inputs() | dict(stop_reason="stopped")))
    with pytest.raises(ValueError, match="expected_seconds"):
        utterance_flags(**(clean_inputs() | dict(expected_seconds=0.0)))
    with pytest.raises(ValueError, match="ref_norm"):
        utterance_flags(**(clean_inputs() | dict(ref_norm="", deletions=0)))


# --- real speech: VAD and calibration ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vad() -> SpeechActivity:
    return SpeechActivity()


@pytest.fixture(scope="module")
def libritts_clip(real_speech_dir, real_speech_rows) -> tuple[np.ndarray, int]:
    row = next(r for r in real_speech_rows if r["id"].startswith("libritts_"))
    return load_audio(real_speech_dir / row["audio"])


def test_vad_on_real_speech(vad, libritts_clip):
    threads = torch.get_num_threads()
    wav, sr = libritts_clip
    ratio, pause = vad.measure(wav, sr)
    assert ratio > 0.5
    assert pause < 1.0
    assert torch.get_num_threads() == threads  # the VAD runs on one thread and restores the setting


def test_vad_finds_internal_pause(vad, libritts_clip):
    wav, sr = libritts_clip
    gap = np.zeros(3 * sr, dtype=np.float32)
    ratio, pause = vad.measure(np.concatenate([wav, gap, wav]), sr)
    assert 2.0 < pause < 3.5
    assert ratio < vad.measure(wav, sr)[0]
    ratio, pause = vad.measure(np.zeros(16000, dtype=np.float32), 16000)
    assert ratio == 0.0 and math.isnan(pause)
    with pytest.raises(ValueError, match="wav"):
        vad.measure(np.zeros((100, 2), dtype=np.float32), 16000)


def test_real_speech_codes_raise_no_code_flag(real_speech_dir, real_speech_rows, one_torch_thread):
    """The calibration check: every real clip, encoded by the offline codec, stays well clear."""
    from valle.codec import load_codec

    codec = load_codec("melvq_24khz")
    t = FlagThresholds()
    for row in real_speech_rows:
        wav, sr = load_audio(real_speech_dir / row["audio"])
        codes = codec.encode(wav, sr, name=row["id"])[:, 0].numpy()
        assert repetition_ratio(codes) < 0.8 * t.repetition_ratio_max, row["id"]
        assert periodic_repeat(codes, codec.frame_rate)[0] < 0.5 * t.loop_min_seconds, row["id"]
        flags = utterance_flags(
            stop_reason="eos",
            codes=codes,
            frame_rate=codec.frame_rate,
            ref_norm="x",
            hyp_norm="x",
            wer=None,
            deletions=None,
            seconds=None,
            expected_seconds=None,
            speech_ratio=None,
            longest_pause=None,
        )
        assert flags == {}, (row["id"], flags)
