"""The AR and NAR modules of valle.model on the debug preset: shapes, masks, padding, NAR stages."""

from __future__ import annotations

import pytest
import torch

from valle.model import (
    IGNORE,
    VALLE,
    ar_attention_mask,
    lengths_to_mask,
    make_config,
    masked_cross_entropy,
    segment_positions,
)

N_PHONEMES = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> VALLE:
    torch.manual_seed(0)
    m = VALLE(make_config("debug", N_PHONEMES)).eval()
    # AdaLN starts as a plain LayerNorm (zero projection); give it trained-like weights so that
    # stage conditioning is exercised, not just the per-stage heads
    for module in m.nar.modules():
        if hasattr(module, "project"):
            torch.nn.init.normal_(module.project.weight, std=0.05)
    return m


def _batch(text_lens, audio_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(text_lens)
    text = torch.randint(1, N_PHONEMES, (B, max(text_lens)), generator=g)
    codes = torch.randint(0, 1024, (B, max(audio_lens), 8), generator=g)
    tl, al = torch.tensor(text_lens), torch.tensor(audio_lens)
    text = text.masked_fill(~lengths_to_mask(tl, text.shape[1]), 0)
    codes = codes.masked_fill(~lengths_to_mask(al, codes.shape[1])[..., None], IGNORE)
    return text, tl, codes, al


def test_ar_shapes_and_targets(model):
    text, tl, codes, al = _batch([7, 5], [12, 9])
    with torch.no_grad():
        logits, targets = model.ar(text, tl, codes[..., 0], al)
    assert logits.shape == (2, 13, 1025) and targets.shape == (2, 13)
    assert targets[0, 12] == model.cfg.eos and targets[1, 9] == model.cfg.eos
    assert (targets[1, 10:] == IGNORE).all()
    assert torch.equal(targets[0, :12], codes[0, :, 0])
    loss, acc = masked_cross_entropy(logits, targets)
    assert torch.isfinite(loss) and 0 <= acc <= 1


def test_nar_shapes(model):
    text, tl, codes, al = _batch([7, 5], [30, 22])
    with torch.no_grad():
        logits = model.nar(text, tl, codes, al, torch.tensor([10, 8]), stage=3)
    assert logits.shape == (2, 30, 1024)
    with pytest.raises(ValueError, match="stage"):
        model.nar(text, tl, codes, al, torch.tensor([10, 8]), stage=8)


def test_ar_no_future_leakage(model):
    text, tl, codes, al = _batch([9], [20])
    changed = codes.clone()
    t = 11
    changed[0, t:, 0] = torch.randint(0, 1024, (20 - t,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, _ = model.ar(text, tl, codes[..., 0], al)
        b, _ = model.ar(text, tl, changed[..., 0], al)
    # inputs are [<bos>, c_1 .. c_T]: logits at input index <= t only read c_1..c_t
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3


def test_ar_text_never_reads_audio(model):
    ar = model.ar
    text, tl, _, _ = _batch([9], [20])
    Lx = text.shape[1]
    outs = []
    for seed in (1, 2):
        audio = torch.randint(0, 1024, (1, 21), generator=torch.Generator().manual_seed(seed))
        h = torch.cat([ar.embed_text(text), ar.embed_audio(audio, segment_positions(audio))], 1)
        mask = ar_attention_mask(lengths_to_mask(tl, Lx), torch.ones(1, 21, dtype=torch.bool))
        with torch.no_grad():
            outs.append(ar.run(h, mask))
    torch.testing.assert_close(outs[0][:, :Lx], outs[1][:, :Lx], atol=0, rtol=0)
    assert (outs[0][:, Lx:] - outs[1][:, Lx:]).abs().max() > 1e-3


def test_ar_padding_invariance(model):
    text, tl, codes, al = _batch([5, 11], [9, 17])
    with torch.no_grad():
        batched, _ = model.ar(text, tl, codes[..., 0], al)
        alone, _ = model.ar(text[:1, :5], tl[:1], codes[:1, :9, 0], al[:1])
    torch.testing.assert_close(batched[0, :10], alone[0], atol=1e-5, rtol=0)


def test_nar_padding_invariance(model):
    text, tl, codes, al = _batch([5, 11], [25, 37])
    pl = torch.tensor([10, 15])
    with torch.no_grad():
        batched = model.nar(text, tl, codes, al, pl, stage=2)
        alone = model.nar(text[:1, :5], tl[:1], codes[:1, :25], al[:1], pl[:1], stage=2)
    torch.testing.assert_close(batched[0, :25], alone[0], atol=1e-5, rtol=0)


def test_nar_stage_reads_only_lower_codebooks_of_the_target(model):
    text, tl, codes, al = _batch([8], [30])
    pl, stage = torch.tensor([12]), 3
    upper, lower = codes.clone(), codes.clone()
    upper[0, 12:, stage:] = (codes[0, 12:, stage:] + 7) % 1024  # codebooks >= stage of the target
    lower[0, 12:, stage - 1] = (codes[0, 12:, stage - 1] + 7) % 1024  # codebook stage - 1
    with torch.no_grad():
        base = model.nar(text, tl, codes, al, pl, stage)
        same = model.nar(text, tl, upper, al, pl, stage)
        diff = model.nar(text, tl, lower, al, pl, stage)
    torch.testing.assert_close(base, same, atol=0, rtol=0)
    assert (base - diff).abs().max() > 1e-3


def test_nar_stage_conditioning_changes_outputs(model):
    text, tl, codes, al = _batch([8], [30])
    pl = torch.tensor([12])
    nar = model.nar
    with torch.no_grad():
        base = nar(text, tl, codes, al, pl, stage=2)
        saved = nar.stage_emb.weight[1].clone()
        nar.stage_emb.weight[1] = nar.stage_emb.weight[5]  # stage 2 now conditioned like stage 6
        try:
            swapped = nar(text, tl, codes, al, pl, stage=2)
        finally:
            nar.stage_emb.weight[1] = saved
    assert (base - swapped).abs().max() > 1e-3


def test_fresh_adaln_is_plain_layernorm():
    torch.manual_seed(1)
    m = VALLE(make_config("debug", N_PHONEMES)).eval()
    text, tl, codes, al = _batch([8], [30])
    with torch.no_grad():
        before = m.nar(text, tl, codes, al, torch.tensor([12]), stage=2)
        m.nar.stage_emb.weight[1] = m.nar.stage_emb.weight[5]
        after = m.nar(text, tl, codes, al, torch.tensor([12]), stage=2)
    torch.testing.assert_close(before, after, atol=0, rtol=0)


def test_nar_heads_are_untied_by_default(model):
    nar = model.nar
    assert not model.cfg.tie_nar_heads
    heads, embs = {id(h.weight) for h in nar.heads}, {id(e.weight) for e in nar.audio_embs}
    assert not heads & embs
    assert model.num_parameters() == sum(p.numel() for p in model.state_dict().values())


def test_embeddings_are_not_drowned_by_positions(model):
    # the text identity must be comparable to the sinusoidal positions (RMS ~0.71) at the start
    pe_rms = 2**-0.5
    for emb in (model.ar.text_emb, model.ar.audio_emb, model.nar.text_emb, *model.nar.audio_embs):
        rms = emb.weight[1:].pow(2).mean().sqrt().item()
        assert 0.5 < rms / pe_rms < 2.0


def test_nar_head_tying_when_asked():
    model = VALLE(make_config("debug", N_PHONEMES, tie_nar_heads=True))
    nar, Q = model.nar, model.cfg.n_codebooks
    for i in range(Q - 2):  # head i predicts codebook i+1 and shares e_{i+2}
        assert nar.heads[i].weight is nar.audio_embs[i + 2].weight
    assert all(nar.heads[-1].weight is not e.weight for e in nar.audio_embs)
    params = {id(p) for p in model.parameters()}
    assert id(nar.heads[0].weight) in params
    n_tied = (Q - 2) * model.cfg.codebook_size * model.cfg.d_model
    assert model.num_parameters() == sum(p.numel() for p in model.state_dict().values()) - n_tied
