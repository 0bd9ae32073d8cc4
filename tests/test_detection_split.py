"""Speaker-disjoint splits and folds for the detectors (detection/split.py)."""

from __future__ import annotations

import json

import pytest

from detection.split import Clip, speaker_folds, split


def _clips(n_speakers=6, per=4, gens=("bonafide", "tts"), own_voices: str | None = None) -> list[Clip]:
    out = []
    for s in range(n_speakers):
        for g in gens:
            for i in range(per):
                out.append(Clip(f"{g}_{s}_{i}", f"/x/{g}_{s}_{i}.wav", f"spk{s}", int(g == "bonafide"), g))
    if own_voices:  # a generator with its own voices, shared with nobody
        out += [Clip(f"{own_voices}_{v}_{i}", "/x/o.wav", f"{own_voices}-v{v}", 0, own_voices)
                for v in range(3) for i in range(per)]  # fmt: skip
    return out


def test_split_is_speaker_disjoint_stable_and_checked():
    clips = _clips(own_voices="piper")
    sp = split(clips, test_fraction=0.3, seed=0)
    train_spk, test_spk = {c.speaker for c in sp.train}, {c.speaker for c in sp.test}
    assert train_spk and test_spk and not train_spk & test_spk
    assert len(sp.train) + len(sp.test) == len(clips)
    # each stratum (cloned speakers; piper's own voices) is split, so piper is on both sides
    for part in (sp.train, sp.test):
        assert {c.generator for c in part} == {"bonafide", "tts", "piper"}
    assert split(clips, 0.3, seed=0).description == sp.description  # stable
    assert split(clips, 0.3, seed=5).description["test_speakers"] != sp.description["test_speakers"]
    json.dumps(sp.description)
    # ~30% of the cloned speakers' clips: 2 of 6 speakers
    assert sum(s.startswith("spk") for s in sp.description["test_speakers"]) == 2

    with pytest.raises(ValueError, match="at least two speakers"):
        split([c for c in clips if c.speaker == "spk0"])
    with pytest.raises(ValueError, match="spoof class has no files"):
        split([c for c in clips if c.label == 1])
    with pytest.raises(ValueError, match="bona fide class has no files"):
        split([c for c in clips if c.label == 0])
    with pytest.raises(ValueError, match="duplicate id 'tts_0_0'"):
        split([*clips, clips[4]])
    with pytest.raises(ValueError, match="not among the spoof generators"):
        split(clips, holdout_generator="nope")
    # two speakers, but the bona fide one lands in test: the train split has no bona fide clips
    two = [Clip("b", "/x/b.wav", "s1", 1, "bonafide"), Clip("t", "/x/t.wav", "s2", 0, "tts")]
    with pytest.raises(ValueError, match=r"split has no (bona fide|spoof) clips"):
        split(two, 0.5)


def test_speaker_folds():
    clips = _clips(own_voices="piper")
    fold = speaker_folds(clips, 3, seed=0)
    for k in range(3):  # every fold holds cloned speakers and piper voices; speakers never straddle folds
        assert {c.generator for c, f in zip(clips, fold, strict=True) if f == k} == {
            "bonafide",
            "tts",
            "piper",
        }
    assert all(len({f for c, f in zip(clips, fold, strict=True) if c.speaker == s}) == 1
               for s in {c.speaker for c in clips})  # fmt: skip
    with pytest.raises(ValueError, match="at least 20 speakers"):
        speaker_folds(clips, 20)


def test_split_with_held_out_generator():
    clips = _clips(own_voices="piper")
    # shares speakers with bona fide: only its clips of test speakers are tested
    sp = split(clips, 0.3, seed=0, holdout_generator="tts")
    assert "tts" not in {c.generator for c in sp.train}
    assert {c.generator for c in sp.test} == {"bonafide", "tts"}
    test_spk = set(sp.description["test_speakers"])
    assert {c.speaker for c in sp.test if c.generator == "tts"} <= test_spk
    assert not {c.speaker for c in sp.train} & test_spk
    # its own voices: all its clips are tested
    sp = split(clips, 0.3, seed=0, holdout_generator="piper")
    assert sum(c.generator == "piper" for c in sp.test) == 12
    assert {c.generator for c in sp.train} == {"bonafide", "tts"}
    assert "piper" in sp.description["rule"]
