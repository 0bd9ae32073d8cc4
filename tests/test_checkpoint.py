from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from valle.checkpoint import CheckpointError, load_checkpoint, load_optimizer_state, save_checkpoint
from valle.codec import CodecError, load_codec, load_codec_for
from valle.codec.base import CodecCard
from valle.model import VALLE, make_config
from valle.phonemes import SymbolTable


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    symbols = SymbolTable.default()
    model = VALLE(make_config("debug", len(symbols)))
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, model, symbols, load_codec().card, step=7, optimizer_state=opt.state_dict())
    return tmp_path, model


def test_round_trip_is_bit_exact_with_untied_heads(saved):
    path, model = saved
    ckpt = load_checkpoint(path)
    assert ckpt.step == 7 and ckpt.config == model.cfg and ckpt.codec == load_codec().card
    for (k, a), (_, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not ckpt.config.tie_nar_heads
    assert not torch.equal(ckpt.model.nar.heads[0].weight, ckpt.model.nar.audio_embs[2].weight)
    assert "param_groups" in load_optimizer_state(path)


def test_legacy_tied_checkpoint_loads_with_its_ties(tmp_path):
    # checkpoints written before `tie_nar_heads` existed (the demo one) tied the NAR heads and do not
    # store the tied tensors; their config has no such field
    symbols = SymbolTable.default()
    model = VALLE(make_config("debug", len(symbols), tie_nar_heads=True))
    save_checkpoint(tmp_path, model, symbols, load_codec().card, step=1)
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["model"]["tie_nar_heads"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.tie_nar_heads
    assert ckpt.model.nar.heads[0].weight is ckpt.model.nar.audio_embs[2].weight
    assert torch.equal(ckpt.model.nar.heads[0].weight, model.nar.audio_embs[2].weight)


def test_tampered_weights_are_refused(saved):
    path, _ = saved
    raw = bytearray((path / "model.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


def _replace_weights(path, data: bytes) -> None:
    """Swap model.safetensors for ``data`` and record its sha256, as a forger with write access would."""
    import hashlib

    (path / "model.safetensors").write_bytes(data)
    meta = json.loads((path / "config.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (path / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pickle.dumps({"weight": [1.0, 2.0]}), id="pickle-renamed"),
        pytest.param(struct.pack("<Q", 2**62) + b"{}", id="absurd-header-length"),
        pytest.param(struct.pack("<Q", 20) + b'{"a": {"dtype": "F32"', id="broken-header"),
    ],
)
def test_unreadable_weights_are_one_clear_error(saved, data):
    path, _ = saved
    _replace_weights(path, data)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(path)


def test_pickled_optimizer_state_is_refused_without_suggesting_unpickling(saved):
    path, _ = saved

    class Payload:  # anything beyond tensors and numbers: weights_only refuses to build it
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"state": Payload()}, path / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: not an optimizer state") as err:
        load_optimizer_state(path)
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(version=99), "format version 99"),
        (lambda m: m.update(format="pickle"), "expected 'valle-checkpoint'"),
        (lambda m: m.pop("codec"), "missing field 'codec'"),
        (lambda m: m["model"].update(n_phonemes=5), "symbol table has"),
        (lambda m: m.update(parts=["ar", "vocoder"]), "parts must be one or both"),
        (lambda m: m.update(parts=["ar"]), r"unexpected \['nar\."),  # says AR only, holds the NAR too
    ],
)
def test_inconsistent_configs_are_refused(saved, edit, match):
    path, _ = saved
    meta = json.loads((path / "config.json").read_text())
    edit(meta)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_missing_checkpoint_and_other_codec(saved, tmp_path_factory):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path_factory.mktemp("empty"))
    path, _ = saved
    card = CodecCard.from_json(json.loads((path / "config.json").read_text())["codec"])
    other = CodecCard(**{**card.to_json(), "weights_sha256": "0" * 64})
    with pytest.raises(CodecError, match="expected 0000"):
        load_codec_for(other)  # codes from other codebooks must never be decoded with ours


def test_export_halves_the_file_and_loads_back_close(saved, tmp_path_factory):
    from valle.checkpoint import export_checkpoint

    path, model = saved
    out = export_checkpoint(path, tmp_path_factory.mktemp("export"))
    assert (out / "model.safetensors").stat().st_size < 0.6 * (path / "model.safetensors").stat().st_size
    assert not (out / "optimizer.pt").exists()
    ckpt = load_checkpoint(out)
    assert ckpt.extra["exported_from_sha256"] == load_checkpoint(path).weights_sha256
    for (k, a), (_, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3, msg=k)


