"""The public synthesis path. The checkpoint here is a randomly initialised debug model: it exercises
loading, generation, decoding, watermarking and verification, and produces no measurement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import tone
from valle.audio import AudioError, load_audio, save_audio
from valle.checkpoint import save_checkpoint
from valle.codec import load_codec
from valle.generate import GenerationOptions
from valle.model import VALLE, make_config
from valle.phonemes import SymbolTable
from valle.sampling import SamplingOptions, calibrated
from valle.synthesize import Generator
from watermark import load_watermarker
from watermark.base import Detection, WatermarkError


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Generator:
    torch.manual_seed(0)
    symbols = SymbolTable.default()
    ckpt = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(ckpt, VALLE(make_config("debug", len(symbols))), symbols, load_codec().card, step=0)
    return Generator(ckpt, load_watermarker("perth"))


@pytest.fixture(scope="module")
def prompt_wav(tmp_path_factory):
    return save_audio(tmp_path_factory.mktemp("prompt") / "prompt.wav", tone(1.5), 24000)


def test_every_output_is_marked_and_verified_after_saving(generator, prompt_wav, tmp_path):
    options = GenerationOptions(max_seconds=1.0, seed=3)
    records = generator.synthesize(["Hello there.", "A second line."], prompt_wav, "A tone.", options)
    assert [r.id for r in records] == ["utt0000", "utt0001"]
    for rec in records:
        assert rec.stop_reason in ("eos", "max_length") and rec.codes.shape[1] == 8
        assert len(rec.audio) == rec.codes.shape[0] * 320 and rec.sample_rate == 24000
        assert rec.watermark["name"] == "perth" and rec.model_sha256 == generator.ckpt.weights_sha256
    paths = generator.save(records, tmp_path)
    for rec, path in zip(records, paths, strict=True):
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["verification"]["detected"] is True, meta["verification"]
        assert meta["sampling"]["seed"] == 3 and meta["text"] == rec.text
    again = generator.synthesize(["Hello there."], prompt_wav, "A tone.", options)
    torch.testing.assert_close(again[0].codes, records[0].codes)  # same seed, same codes


def test_bad_requests_get_clear_errors(generator, prompt_wav, tmp_path):
    short = save_audio(tmp_path / "short.wav", tone(0.5), 24000)
    with pytest.raises(AudioError, match=r"prompt is 0\.50 s"):
        generator.synthesize(["Hi."], short, "A tone.")
    silent = tmp_path / "silent.wav"
    save_audio(silent, np.zeros(24000 * 2, np.float32), 24000)
    with pytest.raises(AudioError, match="silent"):
        generator.synthesize(["Hi."], silent, "A tone.")
    with pytest.raises(ValueError, match="text 0"):
        generator.synthesize(["   "], prompt_wav, "A tone.")
    with pytest.raises(ValueError, match=r"text 1 .*U\+4F60 .*script other than Latin"):
        generator.synthesize(["Fine.", "你好，世界"], prompt_wav, "A tone.")
    with pytest.raises(ValueError, match=r"prompt text .*U\+0007 .*control character"):
        generator.synthesize(["Fine."], prompt_wav, "A \x07tone.")
    with pytest.raises(ValueError, match=r"too long|longer"):
        generator.synthesize(["word " * 400], prompt_wav, "A tone.")
    with pytest.raises(ValueError, match=r"prompt text 0 .*100 words for .* s of audio"):
        generator.synthesize(["Fine."], prompt_wav, "word " * 100)  # not what a few seconds can say
    with pytest.raises(ValueError, match="no texts"):
        generator.synthesize([], prompt_wav, "A tone.")
    with pytest.raises(WatermarkError, match="not a registered watermark backend"):
        Generator(generator.ckpt, watermarker=object())


class DoNothingPerth:
    """Has Perth's name and methods and claims every file is marked: never embeds anything."""

    name, payload_bits, threshold = "perth", 0, 0.5

    def card(self):
        return {"name": "perth", "weights_sha256": "0" * 64, "threshold": 0.5}

    def embed(self, wav, sr, payload=None):
        return wav

    def detect(self, wav, sr):
        return Detection(score=1.0, detected=True)


