"""VALL-E (Wang et al., 2023, "Neural Codec Language Models are Zero-Shot Text to Speech Synthesizers").

Notation follows the paper. x = phoneme sequence, C = codec codes [T, 8] of the target, C~ = codes
of the acoustic prompt, c_{:,j} = codebook j (1-indexed as in the paper; 0-indexed in code).

    p(C | x, C~; θ) = p(c_{:,1} | C~_{:,1}, x; θ_AR)
                      * prod_{j=2..8} p(c_{:,j} | c_{:,<j}, x, C~; θ_NAR)                     (eq. 1)

AR  (eq. 2):  p(c_{:,1} | C~_{:,1}, x; θ_AR) = prod_t p(c_{t,1} | c_{<t,1}, c~_{:,1}, x; θ_AR)
    a decoder-only transformer over [x ; <bos> c_{1..T,1}] predicting c_{t,1} and finally <eos>.
    Mask: phonemes attend to all phonemes, audio tokens attend to all phonemes and causally to audio.

NAR (eq. 3):  p(c_{:,j} | c_{:,<j}, x, C~; θ_NAR),  j = 2..8
    input = [x ; e(C~) ; e(C_{:,<j})] with e(C~)_t = sum_{k=1..8} e_k(c~_{t,k}) and
    e(C_{:,<j})_t = sum_{k<j} e_k(c_{t,k}); attention is bidirectional; the stage j enters every layer
    through adaptive LayerNorm, AdaLN(h, j) = a_j * LayerNorm(h) + b_j.

Phone pointer (``VALLEConfig.ar_pointer``; off in every preset, not in the paper). An alignment aid
in the spirit of VALL-E R (Han et al., 2024, "VALL-E R: Robust and Efficient Zero-Shot Text-to-
Speech Synthesis via Monotonic Alignment"): the AR input at the audio position that predicts frame t
also carries the phoneme the frame belongs to and the one after it,

    h_t = e(c_{t-1,1}) + PE(t) + e_ptr(x_{a_t}) + e_next(x_{a_t + 1}),

and a second head gives p(a_{t+1} = a_t + 1 | ...), the probability that the next frame moves on to
the next phoneme (a_{t+1} is a_t or a_t + 1: every phoneme spans >= 1 frame). Generation moves the
pointer by sampling that head and stops when it passes the last phoneme, so the AR cannot skip,
repeat or run past the text. Training takes a_t from the corpus's phone timing
(``valle.alignment``); frames of the acoustic prompt carry no pointer.

Both use sinusoidal positions that restart at 0 for each segment (text, audio), scaled by a learned
alpha as in the reference implementation (lifeiteng/vall-e), and pre-LayerNorm blocks. Attention runs
through ``F.scaled_dot_product_attention``. This file holds only modules; sampling and decoding live
in ``valle.sampling`` and ``valle.generate``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # cross-entropy ignore index for prompt and padding positions


@dataclass(frozen=True)
class VALLEConfig:
    n_phonemes: int  # size of the phoneme symbol table (id 0 = padding)
    d_model: int = 1024
    n_heads: int = 16
    n_layers: int = 12  # per model: the AR and the NAR each have this many layers
    d_ff: int = 4096
    dropout: float = 0.1
    n_codebooks: int = 8
    codebook_size: int = 1024
    # lifeiteng/vall-e ties NAR head j to the input embedding of codebook j+1. In a residual
    # quantiser code k of one codebook has nothing to do with code k of the next, so heads are
    # untied by default; checkpoints written before this field existed were tied (see checkpoint.py).
    tie_nar_heads: bool = False
    # The AR's phone pointer (module docstring); not in the paper, so off in every preset.
    ar_pointer: bool = False

    @property
    def eos(self) -> int:  # AR output vocabulary = codes + <eos>
        return self.codebook_size

    @property
    def bos(self) -> int:  # AR input vocabulary = codes + <eos> + <bos>
        return self.codebook_size + 1

    def to_json(self) -> dict:
        return asdict(self)


# `paper`: 12 layers, 16 heads, d 1024, FFN 4096 for each of AR and NAR (VALL-E section 5.1).
PRESETS: dict[str, dict] = {
    "paper": dict(d_model=1024, n_heads=16, n_layers=12, d_ff=4096, dropout=0.1),
    "small": dict(d_model=384, n_heads=6, n_layers=6, d_ff=1536, dropout=0.1),
    "tiny": dict(d_model=256, n_heads=4, n_layers=4, d_ff=1024, dropout=0.1),
    "debug": dict(d_model=64, n_heads=2, n_layers=2, d_ff=128, dropout=0.0),
}


def make_config(preset: str, n_phonemes: int, **overrides) -> VALLEConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return VALLEConfig(n_phonemes=n_phonemes, **{**PRESETS[preset], **overrides})


class SinePositionalEmbedding(nn.Module):
    """h = e + alpha * PE(pos), PE(p)_{2i} = sin(p / 10000^{2i/d}), PE(p)_{2i+1} = cos(...)."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = nn.Dropout(dropout)
        inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, emb: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """emb [B, L, D], positions [B, L] (segment-relative, so each segment restarts at 0)."""
        angles = positions.unsqueeze(-1).float() * self.inv_freq  # [B, L, D/2]
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # interleave sin, cos
        return self.dropout(emb + self.alpha * pe.to(emb.dtype))


