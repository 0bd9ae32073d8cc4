"""VALL-E training on a handful of short eSpeak utterances with the `debug` model."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_data import make_corpus
from valle.batching import collate
from valle.checkpoint import CheckpointError, load_checkpoint, require_parts
from valle.codec import CodecError, load_codec
from valle.codec.melvq import MelVQCodec
from valle.data import TokenDataset, prepare_tokens
from valle.phonemes import Phonemizer, SymbolTable
from valle.train import LOG, TrainConfig, build_model, draw_prompt_lens, lr_at, train
from valle.train_step import LossModule, backward_step, self_fed_history

REPO = Path(__file__).resolve().parents[1]
CFG = TrainConfig(
    preset="debug", lr=5e-3, warmup_steps=5, max_steps=40, max_frames=2000, log_every=1, tensorboard=False
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def codec():
    return load_codec("melvq_24khz")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, codec) -> Path:
    root = tmp_path_factory.mktemp("train")
    manifest = make_corpus(root / "corpus")
    return prepare_tokens(
        manifest, root / "cache", codec, Phonemizer(), SymbolTable.default(), progress=False
    )


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG).read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a > b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)
    with pytest.raises(ValueError, match="max_frames"):
        TrainConfig(max_frames=0)


def test_prompt_is_a_quarter_to_half_of_each_utterance_capped_at_3_s():
    lens = torch.tensor([40, 100, 300, 1000] * 50)
    plens = draw_prompt_lens(lens, TrainConfig(), torch.Generator().manual_seed(0))
    frac = plens / lens
    assert (plens <= 225).all() and (plens[lens == 1000] == 225).all()
    short = lens < 450
    assert (frac[short] >= 0.245).all() and (frac[short] <= 0.5).all()
    assert frac[short].std() > 0.05  # drawn, not fixed


def test_loss_falls_when_overfitting_a_few_utterances(cache, tmp_path):
    result = train(CFG, cache, tmp_path / "run", progress=False)
    assert result.step == 40
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 41))
    first, last = log[:5], log[-5:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    # both start near ln(1024) ~ 6.93 (uniform over the codebook)
    assert 6.5 < mean(first, "ar_loss") < 7.2 and 6.5 < mean(first, "nar_loss") < 7.2
    assert mean(last, "ar_loss") < 0.6 * mean(first, "ar_loss")
    assert mean(last, "nar_loss") < mean(first, "nar_loss") - 1.0
    assert mean(last, "ar_acc") > 0.3 > mean(first, "ar_acc")
    assert {r["nar_stage"] for r in log} <= set(range(2, 9)) and len({r["nar_stage"] for r in log}) >= 5
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in log)
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert ckpt.step == 40 and ckpt.codec == TokenDataset(cache).codec_card


def test_resumed_run_matches_an_uninterrupted_one_bit_for_bit(cache, tmp_path):
    # small batches so that the 6 steps cross epoch boundaries (the data position must be restored)
    cfg = replace(CFG, max_steps=6, max_frames=250, ckpt_every=2, warmup_steps=2)
    straight = train(cfg, cache, tmp_path / "a", progress=False)
    first = train(cfg, cache, tmp_path / "b", until_step=3, progress=False)
    assert first.step == 3 and first.resumed_from is None
    resumed = train(cfg, cache, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 3 and resumed.step == 6 and straight.epoch == resumed.epoch >= 1

    a = load_file(str(tmp_path / "a" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in log_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in log_b
    ]
    # the checkpoint swap leaves only last/
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["last", "log.jsonl"]


def test_resume_refuses_a_checkpoint_made_with_another_codec(cache, tmp_path, codec):
    cfg = replace(CFG, max_steps=2)
    train(cfg, cache, tmp_path / "run", until_step=1, progress=False)
    corpus = next((cache.parent / "corpus").glob("manifest.jsonl"))
    other = MelVQCodec(codec.codebooks, codec.cfg, weights_sha256="0" * 64)
    other_cache = prepare_tokens(
        corpus, tmp_path / "other", other, Phonemizer(), SymbolTable.default(), progress=False
    )
    with pytest.raises(CodecError, match="weights_sha256"):
        train(cfg, other_cache, tmp_path / "run", progress=False)


def single_process_grads(cache: Path, stage: int) -> dict[str, torch.Tensor]:
    ds = TokenDataset(cache)
    torch.manual_seed(0)
    model = build_model(TrainConfig(preset="debug"), ds.symbols, ds.codec_card)
    batch = collate([ds[i] for i in range(len(ds))])
    backward_step(LossModule(model), [batch], [batch.audio_lens // 3], stage)
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


DDP_SCRIPT = """
import sys
import torch
from safetensors.torch import save_file

from valle.batching import collate
from valle.data import TokenDataset
from valle.train import TrainConfig, build_model, setup_distributed
from valle.train_step import backward_step, wrap_model
from valle.train_cli import main

