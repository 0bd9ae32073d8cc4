"""VALL-E inference: batched AR decoding of codebook 1 (with a KV cache), then 7 NAR stages.

Sequence layout of the AR for a batch (per row i, padded to the batch's longest text and prompt):

    [ x_i  pad ... | <bos>  c~_i  pad ... | c_1  c_2  ... ]      positions restart per segment
      0 .. Lx-1      Lx    Lx+1 ..          Lx+1+Tp ..

Padding is excluded through key-padding masks, so the gap between a short prompt and the generated
tokens costs nothing but compute; generated token k of row i sits at audio position Tp_i + 1 + k,
exactly where teacher forcing put it. Rows that finish (``<eos>`` or their length cap) are dropped
from the batch and from the cache, so they stop costing compute.

Both evaluation modes of VALL-E reduce to "continue codebook 1 after a prompt":
cross-sentence (text = prompt transcript + word boundary + target text, prompt = another utterance
of the speaker) and continuation (text = the full transcript, prompt = its first 3 s). Helpers
:func:`cross_sentence_inputs` and :func:`continuation_inputs` (``valle.generation_inputs``, re-exported
here) build the inputs of either mode.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from valle.ar_decoding import CachedDecoder, FullDecoder, pointer_ids
from valle.generation_inputs import (
    GenerationError,
    PromptedText,
    check_batch_codes,
    check_prompt,
    check_text,
    continuation_inputs,
    cross_sentence_inputs,
    expected_frames,
    forced_moves,
    pad,
)
from valle.model import VALLE, ARModel, NARModel, lengths_to_mask
from valle.sampling import SamplingOptions, categorical, draw_uniforms, filter_logits, sample_tokens

__all__ = [
    "STOP_REASONS",
    "ARResult",
    "GenerationError",
    "GenerationOptions",
    "GenerationOutput",
    "PromptedText",
    "ar_generate",
    "continuation_inputs",
    "cross_sentence_inputs",
    "expected_frames",
    "generate",
    "max_new_frames",
    "nar_generate",
]

STOP_REASONS = ("eos", "max_length")


@dataclass(frozen=True)
class GenerationOptions:
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    max_seconds: float = 20.0  # hard cap on generated audio
    max_length_ratio: float = 2.5  # cap = min(max_seconds * frame_rate, ratio * expected frames)
    seed: int = 0  # item i of a call uses seed + i unless seeds are given
    use_kv_cache: bool = True  # False = full recompute every step (reference and benchmark only)
    nar_greedy: bool = True
    # Not in the paper: greedy NAR codes below this probability become the codec's neutral code
    # (nar_generate's confidence gate). None = what the checkpoint recommends (``extra["nar"]``,
    # valle.synthesize), else 0 = off; generate() itself applies it only with a fallback.
    nar_min_confidence: float | None = None
    min_frames: int = 1  # <eos> is masked until this many frames exist (the codec cannot decode 0)
    bf16: bool = False  # run the transformers under bfloat16 autocast (meant for CUDA)

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"GenerationOptions.max_seconds must be > 0, got {self.max_seconds}")
        if not self.max_length_ratio > 0:
            raise ValueError(f"GenerationOptions.max_length_ratio must be > 0, got {self.max_length_ratio}")
        if self.min_frames < 1:
            raise ValueError(f"GenerationOptions.min_frames must be >= 1, got {self.min_frames}")


class ARResult(NamedTuple):
    codes1: torch.Tensor  # [T] long, codebook 1 of the target (no <eos>)
    stop_reason: str  # "eos" | "max_length"
    resampled_count: int  # steps where repetition-aware sampling replaced the nucleus draw
    logits: torch.Tensor | None = None  # [steps, V] raw AR logits of every step (return_logits=True)


@dataclass(frozen=True)
class GenerationOutput:
    codes: torch.Tensor  # [T, n_codebooks] long, on the CPU
    stop_reason: str
    n_frames: int
    seed: int
    resampled_count: int


def max_new_frames(
    prompt_frames: int,
    prompt_phonemes: int,
    target_phonemes: int,
    options: GenerationOptions,
    frame_rate: float,
) -> int:
    """min(max_seconds * frame_rate, max_length_ratio * expected frames), at least 1."""
    expected = expected_frames(prompt_frames, prompt_phonemes, target_phonemes)
    cap = min(options.max_seconds * frame_rate, options.max_length_ratio * expected)
    return max(1, math.floor(cap))


# ----------------------------------------------------------------------------------------------
# AR decoding


def ar_generate(
    ar: ARModel,
    text: torch.Tensor,
    text_lens: torch.Tensor,
    prompt: torch.Tensor,
    prompt_lens: torch.Tensor,
    max_new: torch.Tensor,
    options: GenerationOptions,
    frame_rate: float = 75.0,
    *,
    generators: Sequence[torch.Generator] | None = None,
    return_logits: bool = False,
    pointer_start: torch.Tensor | None = None,
    durations: Sequence[Sequence[int]] | None = None,
) -> list[ARResult]:
    """Sample codebook 1 after each prompt, for a batch of items of different lengths.

    text [B, Lx] phoneme ids (0 = pad) with text_lens [B]; prompt [B, Tp] codebook-1 codes of the
    acoustic prompt (padded) with prompt_lens [B]; max_new [B] frames per item, clamped to
    ``options.max_seconds * frame_rate``. ``generators`` (one per item, CPU) default to seeds
    ``options.seed + i``. Returns one :class:`ARResult` per item, in input order.

    An AR with the phone pointer (``ar.cfg.ar_pointer``) needs ``pointer_start`` [B], the index in
    ``text`` of each item's first target phoneme; ``<eos>`` is then never sampled: each step draws
    "move to the next phoneme" from the advance head, and an item ends (stop
    reason ``eos``) when its pointer moves past its last phoneme. Greedy decoding moves at the
    median of the duration that head implies (when the product of its "stay" probabilities since the
    phoneme began falls below one half). ``durations`` (one list per item: frames for each phoneme
    from ``pointer_start`` to the end of its text, each >= 1) moves the pointer on that timing
    instead of the advance head, so an item has exactly ``sum(durations[i])`` frames (a diagnostic:
    the AR's codes with the timing known).
    """
    cfg = ar.cfg
    device = _device_of(ar)
    B = text.shape[0]
    if not (
        text.dim() == prompt.dim() == 2 and prompt.shape[0] == B and len(text_lens) == len(prompt_lens) == B
    ):
        raise GenerationError(
            f"ar_generate: text {tuple(text.shape)}, prompt {tuple(prompt.shape)}, text_lens "
            f"{tuple(text_lens.shape)}, prompt_lens {tuple(prompt_lens.shape)} do not describe one batch"
        )
    text, prompt = text.to(device), prompt.to(device)
    text_lens, prompt_lens = text_lens.to(device), prompt_lens.to(device)
    check_batch_codes(prompt, prompt_lens, cfg.codebook_size, "ar_generate: prompt")
    if bool(((text < 0) | (text >= cfg.n_phonemes)).any()):
        raise GenerationError(f"ar_generate: text holds ids outside 0..{cfg.n_phonemes - 1}")
    hard_cap = math.floor(options.max_seconds * frame_rate)
    max_new = torch.as_tensor(max_new, device=device).clamp(max=hard_cap)
    if bool((max_new < 1).any()):
        raise GenerationError(f"ar_generate: max_new must be >= 1 for every item, got {max_new.tolist()}")
    if generators is None:
        generators = [torch.Generator().manual_seed(options.seed + i) for i in range(B)]
    if len(generators) != B:
        raise GenerationError(f"ar_generate: {len(generators)} generators for {B} items")
    sampling = options.sampling
    max_steps = int(max_new.max())
    ptr = None
    if cfg.ar_pointer:
        if pointer_start is None or len(pointer_start) != B:
            raise GenerationError("ar_generate: an AR with the phone pointer needs pointer_start [B]")
        ptr = torch.as_tensor(pointer_start, device=device).long()
        stay = torch.ones(B, device=device)  # P(the current phoneme lasts beyond this frame), greedy
        if bool(((ptr < 0) | (ptr >= text_lens)).any()):
            raise GenerationError(
                f"ar_generate: pointer_start {ptr.tolist()} outside the texts (lengths {text_lens.tolist()})"
            )
    forced = None  # [B, max_steps]: the pointer moves on after frame s
    if durations is not None:
        forced = forced_moves(durations, ptr, text_lens, max_new, device)

    finished: dict[int, tuple[int, str]] = {}  # input index -> (frames, stop reason)
    resampled = [0] * B
    step_logits: list[list[torch.Tensor]] = [[] for _ in range(B)]
    gen = torch.full((B, max_steps), -1, dtype=torch.long, device=device)  # rows in input order
    rows = torch.arange(B, device=device)  # input index of each active row
    active = list(range(B))
    with _inference(ar, device, options.bf16):
        first_pointer = None if ptr is None else pointer_ids(text, text_lens, ptr)
        if options.use_kv_cache:
            decoder = CachedDecoder(
                ar, text, text_lens, prompt, prompt_lens, max_steps, _cache_dtype(ar, options), first_pointer
            )
        else:
            decoder = FullDecoder(ar, text, text_lens, prompt, prompt_lens, first_pointer)
        hidden = decoder.first()
        for s in range(max_steps):
            logits = ar.head(hidden).float()
            if return_logits:
                for j, i in enumerate(active):
                    step_logits[i].append(logits[j].cpu())
            if s < options.min_frames or ptr is not None:
                logits[:, cfg.eos] = -math.inf
            history = gen[rows, max(0, s - sampling.ras_window) : s]
            step_gens = [generators[i] for i in active]
            tokens, was_resampled = sample_tokens(logits, history, sampling, step_gens)
            gen[rows, s] = tokens
            is_eos = tokens == cfg.eos
            if ptr is not None:
                p_next = torch.sigmoid(ar.advance_head(hidden).float().squeeze(-1))
                if forced is not None:
                    move = forced[rows, s]
                elif sampling.greedy:
                    # the head is a hazard (~1/duration per frame, rarely > 0.5): move on at the
                    # median of the duration it implies, when P(still here) falls below one half
                    stay = stay * (1 - p_next)
                    move = stay < 0.5
                else:
                    move = draw_uniforms(step_gens, len(active), 1, device)[:, 0] < p_next
                ptr = ptr + move.long()
                stay = torch.where(move, torch.ones_like(stay), stay)
                is_eos = ptr >= text_lens  # moved past the last phoneme: this frame was the last
            done = is_eos | (s + 1 >= max_new[rows])
            # one device->host transfer per step: the only synchronisation of the loop
            done_list, eos_list, res_list = torch.stack([done, is_eos, was_resampled]).tolist()
            for j, i in enumerate(active):
                resampled[i] += res_list[j]
                if done_list[j]:
                    # a sampled <eos> is not a frame; the pointer's last frame is
                    frames = s + (ptr is not None) if eos_list[j] else s + 1
                    finished[i] = (frames, "eos" if eos_list[j] else "max_length")
            if all(done_list):
                break
            if any(done_list):
                keep = (~done).nonzero().squeeze(1)
                rows = rows[keep]
                active = [i for i, d in zip(active, done_list, strict=True) if not d]
                decoder.select(keep)
                if ptr is not None:
                    ptr, stay, text, text_lens = ptr[keep], stay[keep], text[keep], text_lens[keep]
            pointer = None if ptr is None else pointer_ids(text, text_lens, ptr)
            hidden = decoder.feed(gen[rows, : s + 1], pointer)
    # built outside inference mode: callers get ordinary tensors they may edit in place
    return [
        ARResult(
            gen[i, : finished[i][0]].clone(),
            finished[i][1],
            resampled[i],
            torch.stack(step_logits[i]).clone() if return_logits else None,
        )
        for i in range(B)
    ]


# ----------------------------------------------------------------------------------------------
# NAR stages


def nar_generate(
    nar: NARModel,
    text: torch.Tensor,
    text_lens: torch.Tensor,
    prompt_codes: torch.Tensor,
    prompt_lens: torch.Tensor,
    codes1: Sequence[torch.Tensor],
    *,
    greedy: bool = True,
    sampling: SamplingOptions | None = None,
    generators: Sequence[torch.Generator] | None = None,
    bf16: bool = False,
    fallback: torch.Tensor | None = None,
    min_confidence: float = 0.0,
) -> list[torch.Tensor]:
    """Fill codebooks 2..8 of each target, one stage per codebook (eq. 3), and drop the prompt.

    text [B, Lx], prompt_codes [B, Tp, Q] (padded) with prompt_lens [B], codes1: B tensors [T_i].
    Stage j reads x, the whole prompt and target codebooks < j. Greedy (argmax) by default; with
    ``greedy=False`` each position is drawn with ``sampling``'s temperature / top-k / top-p.
    Returns B tensors [T_i, Q].

    Not in the paper (off by default): with ``fallback`` (``[Q]``, e.g. ``Codec.neutral_codes()``)
    and ``min_confidence`` > 0, a greedy code whose probability is below ``min_confidence`` is
    replaced by ``fallback[stage]``. In a residual quantiser a wrong code adds a whole residual
    vector of error, while the neutral code adds almost none, so an unsure NAR is better silent.
    """
    cfg = nar.cfg
    device = _device_of(nar)
    B, _, Q = prompt_codes.shape
    if len(codes1) != B or Q != cfg.n_codebooks:
        raise GenerationError(
            f"nar_generate: prompt_codes {tuple(prompt_codes.shape)} and {len(codes1)} codebook-1 sequences; "
            f"need [B, Tp, {cfg.n_codebooks}] and B sequences"
        )
    check_batch_codes(prompt_codes, prompt_lens, cfg.codebook_size, "nar_generate: prompt_codes")
    for i, c in enumerate(codes1):
        if c.dim() != 1 or len(c) == 0 or int(c.min()) < 0 or int(c.max()) >= cfg.codebook_size:
            raise GenerationError(
                f"nar_generate: codes1[{i}] must be a non-empty [T] of codes in 0..{cfg.codebook_size - 1}"
            )
    if not greedy and (sampling is None or generators is None):
        raise GenerationError("nar_generate: sampling (greedy=False) needs sampling options and generators")
    if min_confidence > 0 and (fallback is None or not greedy or fallback.shape != (Q,)):
        raise GenerationError(f"nar_generate: min_confidence needs greedy decoding and fallback codes [{Q}]")
    text, text_lens = text.to(device), text_lens.to(device)
    prompt_lens = prompt_lens.to(device)
    target_lens = torch.tensor([len(c) for c in codes1], device=device)
    total = prompt_lens + target_lens
    L = int(total.max())
    codes = torch.zeros(B, L, Q, dtype=torch.long, device=device)
    for i, c in enumerate(codes1):
        p = int(prompt_lens[i])
        codes[i, :p] = prompt_codes[i, :p].to(device)
        codes[i, p : p + len(c), 0] = c.to(device)
    target = lengths_to_mask(total, L) & ~lengths_to_mask(prompt_lens, L)  # [B, L]
    with _inference(nar, device, bf16):
        for stage in range(1, cfg.n_codebooks):
            logits = nar(text, text_lens, codes, total, prompt_lens, stage).float()  # [B, L, K]
            if greedy:
                pred = logits.argmax(dim=-1)
                if min_confidence > 0:
                    unsure = logits.softmax(dim=-1).amax(dim=-1) < min_confidence
                    pred = torch.where(unsure, int(fallback[stage]), pred)
            else:
                flat = filter_logits(logits[target] / sampling.temperature, sampling.top_k, sampling.top_p)
                # per item, row-major like logits[target]: item i draws its T_i uniforms itself
                u = torch.cat(
                    [
                        draw_uniforms(g, int(n), 1, device)[:, 0]
                        for g, n in zip(generators, target_lens, strict=True)
                    ]
                )
                pred = torch.zeros_like(codes[..., 0])
                pred[target] = categorical(flat, u)
            codes[..., stage] = torch.where(target, pred, codes[..., stage])
    # cloned outside inference mode: ordinary tensors for the caller
    return [codes[i, int(prompt_lens[i]) : int(total[i])].clone() for i in range(B)]


# ----------------------------------------------------------------------------------------------
# End to end


def generate(
    model: VALLE,
    text_ids: Sequence[Sequence[int]],
    prompt_codes: Sequence[torch.Tensor],
    prompt_phoneme_counts: Sequence[int],
    options: GenerationOptions | None = None,
    frame_rate: float = 75.0,
    *,
    seeds: Sequence[int] | None = None,
    nar_fallback: torch.Tensor | None = None,
) -> list[GenerationOutput]:
    """Generate codes [T, 8] for a batch of requests (either mode; see the module docstring).

    text_ids[i]: phoneme ids of the whole text (prompt part first); prompt_codes[i]: [Tp, 8] codes
    of the acoustic prompt (>= 1 s); prompt_phoneme_counts[i]: how many leading ids the prompt
    speaks, which sets the speaking rate for the length cap and, for an AR with the phone pointer,
    where the pointer starts (in continuation mode an estimate; see :func:`continuation_inputs`).
    Item i samples with ``seeds[i]`` (default ``options.seed + i``), so it can be regenerated alone.
    """
    options = options or GenerationOptions()
    cfg = model.cfg
    B = len(text_ids)
    if not (len(prompt_codes) == len(prompt_phoneme_counts) == B):
        raise GenerationError(
            f"generate: {B} texts, {len(prompt_codes)} prompts and {len(prompt_phoneme_counts)} "
            "prompt phoneme counts; need one of each per item"
        )
    if B == 0:
        return []
    seeds = list(seeds) if seeds is not None else [options.seed + i for i in range(B)]
    if len(seeds) != B:
        raise GenerationError(f"generate: {len(seeds)} seeds for {B} items")
    min_prompt = round(frame_rate)  # 1 s of prompt
    max_new = []
    for i in range(B):
        check_text(text_ids[i], cfg.n_phonemes, i)
        check_prompt(prompt_codes[i], cfg.n_codebooks, cfg.codebook_size, min_prompt, i)
        n_prompt = prompt_phoneme_counts[i]
        if not 1 <= n_prompt < len(text_ids[i]):
            raise GenerationError(
                f"item {i}: prompt_phoneme_counts = {n_prompt}, must be in 1..{len(text_ids[i]) - 1} "
                f"(the text has {len(text_ids[i])} ids and the target needs at least one)"
            )
        tp = prompt_codes[i].shape[0]
        max_new.append(max_new_frames(tp, n_prompt, len(text_ids[i]) - n_prompt, options, frame_rate))

    text, text_lens = pad([torch.as_tensor(t, dtype=torch.long) for t in text_ids])
    prompts, prompt_lens = pad([torch.as_tensor(p, dtype=torch.long) for p in prompt_codes])
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    ar_out = ar_generate(
        model.ar,
        text,
        text_lens,
        prompts[..., 0],
        prompt_lens,
        torch.tensor(max_new),
        options,
        frame_rate,
        generators=generators,
        pointer_start=torch.tensor(list(prompt_phoneme_counts)) if cfg.ar_pointer else None,
    )
    codes = nar_generate(
        model.nar,
        text,
        text_lens,
        prompts,
        prompt_lens,
        [r.codes1 for r in ar_out],
        greedy=options.nar_greedy,
        sampling=options.sampling,
        generators=generators,
        bf16=options.bf16,
        fallback=nar_fallback,
        min_confidence=(options.nar_min_confidence or 0.0) if nar_fallback is not None else 0.0,
    )
    return [
        GenerationOutput(c.cpu(), r.stop_reason, c.shape[0], int(s), r.resampled_count)
        for c, r, s in zip(codes, ar_out, seeds, strict=True)
    ]


# ----------------------------------------------------------------------------------------------
# helpers


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _cache_dtype(module: nn.Module, options: GenerationOptions) -> torch.dtype:
    # the KV cache must hold what the attention projections emit: bf16 under autocast
    return torch.bfloat16 if options.bf16 else next(module.parameters()).dtype


@contextlib.contextmanager
def _inference(module: nn.Module, device: torch.device, bf16: bool) -> Iterator[None]:
    """eval() (no dropout) for the duration, restoring the caller's mode; no autograd; optional bf16."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            yield
    finally:
        module.train(was_training)
