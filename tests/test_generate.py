"""Sampling (top-k / top-p / RAS) and generation (KV cache, batching, stop reasons, seeds, NAR)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from valle.generate import (
    GenerationError,
    GenerationOptions,
    ar_generate,
    continuation_inputs,
    cross_sentence_inputs,
    expected_frames,
    generate,
    max_new_frames,
    nar_generate,
)
from valle.model import VALLE, make_config
from valle.sampling import (
    SamplingOptions,
    categorical,
    filter_logits,
    repetition_mask,
    sample_tokens,
)

N_PHONEMES = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


GREEDY = SamplingOptions(greedy=True)


@pytest.fixture(scope="module")
def model() -> VALLE:
    torch.manual_seed(0)
    return VALLE(make_config("debug", N_PHONEMES)).eval()


def _requests(text_lens=(20, 31, 12), prompt_frames=(80, 100, 90), seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = [torch.randint(1, N_PHONEMES, (n,), generator=g).tolist() for n in text_lens]
    prompts = [torch.randint(0, 1024, (n, 8), generator=g) for n in prompt_frames]
    counts = [n // 2 for n in text_lens]
    return texts, prompts, counts


def _biased(model: VALLE, token: int, logit: float) -> VALLE:
    """A copy whose AR logits are ~0 everywhere except ``token`` (about ``logit``) at every step."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.ar.norm.weight.zero_()  # final LayerNorm output = its bias, whatever the input
        m.ar.norm.bias.fill_(1.0)
        m.ar.head.weight[token] = logit / m.cfg.d_model
    return m


# ---------------------------------------------------------------------------------------------- sampling


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 5.0, 4.0], [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=3))
    assert kept[0].nonzero().flatten().tolist() == [1, 4, 5]
    assert kept[1].nonzero().flatten().tolist() == [0, 1, 2]
    assert torch.isfinite(filter_logits(logits, top_k=0)).all()  # 0 = off


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.15, 0.5, 0.1, 0.25])  # sorted: 0.5 (1), 0.25 (3), 0.15 (0), 0.1 (2)
    logits = probs.log().expand(4, -1).clone()
    expected = {0.45: [1], 0.7: [1, 3], 0.8: [0, 1, 3], 0.95: [0, 1, 2, 3]}
    for top_p, keep in expected.items():
        kept = torch.isfinite(filter_logits(logits, top_p=top_p))
        assert all(row.nonzero().flatten().tolist() == keep for row in kept), top_p
    both = torch.isfinite(filter_logits(logits[:1], top_k=1, top_p=0.95))
    assert both[0].nonzero().flatten().tolist() == [1]


def test_categorical_follows_the_distribution_and_never_draws_masked_tokens():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2])
    n = 20000
    logits = probs.log().expand(n, -1)
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = torch.bincount(categorical(logits, u), minlength=4).double() / n
    assert counts[1] == 0
    torch.testing.assert_close(counts, probs.double(), atol=0.015, rtol=0)


def test_repetition_mask_threshold_is_strict():
    history = torch.tensor(
        [
            [7, 1, 2, 3, 4, 5, 6, 8, 9, 10],
            [7, 7, 2, 3, 4, 5, 6, 8, 9, 10],
            [7, 7, -1, -1, -1, -1, -1, -1, -1, -1],
        ]
    )
    tokens = torch.tensor([7, 7, 7])
    # share 1/10 = 0.1 does not exceed 0.1; 2/10 does; padding (-1) never matches
    assert repetition_mask(tokens, history, 10, 0.1).tolist() == [False, True, True]
    assert repetition_mask(tokens, history[:, :1], 10, 0.1).tolist() == [False, False, False]


