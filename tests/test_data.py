"""Token cache (valle.data), bucketing sampler and collation (valle.batching) on short eSpeak clips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tone
from valle.audio import load_audio, save_audio
from valle.batching import LengthBucketSampler, collate
from valle.codec import load_codec
from valle.codec.melvq import MelVQCodec
from valle.data import INDEX, TOKENS, DataError, PrepareOptions, TokenDataset, prepare_tokens
from valle.manifest import ManifestError
from valle.model import IGNORE
from valle.phonemes import DEFAULT_SYMBOLS, Phonemizer, SymbolTable

SENTENCES = (
    "The cat sat on the mat.",
    "A quick brown fox jumps.",
    "She sells sea shells.",
    "Open the window, please.",
    "We walked home in the rain.",
)


def make_corpus(root: Path, texts: tuple[str, ...] = SENTENCES) -> Path:
    """Speak ``texts`` with eSpeak NG (about 1.1-1.5 s each) into ``root``; returns the manifest."""
    from valle.corpus.espeak import EspeakSynth

    root.mkdir(parents=True, exist_ok=True)
    synth = EspeakSynth()
    rows = []
    for i, text in enumerate(texts):
        wav, sr = synth.synthesize(text, voice="en-us+m3" if i % 2 else "en-us+f3", rate=190)
        save_audio(root / f"u{i}.wav", wav, sr)
        rows.append({"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "speaker": f"s{i % 2}"})
    synth.close()
    return write_rows(root / "manifest.jsonl", rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def codec():
    return load_codec("melvq_24khz")


@pytest.fixture(scope="module")
def phonemizer():
    return Phonemizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_prepare_encodes_once_and_reuses_the_cache(corpus, tmp_path, codec, phonemizer, caplog):
    symbols = SymbolTable.default()
    cache = prepare_tokens(corpus, tmp_path / "cache", codec, phonemizer, symbols, progress=False)
    ds = TokenDataset(cache)
    assert len(ds) == len(SENTENCES) and ds.skipped == []
    assert ds.codec_card == codec.card and ds.symbols == symbols
    # the cache holds exactly what the codec and phonemizer produce
    item = ds[3]
    wav, sr = load_audio(corpus.parent / "u3.wav")
    assert torch.equal(item.codes, codec.encode(wav, sr))
    assert item.text.tolist() == symbols.encode(phonemizer.phonemize(SENTENCES[3]))
    assert item.codes.shape[1] == 8 and ds.frames[3] == len(item.codes)

    stamps = {name: (cache / name).stat().st_mtime_ns for name in (INDEX, TOKENS)}
    with caplog.at_level(logging.INFO, logger="valle.data"):
        assert prepare_tokens(corpus, cache, codec, phonemizer, symbols, progress=False) == cache
    assert {name: (cache / name).stat().st_mtime_ns for name in (INDEX, TOKENS)} == stamps
    assert "reusing token cache" in caplog.text


def test_cache_is_rebuilt_when_codec_card_symbols_or_manifest_change(
    corpus, tmp_path, codec, phonemizer, caplog
):
    symbols = SymbolTable.default()
    cache = prepare_tokens(corpus, tmp_path / "cache", codec, phonemizer, symbols, progress=False)
    # same codebooks, different identity: codes made by another codec must never be mixed in
    other = MelVQCodec(codec.codebooks, codec.cfg, weights_sha256="f" * 64)
    with caplog.at_level(logging.WARNING, logger="valle.data"):
        prepare_tokens(corpus, cache, other, phonemizer, symbols, progress=False)
    assert "codec card differs" in caplog.text
    assert TokenDataset(cache).codec_card.weights_sha256 == "f" * 64

    caplog.clear()
    extended = SymbolTable((*DEFAULT_SYMBOLS, "ʁ"))
    with caplog.at_level(logging.WARNING, logger="valle.data"):
        prepare_tokens(corpus, cache, other, phonemizer, extended, progress=False)
    assert "symbol table differs" in caplog.text and TokenDataset(cache).symbols == extended

    caplog.clear()
    rows = [json.loads(line) for line in corpus.read_text().splitlines()][:3]
    manifest = write_rows(corpus.parent / "three.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="valle.data"):
        prepare_tokens(manifest, cache, other, phonemizer, extended, progress=False)
    assert "manifest changed" in caplog.text and len(TokenDataset(cache)) == 3


def test_bad_rows_are_recorded_with_their_reason_not_fatal(corpus, tmp_path, codec, phonemizer):
    root = corpus.parent
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file")
    save_audio(root / "blip.wav", tone(0.1), 24000)
    save_audio(root / "long.wav", tone(3.0), 24000)
    good = [json.loads(line) for line in corpus.read_text().splitlines()][:2]
    rows = [
        *good,
        {"id": "broken", "audio": "broken.wav", "text": "Hello there.", "speaker": "x"},
        {"id": "missing", "audio": "nowhere.wav", "text": "Hello there.", "speaker": "x"},
        {"id": "blip", "audio": "blip.wav", "text": "Hi.", "speaker": "x"},
        {"id": "long", "audio": "long.wav", "text": "A long tone.", "speaker": "x"},
        {"id": "no_audio", "audio": None, "text": "No sound here.", "speaker": "x"},
        {"id": "theta", "audio": "u0.wav", "text": "Think of three things.", "speaker": "x"},
    ]
    manifest = write_rows(root / "mixed.jsonl", rows)
    no_theta = SymbolTable(tuple(s for s in DEFAULT_SYMBOLS if s != "θ"))
    opts = PrepareOptions(strict=True, min_seconds=0.5, max_seconds=2.5)
    cache = prepare_tokens(manifest, tmp_path / "cache", codec, phonemizer, no_theta, opts, progress=False)
    ds = TokenDataset(cache)
    assert [it["id"] for it in ds.items] == ["u0", "u1"]
    reasons = {s["id"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"broken", "missing", "blip", "long", "no_audio", "theta"}
    assert "broken.wav" in reasons["broken"] and "nowhere.wav" in reasons["missing"]
    assert reasons["blip"].startswith("too short") and reasons["long"].startswith("too long")
    assert "'θ'" in reasons["theta"] and "no recording" in reasons["no_audio"]

    # without strict mode the unknown symbol becomes <unk> and the row is kept
    lenient = prepare_tokens(
        manifest, tmp_path / "lenient", codec, phonemizer, no_theta, PrepareOptions(max_seconds=2.5), False
    )
    kept = TokenDataset(lenient)
    theta = next(i for i, it in enumerate(kept.items) if it["id"] == "theta")
    assert kept.items[theta]["unknown_symbols"] == ["θ"]
    assert no_theta.unk_id in kept[theta].text.tolist()


def test_all_rows_failing_or_empty_manifest_is_an_error(tmp_path, codec, phonemizer):
    symbols = SymbolTable.default()
    bad = write_rows(
        tmp_path / "bad.jsonl",
        [{"id": f"m{i}", "audio": f"missing{i}.wav", "text": "Hello.", "speaker": "x"} for i in range(3)],
    )
    with pytest.raises(DataError, match=r"none of 3 rows is usable(.|\n)*m2: audio"):
        prepare_tokens(bad, tmp_path / "cache", codec, phonemizer, symbols, progress=False)
    assert not (tmp_path / "cache" / INDEX).exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ManifestError, match="empty"):
        prepare_tokens(empty, tmp_path / "cache", codec, phonemizer, symbols, progress=False)
    with pytest.raises(DataError, match="not a token cache"):
        TokenDataset(tmp_path / "cache")


def test_tampered_cache_is_refused(corpus, tmp_path, codec, phonemizer):
    cache = prepare_tokens(corpus, tmp_path / "c", codec, phonemizer, SymbolTable.default(), progress=False)
    data = bytearray((cache / TOKENS).read_bytes())
    data[-1] ^= 0xFF
    (cache / TOKENS).write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        TokenDataset(cache)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sampler_shards_every_item_exactly_once_within_the_frame_cap(world_size):
    frames = np.random.default_rng(1).integers(20, 400, size=237).tolist()
    samplers = [
        LengthBucketSampler(
            frames, max_frames=1200, max_batch=8, bucket_size=50, seed=3, rank=r, world_size=world_size
        )
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        per_rank = [s.batches(epoch) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1  # every rank runs the same number of steps
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(seen) == list(range(len(frames)))  # nothing lost, nothing twice
        for batch in (b for batches in per_rank for b in batches):
            assert 1 <= len(batch) <= 8
            assert len(batch) * max(frames[i] for i in batch) <= 1200
    s = samplers[0]
    assert s.batches(0) == s.batches(0) and s.batches(0) != s.batches(1)  # deterministic per epoch
    s.set_epoch(1)
    assert list(s) == s.batches(1) and len(s) == len(s.batches(1))
    # bucketing works: batches are much tighter than random groups would be
    waste = sum(len(b) * max(frames[i] for i in b) - sum(frames[i] for i in b) for b in s.global_batches(0))
    assert waste < 0.15 * sum(frames)


def test_sampler_splits_batches_so_ranks_stay_in_step_and_refuses_bad_setups():
    frames = [100] * 5  # max_batch 2 -> 3 batches; 2 ranks need an even count
    batches = LengthBucketSampler(frames, 1000, max_batch=2, world_size=2).global_batches(0)
    assert len(batches) % 2 == 0 and sorted(i for b in batches for i in b) == list(range(5))
    # single-item batches cannot be split: a few are repeated so the ranks still run in step
    singles = LengthBucketSampler([100] * 5, 150, max_batch=1, world_size=2).global_batches(0)
    assert len(singles) == 6 and sorted({i for b in singles for i in b}) == list(range(5))
    with pytest.raises(DataError, match="longest item"):
        LengthBucketSampler([10, 500], max_frames=400)
    with pytest.raises(DataError, match="ranks"):
        LengthBucketSampler([10], max_frames=400, world_size=2)


def test_collate_pads_text_with_zero_and_codes_with_ignore(corpus, tmp_path, codec, phonemizer):
    cache = prepare_tokens(corpus, tmp_path / "c", codec, phonemizer, SymbolTable.default(), progress=False)
    ds = TokenDataset(cache)
    items = [ds[0], ds[1], ds[2]]
    batch = collate(items)
    B, Lx = len(items), max(len(it.text) for it in items)
    T = max(len(it.codes) for it in items)
    assert batch.text.shape == (B, Lx) and batch.codes.shape == (B, T, 8)
    assert batch.text_lens.tolist() == [len(it.text) for it in items]
    assert batch.audio_lens.tolist() == [len(it.codes) for it in items]
    for b, it in enumerate(items):
        assert torch.equal(batch.codes[b, : len(it.codes)], it.codes)
        assert (batch.codes[b, len(it.codes) :] == IGNORE).all()
        assert (batch.text[b, len(it.text) :] == 0).all()
    assert batch.ids == ["u0", "u1", "u2"]
    with pytest.raises(DataError):
        collate([])
