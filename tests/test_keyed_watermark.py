"""The keyed watermark (watermark.keyed) on real synthetic speech (eSpeak NG): no weights, no ../shared."""

from __future__ import annotations

import json

import numpy as np
import pytest

from watermark import keyed, load_watermarker
from watermark.attacks import lossy_codec, speed
from watermark.base import PAYLOAD_Z, WatermarkError
from watermark.keyed import (
    CODED_BITS,
    P_THRESHOLD,
    KeyedWatermarker,
    clipped_samples,
    conv_encode,
    layout,
    viterbi,
)
from watermark.keys import WatermarkKey

KEY = WatermarkKey("lab-2026", bytes(range(32)))
PAYLOAD = tuple(int(b) for b in np.random.default_rng(7).integers(0, 2, 32))


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """About 4 s of eSpeak NG speech (two sentences)."""
    from valle.corpus.espeak import EspeakSynth

    with EspeakSynth() as synth:
        wav, sr = synth.synthesize(
            "The quick brown fox jumps over the lazy dog near the river bank, and the birds sing.",
            voice="en-us+m1",
        )
    assert len(wav) / sr > 3.5
    return np.asarray(wav, np.float32), sr


@pytest.fixture(scope="module")
def marked(speech) -> np.ndarray:
    wav, sr = speech
    return KeyedWatermarker(key=KEY).embed(wav, sr, PAYLOAD)


def test_mark_is_found_with_its_payload_and_is_quiet(speech, marked):
    wav, sr = speech
    assert marked.shape == wav.shape and marked.dtype == np.float32
    snr = 10 * np.log10(np.sum(wav.astype(float) ** 2) / np.sum((marked - wav.astype(float)) ** 2))
    assert keyed.SNR_DB <= snr < keyed.SNR_DB + 1  # fitted to the SNR floor from above
    det = KeyedWatermarker(key=KEY).detect(marked, sr)
    assert det.detected and det.score > 0.5
    assert det.payload == PAYLOAD


def test_decoder_overshoot_does_not_weaken_the_mark(speech):
    """A decoder's output can exceed full scale. The limit to +-1 is not the mark's cost: were it
    counted in the SNR the strength is fitted to, the fit would shrink the mark to nothing (the demo
    checkpoint's outputs were written unmarked that way)."""
    wav, sr = speech
    hot = (3.0 / np.abs(wav).max()) * wav.astype(np.float64)  # peak 3
    marked = KeyedWatermarker(key=KEY).embed(hot, sr, PAYLOAD)
    limited = np.clip(hot, -1, 1)
    snr = 10 * np.log10(np.sum(limited**2) / np.sum((marked - limited) ** 2))
    assert keyed.SNR_DB <= snr < keyed.SNR_DB + 1
    assert KeyedWatermarker(key=KEY).evidence(marked, sr).p_value <= 1e-12


def test_unmarked_audio_and_other_keys_find_nothing(speech, marked):
    wav, sr = speech
    assert not KeyedWatermarker(key=KEY).detect(wav, sr).detected
    other_id = WatermarkKey("lab-2027", KEY.secret)  # same secret, another key id: independent pattern
    other_secret = WatermarkKey("lab-2026", bytes(range(1, 33)))
    for key in (other_id, other_secret):
        ev = KeyedWatermarker(key=key).evidence(marked, sr)
        assert ev.p_value > P_THRESHOLD, key


@pytest.mark.parametrize(
    "attack",
    [
        lambda w, sr: lossy_codec(w, sr, "mp3", 32_000),
        lambda w, sr: speed(w, sr, 1.1),
        lambda w, sr: speed(w, sr, 0.9),
        lambda w, sr: (w[int(0.37 * sr) :], sr),  # cropped start: the period and tile grid move
        lambda w, sr: (-0.2 * w, sr),
    ],
    ids=["mp3_32k", "speed_1.1", "speed_0.9", "crop_0.37s", "gain_polarity"],
)
def test_mark_survives_attacks(speech, marked, attack):
    _, sr = speech
    y, y_sr = attack(marked, sr)
    ev = KeyedWatermarker(key=KEY).evidence(np.asarray(y, np.float32), y_sr)
    assert ev.p_value <= P_THRESHOLD, ev