def test_ras_changes_the_choice_only_when_its_condition_holds():
    V, n, K = 1025, 64, 10
    logits = torch.zeros(n, V)
    logits[:, 5] = 2.0  # the nucleus (top-1) is token 5; the full distribution gives it ~0.7 %
    low = torch.tensor([5] + [1] * (K - 1)).expand(n // 2, -1)  # share 0.1: below the threshold
    high = torch.tensor([5, 5] + [1] * (K - 2)).expand(n // 2, -1)  # share 0.2: above
    history = torch.cat([low, high])
    opts = SamplingOptions(top_k=1, top_p=1.0)
    g = torch.Generator().manual_seed(0)
    tokens, resampled = sample_tokens(logits, history, opts, g)
    assert not resampled[: n // 2].any() and resampled[n // 2 :].all()
    assert (tokens[: n // 2] == 5).all()
    assert (tokens[n // 2 :] != 5).sum() >= n // 2 - 2
    # with RAS off the same generator state gives the nucleus choice everywhere
    off, res_off = sample_tokens(
        logits, history, SamplingOptions(top_k=1, top_p=1.0, ras=False), torch.Generator().manual_seed(0)
    )
    assert (off == 5).all() and not res_off.any()
    # the redraw comes from the full, temperature-scaled distribution: at a tiny temperature it is 5 again
    cold = SamplingOptions(top_k=1, top_p=1.0, temperature=0.01)
    again, res_cold = sample_tokens(logits, history, cold, torch.Generator().manual_seed(0))
    assert res_cold[n // 2 :].all() and (again == 5).all()


def test_sampling_is_deterministic_per_generator_and_independent_of_the_batch():
    logits = torch.randn(4, 1025, generator=torch.Generator().manual_seed(1))
    history = torch.randint(0, 1025, (4, 10), generator=torch.Generator().manual_seed(2))
    opts = SamplingOptions(top_p=0.9)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    a = sample_tokens(logits, history, opts, gens([10, 11, 12, 13])).tokens
    b = sample_tokens(logits, history, opts, gens([10, 11, 12, 13])).tokens
    alone = sample_tokens(logits[2:3], history[2:3], opts, gens([12])).tokens
    assert torch.equal(a, b) and a[2] == alone[0]
    draws = {tuple(sample_tokens(logits, history, opts, gens([s] * 4)).tokens.tolist()) for s in range(8)}
    assert len(draws) > 1
    greedy = sample_tokens(logits, history, GREEDY, gens([0] * 4))
    assert torch.equal(greedy.tokens, logits.argmax(-1)) and not greedy.resampled.any()


def test_repeat_penalty_lowers_only_the_previous_frames_code():
    logits = torch.zeros(3, 8)
    logits[:, 4] = 1.0  # the argmax
    logits[:, 2] = 0.5  # the runner-up
    history = torch.tensor([[1, 4], [4, 3], [-1, -1]])  # previous code 4 / 3 / none yet
    greedy = SamplingOptions(greedy=True, repeat_penalty=0.75)
    assert sample_tokens(logits, history, greedy, torch.Generator()).tokens.tolist() == [2, 4, 4]
    assert logits[0, 4] == 1.0  # the caller's logits are not edited
    assert sample_tokens(logits, history, GREEDY, torch.Generator()).tokens.tolist() == [4, 4, 4]
    # sampled: the penalised code leaves the top-1 nucleus
    nucleus = SamplingOptions(top_k=1, top_p=1.0, ras=False, repeat_penalty=0.75)
    assert sample_tokens(logits, history, nucleus, torch.Generator()).tokens.tolist() == [2, 4, 4]


def test_sampling_options_are_validated():
    for bad in (
        dict(repeat_penalty=-0.1),
        dict(repeat_penalty=math.inf),
        dict(temperature=0),
        dict(top_k=-1),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(ras_window=0),
        dict(ras_threshold=1),
    ):
        with pytest.raises(ValueError, match="SamplingOptions"):
            SamplingOptions(**bad)
    with pytest.raises(ValueError, match="min_frames"):
        GenerationOptions(min_frames=0)


# ---------------------------------------------------------------------------------------------- AR


def _ar_inputs(requests):
    texts, prompts, _ = requests
    text = torch.nn.utils.rnn.pad_sequence([torch.tensor(t) for t in texts], batch_first=True)
    prompt = torch.nn.utils.rnn.pad_sequence([p[:, 0] for p in prompts], batch_first=True)
    return text, torch.tensor([len(t) for t in texts]), prompt, torch.tensor([len(p) for p in prompts])


def test_kv_cache_matches_full_recompute(model):
    text, tl, prompt, pl = _ar_inputs(_requests())
    steps = 60
    max_new = torch.full((3,), steps)
    out = {}
    for cached in (True, False):
        opts = GenerationOptions(sampling=GREEDY, min_frames=steps, use_kv_cache=cached)
        out[cached] = ar_generate(model.ar, text, tl, prompt, pl, max_new, opts, return_logits=True)
    for kv, full in zip(out[True], out[False], strict=True):
        assert kv.codes1.shape == (steps,) and kv.stop_reason == full.stop_reason == "max_length"
        assert torch.equal(kv.codes1, full.codes1)
        torch.testing.assert_close(kv.logits, full.logits, atol=1e-4, rtol=1e-4)
        assert kv.codes1.unique().numel() > 5  # a real sequence, not one token repeated


def test_kv_cache_matches_full_recompute_when_sampling(model):
    text, tl, prompt, pl = _ar_inputs(_requests(seed=3))
    max_new = torch.tensor([40, 25, 50])
    runs = [
        ar_generate(
            model.ar, text, tl, prompt, pl, max_new, GenerationOptions(min_frames=50, use_kv_cache=c, seed=4)
        )
        for c in (True, False)
    ]
    assert [len(r.codes1) for r in runs[0]] == [40, 25, 50]
    assert all(torch.equal(a.codes1, b.codes1) for a, b in zip(*runs, strict=True))


def test_batched_generation_equals_per_item(model):
    texts, prompts, counts = _requests()
    opts = GenerationOptions(sampling=GREEDY, min_frames=40, max_seconds=0.8)
    batched = generate(model, texts, prompts, counts, opts)
    for i in range(3):
        alone = generate(model, [texts[i]], [prompts[i]], [counts[i]], opts)[0]
        assert alone.n_frames == batched[i].n_frames == 60
        assert torch.equal(alone.codes, batched[i].codes)


def test_sampled_item_does_not_depend_on_its_batch(model):
    texts, prompts, counts = _requests()
    opts = GenerationOptions(min_frames=30, max_seconds=0.6)
    batched = generate(model, texts, prompts, counts, opts, seeds=[5, 6, 7])
    alone = generate(model, texts[1:2], prompts[1:2], counts[1:2], opts, seeds=[6])[0]
    assert torch.equal(alone.codes, batched[1].codes) and alone.seed == batched[1].seed == 6


def test_max_length_cap(model):
    texts, prompts, counts = _requests()
    opts = GenerationOptions(sampling=GREEDY, min_frames=10_000, max_seconds=0.5)
    outs = generate(model, texts, prompts, counts, opts)
    assert all(o.stop_reason == "max_length" and o.n_frames == 37 for o in outs)  # floor(0.5 * 75)
    # the ratio cap: 2.5 x the prompt's speaking rate x the target's phonemes
    short = GenerationOptions(min_frames=10_000, max_length_ratio=1.0)
    out = generate(model, [texts[0]], [prompts[0]], [counts[0]], short)[0]
    assert out.n_frames == max_new_frames(80, 10, 10, short, 75.0) == 80


def test_eos_biased_head_stops_with_eos(model):
    biased = _biased(model, model.cfg.eos, logit=30.0)
    texts, prompts, counts = _requests()
    for min_frames in (1, 4):
        outs = generate(biased, texts, prompts, counts, GenerationOptions(min_frames=min_frames))
        assert all(o.stop_reason == "eos" and o.n_frames == min_frames for o in outs)
        assert all(o.codes.shape == (min_frames, 8) for o in outs)


def test_ras_breaks_a_token_loop(model):
    looping = _biased(model, 7, logit=8.0)  # p(7) ~ 0.74 of the full distribution
    texts, prompts, counts = _requests()
    args = (looping.ar, *_ar_inputs((texts, prompts, counts)), torch.full((3,), 60))
    base = dict(min_frames=60, seed=1)
    plain = ar_generate(*args, GenerationOptions(sampling=SamplingOptions(top_p=0.5, ras=False), **base))
    ras = ar_generate(*args, GenerationOptions(sampling=SamplingOptions(top_p=0.5), **base))
    assert all((r.codes1 == 7).all() and r.resampled_count == 0 for r in plain)
    for r in ras:
        assert r.resampled_count > 30 and 0 < (r.codes1 != 7).sum() < 40


def test_seeds(model):
    texts, prompts, counts = _requests()
    opts = GenerationOptions(min_frames=20, max_seconds=0.5)
    a = generate(model, texts, prompts, counts, opts)
    b = generate(model, texts, prompts, counts, opts)
    c = generate(model, texts, prompts, counts, GenerationOptions(min_frames=20, max_seconds=0.5, seed=1))
    assert [o.seed for o in a] == [0, 1, 2] and [o.seed for o in c] == [1, 2, 3]
    assert all(torch.equal(x.codes, y.codes) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0].codes[:, 0], c[0].codes[:, 0])


def test_generate_restores_training_mode_and_needs_no_grad(model):
    m = copy.deepcopy(model).train()
    texts, prompts, counts = _requests()
    out = generate(m, texts[:1], prompts[:1], counts[:1], GenerationOptions(max_seconds=0.2))[0]
    assert m.training and not out.codes.requires_grad and not torch.is_inference(out.codes)
    assert out.codes.dtype == torch.long and 0 <= out.codes.min() and out.codes.max() < 1024


def test_bf16_autocast_runs(model):
    texts, prompts, counts = _requests()
    outs = generate(
        model, texts, prompts, counts, GenerationOptions(bf16=True, min_frames=15, max_seconds=0.2)
    )
    assert [o.codes.shape for o in outs] == [(15, 8)] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kv_cache_matches_full_recompute(model):
    m = copy.deepcopy(model).cuda()
    texts, prompts, counts = _requests()
    runs = [
        generate(
            m,
            texts,
            prompts,
            counts,
            GenerationOptions(sampling=GREEDY, min_frames=50, max_seconds=0.7, use_kv_cache=c),
        )
        for c in (True, False)
    ]
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(*runs, strict=True))
    bf16 = generate(m, texts, prompts, counts, GenerationOptions(bf16=True, min_frames=52, max_seconds=0.7))
    assert [o.n_frames for o in bf16] == [52] * 3


# ---------------------------------------------------------------------------------------------- NAR


def test_nar_fills_codebooks_greedily_and_drops_the_prompt(model):
    texts, prompts, _ = _requests()
    text, tl, _, pl = _ar_inputs((texts, prompts, None))
    prompt_codes = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    g = torch.Generator().manual_seed(0)
    codes1 = [torch.randint(0, 1024, (n,), generator=g) for n in (30, 45, 17)]
    out = nar_generate(model.nar, text, tl, prompt_codes, pl, codes1)
    assert [tuple(o.shape) for o in out] == [(30, 8), (45, 8), (17, 8)]
    assert all(torch.equal(o[:, 0], c) for o, c in zip(out, codes1, strict=True))
    # self-consistency: stage j reads codebooks < j only, so its argmax on the final codes is codebook j
    i = 1
    full = torch.cat([prompts[i], out[i]])[None]
    total, p = torch.tensor([full.shape[1]]), torch.tensor([len(prompts[i])])
    with torch.no_grad():
        for stage in range(1, 8):
            pred = model.nar(text[i : i + 1, : tl[i]], tl[i : i + 1], full, total, p, stage).argmax(-1)
            assert torch.equal(pred[0, p:], out[i][:, stage])
    alone = nar_generate(model.nar, text[2:, : tl[2]], tl[2:], prompts[2][None], pl[2:], codes1[2:])[0]
    assert torch.equal(alone, out[2])


def test_nar_gate_leaves_unsure_codes_neutral(model):
    # an untrained NAR gives every code ~1/1024: at a 0.5 gate every stage falls back; at a gate
    # below every probability the fill is the plain greedy one
    texts, prompts, _ = _requests()
    text, tl, _, pl = _ar_inputs((texts, prompts, None))
    prompt_codes = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    codes1 = [torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(n)) for n in (20, 25, 15)]
    fallback = torch.arange(8) + 100
    args = (model.nar, text, tl, prompt_codes, pl, codes1)
    plain = nar_generate(*args)
    gated = nar_generate(*args, fallback=fallback, min_confidence=0.5)
    loose = nar_generate(*args, fallback=fallback, min_confidence=1e-9)
    for p, g, lo, c in zip(plain, gated, loose, codes1, strict=True):
        assert torch.equal(g[:, 0], c) and torch.equal(g[:, 1:], fallback[1:].expand(len(c), -1))
        assert torch.equal(lo, p)
    with pytest.raises(GenerationError, match="min_confidence needs"):
        nar_generate(*args, min_confidence=0.5)


def test_nar_sampling_is_seeded(model):
    texts, prompts, _ = _requests()
    text, tl, _, pl = _ar_inputs((texts, prompts, None))
    prompt_codes = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)
    codes1 = [torch.randint(0, 1024, (n,), generator=torch.Generator().manual_seed(n)) for n in (20, 25, 15)]

    def run(seed):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(3)]
        return nar_generate(
            model.nar,
            text,
            tl,
            prompt_codes,
            pl,
            codes1,
            greedy=False,
            sampling=SamplingOptions(),
            generators=gens,
        )

    a, b, c = run(0), run(0), run(9)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0][:, 1:], c[0][:, 1:])


# ---------------------------------------------------------------------------------------------- inputs


def test_expected_length_from_the_prompt_speaking_rate():
    assert expected_frames(150, 30, 40) == pytest.approx(200.0)
    opts = GenerationOptions()
    assert max_new_frames(150, 30, 40, opts, 75.0) == 500  # 2.5 x 200
    assert max_new_frames(150, 30, 400, opts, 75.0) == 1500  # 20 s x 75 Hz


def test_mode_inputs():
    codes = torch.randint(0, 1024, (400, 8))
    cross = cross_sentence_inputs([3, 4, 5], [6, 7], codes[:100], word_id=4)
    assert cross.text_ids == [3, 4, 5, 4, 6, 7] and cross.prompt_phonemes == 4
    cont = continuation_inputs(list(range(1, 41)), codes, frame_rate=75.0)
    assert cont.prompt_codes.shape == (225, 8) and torch.equal(cont.prompt_codes, codes[:225])
    assert cont.prompt_phonemes == 22  # round(40 * 225 / 400)
    rate = expected_frames(225, cont.prompt_phonemes, 40 - cont.prompt_phonemes)
    assert math.isclose(rate, 400 - 225, rel_tol=0.05)
    with pytest.raises(GenerationError, match="continuation"):
        continuation_inputs([1, 2, 3], codes[:200])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t, p, c: ([[], *t[1:]], p, c), "item 0: text_ids is empty"),
        (lambda t, p, c: ([t[0], [*t[1][:3], 99]], p, c), r"item 1: text_ids\[3\] = 99"),
        (lambda t, p, c: ([t[0], [0, *t[1]]], p, c), r"0 is padding"),
        (lambda t, p, c: (t, [p[0], p[1][:74]], c), "item 1: prompt has 74 frames"),
        (lambda t, p, c: (t, [p[0], p[1][:0]], c), "item 1: prompt has 0 frames"),
        (lambda t, p, c: (t, [p[0], p[1] + 1024], c), "outside the codebook"),
        (lambda t, p, c: (t, [p[0], p[1][:, :4]], c), r"prompt_codes must be a tensor \[Tp, 8\]"),
        (lambda t, p, c: (t, [p[0], p[1].float()], c), "integer codes"),
        (lambda t, p, c: (t, p[:1], c), "2 texts, 1 prompts and 2"),
        (lambda t, p, c: (t, p, [c[0], len(t[1])]), "prompt_phoneme_counts"),
    ],
)
def test_generate_rejects_bad_input(model, edit, match):
    texts, prompts, counts = _requests(text_lens=(20, 31), prompt_frames=(80, 100))
    with pytest.raises(GenerationError, match=match):
        generate(model, *edit(texts, prompts, counts))


