"""Token sampling for the AR decoder: temperature, top-k / top-p filtering, and repetition-aware
sampling (RAS) from VALL-E 2 (Chen et al., 2024, "VALL-E 2: Neural Codec Language Models are Human
Parity Zero-Shot Text to Speech Synthesizers", section 3.2).

RAS, for each item at step t: draw c_t from the nucleus (top-p) distribution; compute the repetition
ratio r = (1/K) * sum_{i=t-K..t-1} 1[c_i = c_t] over the last K generated tokens; if r > t_r, replace
c_t by a draw from the full distribution (random sampling). Nucleus sampling keeps decoding stable,
the random fallback breaks the token loops that small top-p values fall into.

The paper's t_r = 0.1 with K = 10 (set for EnCodec) fires whenever c_t already occurs once in the
window. The offline codecs repeat the previous code on ~45% (``melvq_24khz``) and ~35%
(``contentvq_24khz``) of ground-truth codebook-1 frames, where that rule fires on 30% / 18% of real
frames and would fight correct output. So t_r is calibrated per codec on ground-truth codes
(:func:`calibrate_ras_threshold`: the smallest t_r that fires on at most 2% of real frames); training
stores it in the checkpoint and generation uses it unless a threshold is given.

Randomness comes from explicit ``torch.Generator`` objects (CPU): every step draws exactly two
uniforms per item (one for the nucleus draw, one for the RAS redraw, used or not), and tokens are
drawn by inverting the CDF with them. So an item's tokens depend only on its own generator and
logits, not on the batch it shares, on whether RAS fired, or on the device the model runs on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

__all__ = [
    "SampleResult",
    "SamplingOptions",
    "calibrate_ras_threshold",
    "calibrated",
    "categorical",
    "draw_uniforms",
    "filter_logits",
    "ras_firing_rate",
    "repetition_mask",
    "sample_tokens",
]


@dataclass(frozen=True)
class SamplingOptions:
    """AR sampling. Defaults: nucleus top-p 0.8 with RAS window K = 10 and threshold t_r = 0.1."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 0.8  # 1.0 = off
    ras: bool = True
    ras_window: int = 10  # K
    # t_r: resample when the share of c_t in the window exceeds this. None: the threshold calibrated
    # for the checkpoint's codec (see the module docstring), else the paper's 0.1
    ras_threshold: float | None = None
    # argmax: no randomness and no RAS. None = what the checkpoint recommends (``extra["ar"]``,
    # written by ``valle export --ar-greedy``), sampled when it recommends nothing
    greedy: bool | None = None
    # Not in the paper: subtract this from the logit of the code generated at the previous frame
    # before greedy or nucleus decoding. A pointer AR fed its own codes holds one code far longer
    # than real speech does (README, "Repeat penalty"); this leans it off. None = what the
    # checkpoint recommends (``extra["ar"]``, ``valle export --ar-repeat-penalty``), else 0 = off
    repeat_penalty: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"SamplingOptions.temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"SamplingOptions.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingOptions.top_p must be in (0, 1], got {self.top_p}")
        if self.ras_window < 1:
            raise ValueError(f"SamplingOptions.ras_window must be >= 1, got {self.ras_window}")
        if self.repeat_penalty is not None and not (
            math.isfinite(self.repeat_penalty) and self.repeat_penalty >= 0
        ):
            raise ValueError(f"SamplingOptions.repeat_penalty must be >= 0, got {self.repeat_penalty}")
        if self.ras_threshold is not None and not 0 <= self.ras_threshold < 1:
            raise ValueError(f"SamplingOptions.ras_threshold must be in [0, 1), got {self.ras_threshold}")


PAPER_RAS_THRESHOLD = 0.1  # VALL-E 2's t_r for K = 10
RAS_MAX_GROUND_TRUTH_RATE = 0.02  # calibration target: RAS fires on at most this share of real frames


class SampleResult(NamedTuple):
    tokens: torch.Tensor  # [B] long
    resampled: torch.Tensor  # [B] bool: RAS replaced the nucleus draw


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (with -inf) every token outside the top-k and outside the top-p nucleus, per row.

    logits [B, V]. top-k keeps the k largest logits (ties with the k-th are kept too); top-p then
    keeps the smallest set of most likely tokens whose probability mass reaches ``top_p`` (the most
    likely token is always kept). ``top_k=0`` and ``top_p=1`` turn the filters off.
    """
    if logits.dim() != 2:
        raise ValueError(f"filter_logits expects logits [B, V], got shape {tuple(logits.shape)}")
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        # float64 so that a cumulative mass equal to top_p on paper is not lost to rounding
        sorted_logits, order = logits.double().sort(dim=-1, descending=True, stable=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


def draw_uniforms(
    generators: torch.Generator | Sequence[torch.Generator], batch: int, n: int, device: torch.device
) -> torch.Tensor:
    """[batch, n] uniforms in [0, 1): from one generator, or one row from each of ``batch`` generators."""
    if isinstance(generators, torch.Generator):
        u = torch.rand(batch, n, generator=generators, device=generators.device, dtype=torch.float64)
    else:
        if len(generators) != batch:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
        u = torch.stack(
            [torch.rand(n, generator=g, device=g.device, dtype=torch.float64) for g in generators]
        )
    return u.to(device)


def categorical(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of ``logits`` [B, V] by inverting its CDF at ``uniforms`` [B].

    A token whose probability is zero (logit -inf) can never be drawn.
    """
    probs = logits.double().softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)
    # right=True: the first index whose cdf is strictly above the target, so zero-mass steps are skipped
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return tokens.clamp_(max=logits.shape[-1] - 1)


