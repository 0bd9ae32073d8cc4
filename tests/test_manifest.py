"""JSONL manifests: round trips, validation (all problems at once), path containment, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import tone
from valle.manifest import ManifestError, Utterance, by_speaker, read_manifest, write_manifest

SR = 16000


def _wav(path: Path, seconds: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, SR), SR, subtype="PCM_16")
    return path


def _lines(path: Path, rows: list) -> Path:
    """Write rows (dicts are JSON-encoded, strings written as they are) one per line."""
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    return path


def _utts(root: Path) -> list[Utterance]:
    a = _wav(root / "audio" / "a.wav", 0.5)
    b = _wav(root / "audio" / "b.wav", 0.25)
    p = _wav(root / "prompts" / "p.wav", 0.75)
    return [
        Utterance("a", "Hello there.", "spk1", a, 0.5, extra={"sample_rate": SR, "licence": "CC0"}),
        Utterance("b", "Ça va? «Naïve» café.", "spk2", b, 0.25, prompt_audio=p, prompt_text="A prompt."),
        # a test-set row: no recording, only a prompt to clone from
        Utterance("c", "Nothing recorded yet.", "spk1", None, None, prompt_audio=p, prompt_text="A prompt."),
    ]


def test_round_trip_equality_and_stable_bytes(tmp_path: Path) -> None:
    utts = _utts(tmp_path)
    out = write_manifest(tmp_path / "m.jsonl", utts)
    assert read_manifest(out) == utts
    text = out.read_text(encoding="utf-8")
    assert "«Naïve»" in text  # ensure_ascii=False: UTF-8 text stays readable
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["audio"] == "audio/a.wav" and rows[1]["prompt_audio"] == "prompts/p.wav"
    assert list(rows[0])[:5] == ["id", "audio", "text", "speaker", "duration"]
    assert rows[2]["audio"] is None and "duration" not in rows[2]
    # Same utterances (extra keys in another order) -> same bytes.
    shuffled = [
        Utterance(
            "a", "Hello there.", "spk1", utts[0].audio, 0.5, extra={"licence": "CC0", "sample_rate": SR}
        )
    ]
    out2 = write_manifest(tmp_path / "m2.jsonl", [*shuffled, *utts[1:]])
    assert out2.read_bytes() == out.read_bytes()


def test_duration_filled_from_header_and_blank_lines_ignored(tmp_path: Path) -> None:
    _wav(tmp_path / "x.wav", 0.625)
    m = _lines(
        tmp_path / "m.jsonl", ["", {"id": "x", "text": "Hi.", "speaker": "s", "audio": "x.wav"}, "   "]
    )
    (utt,) = read_manifest(m)
    assert math.isclose(utt.duration, 0.625)
    assert utt.audio == (tmp_path / "x.wav").resolve()


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    _wav(tmp_path / "audio" / "ok.wav")
    good = {"text": "Fine.", "speaker": "s", "audio": "audio/ok.wav"}
    rows = [
        {"id": "ok", **good},  # 1
        "{not json",  # 2
        ["a", "list"],  # 3
        {"text": "No id.", "speaker": "s", "audio": None},  # 4: id missing
        {"id": "noaudio", "text": "x", "speaker": "s"},  # 5: audio key missing
        {"id": "types", "text": 5, "speaker": ["s"], "audio": 3},  # 6: three wrong types
        {"id": "spk1_003", "text": "x", "speaker": "s", "audio": "audio/spk1_003.wav"},  # 7
        {"id": "blank", "text": "  \t", "speaker": "", "audio": None},  # 8: empty text + speaker
        {"id": "neg", **good, "duration": -1.5},  # 9
        {"id": "str", **good, "duration": "3.0"},  # 10
        '{"id": "nan", "text": "x", "speaker": "s", "audio": "audio/ok.wav", "duration": NaN}',  # 11
        {"id": "pt", **good, "prompt_text": "only text"},  # 12
        {"id": "pa", **good, "prompt_audio": "audio/ok.wav"},  # 13
        {"id": "ok", **good},  # 14: duplicate of line 1
        {"id": "../evil", **good},  # 15: id would escape generated/<id>.wav
    ]
    m = _lines(tmp_path / "m.jsonl", rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    msg, problems = str(info.value), info.value.problems
    expected = [
        f"{m}:2: invalid JSON",
        f"{m}:3: row: expected a JSON object, got array",
        f"{m}:4: id: missing",
        f"{m}:5 (id=noaudio): audio: missing",
        f"{m}:6 (id=types): text: expected a string, got int",
        f"{m}:6 (id=types): speaker: expected a string, got array",
        f"{m}:6 (id=types): audio: expected a path string or null, got int",
        f"{m}:7 (id=spk1_003): audio: file not found: audio/spk1_003.wav",
        f"{m}:8 (id=blank): text: empty",
        f"{m}:8 (id=blank): speaker: empty",
        f"{m}:9 (id=neg): duration: must be a finite positive number",
        f"{m}:10 (id=str): duration: expected a number of seconds, got str",
        f"{m}:11 (id=nan): duration: must be a finite positive number",
        f"{m}:12 (id=pt): prompt_text: given without prompt_audio",
        f"{m}:13 (id=pa): prompt_audio: given without prompt_text",
        f"{m}:14 (id=ok): id: duplicate of line 1",
        f"{m}:15 (id=../evil): id: '../evil' is not usable as a file name",
    ]
    for e in expected:
        assert e in msg, f"missing {e!r} in\n{msg}"
    assert len(problems) == len(expected)


def test_empty_manifest_and_missing_file(tmp_path: Path) -> None:
    m = _lines(tmp_path / "m.jsonl", ["", "  "])
    with pytest.raises(ManifestError, match="manifest is empty"):
        read_manifest(m)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_path_escape_via_dotdot_and_absolute(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = _wav(tmp_path / "outside.wav")
    _wav(root / "a" / "in.wav")
    rows = [
        {"id": "dots", "text": "x", "speaker": "s", "audio": "../outside.wav"},
        {"id": "abs", "text": "x", "speaker": "s", "audio": str(outside)},
        {"id": "fold", "text": "x", "speaker": "s", "audio": "a/../a/in.wav"},  # '..' that stays inside
        {"id": "absin", "text": "x", "speaker": "s", "audio": str(root / "a" / "in.wav")},
    ]
    m = _lines(root / "m.jsonl", rows)
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    assert len(info.value.problems) == 2
    assert f"{m}:1 (id=dots): audio: path escapes the manifest root" in str(info.value)
    assert f"{m}:2 (id=abs): audio: path escapes the manifest root" in str(info.value)
    # '..' that folds back inside the root, and absolute paths inside it, are fine.
    utts = read_manifest(_lines(root / "ok.jsonl", rows[2:]))
    assert [u.audio for u in utts] == [(root / "a" / "in.wav").resolve()] * 2
    # Relative paths start at the root, which may be above the manifest's folder.
    (utt,) = read_manifest(_lines(root / "up.jsonl", [{**rows[0], "audio": "outside.wav"}]), root=tmp_path)
    assert utt.audio == outside.resolve()


def test_path_escape_via_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    secret = _wav(tmp_path / "secret" / "s.wav")
    inside = _wav(root / "real.wav")
    (root / "link_out.wav").symlink_to(secret)
    (root / "link_in.wav").symlink_to(inside)
    (root / "dir_out").symlink_to(secret.parent, target_is_directory=True)
    rows = [
        {"id": "out", "text": "x", "speaker": "s", "audio": "link_out.wav"},
        {"id": "in", "text": "x", "speaker": "s", "audio": "link_in.wav"},
        {
            "id": "dir",
            "text": "x",
            "speaker": "s",
            "audio": None,
            "prompt_audio": "dir_out/s.wav",
            "prompt_text": "p",
        },
    ]
    with pytest.raises(ManifestError) as info:
        read_manifest(_lines(root / "m.jsonl", rows))
    msg = str(info.value)
    assert "(id=out): audio: path escapes" in msg and "(id=dir): prompt_audio: path escapes" in msg
    assert "(id=in)" not in msg and len(info.value.problems) == 2


def test_check_files_false_accepts_missing_audio(tmp_path: Path) -> None:
    m = _lines(tmp_path / "m.jsonl", [{"id": "a", "text": "x", "speaker": "s", "audio": "later/a.wav"}])
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(m)
    (utt,) = read_manifest(m, check_files=False)
    assert utt.audio == (tmp_path / "later" / "a.wav").resolve() and utt.duration is None


def test_write_refuses_outside_root_and_duplicates_together(tmp_path: Path) -> None:
    root = tmp_path / "root"
    inside = _wav(root / "a.wav")
    outside = _wav(tmp_path / "b.wav")
    utts = [
        Utterance("a", "x", "s", inside, 0.5),
        Utterance("b", "x", "s", outside, 0.5),
        Utterance("a", "y", "s", inside, 0.5),
        Utterance("e", "x", "s", inside, 0.5, extra={"text": "shadow"}),
    ]
    target = root / "m.jsonl"
    with pytest.raises(ManifestError) as info:
        write_manifest(target, utts)
    msg = str(info.value)
    assert "utterance #2 (id=b): audio: path is outside the manifest root" in msg
    assert "utterance #3 (id=a): id: duplicate of utterance #1" in msg
    assert "utterance #4 (id=e): extra: keys ['text'] clash" in msg
    assert len(info.value.problems) == 3
    assert not target.exists()
    with pytest.raises(ManifestError, match="empty manifest"):
        write_manifest(target, [])


def test_write_is_atomic(tmp_path: Path) -> None:
    utts = _utts(tmp_path)
    target = write_manifest(tmp_path / "m.jsonl", utts)
    before = target.read_bytes()
    # A value JSON cannot encode fails the write; the old manifest must survive untouched.
    bad = Utterance("z", "x", "s", utts[0].audio, 0.5, extra={"blob": object()})
    with pytest.raises(ManifestError, match="not JSON-serialisable"):
        write_manifest(target, [*utts, bad])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["m.jsonl"]


def test_utterance_checks_its_fields(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        Utterance("u", " ", "s", Path("rel.wav"), float("inf"), prompt_text="p")
    msg = str(info.value)
    for part in (
        "text: empty",
        "audio: expected an absolute Path",
        "duration: must be a finite",
        "prompt_text: given",
    ):
        assert part in msg
    assert len(info.value.problems) == 4


def test_from_json_and_by_speaker(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    row = {"id": "a", "text": "x", "speaker": "s2", "audio": "a.wav", "split": "test"}
    utt = Utterance.from_json(row, tmp_path)
    assert utt.extra == {"split": "test"} and utt.to_json(tmp_path) == {**row, "duration": 0.5}
    with pytest.raises(ManifestError, match=r"id=a: speaker: empty"):
        Utterance.from_json({**row, "speaker": " "}, tmp_path)
    others = [Utterance("b", "x", "s1", None, None), Utterance("c", "x", "s2", None, None)]
    groups = by_speaker([utt, *others])
    assert list(groups) == ["s2", "s1"] and [u.id for u in groups["s2"]] == ["a", "c"]


def test_real_manifest_round_trip(
    real_speech_dir: Path, real_speech_rows: list[dict], tmp_path: Path
) -> None:
    utts = read_manifest(real_speech_dir / "manifest.jsonl")
    assert [u.id for u in utts] == [r["id"] for r in real_speech_rows]
    # Paths stay relative to the data folder, so the copy must name it as root.
    with pytest.raises(ManifestError, match="outside the manifest root"):
        write_manifest(tmp_path / "copy.jsonl", utts)
    copy = write_manifest(tmp_path / "copy.jsonl", utts, root=real_speech_dir)
    again = read_manifest(copy, root=real_speech_dir)
    assert again == utts
    extra_keys = set(real_speech_rows[0]) - {"id", "audio", "text", "speaker", "duration"}
    assert extra_keys and all(set(u.extra) == extra_keys for u in again)
    assert [json.loads(line) for line in copy.read_text(encoding="utf-8").splitlines()] == real_speech_rows
    # Without the stored durations, the header gives the same numbers (stored to 0.01 s).
    stripped = [{k: v for k, v in r.items() if k != "duration"} for r in real_speech_rows]
    nodur = _lines(tmp_path / "nodur.jsonl", stripped)
    for u, r in zip(read_manifest(nodur, root=real_speech_dir), real_speech_rows, strict=True):
        assert abs(u.duration - r["duration"]) < 0.01


def test_text_that_is_not_this_clips_english_speech_is_named_by_row(tmp_path: Path) -> None:
    _wav(tmp_path / "audio" / "ok.wav", 2.0)
    base = {"speaker": "s", "audio": "audio/ok.wav", "duration": 2.0}
    rows = [
        {"id": "fine", "text": "A perfectly normal sentence.", **base},  # 1
        {"id": "bell", "text": "ring \x07 the bell", **base},  # 2
        {"id": "nul", "text": "nul\x00byte", **base},  # 3
        {"id": "emoji", "text": "so happy 😀", **base},  # 4
        {"id": "zh", "text": "你好，世界", **base},  # 5
        {"id": "long", "text": "word " * 10_000, **base},  # 6
        {
            "id": "prompt",
            "text": "Fine.",
            **base,
            "prompt_audio": "audio/ok.wav",
            "prompt_text": "日本語",
        },  # 7
    ]
    with pytest.raises(ManifestError) as err:
        read_manifest(_lines(tmp_path / "m.jsonl", rows))
    problems = err.value.problems
    expected = [
        (":2 (id=bell): text: character 5 is U+0007", "control character"),
        (":3 (id=nul): text: character 3 is U+0000", "control character"),
        (":4 (id=emoji): text: character 9 is U+1F600 (GRINNING FACE)", "emoji"),
        (":5 (id=zh): text: character 0 is U+4F60", "script other than Latin"),
        (":6 (id=long): text: 10000 words for 2.00 s", "words/s"),
        (":7 (id=prompt): prompt_text: character 0 is U+65E5", "script other than Latin"),
    ]
    assert len(problems) == len(expected), problems
    for p, (where, why) in zip(problems, expected, strict=True):
        assert where in p and why in p, p
