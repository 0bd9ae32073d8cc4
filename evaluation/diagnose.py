"""Generator diagnostics: is the codec usable by VALL-E, does the AR read the text, how far is the
NAR from what the codec allows?

Three questions, each a function usable on any checkpoint and codec:

- :func:`codec_oracle` -- Whisper WER of (a) the raw audio, (b) all ground-truth codebooks decoded,
  (c) ground-truth codebook 1 with codebooks 2..8 filled by the checkpoint's NAR, (d) ground-truth
  codebook 1 with a neutral fill (``Codec.neutral_codes``), plus the first q ground-truth codebooks
  with the rest neutral. (c) is the ceiling of the whole generator: a perfect AR gives at best that.
  The NAR prompt is another utterance of the same speaker and the text is prompt text + target text,
  the layout of cross-sentence inference.
- :func:`ar_text_dependence` -- held-out teacher-forced cross-entropy of the AR with the right text
  and with another utterance's text of similar length. The gap (wrong - right, nats per token) is
  ~0 for an AR that ignores the text; next to it, the accuracy of copying the previous code.
- :func:`nar_stage_stats` and :func:`conditional_entropy` -- the NAR's held-out accuracy and
  cross-entropy per stage j = 2..8 (prompt = the utterance's first third, capped at 3 s, as in
  training), next to an estimate of H(c_j | c_<j) from a small classifier over a +-2-frame window of
  the earlier codebooks (trained on training-set codes, scored on held-out codes). The NAR also sees
  the text and the prompt, so it can go below that estimate; far above it, it is under-trained.
- :func:`ar_generation` -- what a reader hears: codebook 1 *sampled* by the AR in cross-sentence
  mode (prompt = another utterance of the speaker), decoded with a neutral fill of codebooks 2..8
  so that only the AR is judged; Whisper WER against the text and the length against the truth.

An AR with the phone pointer (``VALLEConfig.ar_pointer``) is teacher-forced with the phone timing
of the corpus (``valle.alignment``); examples without a phones file are left out of its
text-dependence figure, and the mismatched text gets its own timing stretched to the audio's length.

Held-out data are manifests (JSONL, see :mod:`valle.manifest`); nothing here reads a fixed path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import word_error_rate
from valle.alignment import AlignmentError, spaced_durations, token_durations
from valle.audio import load_audio
from valle.checkpoint import Checkpoint
from valle.codec.base import Codec
from valle.corpus.phones import PhonesError, read_phones
from valle.generate import GenerationOptions, ar_generate, cross_sentence_inputs, max_new_frames, nar_generate
from valle.manifest import Utterance
from valle.model import VALLE, lengths_to_mask
from valle.phonemes import Phonemizer
from valle.sampling import calibrated

PROMPT_FRACTION, PROMPT_MAX_FRAMES = 1 / 3, 225  # NAR prefix prompt for the per-stage statistics
# the gated NAR fill keeps a code only if the NAR gives it at least this probability: fixed before
# any measurement ("more likely than not"), never tuned on the held-out sets
GATE_CONFIDENCE = 0.5


@dataclass
class Example:
    """One held-out utterance, encoded: audio, transcript, phoneme ids and codes ``[T, Q]``."""

    id: str
    speaker: str
    text: str
    wav: np.ndarray
    sr: int
    phonemes: list[int]
    codes: torch.Tensor
    durations: list[int] | None = None  # frames per phoneme, where the corpus has phone timing


def encode_examples(
    utts: Sequence[Utterance], codec: Codec, ckpt: Checkpoint | None, phonemizer: Phonemizer | None = None
) -> list[Example]:
    """Load, encode and (with a checkpoint) phonemize utterances with the checkpoint's symbol table;
    for an AR with the phone pointer, also read the phone timing where a phones file exists."""
    phonemizer = phonemizer or (Phonemizer() if ckpt is not None else None)
    out = []
    for u in utts:
        wav, sr = load_audio(u.audio, codec.sample_rate)
        tokens = phonemizer.phonemize(u.text) if ckpt is not None else []
        ids = ckpt.symbols.encode(tokens) if ckpt is not None else []  # unknown symbols -> <unk>
        codes = codec.encode(wav, sr, name=str(u.audio))
        durations = None
        if ckpt is not None and ckpt.model.cfg.ar_pointer:
            try:
                durations = token_durations(tokens, read_phones(u.audio), len(codes), codec.card.frame_rate)
            except (PhonesError, AlignmentError):
                durations = None  # no timing: left out of the pointer AR's teacher-forced figures
        out.append(Example(u.id, u.speaker, u.text, wav, sr, ids, codes, durations))
    return out


# --- (1) codec oracle ----------------------------------------------------------------------------


def nar_fill(
    ckpt: Checkpoint,
    target: Example,
    prompt: Example,
    fallback: torch.Tensor | None = None,
    min_confidence: float = 0.0,
) -> torch.Tensor:
    """Codebooks 2..8 of ``target`` predicted by the NAR from its ground-truth codebook 1, the text
    (prompt text, word boundary, target text) and ``prompt``'s 8 codebooks. Returns ``[T, Q]``.
    With ``min_confidence``, codes the NAR is less sure of are ``fallback`` (see ``nar_generate``)."""
    text = torch.tensor([[*prompt.phonemes, ckpt.symbols.word_id, *target.phonemes]])
    return nar_generate(
        ckpt.model.nar,
        text,
        torch.tensor([text.shape[1]]),
        prompt.codes[None],
        torch.tensor([len(prompt.codes)]),
        [target.codes[:, 0]],
        fallback=fallback,
        min_confidence=min_confidence,
    )[0]


def prompt_for(examples: Sequence[Example], i: int) -> Example | None:
    """Another utterance of example i's speaker (the next one in order), or None."""
    same = [e for e in examples if e.speaker == examples[i].speaker and e.id != examples[i].id]
    return same[0] if same else None