class AdaptiveLayerNorm(nn.Module):
    """AdaLN(h, s) = a(s) * LayerNorm(h) + b(s), with [a; b] = W e_stage (NAR stage conditioning)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.project = nn.Linear(d_model, 2 * d_model)

    def forward(self, h: torch.Tensor, stage_emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.project(stage_emb).unsqueeze(1).chunk(2, dim=-1)  # [B, 1, D] each
        return scale * self.norm(h) + shift


class KVCache:
    """Keys/values of every layer for incremental AR decoding: k, v [n_layers, B, H, max_len, Dh]."""

    def __init__(
        self, n_layers: int, batch: int, n_heads: int, max_len: int, d_head: int, like: torch.Tensor
    ):
        shape = (n_layers, batch, n_heads, max_len, d_head)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.length = 0  # positions filled so far (the same for every item: pads are masked)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[2]
        self.k[layer, :, :, self.length : self.length + n] = k
        self.v[layer, :, :, self.length : self.length + n] = v
        end = self.length + n
        if layer == self.k.shape[0] - 1:
            self.length = end
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg: VALLEConfig) -> None:
        super().__init__()
        assert cfg.d_model % cfg.n_heads == 0
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(
        self, h: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        """h [B, L, D]; mask [B, 1, L, L_keys] (True = may attend)."""
        B, L, D = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-LN transformer layer; with ``adaptive`` its norms are stage-conditioned (NAR)."""

    def __init__(self, cfg: VALLEConfig, adaptive: bool = False) -> None:
        super().__init__()
        norm = (lambda: AdaptiveLayerNorm(cfg.d_model)) if adaptive else (lambda: nn.LayerNorm(cfg.d_model))
        self.adaptive = adaptive
        self.norm1, self.norm2 = norm(), norm()
        self.attn = SelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.d_ff, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def _norm(self, norm: nn.Module, h: torch.Tensor, stage_emb: torch.Tensor | None) -> torch.Tensor:
        return norm(h, stage_emb) if self.adaptive else norm(h)

    def forward(self, h, mask, stage_emb=None, cache: KVCache | None = None, layer: int = 0):
        h = h + self.drop(self.attn(self._norm(self.norm1, h, stage_emb), mask, cache, layer))
        return h + self.drop(self.mlp(self._norm(self.norm2, h, stage_emb)))


