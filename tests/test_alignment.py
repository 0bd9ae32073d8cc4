"""The AR's phone pointer: frames per phoneme from engine timing, teacher forcing, generation, training."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from valle.alignment import AlignmentError, token_durations
from valle.checkpoint import load_checkpoint
from valle.codec import load_codec
from valle.corpus import CorpusConfig, build_corpus
from valle.data import DataError, Item, PrepareOptions, TokenDataset, prepare_tokens
from valle.generate import GenerationOptions, ar_generate
from valle.model import IGNORE, VALLE, make_config, pointer_from_durations
from valle.phonemes import Phonemizer, SymbolTable
from valle.sampling import SamplingOptions
from valle.train import TrainConfig, cross_sentence_item, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# "hello world." at 75 Hz: engine letters with times (s); sil = the final pause
TOKENS = ["h", "ˈ", "ɛ", "l", "oʊ", " ", "w", "ˈ", "ɜ", "ː", "l", "d", "."]
SEGMENTS = [
    ("h", 0.0, 0.08), ("ɛ", 0.08, 0.2), ("l", 0.2, 0.28), ("o", 0.28, 0.36), ("ʊ", 0.36, 0.44),
    ("w", 0.44, 0.52), ("ɜ", 0.52, 0.72), ("l", 0.72, 0.8), ("d", 0.8, 0.88), ("sil", 0.88, 1.0),
]  # fmt: skip


def test_phones_get_the_engine_frames_and_marks_one_frame():
    d = dict(enumerate(token_durations(TOKENS, SEGMENTS, 75, 75.0)))
    assert sum(d.values()) == 75 and min(d.values()) == 1
    by_token = list(zip(TOKENS, d.values(), strict=True))
    # a phone keeps its engine span (0.08 s = 6 frames) unless a one-frame mark before it takes one
    assert by_token[0] == ("h", 6)
    assert by_token[1] == ("ˈ", 1) and by_token[2] == ("ɛ", 8)  # the stress mark borrows a frame
    assert by_token[4] == ("oʊ", 12)  # a diphthong gets both engine letters
    assert by_token[5] == (" ", 1)
    assert by_token[9] == ("ː", 1)
    assert by_token[12] == (".", 9)  # the final pause goes to the full stop


def test_an_accent_that_replaces_phones_still_maps_every_token():
    accent = [("ɑ", s, e) if lab == "ɛ" else (lab, s, e) for lab, s, e in SEGMENTS]
    assert token_durations(TOKENS, accent, 75, 75.0) == token_durations(TOKENS, SEGMENTS, 75, 75.0)
    missing_l = [seg for seg in SEGMENTS if seg[1] != 0.72]  # the engine skipped a phone
    d = token_durations(TOKENS, missing_l, 75, 75.0)
    assert sum(d) == 75 and min(d) == 1


def test_impossible_alignments_are_refused():
    with pytest.raises(AlignmentError, match="13 tokens"):
        token_durations(TOKENS, SEGMENTS, 10, 75.0)
    with pytest.raises(AlignmentError, match="no phone segments"):
        token_durations(TOKENS, [], 75, 75.0)


def test_pointer_marks_each_frame_with_its_phoneme_and_where_the_next_starts():
    text = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    durations = torch.tensor([[2, 1, 3, 0], [1, 1, 1, 2]])
    pointer, advance = pointer_from_durations(text, durations, torch.tensor([0, 2]), 7)
    assert pointer[..., 0].tolist() == [[5, 5, 6, 7, 7, 7, 0], [0, 0, 10, 11, 11, 0, 0]]
    assert pointer[..., 1].tolist() == [[6, 6, 7, 0, 0, 0, 0], [0, 0, 11, 0, 0, 0, 0]]
    # row 2: the prompt (2 frames) ends where phoneme 10 starts, so its frames carry no pointer
    assert advance.tolist() == [[0, 1, 1, 0, 0, 1, IGNORE], [IGNORE, IGNORE, 1, 0, 1, IGNORE, IGNORE]]


def test_cross_sentence_item_puts_the_pointer_on_the_item_after_a_prompt_cut_at_a_phoneme():
    prompt = Item(
        0, "p", "s", torch.tensor([5, 6, 7, 8]), torch.arange(10)[:, None], torch.tensor([3, 2, 2, 3])
    )
    item = Item(1, "x", "s", torch.tensor([9, 10]), torch.arange(100, 104)[:, None], torch.tensor([1, 3]))
    joined, plen = cross_sentence_item(item, prompt, max_frames=6, word_id=4)
    # the last 6 frames start inside phoneme 6 (frames 3-4): the cut moves to phoneme 7's start
    assert plen == 5 and joined.text.tolist() == [7, 8, 4, 9, 10]
    assert joined.codes[:, 0].tolist() == [5, 6, 7, 8, 9, 100, 101, 102, 103]
    assert joined.durations.tolist() == [2, 3, 0, 1, 3]  # the word boundary between them: 0 frames
    pointer, advance = pointer_from_durations(
        joined.text[None], joined.durations[None], torch.tensor([plen]), 10
    )
    assert pointer[0, :, 0].tolist() == [0, 0, 0, 0, 0, 9, 10, 10, 10, 0]
    assert advance[0].tolist() == [IGNORE] * 5 + [1, 0, 0, 1, IGNORE]


def _pointer_model(seed: int = 0) -> VALLE:
    torch.manual_seed(seed)
    cfg = make_config("debug", n_phonemes=20, ar_pointer=True, codebook_size=16, n_codebooks=2)
    return VALLE(cfg).eval()


def test_pointer_generation_ends_after_the_last_phoneme_and_the_kv_cache_matches_recompute():
    model = _pointer_model()
    with torch.no_grad():  # the advance head always moves on: one frame per phoneme
        model.ar.advance_head.bias.fill_(20.0)
    text = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10], [3, 4, 5, 6, 7, 8, 0, 0]])
    text_lens, start = torch.tensor([8, 6]), torch.tensor([3, 2])
    prompt, prompt_lens = torch.randint(0, 16, (2, 10)), torch.tensor([10, 7])
    runs = [
        ar_generate(
            model.ar,
            text,
            text_lens,
            prompt,
            prompt_lens,
            torch.tensor([50, 50]),
            GenerationOptions(use_kv_cache=kv, seed=1),
            pointer_start=start,
        )
        for kv in (True, False)
    ]
    for cached, full in zip(*runs, strict=True):
        assert torch.equal(cached.codes1, full.codes1) and cached.stop_reason == "eos"
    assert [len(r.codes1) for r in runs[0]] == [5, 4]  # phonemes 3..7 and 2..5
    with torch.no_grad():  # never moves on: the length cap ends it
        model.ar.advance_head.bias.fill_(-20.0)
    stuck = ar_generate(
        model.ar, text, text_lens, prompt, prompt_lens, torch.tensor([12, 9]),
        GenerationOptions(sampling=SamplingOptions(greedy=True)), pointer_start=start,
    )  # fmt: skip
    assert [(len(r.codes1), r.stop_reason) for r in stuck] == [(12, "max_length"), (9, "max_length")]
    with torch.no_grad():  # p(move) = 0.4 every frame: P(stay) 0.6, then 0.36 < 0.5, so 2 frames each
        model.ar.advance_head.weight.zero_()
        model.ar.advance_head.bias.fill_(math.log(0.4 / 0.6))
    median = ar_generate(
        model.ar, text, text_lens, prompt, prompt_lens, torch.tensor([50, 50]),
        GenerationOptions(sampling=SamplingOptions(greedy=True)), pointer_start=start,
    )  # fmt: skip
    assert [(len(r.codes1), r.stop_reason) for r in median] == [(10, "eos"), (8, "eos")]
    with pytest.raises(ValueError, match="pointer_start"):
        ar_generate(model.ar, text, text_lens, prompt, prompt_lens, torch.tensor([5, 5]), GenerationOptions())


def test_pointer_generation_on_given_durations_follows_them_not_the_advance_head():
    model = _pointer_model()
    with torch.no_grad():  # the advance head never moves on: only the durations can
        model.ar.advance_head.bias.fill_(-20.0)
    text, text_lens = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]]), torch.tensor([5, 3])
    durations = [[2, 1, 3, 2, 1], [4, 1, 2]]
    no_prompt = torch.zeros(2, 0, dtype=torch.long)
    greedy = GenerationOptions(sampling=SamplingOptions(greedy=True))
    out = ar_generate(
        model.ar, text, text_lens, no_prompt, torch.tensor([0, 0]), torch.tensor([20, 20]), greedy,
        pointer_start=torch.tensor([0, 0]), durations=durations,
    )  # fmt: skip
    assert [(len(r.codes1), r.stop_reason) for r in out] == [(9, "eos"), (7, "eos")]
    # greedy: each code is the argmax of a teacher-forced pass over those codes on the same timing
    for i, r in enumerate(out):
        n = torch.tensor([len(r.codes1)])
        logits, _, _, _ = model.ar.forward_pointer(
            text[i : i + 1, : text_lens[i]], text_lens[i : i + 1], r.codes1[None], n,
            torch.tensor([durations[i]]), torch.tensor([0]),
        )  # fmt: skip
        assert torch.equal(logits[0, : len(r.codes1), : model.cfg.codebook_size].argmax(-1), r.codes1)
    with pytest.raises(ValueError, match="durations"):
        ar_generate(
            model.ar, text, text_lens, no_prompt, torch.tensor([0, 0]), torch.tensor([20, 20]), greedy,
            pointer_start=torch.tensor([0, 0]), durations=[[2, 1, 3, 2, 1], [4, 0, 2]],
        )  # fmt: skip


@pytest.fixture(scope="module")
def timed_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("timed_corpus")
    build_corpus(root, CorpusConfig.tiny(minutes=0.3), progress=False)
    return root / "manifest.jsonl"


def test_cache_with_alignments_trains_a_pointer_ar_that_learns_when_to_move_on(timed_corpus, tmp_path):
    codec = load_codec("vqvae_24khz")
    cache = prepare_tokens(
        timed_corpus, tmp_path / "cache", codec, Phonemizer(), SymbolTable.default(),
        PrepareOptions(alignments=True), progress=False,
    )  # fmt: skip
    data = TokenDataset(cache)
    assert len(data) >= 6 and not data.skipped
    for i in range(len(data)):
        item = data[i]
        assert item.durations.sum() == len(item.codes) and item.durations.min() >= 1
    base = TrainConfig(
        preset="debug", lr=5e-3, warmup_steps=5, max_steps=3, max_frames=4000, log_every=1,
        tensorboard=False, parts="nar",
    )  # fmt: skip
    train(base, cache, tmp_path / "nar", progress=False)  # a NAR to train an AR beside
    cfg = replace(
        base,
        max_steps=150,
        parts="ar",
        ar_pointer=True,
        cross_sentence=0.5,
        init_from=str(tmp_path / "nar" / "last"),
    )
    result = train(cfg, cache, tmp_path / "run", progress=False)
    nar = load_checkpoint(tmp_path / "nar" / "last").model.nar.state_dict()
    both = load_checkpoint(tmp_path / "run" / "last").model
    assert both.cfg.ar_pointer and all(torch.equal(v, both.nar.state_dict()[k]) for k, v in nar.items())
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = rows[0]["advance_loss"], rows[-1]["advance_loss"]
    # the rate of "move on" alone (one per phoneme) is worth the binary entropy of that rate; a head
    # that reads the pointer (a stress mark always lasts one frame) must go well below it
    p = sum(len(data[i].durations) for i in range(len(data))) / sum(data.frames)
    prior = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    print(first, last, prior)
    assert first > 0.6 and last < 0.8 * prior, (first, last, prior)
    assert result.step == 150


def test_cache_with_alignments_names_rows_without_timing(espeak_corpus, tmp_path):
    with pytest.raises(DataError, match=r"phones: .*no phoneme timing"):
        prepare_tokens(
            espeak_corpus / "manifest.jsonl", tmp_path / "cache", load_codec("vqvae_24khz"), Phonemizer(),
            SymbolTable.default(), PrepareOptions(alignments=True), progress=False,
        )  # fmt: skip
