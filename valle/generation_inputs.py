"""What a generation request is made of, and the checks it passes before any model runs.

The two evaluation modes of VALL-E as :class:`PromptedText` requests (:func:`cross_sentence_inputs`,
:func:`continuation_inputs`), the length the prompt's speaking rate implies, the pointer timing of
``ar_generate(durations=...)``, and the validation of ids and codes that turns a bad input into a
:class:`GenerationError` naming the item and the field instead of an index error deep in a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from valle.model import lengths_to_mask

__all__ = [
    "GenerationError",
    "PromptedText",
    "check_batch_codes",
    "check_prompt",
    "check_text",
    "continuation_inputs",
    "cross_sentence_inputs",
    "expected_frames",
    "forced_moves",
    "pad",
]


class GenerationError(ValueError):
    """Invalid generation input: the message names the item and the field."""


@dataclass(frozen=True)
class PromptedText:
    """One generation request: the AR text, the acoustic prompt and how many text ids it covers."""

    text_ids: list[int]
    prompt_codes: torch.Tensor  # [Tp, n_codebooks]
    prompt_phonemes: int  # leading entries of text_ids spoken in the prompt


def cross_sentence_inputs(
    prompt_text_ids: Sequence[int], target_text_ids: Sequence[int], prompt_codes: torch.Tensor, word_id: int
) -> PromptedText:
    """Cross-sentence mode: text = prompt transcript + word boundary + target; the boundary is
    counted with the prompt (it is spoken, as a pause, before the target starts)."""
    text = [*prompt_text_ids, word_id, *target_text_ids]
    return PromptedText(text, prompt_codes, len(prompt_text_ids) + 1)


def continuation_inputs(
    text_ids: Sequence[int], codes: torch.Tensor, frame_rate: float = 75.0, prompt_seconds: float = 3.0
) -> PromptedText:
    """Continuation mode: the prompt is the first ``prompt_seconds`` of the utterance ``codes`` [T, Q],
    the text its full transcript. Which phonemes the prompt covers is unknown without an alignment,
    so it is estimated in proportion to duration (only the length cap depends on it)."""
    n_prompt = round(prompt_seconds * frame_rate)
    if codes.dim() != 2 or codes.shape[0] <= n_prompt:
        raise GenerationError(
            f"continuation: utterance codes {tuple(codes.shape)} must be [T, Q] with T > {n_prompt} "
            f"({prompt_seconds} s prompt at {frame_rate} Hz)"
        )
    if len(text_ids) < 2:
        raise GenerationError(f"continuation: transcript has {len(text_ids)} phonemes, need >= 2")
    covered = round(len(text_ids) * n_prompt / codes.shape[0])
    return PromptedText(list(text_ids), codes[:n_prompt], min(max(covered, 1), len(text_ids) - 1))


def expected_frames(prompt_frames: int, prompt_phonemes: int, target_phonemes: int) -> float:
    """Target length at the prompt's speaking rate: (prompt frames / prompt phonemes) * target phonemes."""
    return prompt_frames / prompt_phonemes * target_phonemes


def forced_moves(
    durations: Sequence[Sequence[int]],
    ptr: torch.Tensor | None,
    text_lens: torch.Tensor,
    max_new: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """``[B, max(max_new)]`` bool: True at the last frame of each phoneme of ``durations``."""
    if ptr is None:
        raise GenerationError("ar_generate: durations need an AR with the phone pointer")
    if len(durations) != len(ptr):
        raise GenerationError(f"ar_generate: {len(durations)} duration lists for {len(ptr)} items")
    forced = torch.zeros(len(ptr), int(max_new.max()), dtype=torch.bool, device=device)
    for i, d in enumerate(durations):
        n_phonemes = int(text_lens[i] - ptr[i])
        if len(d) != n_phonemes or min(d, default=0) < 1:
            raise GenerationError(
                f"ar_generate: item {i} needs {n_phonemes} durations >= 1 (one per phoneme from "
                f"pointer_start), got {list(d)}"
            )
        if sum(d) > int(max_new[i]):
            raise GenerationError(
                f"ar_generate: item {i}'s durations sum to {sum(d)} > max_new {int(max_new[i])}"
            )
        forced[i, torch.tensor(d).cumsum(0) - 1] = True
    return forced


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with zeros along dim 0: -> ([B, Lmax, ...], lengths [B])."""
    lens = torch.tensor([s.shape[0] for s in seqs])
    out = seqs[0].new_zeros((len(seqs), int(lens.max()), *seqs[0].shape[1:]))
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out, lens


def check_text(ids: Sequence[int], n_phonemes: int, i: int) -> None:
    if len(ids) == 0:
        raise GenerationError(f"item {i}: text_ids is empty")
    t = torch.as_tensor(ids)
    if t.dim() != 1 or t.is_floating_point():
        raise GenerationError(f"item {i}: text_ids must be a flat sequence of integer ids")
    bad = ((t < 1) | (t >= n_phonemes)).nonzero()
    if len(bad):
        j = int(bad[0])
        raise GenerationError(
            f"item {i}: text_ids[{j}] = {int(t[j])} is outside 1..{n_phonemes - 1} (0 is padding)"
        )


def check_prompt(codes: torch.Tensor, n_codebooks: int, codebook_size: int, min_frames: int, i: int) -> None:
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[1] != n_codebooks:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise GenerationError(f"item {i}: prompt_codes must be a tensor [Tp, {n_codebooks}], got {shape}")
    if codes.is_floating_point():
        raise GenerationError(f"item {i}: prompt_codes must be integer codes, got {codes.dtype}")
    if codes.shape[0] < min_frames:
        raise GenerationError(
            f"item {i}: prompt has {codes.shape[0]} frames; at least {min_frames} (1 s) are needed"
        )
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        raise GenerationError(
            f"item {i}: prompt_codes hold values in {lo}..{hi}, outside the codebook 0..{codebook_size - 1}"
        )


def check_batch_codes(codes: torch.Tensor, lens: torch.Tensor, codebook_size: int, what: str) -> None:
    """Codes at the valid (unpadded) positions of a padded batch must lie in 0..codebook_size-1."""
    valid = lengths_to_mask(lens.to(codes.device), codes.shape[1])
    values = codes[valid]
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= codebook_size):
        raise GenerationError(
            f"{what} holds values in {int(values.min())}..{int(values.max())}, "
            f"outside the codebook 0..{codebook_size - 1}"
        )