def segment_positions(tokens: torch.Tensor) -> torch.Tensor:
    """[B, L] -> positions 0..L-1 for each row (each segment restarts at 0)."""
    return torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] -> [B, max_len] bool, True at valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def ar_attention_mask(text_valid: torch.Tensor, audio_valid: torch.Tensor) -> torch.Tensor:
    """The AR mask over [x ; y]: text->text full, text->audio none, audio->text full, audio->audio causal.

    text_valid [B, Lx], audio_valid [B, Ly] (padding False) -> [B, 1, Lx+Ly, Lx+Ly] (True = attend).
    Padded query rows may attend to themselves only, so no softmax row is empty (SDPA would give NaN).
    """
    Lx, Ly = text_valid.shape[1], audio_valid.shape[1]
    L = Lx + Ly
    dev = text_valid.device
    structure = torch.zeros(L, L, dtype=torch.bool, device=dev)
    structure[:Lx, :Lx] = True
    structure[Lx:, :Lx] = True
    structure[Lx:, Lx:] = torch.ones(Ly, Ly, dtype=torch.bool, device=dev).tril()
    keys_valid = torch.cat([text_valid, audio_valid], dim=1)  # [B, L]
    mask = structure[None] & keys_valid[:, None, :]
    mask |= torch.eye(L, dtype=torch.bool, device=dev)[None]
    return mask[:, None]