def codec_oracle(
    codec: Codec,
    examples: Sequence[Example],
    asr: FasterWhisperASR,
    ckpt: Checkpoint | None = None,
    prefixes: Sequence[int] = (2, 4),
) -> dict[str, float]:
    """WER (%) of each decoding condition over ``examples`` (see the module docstring).

    Keys: ``raw``, ``all``, ``cb1_nar``, ``cb1_nar2`` and ``cb1_nar_gated`` (only with ``ckpt``:
    NAR-filled codebooks 2..8; only codebook 2 with the rest neutral; 2..8 with every code the NAR
    gives less than ``GATE_CONFIDENCE`` probability left neutral. Items without another utterance
    of their speaker are left out of every condition then), ``cb1_neutral``, ``first_{q}``.
    """
    neutral = codec.neutral_codes()
    refs: list[str] = []
    hyps: dict[str, list[str]] = {"raw": [], "all": [], "cb1_neutral": []}
    hyps.update({f"first_{q}": [] for q in prefixes})
    if ckpt is not None:
        hyps["cb1_nar"], hyps["cb1_nar2"], hyps["cb1_nar_gated"] = [], [], []

    def heard(codes: torch.Tensor) -> str:
        wav, sr = codec.decode(codes)
        return asr.transcribe(wav, sr).text

    for i, ex in enumerate(examples):
        prompt = prompt_for(examples, i) if ckpt is not None else None
        if ckpt is not None and prompt is None:
            continue
        refs.append(ex.text)
        hyps["raw"].append(asr.transcribe(ex.wav, ex.sr).text)
        hyps["all"].append(heard(ex.codes))
        for key, q in [("cb1_neutral", 1), *((f"first_{q}", q) for q in prefixes)]:
            codes = ex.codes.clone()
            codes[:, q:] = neutral[q:]
            hyps[key].append(heard(codes))
        if ckpt is not None:
            filled = nar_fill(ckpt, ex, prompt)
            hyps["cb1_nar"].append(heard(filled))
            filled[:, 2:] = neutral[2:]
            hyps["cb1_nar2"].append(heard(filled))
            gated = nar_fill(ckpt, ex, prompt, fallback=neutral, min_confidence=GATE_CONFIDENCE)
            hyps["cb1_nar_gated"].append(heard(gated))
    if not refs:
        raise ValueError("codec_oracle: no usable example (the NAR fill needs two utterances per speaker)")
    return {k: round(100 * word_error_rate(refs, h).wer, 2) for k, h in hyps.items()} | {"n": len(refs)}


