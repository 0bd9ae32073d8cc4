"""The offline training corpus: real eSpeak NG and Piper synthesis, tiny real builds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from valle.corpus import cli as corpus_cli
from valle.corpus.build import CorpusConfig, build_corpus
from valle.corpus.espeak import EspeakError, EspeakSynth
from valle.corpus.sentences import (
    REAL_SPEECH_OVERLAP,
    SentenceError,
    load_sentences,
    normalize_text,
    split_of,
    split_sentences,
)
from valle.corpus.speakers import EspeakSpeaker, PiperSpeaker, select_speakers
from valle.manifest import read_manifest

TEXT = "For the twentieth time that evening the two men shook hands."


def median_f0(wav: np.ndarray, sr: int) -> float:
    f0, voiced, _ = librosa.pyin(wav, fmin=50, fmax=500, sr=sr, frame_length=2048)
    return float(np.nanmedian(f0[voiced]))


@pytest.fixture(scope="module")
def espeak() -> EspeakSynth:
    return EspeakSynth()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, CorpusConfig]:
    """A tiny corpus (two eSpeak speakers, one Piper speaker), built once for several tests."""
    out = tmp_path_factory.mktemp("corpus")
    config = CorpusConfig.tiny()
    build_corpus(out, config, progress=False)
    return out, config


# --- sentences ------------------------------------------------------------------------------


def test_arctic_sentences_and_split():
    sentences = load_sentences()
    assert len(sentences) == 1132
    assert sentences[0].text == "Author of the danger trail, Philip Steels, etc."
    assert len({s.text for s in sentences}) == 1132
    groups = split_sentences(sentences)
    assert sum(len(g) for g in groups.values()) == 1132
    assert {s.id for s in groups["excluded"]} == REAL_SPEECH_OVERLAP
    assert 0.03 * 1132 < len(groups["heldout"]) < 0.08 * 1132
    # The split is a property of the id alone: stable across calls and processes.
    assert [split_of(s.id) for s in sentences] == [split_of(s.id) for s in load_sentences()]


def test_malformed_sentence_file_names_the_line(tmp_path):
    bad = tmp_path / "s.txt"
    bad.write_text("arctic_a0001\tHello.\narctic_a0002 no tab here\n")
    with pytest.raises(SentenceError, match=r"s\.txt:2"):
        load_sentences(bad)


# --- speakers and engines -------------------------------------------------------------------


def test_default_speaker_list_is_large_and_stable():
    speakers = select_speakers(48)
    assert len({s.id for s in speakers}) == 48
    assert sum(isinstance(s, PiperSpeaker) for s in speakers) == 8
    assert [s.id for s in speakers[:2]] == ["espeak-en-us-f1-p55", "piper-joe-vtl1.00"]
    assert select_speakers(3) == speakers[:3]  # smaller corpora are prefixes
    with pytest.raises(ValueError, match="n_speakers=999"):
        select_speakers(999)


def test_espeak_synthesis_is_speech_like(espeak):
    wav, sr = espeak.synthesize(TEXT, "en-us+f3")
    assert sr == 22050 and wav.dtype == np.float32
    assert 2.0 < len(wav) / sr < 6.0  # ~11 words at 175 wpm
    assert np.abs(wav).max() > 0.1
    # Speech has pauses and syllables: the frame energy must vary a lot, unlike a tone or noise.
    rms = librosa.feature.rms(y=wav)[0]
    assert np.percentile(rms, 90) > 5 * np.percentile(rms, 10)


def test_espeak_voices_differ(espeak):
    low = EspeakSpeaker("en-gb", "m1", pitch=35)
    high = EspeakSpeaker("en-us", "f3", pitch=70)
    wav_low, sr = espeak.synthesize(TEXT, low.voice, pitch=low.pitch)
    wav_high, _ = espeak.synthesize(TEXT, high.voice, pitch=high.pitch)
    assert median_f0(wav_high, sr) > 1.5 * median_f0(wav_low, sr)


def test_fresh_espeak_instances_are_reproducible():
    # eSpeak carries state between utterances, so reproducibility is per fresh instance.
    runs = []
    for _ in range(2):
        with EspeakSynth() as synth:
            runs.append([synth.synthesize(TEXT, "en+m1")[0], synth.synthesize(TEXT, "en-us+f2")[0]])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))


def test_espeak_rejects_unknown_voice_and_variant(espeak):
    with pytest.raises(EspeakError, match="no voice 'xx-nope'"):
        espeak.synthesize(TEXT, "xx-nope")
    with pytest.raises(EspeakError, match="variant 'zz9'"):
        espeak.synthesize(TEXT, "en-us+zz9")


def test_espeak_and_phonemizer_keep_separate_state():
    # phonemizer loads the same libespeak-ng in this process for G2P. Our private copy must not
    # share its globals: our British RP voice must not leak into its US English phonemes.
    from valle.phonemes import Phonemizer

    with EspeakSynth() as synth:
        reference = synth.synthesize(TEXT, "en-gb-x-rp+m3", rate=150)[0]
    g2p = Phonemizer("en-us")
    us = g2p.phonemize("hello world, the water is hot")
    with EspeakSynth() as synth:
        after_g2p = synth.synthesize(TEXT, "en-gb-x-rp+m3", rate=150)[0]
        assert g2p.phonemize("hello world, the water is hot") == us
    assert np.array_equal(reference, after_g2p)


def test_piper_derived_voices_keep_tempo_and_shift_pitch():
    from valle.corpus.piper import PiperSynth

    synth = PiperSynth(seed=3)
    base, sr = synth.synthesize(TEXT, vtl=1.0, out_sr=24000)
    deep, _ = synth.synthesize(TEXT, vtl=1.3, out_sr=24000)
    assert sr == 24000 and 2.0 < len(base) / sr < 6.0 and np.abs(base).max() > 0.05
    assert abs(len(deep) - len(base)) / len(base) < 0.15  # tempo kept
    assert median_f0(deep, sr) < 0.87 * median_f0(base, sr)  # ~1/1.3 lower
    # Same seed, same calls -> same audio (the VITS noise is seeded at session creation).
    again, _ = PiperSynth(seed=3).synthesize(TEXT, vtl=1.0, out_sr=24000)
    assert np.array_equal(base, again)


# --- building -------------------------------------------------------------------------------


def test_tiny_build_writes_valid_manifest_and_files(tiny):
    out, config = tiny
    utts = read_manifest(out / "manifest.jsonl")  # validates every row and that files exist
    expected = [s.id for s in select_speakers(config.n_speakers)]
    assert sorted({u.speaker for u in utts}) == sorted(expected)
    assert {u.extra["engine"] for u in utts} == {"espeak", "piper"}
    assert len({u.text for u in utts}) == len(utts)  # diverse sentences, none repeated here
    total = 0.0
    for u in utts:
        assert u.audio == (out / "wavs" / u.speaker / f"{u.id}.wav").resolve()
        info = sf.info(str(u.audio))
        assert info.samplerate == 24000 and info.channels == 1
        assert info.duration == pytest.approx(u.duration, abs=1e-3)
        wav, _ = sf.read(str(u.audio), dtype="float32")
        assert 0.8 < np.abs(wav).max() <= 1.0  # peak-normalised to -1 dBFS
        # Trimmed: no more than the margin plus one analysis frame of near-silence at the start.
        onset = np.argmax(np.abs(wav) > 0.01 * np.abs(wav).max()) / 24000
        assert onset < config.trim_margin_s + 0.05
        total += u.duration
    assert total >= config.minutes * 60
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["counts"]["utterances"] == len(utts)
    assert summary["counts"]["speakers"] == config.n_speakers
    assert summary["config"]["seed"] == config.seed


def test_resume_does_not_rewrite_existing_files(tiny):
    out, config = tiny
    wavs = sorted((out / "wavs").rglob("*.wav"))
    stamps = {p: p.stat().st_mtime_ns for p in wavs}
    build_corpus(out, config, progress=False)
    assert {p: p.stat().st_mtime_ns for p in sorted((out / "wavs").rglob("*.wav"))} == stamps
    counts = json.loads((out / "corpus.json").read_text())["counts"]
    assert counts["synthesized"] == 0 and counts["reused"] == len(wavs)


def test_heldout_sentences_never_in_corpus(tiny):
    out, _ = tiny
    groups = split_sentences()
    banned_ids = {s.id for s in groups["heldout"] + groups["excluded"]}
    banned_texts = {normalize_text(s.text) for s in groups["heldout"] + groups["excluded"]}
    for u in read_manifest(out / "manifest.jsonl"):
        assert u.extra["split"] == "train"
        assert u.extra["sentence_id"] not in banned_ids
        assert normalize_text(u.text) not in banned_texts


def test_build_is_deterministic_per_seed(tmp_path):
    config = CorpusConfig.tiny(engines=("espeak",), n_speakers=2, minutes=0.1)
    rows = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_corpus(tmp_path / name, dataclasses.replace(config, seed=seed), progress=False)
        rows[name] = [u.id for u in read_manifest(tmp_path / name / "manifest.jsonl")]
    assert rows["a"] == rows["b"] and rows["a"] != rows["c"]
    for uid in rows["a"]:
        spk = uid.split("_arctic")[0]
        a = (tmp_path / "a" / "wavs" / spk / f"{uid}.wav").read_bytes()
        assert a == (tmp_path / "b" / "wavs" / spk / f"{uid}.wav").read_bytes()


def test_real_manifest_adds_real_rows(tmp_path, real_speech_dir, real_speech_rows):
    # A small real manifest in its own folder (manifest paths may not leave their root).
    picked = [r for r in real_speech_rows if r["sample_rate"] != 24000][:2]
    real_dir = tmp_path / "real"
    (real_dir / "audio").mkdir(parents=True)
    rows = []
    for r in picked:
        shutil.copy(real_speech_dir / r["audio"], real_dir / r["audio"])
        rows.append({k: r[k] for k in ("id", "audio", "text", "speaker", "licence")})
    # The same recording claimed to read a held-out sentence must be left out.
    heldout = split_sentences()["heldout"][0]
    rows.append({**rows[0], "id": "leak", "text": heldout.text})
    (real_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "corpus"
    config = CorpusConfig.tiny(engines=("espeak",), n_speakers=1, minutes=0.05)
    build_corpus(out, config, real_manifest=real_dir / "manifest.jsonl", progress=False)
    utts = read_manifest(out / "manifest.jsonl")
    real = [u for u in utts if u.extra["engine"] == "real"]
    assert [u.id for u in real] == [r["id"] for r in picked]
    assert [u.speaker for u in real] == [r["speaker"] for r in picked]
    assert [u.text for u in real] == [r["text"] for r in picked]
    for u in real:
        assert sf.info(str(u.audio)).samplerate == 24000
        assert u.audio.parent.name == u.speaker
        assert u.extra["licence"]
    assert json.loads((out / "corpus.json").read_text())["counts"]["real_skipped_heldout"] == 1


def test_real_manifest_errors_name_the_row(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text(json.dumps({"id": "x1", "audio": "missing.wav", "text": "Hi.", "speaker": "s"}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:1 \(id=x1\): audio: file not found"):
        build_corpus(tmp_path / "out", CorpusConfig.tiny(), real_manifest=bad, progress=False)


def test_cli_builds_corpus(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="valle")
    corpus_cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "c"
    args = parser.parse_args(
        [
            "corpus",
            "--out",
            str(out),
            "--engines",
            "espeak",
            "--speakers",
            "2",
            "--minutes",
            "0.05",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    assert "2 speakers" in capsys.readouterr().out
    assert len({u.speaker for u in read_manifest(out / "manifest.jsonl")}) == 2