def repetition_mask(
    tokens: torch.Tensor, history: torch.Tensor, window: int, threshold: float
) -> torch.Tensor:
    """RAS condition per row: share of ``tokens`` [B] among the last ``window`` columns of ``history``
    [B, H] (pad with -1) strictly above ``threshold``. The share is over K = ``window`` even while fewer
    than K tokens exist, as in the paper's ratio."""
    recent = history[:, -window:] if history.shape[1] else history
    count = (recent == tokens.unsqueeze(-1)).sum(dim=-1)
    return count.double() / window > threshold


def sample_tokens(
    logits: torch.Tensor,
    history: torch.Tensor,
    options: SamplingOptions,
    generators: torch.Generator | Sequence[torch.Generator],
) -> SampleResult:
    """One AR step for a batch: logits [B, V], history [B, H] of this item's generated tokens
    (most recent last, -1 = none). Returns the tokens and which rows RAS resampled."""
    B = logits.shape[0]
    logits = logits.float()
    if options.repeat_penalty and history.shape[1] > 0:
        previous = history[:, -1].to(logits.device)
        rows = (previous >= 0).nonzero().squeeze(1)  # -1: nothing generated yet
        logits = logits.clone()
        logits[rows, previous[rows]] -= options.repeat_penalty
    if options.greedy:
        return SampleResult(logits.argmax(dim=-1), torch.zeros(B, dtype=torch.bool, device=logits.device))
    u = draw_uniforms(generators, B, 2, logits.device)  # always two per row: streams never shift
    scaled = logits / options.temperature
    tokens = categorical(filter_logits(scaled, options.top_k, options.top_p), u[:, 0])
    resampled = torch.zeros(B, dtype=torch.bool, device=logits.device)
    if options.ras and history.shape[1] > 0:
        threshold = PAPER_RAS_THRESHOLD if options.ras_threshold is None else options.ras_threshold
        resampled = repetition_mask(tokens, history.to(tokens.device), options.ras_window, threshold)
        if bool(resampled.any()):
            tokens = torch.where(resampled, categorical(scaled, u[:, 1]), tokens)
    return SampleResult(tokens, resampled)


def ras_firing_rate(sequences: Sequence[torch.Tensor], window: int, threshold: float) -> float:
    """Share of frames of ground-truth codebook-1 ``sequences`` (each ``[T]``) on which RAS would
    fire if they had been sampled: frame t, with the previous ``window`` frames as history."""
    fired = total = 0
    for seq in sequences:
        seq = seq.long()
        if len(seq) < 2:
            continue
        T = len(seq)
        padded = torch.cat([seq.new_full((window,), -1), seq])
        history = padded.unfold(0, window, 1)[:T]  # [T, window]: the frames before t
        fired += int(repetition_mask(seq, history, window, threshold)[1:].sum())
        total += T - 1
    if total == 0:
        raise ValueError("ras_firing_rate: no sequence has two or more frames")
    return fired / total


def calibrate_ras_threshold(
    sequences: Sequence[torch.Tensor], window: int = 10, max_rate: float = RAS_MAX_GROUND_TRUTH_RATE
) -> tuple[float, float]:
    """The smallest t_r in {k / window} at which RAS fires on at most ``max_rate`` of ground-truth
    frames; returns ``(t_r, firing rate)``. Thresholds are compared with ``count / window > t_r``,
    so t_r = k / window allows k copies of c_t in the window."""
    for k in range(1, window):
        threshold = k / window
        rate = ras_firing_rate(sequences, window, threshold)
        if rate <= max_rate:
            return threshold, rate
    return (window - 1) / window, ras_firing_rate(sequences, window, (window - 1) / window)


def calibrated(sampling: SamplingOptions, checkpoint_extra: dict) -> SamplingOptions:
    """``sampling`` with what was not given filled in from the checkpoint: greedy decoding when it
    recommends it (``extra["ar"]["greedy"]``), its repeat penalty (``extra["ar"]["repeat_penalty"]``,
    else 0), and the RAS threshold stored for its codec
    (``extra["ras"]``, written by training; the paper's 0.1 when the checkpoint has none or was
    calibrated for another window)."""
    recommended = checkpoint_extra.get("ar") or {}
    if sampling.greedy is None:
        sampling = replace(sampling, greedy=bool(recommended.get("greedy", False)))
    if sampling.repeat_penalty is None:
        sampling = replace(sampling, repeat_penalty=float(recommended.get("repeat_penalty", 0.0)))
    if sampling.ras_threshold is not None:
        return sampling
    ras = checkpoint_extra.get("ras") or {}
    found = ras.get("threshold") if ras.get("window") == sampling.ras_window else None
    return replace(sampling, ras_threshold=PAPER_RAS_THRESHOLD if found is None else float(found))