# --- (2) does the AR read the text? ----------------------------------------------------------------


def mismatched_example(examples: Sequence[Example], i: int) -> Example:
    """The example whose phoneme count is closest to example i's, with another text."""
    others = [e for e in examples if e.text != examples[i].text]
    if not others:
        raise ValueError("ar_text_dependence needs at least two different texts")
    n = len(examples[i].phonemes)
    return min(others, key=lambda e: (abs(len(e.phonemes) - n), e.id))


def stretch_durations(durations: Sequence[int], n_frames: int) -> list[int]:
    """Frames per phoneme scaled to sum to ``n_frames`` (each >= 1; needs n_frames >= len)."""
    return spaced_durations(np.rint(np.cumsum([0, *durations]) * n_frames / sum(durations)))


@torch.inference_mode()
def _ar_nll(
    model: VALLE, phonemes: list[int], codes1: torch.Tensor, durations: Sequence[int] | None = None
) -> tuple[float, int, int]:
    """Summed AR negative log-likelihood, token count and correct top-1 predictions (teacher forced;
    a pointer AR follows ``durations`` from the first frame, with no prompt)."""
    text = torch.tensor([phonemes])
    lens = torch.tensor([len(phonemes)]), torch.tensor([len(codes1)])
    if model.cfg.ar_pointer:
        if durations is None:
            raise ValueError("an AR with the phone pointer is teacher-forced with phone timing")
        logits, targets, _, _ = model.ar.forward_pointer(
            text, lens[0], codes1[None], lens[1], torch.tensor([list(durations)]), torch.tensor([0])
        )
    else:
        logits, targets = model.ar(text, lens[0], codes1[None], lens[1])
    valid = targets != -100
    nll = F.cross_entropy(logits[valid].float(), targets[valid], reduction="sum")
    correct = (logits.argmax(-1)[valid] == targets[valid]).sum()
    return float(nll), int(valid.sum()), int(correct)


def ar_text_dependence(model: VALLE, examples: Sequence[Example]) -> dict[str, float]:
    """Held-out AR cross-entropy (nats/token) with the right and a mismatched text, and their gap."""
    model.eval()
    if model.cfg.ar_pointer:  # teacher forcing needs phone timing
        examples = [e for e in examples if e.durations is not None]
        if len({e.text for e in examples}) < 2:
            return {"n": len(examples), "note": "the pointer AR needs phone timing of >= 2 texts"}
    right = wrong = correct = copy = tokens = 0.0
    for i, ex in enumerate(examples):
        c1 = ex.codes[:, 0]
        nll, n, ok = _ar_nll(model, ex.phonemes, c1, ex.durations)
        right, tokens, correct = right + nll, tokens + n, correct + ok
        other = mismatched_example(examples, i)
        stretched = None if other.durations is None else stretch_durations(other.durations, len(c1))
        wrong += _ar_nll(model, other.phonemes, c1, stretched)[0]
        copy += int((c1[1:] == c1[:-1]).sum())
    frames = sum(len(e.codes) - 1 for e in examples)
    return {
        "ce_right_text": round(right / tokens, 4),
        "ce_wrong_text": round(wrong / tokens, 4),
        "text_gap_nats": round((wrong - right) / tokens, 4),
        "top1_accuracy": round(correct / tokens, 4),
        "copy_previous_accuracy": round(copy / frames, 4),
        "n": len(examples),
    }