def test_ar_only_export_is_trained_on_but_never_generates(saved, tmp_path_factory):
    from types import SimpleNamespace

    from valle.checkpoint import export_checkpoint
    from valle.synthesize import Generator
    from valle.train_checkpoint import init_from
    from watermark import load_watermarker

    path, model = saved
    out = export_checkpoint(path, tmp_path_factory.mktemp("ar_only"), parts=("ar",))
    ckpt = load_checkpoint(out)
    assert ckpt.parts == ("ar",) and json.loads((out / "config.json").read_text())["parts"] == ["ar"]
    for k, v in model.ar.state_dict().items():
        torch.testing.assert_close(ckpt.model.ar.state_dict()[k], v, atol=1e-3, rtol=1e-3, msg=k)
    with pytest.raises(CheckpointError, match=r"holds the AR weights only.*needs the NAR"):
        Generator(ckpt, load_watermarker("perth"))
    # a new run starting from it takes its AR and keeps its own freshly initialised NAR
    torch.manual_seed(1)
    fresh = VALLE(model.cfg)
    own_nar = {k: v.clone() for k, v in fresh.nar.state_dict().items()}
    init_from(out, fresh, SimpleNamespace(codec_card=ckpt.codec, symbols=ckpt.symbols))
    assert all(torch.equal(v, ckpt.model.ar.state_dict()[k]) for k, v in fresh.ar.state_dict().items())
    assert all(torch.equal(v, own_nar[k]) for k, v in fresh.nar.state_dict().items())


def test_an_ar_only_checkpoint_generates_once_given_another_checkpoints_nar(saved, tmp_path_factory):
    from valle.checkpoint import export_checkpoint

    path, model = saved
    ar_only = export_checkpoint(path, tmp_path_factory.mktemp("ar_only"), parts=("ar",))
    torch.manual_seed(2)
    other = VALLE(model.cfg)  # a checkpoint whose NAR differs from the one ar_only was cut from
    symbols, card = load_checkpoint(path).symbols, load_checkpoint(path).codec
    donor = save_checkpoint(tmp_path_factory.mktemp("donor"), other, symbols, card, step=3)
    out = export_checkpoint(ar_only, tmp_path_factory.mktemp("both"), nar_from=donor, ar_greedy=True)
    ckpt = load_checkpoint(out)
    assert ckpt.parts == ("ar", "nar") and ckpt.step == 7 and ckpt.extra["ar"] == {"greedy": True}
    assert ckpt.extra["nar_from_sha256"] == load_checkpoint(donor).weights_sha256
    for k, v in other.nar.state_dict().items():
        torch.testing.assert_close(ckpt.model.nar.state_dict()[k], v, atol=1e-3, rtol=1e-3, msg=k)
    for k, v in model.ar.state_dict().items():
        torch.testing.assert_close(ckpt.model.ar.state_dict()[k], v, atol=1e-3, rtol=1e-3, msg=k)
    # a NAR of another size or codec does not belong with this AR
    bigger = save_checkpoint(
        tmp_path_factory.mktemp("tiny"), VALLE(make_config("tiny", len(symbols))), symbols, card, step=1
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        export_checkpoint(ar_only, tmp_path_factory.mktemp("x"), nar_from=bigger)
    with pytest.raises(CheckpointError, match="holds the AR weights only"):
        export_checkpoint(ar_only, tmp_path_factory.mktemp("y"), nar_from=ar_only)


@pytest.mark.parametrize(
    "name, step, max_steps",
    [("one_voice_ar", 200, 400), ("piper8_ar", 300, 500)],  # both stopped mid-schedule (their READMEs)
)
def test_committed_research_ars_are_ones_a_new_run_can_start_from(name, step, max_steps):
    """The research ARs exist to be trained on (`--init-from`): their weights pass their sha256,
    and their codec, phoneme table and shapes are what a `tiny --ar-pointer` run here builds."""
    ckpt = load_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints" / name)
    assert ckpt.config.ar_pointer
    assert load_codec_for(ckpt.codec).card == ckpt.codec  # the installed vqvae_24khz, same weights
    symbols = SymbolTable.default()
    assert ckpt.symbols == symbols
    fresh = make_config("tiny", len(symbols), ar_pointer=True)
    assert ckpt.config == fresh
    # self-fed AR-only steps, exported without the NAR (untrained, or the demo's that it only carried)
    assert ckpt.step == step and ckpt.parts == ("ar",)
    train = ckpt.extra["train_config"]
    assert train["ar_self_feed"] == 0.9 and train["parts"] == "ar" and train["max_steps"] == max_steps