cache, manifest, out, grads_path = sys.argv[1:5]
info = setup_distributed("cpu")
# 1. gradients of a fixed batch split unevenly across the ranks: items 0-1 on rank 0, 2-4 on rank 1
ds = TokenDataset(cache)
torch.manual_seed(0)
model = build_model(TrainConfig(preset="debug"), ds.symbols, ds.codec_card)
module = wrap_model(model, info)
batch = collate([ds[i] for i in ([0, 1] if info.rank == 0 else [2, 3, 4])])
backward_step(module, [batch], [batch.audio_lens // 3], stage=2, world_size=info.world_size)
if info.rank == 0:
    save_file({k: p.grad.contiguous() for k, p in model.named_parameters() if p.grad is not None}, grads_path)
# 2. the CLI: cache reused, 3 steps, rank 0 writes the checkpoint and the log
sys.exit(main([
    "--manifest", manifest, "--out", out, "--cache-dir", cache, "--preset", "debug", "--max-steps", "3",
    "--max-frames", "250", "--log-every", "1", "--device", "cpu", "--no-progress", "--warmup-steps", "1",
    "--codec", "melvq_24khz",
]))
"""


def test_torchrun_two_ranks_train_and_average_gradients_like_one_process(cache, tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    manifest = cache.parent / "corpus" / "manifest.jsonl"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(script), str(cache), str(manifest), str(tmp_path / "run"), str(tmp_path / "grads.safetensors"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3]  # one writer: rank 0
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert ckpt.step == 3 and ckpt.extra["data"]["world_size"] == 2
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 3

    ddp = load_file(str(tmp_path / "grads.safetensors"))
    ref = single_process_grads(cache, stage=2)
    assert ref.keys() <= ddp.keys()
    for k, g in ref.items():
        torch.testing.assert_close(ddp[k], g, rtol=1e-4, atol=1e-7, msg=k)


def test_training_one_part_leaves_the_other_untouched_and_ras_is_calibrated(cache, tmp_path):
    both = replace(CFG, max_steps=2)
    train(both, cache, tmp_path / "both", progress=False)
    start = load_checkpoint(tmp_path / "both" / "last")
    cfg = replace(CFG, max_steps=3, parts="nar", init_from=str(tmp_path / "both" / "last"))
    train(cfg, cache, tmp_path / "run", progress=False)
    log = read_log(tmp_path / "run")
    assert all("nar_loss" in r and "ar_loss" not in r for r in log)
    ckpt = load_checkpoint(tmp_path / "run" / "last")
    assert ckpt.parts == ("ar", "nar")  # the AR it started from is kept, as loaded
    for (name, a), b in zip(
        start.model.ar.state_dict().items(), ckpt.model.ar.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(start.model.nar.text_emb.weight, ckpt.model.nar.text_emb.weight)
    # RAS threshold calibrated on the cache's ground-truth codebook 1 and stored for generation
    ras = ckpt.extra["ras"]
    assert ras["window"] == 10 and 0 < ras["threshold"] < 1 and ras["ground_truth_rate"] <= 0.02
    with pytest.raises(ValueError, match="parts"):
        TrainConfig(parts="encoder")


def test_a_half_never_trained_is_not_saved_and_resuming_keeps_it_so(cache, tmp_path):
    """A NAR-only run from scratch holds no trained AR: its checkpoints say so (``parts``), so
    generation refuses them instead of running a random AR, before and after a resume."""
    for steps in (2, 3):  # the second call resumes the first
        train(replace(CFG, max_steps=steps, parts="nar"), cache, tmp_path / "run", progress=False)
        ckpt = load_checkpoint(tmp_path / "run" / "last")
        assert (ckpt.step, ckpt.parts) == (steps, ("nar",))
    with pytest.raises(CheckpointError, match="NAR weights only"):
        require_parts(ckpt, "ar", "nar", what="generation")


def test_self_feed_swaps_only_target_frames_for_the_models_own_draws():
    torch.manual_seed(0)
    B, T, K = 2, 400, 16
    codes1 = torch.randint(0, K, (B, T))
    drawn = (codes1 + 1) % K  # a code the true one is not
    logits = torch.full((B, T + 1, K + 1), -1e4)
    logits[:, :T].scatter_(-1, drawn[..., None], 0.0)  # the model is sure of `drawn`
    logits[:, :, K] = 1e4  # <eos> is never drawn as a code
    audio_lens, prompt_lens = torch.tensor([400, 250]), torch.tensor([100, 50])
    history = self_fed_history(logits, codes1, audio_lens, prompt_lens, share=0.5)
    swapped = history != codes1
    assert torch.equal(history[swapped], drawn[swapped])
    t = torch.arange(T)
    target = (t < audio_lens[:, None]) & (t >= prompt_lens[:, None])
    assert not swapped[~target].any()  # prompt and padding frames stay true
    share = swapped[target].float().mean()
    assert 0.42 < share < 0.58  # 500 target frames at p = 0.5
    assert not (self_fed_history(logits, codes1, audio_lens, prompt_lens, share=0.0) != codes1).any()
    with pytest.raises(ValueError, match="ar_self_feed"):
        TrainConfig(ar_self_feed=1.0)


def test_self_fed_training_runs_and_changes_what_the_ar_sees(cache, tmp_path):
    dataset = TokenDataset(cache)
    batch = collate([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_model(CFG, dataset.symbols, dataset.codec_card)
    prompt_lens = torch.zeros_like(batch.audio_lens)
    args = (batch.text, batch.text_lens, batch.codes, batch.audio_lens, prompt_lens, 2)
    plain, fed = LossModule(model, "ar"), LossModule(model, "ar", ar_self_feed=0.5)
    model.eval()  # no dropout, so only the inputs differ; eval also switches self-feeding off
    assert torch.equal(plain(*args), fed.eval()(*args))
    fed.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    torch.manual_seed(1)
    stats = fed(*args)
    assert torch.isfinite(stats).all() and not torch.equal(stats, plain.eval()(*args))
    result = train(
        replace(CFG, max_steps=3, parts="ar", ar_self_feed=0.5), cache, tmp_path / "run", progress=False
    )
    assert result.step == 3 and all(r["ar_loss"] > 0 for r in read_log(tmp_path / "run"))