def test_ras_firing_rate_counts_frames_the_rule_would_resample():
    from valle.sampling import ras_firing_rate

    seq = torch.tensor([1, 1, 1, 2, 3])
    # t=1: one earlier 1 -> 1/10, not > 0.1; t=2: two -> 2/10 > 0.1 fires; t=3, t=4: new codes
    assert ras_firing_rate([seq], window=10, threshold=0.1) == 1 / 4
    assert ras_firing_rate([seq], window=10, threshold=0.0) == 2 / 4
    assert ras_firing_rate([seq], window=2, threshold=0.5) == 1 / 4  # t=2: both of [1, 1]


def test_ras_calibration_picks_the_smallest_threshold_under_the_target():
    from valle.sampling import calibrate_ras_threshold

    # runs of 4 equal codes: inside a run the current code is already 1, 2, 3 times in the window
    runs = [torch.arange(50).repeat_interleave(4)]
    threshold, rate = calibrate_ras_threshold(runs, window=10, max_rate=0.02)
    assert threshold == 0.3 and rate == 0.0
    assert calibrate_ras_threshold(runs, window=10, max_rate=0.3)[0] == 0.2  # fires on 50/199 frames


def test_generation_uses_the_checkpoints_calibrated_ras_threshold():
    from valle.sampling import PAPER_RAS_THRESHOLD, calibrated

    extra = {"ras": {"window": 10, "threshold": 0.6, "ground_truth_rate": 0.013}}
    assert calibrated(SamplingOptions(), extra).ras_threshold == 0.6
    assert calibrated(SamplingOptions(ras_threshold=0.2), extra).ras_threshold == 0.2  # asked for
    assert calibrated(SamplingOptions(), {}).ras_threshold == PAPER_RAS_THRESHOLD  # old checkpoints
    assert calibrated(SamplingOptions(ras_window=5), extra).ras_threshold == PAPER_RAS_THRESHOLD