@torch.inference_mode()
def ar_generation(
    ckpt: Checkpoint,
    codec: Codec,
    targets: Sequence[Example],
    prompts: Sequence[Example],
    asr: FasterWhisperASR,
    options: GenerationOptions | None = None,
) -> dict[str, float]:
    """Sample codebook 1 for each target text after its prompt (cross-sentence layout), decode it
    with codebooks 2..8 neutral, and score it: Whisper WER (%), generated / true length, the share
    within +-20% of the true length, and the share that stopped at ``max_length``. Sampling uses
    the checkpoint's calibrated RAS threshold unless ``options`` gives one."""
    options = options or GenerationOptions()
    # the RAS threshold calibrated for the checkpoint's codec, as valle.synthesize.Generator uses
    options = replace(options, sampling=calibrated(options.sampling, ckpt.extra))
    model, rate = ckpt.model.eval(), codec.card.frame_rate
    neutral = codec.neutral_codes()
    refs, hyps, ratios, capped = [], [], [], 0
    for i, (target, prompt) in enumerate(zip(targets, prompts, strict=True)):
        req = cross_sentence_inputs(prompt.phonemes, target.phonemes, prompt.codes, ckpt.symbols.word_id)
        n_target = len(req.text_ids) - req.prompt_phonemes
        cap = max_new_frames(len(prompt.codes), req.prompt_phonemes, n_target, options, rate)
        result = ar_generate(
            model.ar,
            torch.tensor([req.text_ids]),
            torch.tensor([len(req.text_ids)]),
            prompt.codes[None, :, 0],
            torch.tensor([len(prompt.codes)]),
            torch.tensor([cap]),
            options,
            rate,
            generators=[torch.Generator().manual_seed(options.seed + i)],
            pointer_start=torch.tensor([req.prompt_phonemes]) if model.cfg.ar_pointer else None,
        )[0]
        codes = neutral.expand(max(len(result.codes1), 1), -1).clone()
        codes[: len(result.codes1), 0] = result.codes1
        wav, sr = codec.decode(codes)
        refs.append(target.text)
        hyps.append(asr.transcribe(wav, sr).text)
        ratios.append(len(result.codes1) / len(target.codes))
        capped += result.stop_reason == "max_length"
    r = np.asarray(ratios)
    return {
        "wer": round(100 * word_error_rate(refs, hyps).wer, 2),
        "length_ratio_mean": round(float(r.mean()), 3),
        "length_within_20pct": round(float((np.abs(r - 1) <= 0.2).mean()), 3),
        "max_length_rate": round(capped / len(r), 3),
        "n": len(r),
    }


# --- (3) the NAR per stage, and the codec's floor ---------------------------------------------------


@torch.inference_mode()
def nar_stage_stats(model: VALLE, examples: Sequence[Example]) -> dict[int, dict[str, float]]:
    """Held-out NAR accuracy and cross-entropy per paper stage j = 2..Q (prefix prompt as in training)."""
    model.eval()
    Q = model.cfg.n_codebooks
    sums = {j: [0.0, 0.0, 0] for j in range(2, Q + 1)}
    for ex in examples:
        T = len(ex.codes)
        p = min(int(T * PROMPT_FRACTION), PROMPT_MAX_FRAMES)
        if p < 1 or p >= T:
            continue
        text = torch.tensor([ex.phonemes])
        target = ~lengths_to_mask(torch.tensor([p]), T)[0]
        for j in range(2, Q + 1):
            logits = model.nar(
                text,
                torch.tensor([len(ex.phonemes)]),
                ex.codes[None],
                torch.tensor([T]),
                torch.tensor([p]),
                j - 1,
            )[0, target].float()
            y = ex.codes[target, j - 1]
            sums[j][0] += float(F.cross_entropy(logits, y, reduction="sum"))
            sums[j][1] += int((logits.argmax(-1) == y).sum())
            sums[j][2] += len(y)
    return {
        j: {"ce": round(s[0] / s[2], 4), "accuracy": round(s[1] / s[2], 4)} for j, s in sums.items() if s[2]
    }


