"""The AR's step-by-step decoders of codebook 1, used by :func:`valle.generate.ar_generate`.

:class:`FullDecoder` recomputes the whole sequence at every step; it is slow and simple, and the
reference that :class:`CachedDecoder` (one prefill pass, then one token per step through the KV
cache) must match. Both drop finished rows with ``select`` so they stop costing compute.
"""

from __future__ import annotations

import torch

from valle.model import ARModel, KVCache, ar_attention_mask, lengths_to_mask, segment_positions

__all__ = ["CachedDecoder", "FullDecoder", "pointer_ids"]


class FullDecoder:
    """Recomputes the whole sequence at every step (the reference the KV cache must match).

    ``first`` and ``feed`` return the final hidden state [B, D] of the position that predicts the
    next frame; the caller applies the AR's heads. With the phone pointer, ``pointer`` [B, 2] gives
    the (x_{a}, x_{a+1}) ids of the frame being predicted by the last prompt token (``first``) or by
    the token just fed (``feed``).
    """

    def __init__(self, ar: ARModel, text, text_lens, prompt, prompt_lens, pointer=None) -> None:
        self.ar, self.text, self.prompt_lens = ar, text, prompt_lens
        self.cache: KVCache | None = None
        B, Tp = prompt.shape
        self.text_valid = lengths_to_mask(text_lens, text.shape[1])
        self.prefix_valid = lengths_to_mask(prompt_lens + 1, Tp + 1)  # <bos> + prompt
        bos = torch.full((B, 1), ar.cfg.bos, dtype=torch.long, device=prompt.device)
        self.prefix = torch.cat([bos, prompt], dim=1).masked_fill(~self.prefix_valid, 0)  # [B, 1+Tp]
        self.prefix_pointer = None  # [B, 1+Tp, 2]: only the last prompt token points (at the target)
        self.pointers = None  # [B, steps, 2] of the generated tokens
        if pointer is not None:
            self.prefix_pointer = torch.zeros(B, Tp + 1, 2, dtype=torch.long, device=prompt.device)
            self.prefix_pointer[self._rows(), prompt_lens] = pointer

    def _rows(self) -> torch.Tensor:
        return torch.arange(self.text.shape[0], device=self.text.device)

    def select(self, keep: torch.Tensor) -> None:
        self.text, self.text_valid = self.text[keep], self.text_valid[keep]
        self.prefix, self.prefix_valid, self.prompt_lens = (
            self.prefix[keep],
            self.prefix_valid[keep],
            self.prompt_lens[keep],
        )
        if self.prefix_pointer is not None:
            self.prefix_pointer = self.prefix_pointer[keep]
            self.pointers = None if self.pointers is None else self.pointers[keep]

    def _forward(self, generated: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        ar = self.ar
        tokens, positions, valid = self.prefix, segment_positions(self.prefix), self.prefix_valid
        pointer = self.prefix_pointer
        if generated is not None:
            n = generated.shape[1]
            gen_pos = self.prompt_lens[:, None] + 1 + torch.arange(n, device=generated.device)
            tokens = torch.cat([tokens, generated], dim=1)
            positions = torch.cat([positions, gen_pos], dim=1)
            valid = torch.cat([valid, torch.ones_like(generated, dtype=torch.bool)], dim=1)
            if pointer is not None:
                pointer = torch.cat([pointer, self.pointers], dim=1)
        h = torch.cat([ar.embed_text(self.text), ar.embed_audio(tokens, positions, pointer)], dim=1)
        return ar.hidden(h, ar_attention_mask(self.text_valid, valid), cache)

    def first(self) -> torch.Tensor:
        """Hidden state [B, D] for the first new token: read at each row's last prompt token."""
        hidden = self._forward(None, self.cache)  # with a cache: the prefill pass
        return hidden[self._rows(), self.text.shape[1] + self.prompt_lens]

    def feed(self, generated: torch.Tensor, pointer: torch.Tensor | None = None) -> torch.Tensor:
        """generated [B, s] (all tokens so far) -> hidden state [B, D] for token s."""
        if pointer is not None:
            p = pointer[:, None]
            self.pointers = p if self.pointers is None else torch.cat([self.pointers, p], dim=1)
        return self._forward(generated)[:, -1]


class CachedDecoder(FullDecoder):
    """One prefill pass over [text ; <bos> ; prompt] fills the KV cache, then one token per step."""

    def __init__(
        self,
        ar: ARModel,
        text,
        text_lens,
        prompt,
        prompt_lens,
        max_steps: int,
        dtype: torch.dtype,
        pointer=None,
    ) -> None:
        super().__init__(ar, text, text_lens, prompt, prompt_lens, pointer)
        cfg = ar.cfg
        B = text.shape[0]
        prefix_len = text.shape[1] + self.prefix.shape[1]
        max_len = prefix_len + max_steps
        like = torch.empty(0, dtype=dtype, device=text.device)
        self.cache = KVCache(cfg.n_layers, B, cfg.n_heads, max_len, cfg.d_model // cfg.n_heads, like)
        self.key_valid = torch.zeros(B, max_len, dtype=torch.bool, device=text.device)
        self.key_valid[:, :prefix_len] = torch.cat([self.text_valid, self.prefix_valid], dim=1)

    def select(self, keep: torch.Tensor) -> None:
        super().select(keep)
        self.cache.k, self.cache.v = self.cache.k[:, keep], self.cache.v[:, keep]
        self.key_valid = self.key_valid[keep]

    def feed(self, generated: torch.Tensor, pointer: torch.Tensor | None = None) -> torch.Tensor:
        n = generated.shape[1]
        index = self.cache.length  # sequence index of the new token, the same for every row
        self.key_valid[:, index] = True
        mask = self.key_valid[:, None, None, : index + 1]  # the new token sees every valid earlier key
        position = self.prompt_lens[:, None] + n  # token n-1 sits at audio position Tp_i + 1 + (n-1)
        h = self.ar.embed_audio(generated[:, -1:], position, None if pointer is None else pointer[:, None])
        return self.ar.hidden(h, mask, self.cache)[:, -1]


def pointer_ids(text: torch.Tensor, text_lens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """(x_{a}, x_{a+1}) phoneme ids [B, 2] of pointer ``at`` [B]; 0 past each row's text."""
    padded = torch.cat([text, text.new_zeros(text.shape[0], 2)], dim=1)
    ids = padded.gather(1, torch.stack([at, at + 1], dim=1).clamp(max=text.shape[1]))
    return ids * (torch.stack([at, at + 1], dim=1) < text_lens[:, None])
