"""Phoneme timing from the synthesisers: the rules that unify the engines, and that the timing
really lies on the audio (silences quiet, vowels loud, the same phones as the text)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from valle.corpus.build import CorpusConfig, build_corpus
from valle.corpus.espeak import EspeakSynth
from valle.corpus.phones import (
    SILENCE,
    PhonesError,
    frame_labels,
    phone_segments,
    phones_path,
    read_phones,
    write_phones,
)
from valle.manifest import read_manifest

TEXT = "Between the rush of the cascades, streaks of rust showed everywhere."
VOWELS = set("aeiouæɑɒɔəɛɜɪʊʌɐᵻ")


def rms_in(wav: np.ndarray, sr: int, segs, keep) -> float:
    parts = [wav[int(s * sr) : int(e * sr)] for lab, s, e in segs if keep(lab) and e - s > 0.03]
    return float(np.sqrt(np.mean(np.concatenate(parts) ** 2)))


def test_segments_unify_the_engines_tokens():
    piper = [("^", 0.0, 0.1), ("n", 0.1, 0.2), ("ˈ", 0.2, 0.25), ("a", 0.25, 0.3), ("ʊ", 0.3, 0.4),
             (" ", 0.4, 0.5), ("i", 0.5, 0.6), ("ː", 0.6, 0.7), (",", 0.7, 0.8), ("$", 0.8, 0.9)]  # fmt: skip
    assert phone_segments(piper) == [
        (SILENCE, 0.0, 0.1),
        ("n", 0.1, 0.2),
        ("a", 0.2, 0.3),  # the stress mark's time goes to the phone after it
        ("ʊ", 0.3, 0.45),  # a word gap is split between its neighbours
        ("i", 0.45, 0.7),  # ... and a length mark's time joins the phone before it
        (SILENCE, 0.7, 0.9),  # punctuation and the end marker are one silence
    ]
    espeak = [("n", 0.0, 0.1), ("ˈaʊ", 0.1, 0.3), ("", 0.3, 0.5), ("uː", 0.5, 0.6)]
    assert phone_segments(espeak) == [
        ("n", 0.0, 0.1),
        ("a", 0.1, 0.2),  # a diphthong's time is split over its letters
        ("ʊ", 0.2, 0.3),
        (SILENCE, 0.3, 0.5),  # eSpeak names a pause ""
        ("u", 0.5, 0.6),
    ]
    with pytest.raises(PhonesError, match="ends"):
        phone_segments([("a", 0.5, 0.4)])


def test_frame_labels_follow_the_segments():
    inventory = {SILENCE: 0, "a": 1, "b": 2}
    labels = frame_labels([("a", 0.0, 0.1), ("b", 0.1, 0.2), ("z", 0.2, 0.3)], 8, 0.05, inventory)
    assert labels.tolist() == [1, 1, 2, 2, 0, 0, 0, 0]  # unknown "z" and uncovered time: silence


def test_espeak_timing_lies_on_the_audio_and_keeps_the_samples():
    with EspeakSynth() as plain, EspeakSynth() as aligned:
        wav0, _ = plain.synthesize(TEXT, "en-us+f3")
        wav, sr, tokens = aligned.synthesize_aligned(TEXT, "en-us+f3")
    assert np.array_equal(wav, wav0)  # phoneme events do not change the samples
    assert tokens[-1][2] == pytest.approx(len(wav) / sr)
    assert all(s <= e for _, s, e in tokens) and all(a[2] == b[1] for a, b in itertools.pairwise(tokens))
    segs = phone_segments(tokens)
    letters = "".join(lab for lab, _, _ in segs if lab != SILENCE)
    assert letters.startswith("bᵻtwin") and "ʃ" in letters  # the phones of the text, in order
    assert rms_in(wav, sr, segs, lambda lab: lab in VOWELS) > 5 * rms_in(
        wav, sr, segs, lambda lab: lab == SILENCE
    )


def test_piper_timing_lies_on_the_audio_and_keeps_the_samples():
    from valle.corpus.piper import PiperSynth

    wav0, _ = PiperSynth(seed=3).synthesize(TEXT, vtl=1.1, out_sr=24000)
    wav, sr, tokens = PiperSynth(seed=3, alignments=True).synthesize_aligned(TEXT, vtl=1.1, out_sr=24000)
    assert np.array_equal(wav, wav0)  # the alignment output does not change the audio
    assert tokens[-1][2] == pytest.approx(len(wav) / sr, abs=0.01)
    segs = phone_segments(tokens)
    letters = "".join(lab for lab, _, _ in segs if lab != SILENCE)
    assert letters.startswith("bᵻtwin") and "ʃ" in letters
    assert rms_in(wav, sr, segs, lambda lab: lab in VOWELS) > 5 * rms_in(
        wav, sr, segs, lambda lab: lab == SILENCE
    )
    with pytest.raises(Exception, match="alignments=True"):
        PiperSynth(seed=3).synthesize_aligned(TEXT)


def test_corpus_writes_timing_for_every_file(tmp_path):
    build_corpus(tmp_path, CorpusConfig.tiny(minutes=0.1), progress=False)
    utts = read_manifest(tmp_path / "manifest.jsonl")
    assert {u.extra["engine"] for u in utts} == {"espeak", "piper"}
    for u in utts:
        segs = read_phones(u.audio)
        assert segs[0][1] >= 0 and segs[-1][2] <= u.duration + 1e-4
        # the trim offset was applied: the first phone starts near the kept margin, not at 0 s of
        # the untrimmed synthesis
        first = next(s for lab, s, _ in segs if lab != SILENCE)
        assert first < 0.5


def test_bad_phones_files_name_the_file(tmp_path):
    audio = tmp_path / "x.wav"
    with pytest.raises(PhonesError, match=r"x\.phones\.json"):
        read_phones(audio)
    phones_path(audio).write_text("{not json")
    with pytest.raises(PhonesError, match="unreadable"):
        read_phones(audio)
    phones_path(audio).write_text(json.dumps({"format": "other", "tokens": []}))
    with pytest.raises(PhonesError, match="not a valle-phones"):
        read_phones(audio)
    write_phones(audio, "espeak", [("a", 0.2, 0.5), ("b", 0.5, 9.0)], offset=0.1, duration=1.0)
    assert read_phones(audio) == [("a", 0.1, 0.4), ("b", 0.4, 1.0)]