class _WindowClassifier(nn.Module):
    """p(c_{t,j} | c_{t+d,k} for k < j, |d| <= w): summed embeddings -> MLP -> logits."""

    def __init__(self, n_prev: int, window: int, size: int, dim: int = 256) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_prev * (2 * window + 1) * size, dim)
        self.size, self.slots = size, n_prev * (2 * window + 1)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, size))

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx [N, slots] codes -> logits [N, size]; each slot has its own table."""
        offsets = torch.arange(self.slots, device=ctx.device) * self.size
        return self.mlp(self.emb(ctx + offsets).sum(1))


def _window_rows(codes: Sequence[torch.Tensor], j: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context [N, (j-1)(2w+1)] (codebooks < j at offsets -w..w, edges repeated) and targets [N]."""
    ctxs, ys = [], []
    for c in codes:
        T = len(c)
        padded = torch.cat([c[:1].expand(window, -1), c, c[-1:].expand(window, -1)])
        ctxs.append(torch.cat([padded[d : d + T, : j - 1] for d in range(2 * window + 1)], dim=1))
        ys.append(c[:, j - 1])
    return torch.cat(ctxs), torch.cat(ys)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The softmax temperature T minimising the cross-entropy of ``logits / T`` (Guo et al., 2017)."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=50)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.exp())


def conditional_entropy(
    train_codes: Sequence[torch.Tensor],
    heldout_codes: Sequence[torch.Tensor],
    codebook_size: int,
    window: int = 2,
    epochs: float = 2.0,
    batch: int = 2048,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[int, float]:
    """Held-out cross-entropy (nats) of a small classifier of c_j from c_<j, for j = 2..Q.

    An estimate of H(c_j | c_<j within +-window frames), as tight as the classifier. The classifier
    trains for ``epochs`` passes over 90% of ``train_codes`` (utterances), and a softmax temperature
    is then fitted on the other 10%: an over-confident classifier would otherwise score held-out
    data from other voices above the uniform ln(codebook_size) (6.93 for 1024).
    """
    Q = train_codes[0].shape[1]
    n_val = max(1, len(train_codes) // 10)
    fit_codes, val_codes = train_codes[n_val:], train_codes[:n_val]
    out = {}
    for j in range(2, Q + 1):
        gen = torch.Generator().manual_seed(seed + j)
        torch.manual_seed(seed + j)
        x, y = _window_rows(fit_codes, j, window)
        steps = max(1, round(epochs * len(y) / batch))
        model = _WindowClassifier(j - 1, window, codebook_size)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        for step in range(steps):
            for g in opt.param_groups:  # cosine decay: a stable end point without tuning
                g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
            idx = torch.randint(0, len(y), (batch,), generator=gen)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            vx, vy = _window_rows(val_codes, j, window)
            val_logits = model(vx)
        temperature = fit_temperature(val_logits, vy)
        hx, hy = _window_rows(heldout_codes, j, window)
        with torch.inference_mode():
            out[j] = round(float(F.cross_entropy(model(hx) / temperature, hy)), 4)
        if progress is not None:
            progress(f"H(c_{j} | c_<{j}) ~ {out[j]:.3f} nats (temperature {temperature:.2f})")
    return out


# --- small facts about a checkpoint -----------------------------------------------------------------


def embedding_rms(model: VALLE, parts: Sequence[str] = ("ar", "nar")) -> dict[str, float]:
    """RMS of the text embeddings against the sinusoidal positions they are added to (alpha * PE;
    PE has RMS 1/sqrt(2)), for each of ``parts``. A ratio far below 1 means phoneme identity is
    drowned by position."""
    out = {}
    for name in parts:
        part = getattr(model, name)
        text = float(part.text_emb.weight.detach()[1:].pow(2).mean().sqrt())
        pos = abs(float(part.text_pos.alpha.detach())) / math.sqrt(2)
        out[f"{name}_text_rms"] = round(text, 4)
        out[f"{name}_text_to_position_rms"] = round(text / pos, 3)
    return out


def first_utterances(utts: Sequence[Utterance], limit: int | None) -> list[Utterance]:
    """The first ``limit`` utterances in id order (all with None): the same set on every run."""
    return sorted(utts, key=lambda u: u.id)[:limit]


def spread_utterances(utts: Sequence[Utterance], limit: int | None) -> list[Utterance]:
    """Up to ``limit`` utterances taken evenly across the id order, so every speaker of a corpus
    (ids start with the speaker) is represented; the same set on every run."""
    utts = sorted(utts, key=lambda u: u.id)
    if limit is None or limit >= len(utts):
        return utts
    return [utts[i * len(utts) // limit] for i in range(limit)]