def test_only_registered_backends_mark_and_their_own_detector_reads_back(generator, prompt_wav, tmp_path):
    with pytest.raises(WatermarkError, match="DoNothingPerth is not a registered watermark backend"):
        Generator(generator.ckpt, DoNothingPerth())
    subclass = type("LazyPerth", (type(generator.watermarker),), {"embed": DoNothingPerth.embed})
    with pytest.raises(WatermarkError, match="LazyPerth is not a registered"):
        Generator(generator.ckpt, subclass.__new__(subclass))
    # an instance whose methods were swapped: the class's own embed and detect still run
    patched = Generator(generator.ckpt, load_watermarker("perth"))
    patched.watermarker.embed = DoNothingPerth.embed.__get__(patched.watermarker)
    patched.watermarker.detect = DoNothingPerth.detect.__get__(patched.watermarker)
    (rec,) = patched.synthesize(["Hello there."], prompt_wav, "A tone.", GenerationOptions(max_seconds=1.0))
    patched.save([rec], tmp_path)
    fresh = load_watermarker("perth").detect(*load_audio(tmp_path / f"{rec.id}.wav"))
    assert fresh.detected and rec.verification == {"detected": True, "score": round(fresh.score, 4)}


def test_symbols_missing_from_the_checkpoint_table_are_named(tmp_path, prompt_wav):
    small = SymbolTable(SymbolTable.default().symbols[:12])  # specials + a handful of phonemes
    save_checkpoint(tmp_path, VALLE(make_config("debug", len(small))), small, load_codec().card, step=0)
    gen = Generator(tmp_path, load_watermarker("perth"))
    with pytest.raises(ValueError, match=r"prompt text .*: symbols not in the table: .*U\+"):
        gen.synthesize(["Hello world."], prompt_wav, "A tone.")


