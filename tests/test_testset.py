from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from evaluation.testsets.testset import (
    TestSet,
    TestSetOptions,
    build_test_set,
    cut_prompt,
    seed_tts_eval_test_set,
    text_problem,
)
from valle.manifest import read_manifest

ANY_LENGTH = dict(min_seconds=1.0, max_seconds=10.0)


def test_cross_sentence_prompts_come_from_another_utterance_of_the_same_speaker(espeak_corpus):
    utts = read_manifest(espeak_corpus / "manifest.jsonl")
    ts = build_test_set(utts, TestSetOptions(**ANY_LENGTH))
    assert len(ts.items) == 9 and not ts.problems
    by_id = {u.id: u for u in utts}
    for it in ts.items:
        src = by_id[it.prompt_source]
        assert src.speaker == it.speaker and src.id != it.id
        # the whole utterance: a cut would keep words in the transcript that the audio no longer says
        assert it.prompt_text == src.text and it.prompt_start == 0.0 and it.prompt_end is None
    again = build_test_set(utts, TestSetOptions(**ANY_LENGTH))
    assert [i.to_json() for i in again.items] == [i.to_json() for i in ts.items]  # deterministic


def test_cross_sentence_prompts_are_drawn_among_short_enough_utterances(espeak_corpus, tmp_path):
    # each speaker's utterance 0 cut to 1.5 s, so it is the only prompt of at most 2 s; as a target
    # itself, its prompt is the shortest of the rest (whole, never cut)
    rows = [json.loads(line) for line in (espeak_corpus / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        wav, sr = sf.read(espeak_corpus / r["audio"], dtype="float32")
        assert len(wav) > 2.5 * sr  # the fixture's utterances are ~4 s
        if r["id"].endswith("_0"):
            wav = wav[: round(1.5 * sr)]
        sf.write(tmp_path / f"{r['id']}.wav", wav, sr)
        r["audio"], r["duration"] = f"{r['id']}.wav", round(len(wav) / sr, 3)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    utts = read_manifest(tmp_path / "m.jsonl")
    durations = {u.id: u.duration for u in utts}
    ts = build_test_set(utts, TestSetOptions(max_prompt_seconds=2.0, **ANY_LENGTH))
    assert len(ts.items) == 9 and not ts.problems
    for it in ts.items:
        first = f"{it.speaker}_0"
        rest = [u.id for u in utts if u.speaker == it.speaker and u.id != first]
        expected = min(rest, key=lambda i: (durations[i], i)) if it.id == first else first
        assert it.prompt_source == expected and it.prompt_end is None
    with pytest.raises(ValueError, match="max_prompt_seconds"):
        TestSetOptions(max_prompt_seconds=0.5)


def test_continuation_uses_the_first_seconds_of_the_target(espeak_corpus, tmp_path):
    utts = read_manifest(espeak_corpus / "manifest.jsonl")
    ts = build_test_set(utts, TestSetOptions(protocol="continuation", prompt_seconds=1.5, **ANY_LENGTH))
    it = ts.items[0]
    assert it.prompt_audio == it.target_audio and it.prompt_text == it.text and it.prompt_end == 1.5
    wav, sr = sf.read(cut_prompt(it, tmp_path))
    assert len(wav) == round(1.5 * sr)


def test_duration_filter_is_reported_not_silent(espeak_corpus):
    ts = build_test_set(read_manifest(espeak_corpus / "manifest.jsonl"), TestSetOptions())  # paper: 4-10 s
    assert sum(ts.excluded.values()) + len(ts.items) == 9 and ts.excluded


def test_bad_rows_become_items_with_reasons(espeak_corpus, tmp_path):
    rows = [json.loads(line) for line in (espeak_corpus / "manifest.jsonl").read_text().splitlines()]
    wav, sr = sf.read(espeak_corpus / rows[0]["audio"], dtype="float32")
    sf.write(tmp_path / "short.wav", wav[: sr // 4], sr)
    nan = wav.copy()
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, sr, subtype="FLOAT")
    for r in rows:
        r["audio"] = str(espeak_corpus / r["audio"])
    extra = [
        {**rows[0], "id": "empty", "text": "..."},
        {**rows[0], "id": "short", "audio": str(tmp_path / "short.wav")},
        {**rows[0], "id": "nan", "audio": str(tmp_path / "nan.wav")},
        {**rows[0], "id": "missing", "audio": str(tmp_path / "gone.wav")},
        {**rows[0], "id": "loner", "speaker": "spk-alone"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows + extra))
    utts = read_manifest(tmp_path / "m.jsonl", root=tmp_path.parent.parent, check_files=False)
    ts = build_test_set(utts, TestSetOptions(min_seconds=0.0, max_seconds=10.0))
    p = ts.problems
    assert set(p) == {"empty", "short", "nan", "missing", "loner"}  # other scripts: see test_manifest
    assert "no letters" in p["empty"] and "0.25 s" in p["short"]
    assert "NaN" in p["nan"] and "not found" in p["missing"] and "no other usable utterance" in p["loner"]
    path = ts.save(tmp_path / "ts.jsonl")
    assert TestSet.load(path).problems == p
    # no machine paths in the file; a moved folder (test set and audio together) still loads right
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert all(not os.path.isabs(r[k]) for r in rows for k in ("target_audio", "prompt_audio") if r[k])
    assert [it.to_json() for it in TestSet.load(path).items] == [it.to_json() for it in ts.items]


def test_text_problem():
    assert text_problem("Café au lait, s'il vous plaît.") is None
    assert text_problem("   ") == "empty transcript"


def test_seed_tts_eval_meta_list(espeak_corpus, tmp_path):
    meta = tmp_path / "meta.lst"
    a, b = espeak_corpus / "wavs" / "spk-a_0.wav", espeak_corpus / "wavs" / "spk-a_1"
    meta.write_text(f"u1|The quick brown fox.|{b}|A new sentence to say.|{a}\n")
    ts = seed_tts_eval_test_set(meta)
    (it,) = ts.items
    assert it.prompt_audio == str(b) + ".wav" and it.target_audio == str(a) and it.problem is None
    assert it.prompt_end is None and it.mode == "cross_sentence"


def test_loading_a_tampered_test_set_names_the_line(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"testset": 1}\n{"id": "x", "bogus": 1}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2"):
        TestSet.load(tmp_path / "t.jsonl")