def test_clipped_tiles_are_left_out(speech, marked, monkeypatch):
    """Gain x10 into full scale flattens the loud tiles' energy; leaving tiles with clipped samples
    out of the statistic and counting the quiet ones (a function of the audio alone, so the null
    bound stands) finds the mark."""
    wav, sr = speech
    t = np.arange(sr) / sr
    sine = np.sin(2 * np.pi * 440 * t)
    assert not clipped_samples(sine).any() and clipped_samples(np.clip(2 * sine, -1, 1)).mean() > 0.3
    y = np.clip(10 * marked, -1, 1)
    wm = KeyedWatermarker(key=KEY)
    found = wm.evidence(y, sr)
    assert found.p_value <= 1e-12
    assert wm.payload_z(found.soft_bits, PAYLOAD) >= PAYLOAD_Z  # a ledger entry still matches it
    assert wm.evidence(np.clip(10 * wav, -1, 1), sr).p_value > P_THRESHOLD  # unmarked stays unmarked
    monkeypatch.setattr(keyed, "clipped_samples", lambda x: np.zeros(len(x), bool))
    assert wm.evidence(y, sr).p_value > P_THRESHOLD  # without the mask the clipped copy reads unmarked


def test_speed_search_is_what_finds_a_speed_change(speech, marked):
    _, sr = speech
    y, _ = speed(marked, sr, 1.1)
    searched = KeyedWatermarker(key=KEY).evidence(y, sr)
    plain = KeyedWatermarker(key=KEY, speed_search=False).evidence(y, sr)
    assert searched.speed == pytest.approx(1.1) and searched.p_value <= P_THRESHOLD
    assert plain.p_value > P_THRESHOLD and plain.hypotheses < searched.hypotheses


def test_null_distribution_over_keys_is_standard(speech):
    """Under "not marked with this key" z is a sum of |R| cos(uniform angle): mean 0, variance 1,
    and the single-hypothesis p-value is uniform. 200 random keys on one unmarked clip."""
    from scipy.stats import kstest

    wav, sr = speech
    rng = np.random.default_rng(0)
    evs = [
        KeyedWatermarker(key=WatermarkKey(f"k{i}", rng.bytes(32)), speed_search=False).evidence(wav, sr)
        for i in range(200)
    ]
    z = np.array([e.z_unsearched for e in evs])
    assert abs(z.mean()) < 0.25 and 0.8 < z.std() < 1.2
    assert kstest([e.p_unsearched for e in evs], "uniform").pvalue > 0.001
    # no key of 200 makes this unmarked clip read as marked
    assert min(e.p_value for e in evs) > P_THRESHOLD


def test_short_silent_and_keyless_uses_are_refused(speech):
    wav, sr = speech
    wm = KeyedWatermarker(key=KEY)
    with pytest.raises(WatermarkError, match="at least 1 s"):
        wm.embed(wav[: sr // 2], sr, PAYLOAD)
    with pytest.raises(WatermarkError, match="silent"):
        wm.embed(np.zeros(2 * sr, np.float32), sr, PAYLOAD)
    with pytest.raises(WatermarkError, match="32 bits"):
        wm.embed(wav, sr, PAYLOAD[:16])
    with pytest.raises(WatermarkError, match="secret key"):
        load_watermarker("keyed")


def test_registered_backend_card_names_the_key_id_but_never_the_secret():
    wm = load_watermarker("keyed", key=KEY)
    card = json.dumps(wm.card())
    assert wm.name == "keyed" and wm.payload_bits == 32 and '"key_id": "lab-2026"' in card
    assert KEY.secret.hex() not in card and KEY.secret.hex() not in repr(vars(wm))


def test_layout_is_a_function_of_secret_and_key_id():
    phase, role = layout(KEY)
    again = layout(WatermarkKey("lab-2026", bytes(range(32))))
    other = layout(WatermarkKey("lab-2027", bytes(range(32))))
    assert np.array_equal(phase, again[0]) and np.array_equal(role, again[1])
    assert not np.array_equal(phase, other[0])
    assert set(np.unique(role)) == {-1, *range(CODED_BITS)}  # every channel bit has cells


def test_viterbi_corrects_channel_errors():
    bits = np.array(PAYLOAD)
    code = conv_encode(bits * 2 - 1.0)
    assert code.shape == (CODED_BITS,)
    noisy = code.copy()
    noisy[[3, 20, 41, 60]] *= -0.8  # four wrong channel bits, spread out
    assert np.array_equal(viterbi(noisy), bits)
    assert np.array_equal(viterbi(code), bits)