def pointer_from_durations(
    text: torch.Tensor, durations: torch.Tensor, prompt_lens: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The phone pointer of each frame, from frames per phoneme.

    text [B, Lx] phoneme ids, durations [B, Lx] (0 on padding), prompt_lens [B], ``length`` >= T.
    Returns pointer [B, length, 2] = (x_{a_t}, x_{a_t+1}) ids, 0 on prompt frames, past the end and
    for x_{a_t+1} at the last phoneme; and advance [B, length] = 1 where frame t is its phoneme's
    last, 0 inside a phoneme, IGNORE where there is no pointer.
    """
    B, Lx = text.shape
    ends = durations.cumsum(1)  # [B, Lx] first frame after each phoneme
    frames = torch.arange(length, device=text.device)
    index = torch.searchsorted(ends, frames.expand(B, -1).contiguous(), right=True)  # a_t [B, length]
    inside = frames[None] < ends[:, -1:]  # a phoneme may have 0 frames (a boundary between two utterances)
    # the prompt ends at the start of the phoneme holding frame prompt_lens
    split = torch.searchsorted(ends, prompt_lens[:, None].contiguous(), right=True).clamp(max=Lx - 1)
    starts = ends - durations
    prompt_end = starts.gather(1, split)  # [B, 1]
    on = inside & (frames[None] >= prompt_end)
    padded = torch.cat([text, text.new_zeros(B, 2)], dim=1)
    current = padded.gather(1, index.clamp(max=Lx)) * on
    after = padded.gather(1, (index + 1).clamp(max=Lx)) * on
    last_frame = (ends - 1).gather(1, index.clamp(max=Lx - 1)) == frames[None]
    advance = torch.where(on, last_frame.long(), torch.full_like(index, IGNORE))
    return torch.stack([current, after], dim=-1), advance


def full_attention_mask(valid: torch.Tensor) -> torch.Tensor:
    """Bidirectional mask with key padding: valid [B, L] -> [B, 1, L, L]."""
    L = valid.shape[1]
    mask = valid[:, None, :].expand(-1, L, -1) | torch.eye(L, dtype=torch.bool, device=valid.device)[None]
    return mask[:, None]


class ARModel(nn.Module):
    """θ_AR: predicts codebook 1 token by token (eq. 2)."""

    def __init__(self, cfg: VALLEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_emb = nn.Embedding(cfg.n_phonemes, cfg.d_model, padding_idx=0)
        self.audio_emb = nn.Embedding(cfg.codebook_size + 2, cfg.d_model)  # codes, <eos>, <bos>
        self.text_pos = SinePositionalEmbedding(cfg.d_model, cfg.dropout)
        self.audio_pos = SinePositionalEmbedding(cfg.d_model, cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.codebook_size + 1, bias=False)  # codes + <eos>
        if cfg.ar_pointer:
            # phoneme id 0 (padding) = no pointer: a zero vector, as on the prompt's frames
            self.pointer_emb = nn.Embedding(cfg.n_phonemes, cfg.d_model, padding_idx=0)
            self.next_emb = nn.Embedding(cfg.n_phonemes, cfg.d_model, padding_idx=0)
            self.advance_head = nn.Linear(cfg.d_model, 1)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """text [B, Lx] -> [B, Lx, D] with positions 0..Lx-1."""
        return self.text_pos(self.text_emb(text), segment_positions(text))

    def embed_audio(
        self, tokens: torch.Tensor, positions: torch.Tensor, pointer: torch.Tensor | None = None
    ) -> torch.Tensor:
        """tokens [B, L] (codes, <bos>), positions [B, L] counted from the audio segment's start;
        pointer [B, L, 2] phoneme ids (x_{a_t}, x_{a_t+1}; 0 = none), only with ``ar_pointer``."""
        emb = self.audio_emb(tokens)
        if pointer is not None:
            emb = emb + self.pointer_emb(pointer[..., 0]) + self.next_emb(pointer[..., 1])
        return self.audio_pos(emb, positions)

    def hidden(self, h: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Transformer stack + final norm: h [B, L, D] -> [B, L, D]."""
        for i, block in enumerate(self.blocks):
            h = block(h, mask, cache=cache, layer=i)
        return self.norm(h)

    def run(self, h: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Transformer stack + head: h [B, L, D] -> logits [B, L, codebook_size + 1]."""
        return self.head(self.hidden(h, mask, cache))

    def _teacher_forced(
        self,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        codes1: torch.Tensor,
        audio_lens: torch.Tensor,
        pointer: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, T+1, D] of the audio positions and targets [B, T+1]; ``pointer``
        [B, T+1, 2] as in :meth:`embed_audio`; ``history`` [B, T] codes fed as the inputs in place
        of codes1 (the targets stay codes1; see ``TrainConfig.ar_self_feed``)."""
        B, T = codes1.shape
        bos = torch.full((B, 1), self.cfg.bos, dtype=codes1.dtype, device=codes1.device)
        inputs = torch.cat([bos, codes1 if history is None else history], dim=1)  # input t predicts frame t
        audio_valid = lengths_to_mask(audio_lens + 1, T + 1)
        targets = torch.cat([codes1, torch.full_like(bos, IGNORE)], dim=1)
        targets[torch.arange(B), audio_lens] = self.cfg.eos
        targets = targets.masked_fill(~audio_valid, IGNORE)
        audio = self.embed_audio(inputs.clamp_min(0), segment_positions(inputs), pointer)
        h = torch.cat([self.embed_text(text), audio], 1)
        mask = ar_attention_mask(lengths_to_mask(text_lens, text.shape[1]), audio_valid)
        return self.hidden(h, mask)[:, text.shape[1] :], targets

    def forward(
        self,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        codes1: torch.Tensor,
        audio_lens: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced training pass.

        text [B, Lx] phoneme ids (0 = pad), codes1 [B, T] codebook-1 codes, lengths [B].
        Returns logits [B, T+1, V] for inputs [<bos>, c_1..c_T] and targets [B, T+1] = [c_1..c_T, <eos>]
        with IGNORE after each utterance's <eos>. ``history`` [B, T] replaces c_1..c_T as inputs only.
        """
        hidden, targets = self._teacher_forced(text, text_lens, codes1, audio_lens, history=history)
        return self.head(hidden), targets

    def forward_pointer(
        self,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        codes1: torch.Tensor,
        audio_lens: torch.Tensor,
        durations: torch.Tensor,
        prompt_lens: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass of the phone-pointer AR (``ar_pointer``).

        As :meth:`forward`, plus durations [B, Lx] frames per phoneme (0-padded, summing to
        audio_lens) and prompt_lens [B]: frames before the start of the phoneme that holds frame
        prompt_lens carry no pointer (the acoustic prompt). Returns (logits [B, T+1, V], targets
        [B, T+1], advance logits [B, T+1], advance targets [B, T+1] in {0, 1} or IGNORE off the
        pointer's frames). ``history`` as in :meth:`forward`.
        """
        pointer, advance = pointer_from_durations(text, durations, prompt_lens, codes1.shape[1] + 1)
        hidden, targets = self._teacher_forced(text, text_lens, codes1, audio_lens, pointer, history)
        return self.head(hidden), targets, self.advance_head(hidden).squeeze(-1), advance


class NARModel(nn.Module):
    """θ_NAR: predicts codebook j in {2..8} from x, the prompt C~ and c_{:,<j} (eq. 3)."""

    def __init__(self, cfg: VALLEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        Q, K, D = cfg.n_codebooks, cfg.codebook_size, cfg.d_model
        self.text_emb = nn.Embedding(cfg.n_phonemes, D, padding_idx=0)
        self.audio_embs = nn.ModuleList(nn.Embedding(K, D) for _ in range(Q))  # e_1 .. e_8
        self.stage_emb = nn.Embedding(Q - 1, D)  # stages j = 2..8
        self.text_pos = SinePositionalEmbedding(D, cfg.dropout)
        self.audio_pos = SinePositionalEmbedding(D, cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, adaptive=True) for _ in range(cfg.n_layers))
        self.norm = AdaptiveLayerNorm(D)
        self.heads = nn.ModuleList(nn.Linear(D, K, bias=False) for _ in range(Q - 1))
        if cfg.tie_nar_heads:
            # lifeiteng/vall-e: the head predicting codebook j shares its weight with the input
            # embedding of codebook j+1 (0-indexed: heads[i] predicts codebook i+1, tied to
            # audio_embs[i+2]); the head for the last codebook has no later embedding and stays untied.
            for i in range(Q - 2):
                self.heads[i].weight = self.audio_embs[i + 2].weight

    def forward(
        self,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        codes: torch.Tensor,
        audio_lens: torch.Tensor,
        prompt_lens: torch.Tensor,
        stage: int,
    ) -> torch.Tensor:
        """Logits for codebook ``stage`` (0-indexed, 1..7) at every audio position.

        text [B, Lx]; codes [B, T, 8] holding [prompt ; target] per item (prompt first, its length
        prompt_lens [B]; target codebooks >= stage are never read); audio_lens [B] = prompt + target.
        Returns logits [B, T, codebook_size].
        """
        if not 1 <= stage < self.cfg.n_codebooks:
            raise ValueError(f"NAR stage must be in 1..{self.cfg.n_codebooks - 1}, got {stage}")
        B, T, Q = codes.shape
        codes = codes.clamp_min(0)  # pads may hold IGNORE; they are masked below
        per_codebook = torch.stack([self.audio_embs[q](codes[..., q]) for q in range(Q)], dim=2)  # [B,T,Q,D]
        in_prompt = lengths_to_mask(prompt_lens, T)  # [B, T]
        prompt_sum = per_codebook.sum(dim=2)  # e(C~)_t: all 8 codebooks
        target_sum = per_codebook[:, :, :stage].sum(dim=2)  # e(C_{:,<j})_t
        audio = torch.where(in_prompt[..., None], prompt_sum, target_sum)
        pos = segment_positions(codes[..., 0])
        text_h = self.text_pos(self.text_emb(text), segment_positions(text))
        h = torch.cat([text_h, self.audio_pos(audio, pos)], dim=1)
        valid = torch.cat([lengths_to_mask(text_lens, text.shape[1]), lengths_to_mask(audio_lens, T)], dim=1)
        mask = full_attention_mask(valid)
        stage_emb = self.stage_emb(torch.full((B,), stage - 1, device=codes.device))
        for block in self.blocks:
            h = block(h, mask, stage_emb=stage_emb)
        return self.heads[stage - 1](self.norm(h, stage_emb))[:, text.shape[1] :]


class VALLE(nn.Module):
    """The pair (θ_AR, θ_NAR). Training draws one NAR stage per step, uniformly from 2..8."""

    def __init__(self, cfg: VALLEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ar = ARModel(cfg)
        self.nar = NARModel(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            # N(0, 1), nn.Embedding's own init, which lifeiteng/vall-e keeps. The sinusoidal positions
            # added to these have RMS ~0.7; at std 0.02 the phoneme identity was 1/28 of the input
            # after 850 steps and the AR learnt to ignore the text.
            nn.init.normal_(m.weight, std=1.0)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])
        if isinstance(m, AdaptiveLayerNorm):  # start as a plain LayerNorm: scale 1, shift 0
            nn.init.zeros_(m.project.weight)
            nn.init.zeros_(m.project.bias)
            m.project.bias.data[: m.project.out_features // 2] = 1.0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token cross-entropy -log p over non-IGNORE targets, and top-1 accuracy on them."""
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    valid = targets != IGNORE
    acc = (logits.argmax(-1)[valid] == targets[valid]).float().mean()
    return loss, acc