def test_signed_outputs_verify_as_authentic_and_are_in_the_ledger(generator, prompt_wav, tmp_path):
    from watermark.keys import generate_key
    from watermark.ledger import Ledger
    from watermark.provenance import generate_signing_key, load_public_key
    from watermark.verify import verify_file

    signer = generate_signing_key(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    key = generate_key(tmp_path / "wm.key.json", "test-key")
    signed = Generator(generator.ckpt, generator.watermarker, key=key, signer=signer)
    records = signed.synthesize(["Hello there."], prompt_wav, "A tone.", GenerationOptions(max_seconds=1.0))
    (path,) = signed.save(records, tmp_path / "out")
    manifest = json.loads(path.with_name("utt0000.manifest.json").read_text())
    assert manifest["utterance_id"] == "utt0000" and manifest["model_sha256"] == generator.ckpt.weights_sha256
    assert manifest["payload"] is None  # Perth carries no bits: the key is not used, and not recorded
    (entry,) = Ledger(tmp_path / "out" / "ledger.jsonl").entries()
    assert entry.manifest == manifest
    verdict = verify_file(
        path, public_key=load_public_key(tmp_path / "k.pub.pem"), watermarker=generator.watermarker
    )
    assert verdict["verdict"] == "authentic", verdict["reasons"]
    assert key.secret.hex() not in (tmp_path / "out" / "ledger.jsonl").read_text()


def test_a_payload_backend_needs_a_key_and_embeds_the_keyed_payload(generator, prompt_wav, tmp_path):
    """AudioSeal with random weights (loading path only: its detector decodes noise, so the saved
    file's payload check must be able to fail, and is recorded either way)."""
    from tests.test_audioseal import DETECTOR_CARD, GENERATOR_CARD, official_layout, random_network, xp_cfg
    from watermark.base import WatermarkError
    from watermark.keys import generate_key

    paths = {}
    for role, card in (("generator", GENERATOR_CARD), ("detector", DETECTOR_CARD)):
        paths[role] = tmp_path / f"{role}.pth"
        state = official_layout(random_network(card).state_dict())
        torch.save({"xp.cfg": xp_cfg(card), "model": state}, paths[role])
    audioseal = load_watermarker("audioseal", **paths)
    with pytest.raises(WatermarkError, match="key"):
        Generator(generator.ckpt, audioseal)
    key = generate_key(tmp_path / "wm.key.json", "k1")
    gen = Generator(generator.ckpt, audioseal, key=key)
    (rec,) = gen.synthesize(["Hello there."], prompt_wav, "A tone.", GenerationOptions(max_seconds=1.0))
    expected = key.payload("utt0000", generator.ckpt.weights_sha256, 16)
    assert rec.watermark["payload"] == "".join(map(str, expected)) and rec.watermark["key_id"] == "k1"
    gen.save([rec], tmp_path / "out")
    assert isinstance(rec.verification["payload_match"], bool)
    assert rec.verification["detected"] is (
        rec.verification["payload_match"] and rec.verification["score"] >= 0.5
    )


def test_a_checkpoint_that_recommends_greedy_decoding_gets_it_unless_told_otherwise(tmp_path, prompt_wav):
    from valle.checkpoint import export_checkpoint

    torch.manual_seed(0)
    symbols = SymbolTable.default()
    src = save_checkpoint(
        tmp_path / "src", VALLE(make_config("debug", len(symbols))), symbols, load_codec().card, step=0
    )
    out = export_checkpoint(src, tmp_path / "greedy", ar_greedy=True)
    gen = Generator(out, load_watermarker("perth"))
    assert gen.ckpt.extra["ar"] == {"greedy": True}

    def run(seed: int, sampling: SamplingOptions):
        options = GenerationOptions(sampling=sampling, max_seconds=1.0, seed=seed)
        return gen.synthesize(["Hello there."], prompt_wav, "A tone.", options)[0]

    a, b = run(1, SamplingOptions()), run(2, SamplingOptions())
    assert a.sampling["sampling"]["greedy"] is True and b.sampling["sampling"]["greedy"] is True
    torch.testing.assert_close(a.codes, b.codes)  # argmax: the seed changes nothing
    assert run(1, SamplingOptions(greedy=False)).sampling["sampling"]["greedy"] is False  # asked for
    # a checkpoint that recommends nothing samples, as the paper does, with no repeat penalty
    assert calibrated(SamplingOptions(), {}).greedy is False
    assert calibrated(SamplingOptions(), {}).repeat_penalty == 0


def test_a_recommended_repeat_penalty_is_recorded_kept_on_re_export_and_overridable(tmp_path, prompt_wav):
    from valle.checkpoint import export_checkpoint

    symbols = SymbolTable.default()
    src = save_checkpoint(
        tmp_path / "src", VALLE(make_config("debug", len(symbols))), symbols, load_codec().card, step=0
    )
    greedy = export_checkpoint(src, tmp_path / "greedy", ar_greedy=True)
    out = export_checkpoint(greedy, tmp_path / "penalised", ar_repeat_penalty=3.0)
    gen = Generator(out, load_watermarker("perth"))
    assert gen.ckpt.extra["ar"] == {"greedy": True, "repeat_penalty": 3.0}
    options = GenerationOptions(max_seconds=1.0)
    rec = gen.synthesize(["Hello there."], prompt_wav, "A tone.", options)[0]
    assert rec.sampling["sampling"]["repeat_penalty"] == 3.0
    asked = GenerationOptions(sampling=SamplingOptions(repeat_penalty=0.0), max_seconds=1.0)
    assert (
        gen.synthesize(["Hello there."], prompt_wav, "A tone.", asked)[0].sampling["sampling"][
            "repeat_penalty"
        ]
        == 0.0
    )
