"""Corpus importers on tiny fake layouts of LibriSpeech, LibriTTS and seed-tts-eval."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import tone
from valle.importers import (
    CorpusImportError,
    import_librispeech,
    import_libritts,
    import_seed_tts_eval,
)
from valle.manifest import ManifestError, read_manifest, write_manifest

SR = 16000


def _audio(path: Path, seconds: float, fmt: str = "WAV") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, SR), SR, format=fmt, subtype="PCM_16")
    return path


def _librispeech(root: Path) -> Path:
    for spk, chap, texts in [("19", "198", ["HELLO WORLD", "A SECOND LINE"]), ("26", "495", ["THIRD"])]:
        folder = root / spk / chap
        lines = []
        for i, text in enumerate(texts):
            _audio(folder / f"{spk}-{chap}-{i:04d}.flac", 0.25 * (i + 1), fmt="FLAC")
            lines.append(f"{spk}-{chap}-{i:04d} {text}")
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_layout(tmp_path: Path) -> None:
    utts = import_librispeech(_librispeech(tmp_path / "test-clean"))
    assert [u.id for u in utts] == ["19-198-0000", "19-198-0001", "26-495-0000"]
    assert [u.text for u in utts] == ["HELLO WORLD", "A SECOND LINE", "THIRD"]
    assert [u.speaker for u in utts] == ["libri-19", "libri-19", "libri-26"]
    assert [u.duration for u in utts] == [0.25, 0.5, 0.25]
    assert utts[0].audio == (tmp_path / "test-clean" / "19" / "198" / "19-198-0000.flac").resolve()
    # The result is a valid manifest: write it next to the corpus and read it back unchanged.
    assert read_manifest(write_manifest(tmp_path / "libri.jsonl", utts)) == utts


def test_librispeech_problems_all_reported(tmp_path: Path) -> None:
    root = _librispeech(tmp_path / "ls")
    (root / "19" / "198" / "19-198-0001.flac").unlink()
    trans = root / "26" / "495" / "26-495.trans.txt"
    trans.write_text("26-495-0000 THIRD\nJUSTONEWORD\n99-1-0000 WRONG FOLDER\n26-495-0000 AGAIN\n")
    with pytest.raises(CorpusImportError) as info:
        import_librispeech(root)
    msg = str(info.value)
    t19 = root.resolve() / "19" / "198" / "19-198.trans.txt"
    assert f"{t19}:2 (id=19-198-0001): audio: file not found" in msg
    assert f"{trans.resolve()}:2: expected '<utt-id> <TEXT>'" in msg
    assert f"{trans.resolve()}:3 (id=99-1-0000): id: expected 26-495-<NNNN>" in msg
    assert f"{trans.resolve()}:4 (id=26-495-0000): id: duplicate of {trans.resolve()}:1" in msg
    assert len(info.value.problems) == 4
    assert isinstance(info.value, ManifestError)  # one type to catch for any manifest problem


def test_missing_roots(tmp_path: Path) -> None:
    with pytest.raises(CorpusImportError, match=r"nope: LibriSpeech root folder not found"):
        import_librispeech(tmp_path / "nope")
    with pytest.raises(CorpusImportError, match=r"no <speaker>/<chapter>/\*.wav found"):
        import_libritts(tmp_path)
    with pytest.raises(CorpusImportError, match=r"meta.lst: seed-tts-eval meta file not found"):
        import_seed_tts_eval(tmp_path / "meta.lst")


def test_libritts_layout_with_fallback_and_problems(tmp_path: Path) -> None:
    folder = tmp_path / "test-clean" / "84" / "121123"
    a = _audio(folder / "84_121123_000007_000001.wav", 0.5)
    a.with_suffix(".normalized.txt").write_text("Go, do you hear?")
    a.with_suffix(".original.txt").write_text("Go! do you hear?")
    b = _audio(folder / "84_121123_000008_000000.wav", 0.25)
    b.with_suffix(".original.txt").write_text("Only the original.\n")
    utts = import_libritts(tmp_path / "test-clean")
    assert [(u.id, u.text, u.speaker) for u in utts] == [
        ("84_121123_000007_000001", "Go, do you hear?", "libri-84"),
        ("84_121123_000008_000000", "Only the original.", "libri-84"),
    ]
    assert [u.extra["text_source"] for u in utts] == ["normalized", "original"]
    assert [u.duration for u in utts] == [0.5, 0.25]

    _audio(folder / "84_121123_000009_000000.wav", 0.25)  # no text at all
    two = _audio(folder / "84_121123_000010_000000.wav", 0.25)
    two.with_suffix(".normalized.txt").write_text("one line\nand another\n")
    _audio(folder / "84_999_000001_000000.wav", 0.25).with_suffix(".normalized.txt").write_text("x")
    with pytest.raises(CorpusImportError) as info:
        import_libritts(tmp_path / "test-clean")
    msg = str(info.value)
    assert "(id=84_121123_000009_000000): text: neither" in msg
    assert "84_121123_000010_000000.normalized.txt: text: expected one non-empty line, found 2" in msg
    assert "(id=84_999_000001_000000): id: expected 84_121123_<a>_<b>" in msg
    assert len(info.value.problems) == 3


def test_seed_tts_eval_four_and_five_fields(tmp_path: Path) -> None:
    en = tmp_path / "seedtts_testset" / "en"
    _audio(en / "prompt-wavs" / "common_voice_en_1.wav", 0.5)
    _audio(en / "prompt-wavs" / "common_voice_en_2.wav", 0.5)
    gt = _audio(en / "wavs" / "gt_b.wav", 0.75)
    abs_prompt = _audio(tmp_path / "elsewhere" / "p3.wav", 0.25)
    meta = en / "meta.lst"
    meta.write_text(
        "utt_a|We asked over twenty people.|prompt-wavs/common_voice_en_1.wav|Of course, we must.\n"
        "\n"
        # no '.wav' on either path: seed-tts-eval appends it
        "utt_b|Prompt two.|prompt-wavs/common_voice_en_2|Target two.|wavs/gt_b\n"
        f"utt_c|Prompt three.|{abs_prompt}|Target three.\n",
        encoding="utf-8",
    )
    a, b, c = import_seed_tts_eval(meta)
    assert (a.id, a.text, a.prompt_text) == ("utt_a", "Of course, we must.", "We asked over twenty people.")
    assert a.audio is None and a.duration is None
    assert a.prompt_audio == (en / "prompt-wavs" / "common_voice_en_1.wav").resolve()
    assert a.speaker == "seedtts-common_voice_en_1" and b.speaker == "seedtts-common_voice_en_2"
    assert b.audio == gt.resolve() and math.isclose(b.duration, 0.75)
    assert c.prompt_audio == abs_prompt.resolve() and c.speaker == "seedtts-p3"
    # Rows whose prompt lives outside the meta folder need a root above both.
    with pytest.raises(ManifestError, match=r"utterance #3 \(id=utt_c\): prompt_audio: path is outside"):
        write_manifest(en / "m.jsonl", [a, b, c])
    assert read_manifest(write_manifest(en / "m.jsonl", [a, b])) == [a, b]


def test_seed_tts_eval_malformed_lines_all_reported(tmp_path: Path) -> None:
    _audio(tmp_path / "p.wav", 0.25)
    meta = tmp_path / "meta.lst"
    meta.write_text(
        "ok|Prompt.|p.wav|Target.\n"
        "three|fields|only\n"
        "a|b|p.wav|c|d|e\n"
        "|Prompt.|p.wav|  \n"
        "missing|Prompt.|nothere.wav|Target.|gt/none\n"
        "ok|Prompt.|p.wav|Again.\n"
        "bad/id|Prompt.|p.wav|Target.\n",
        encoding="utf-8",
    )
    with pytest.raises(CorpusImportError) as info:
        import_seed_tts_eval(meta)
    msg = str(info.value)
    base = tmp_path.resolve()
    expected = [
        f"{meta}:2: expected 4 or 5 '|'-separated fields",
        f"{meta}:3: expected 4 or 5 '|'-separated fields",
        f"{meta}:4: utt: empty",
        f"{meta}:4: target_text: empty",
        f"{meta}:5 (id=missing): prompt_wav: file not found: {base / 'nothere.wav'}",
        f"{meta}:5 (id=missing): gt_wav: file not found: {base / 'gt' / 'none.wav'}",
        f"{meta}:6 (id=ok): id: duplicate of line 1",
        f"{meta}:7 (id=bad/id): id: 'bad/id' is not usable as a file name",
    ]
    for e in expected:
        assert e in msg, f"missing {e!r} in\n{msg}"
    assert len(info.value.problems) == len(expected)
