"""Train VALL-E (AR + NAR) on a token cache, on one process or under ``torchrun`` (DDP).

Each optimizer step computes, on the same batch,

    L_AR  = -mean_t log p(c_{t,1} | c_{<t,1}, x)           teacher forcing on codebook 1 of the whole
                                                             utterance; the targets end with <eos>
    L_NAR = -mean_t log p(c_{t,j} | c_{t,<j}, x, C~)        one stage j ~ U{2..8} per step, shared by
                                                             every micro-batch and rank of that step

and minimises L_AR + L_NAR. With the AR's phone pointer (``VALLEConfig.ar_pointer``, not in the
paper) L_AR also sums the binary cross-entropy of "the next frame starts the next phoneme" over the
pointer's frames (divided by the same AR token count); the pointer starts at the phoneme that holds
frame prompt_len (the NAR's prompt length below), so the AR also learns to continue after a prompt
that carries none. The NAR's acoustic prompt C~ follows the reference implementation's
prefix mode (lifeiteng/vall-e, ``prefix_mode=1``): C~ is a prefix of the utterance itself, its
length drawn uniformly from [25 %, 50 %] of the utterance and capped at 3 s (225 frames at 75 Hz);
L_NAR is masked on the prompt and on padding.

``cross_sentence`` (not in the paper, which trains on single utterances) puts a share of the items
in the layout of cross-sentence inference: the last <= 3 s of another utterance of the same speaker
(from a phoneme start), a word boundary, then the item, with text = that prompt's phonemes +
boundary + the item's. The prompt length of such an item is the other utterance's part, for the NAR
and for the AR's phone pointer alike. We draw the length per utterance (the reference
draws one per batch from the shortest item), so short items in a long batch still get a 25-50 %
prompt. The means are over all target tokens of the step, across micro-batches and ranks (the
token counts are all-reduced before the backward pass), so gradients do not depend on how a batch
is split between ranks or accumulation steps.

``ar_self_feed`` (not in the paper either) feeds the AR a share of its own draws in place of the
true previous codes (:func:`self_fed_history`), so it learns to go on after its own mistakes, as it
must when it generates.

Checkpoints go to ``out_dir/last/`` (``valle.train_checkpoint``: atomic, with every rank's RNG states
and the data position, so a resumed run repeats exactly what an uninterrupted run would have done);
``out_dir/log.jsonl`` gets one JSON line per logged step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from valle.batching import LengthBucketSampler, collate
from valle.codec.base import CodecCard
from valle.data import TEXT_HAS_BOS_EOS, Item, TokenDataset
from valle.distributed import setup_distributed
from valle.hardware import bf16_autocast_ok
from valle.model import PRESETS, VALLE, make_config
from valle.phonemes import SymbolTable
from valle.sampling import SamplingOptions, calibrate_ras_threshold
from valle.train_checkpoint import init_from, resume, resume_dir, truncate_log, write_checkpoint
from valle.train_step import backward_step, wrap_model

LOG = "log.jsonl"
PARTS = ("ar+nar", "ar", "nar")


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"
    lr: float = 5e-4  # peak learning rate (5e-4 suits `tiny`; lower it for `paper`)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01  # applied to matrices and embeddings only (nanoGPT's split)
    warmup_steps: int = 200
    max_steps: int = 20_000
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_accum: int = 1  # micro-batches per optimizer step, per rank
    clip_norm: float = 1.0
    max_frames: int = 6_000  # padded codec frames per micro-batch (items x longest)
    max_batch: int = 64
    bucket_size: int = 1_000  # items sorted together by the length-bucketing sampler
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    nar_prompt_min: float = 0.25  # NAR prefix prompt: fraction of the utterance, drawn uniformly ...
    nar_prompt_max: float = 0.5  # ... from [min, max]
    nar_prompt_max_frames: int = 225  # ... and capped (3 s at 75 Hz)
    dropout: float | None = None  # None: the preset's
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # autocast to bfloat16 on CUDA and on CPUs with native bf16 (valle.hardware)
    parts: str = "ar+nar"  # which model(s) to train: ar+nar | ar | nar (the other is left as is)
    tensorboard: bool = True  # write out_dir/tb when tensorboard is installed
    ar_pointer: bool = False  # the AR's phone pointer (valle.model; not in the paper)
    # start a new run from another checkpoint's weights (e.g. a trained NAR, to train an AR beside
    # it with parts="ar"); parameters it lacks (the pointer's) keep their fresh initialisation
    init_from: str | None = None
    # share of items trained after a prompt from another utterance of their speaker (module docstring)
    cross_sentence: float = 0.0
    # share of the AR's input codes replaced by its own draws (self_fed_history; not in the paper)
    ar_self_feed: float = 0.0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(
                f"TrainConfig.preset: unknown {self.preset!r}; choose one of {', '.join(PRESETS)}"
            )
        for name in ("max_steps", "grad_accum", "max_frames", "max_batch", "bucket_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.ckpt_every < 1:
            raise ValueError("TrainConfig.warmup_steps must be >= 0 and ckpt_every >= 1")
        if not 0 <= self.nar_prompt_min <= self.nar_prompt_max < 1:
            raise ValueError(
                "TrainConfig: need 0 <= nar_prompt_min <= nar_prompt_max < 1, got "
                f"{self.nar_prompt_min}, {self.nar_prompt_max}"
            )
        if self.parts not in PARTS:
            raise ValueError(f"TrainConfig.parts: expected one of {', '.join(PARTS)}, got {self.parts!r}")
        if not 0 <= self.cross_sentence <= 1:
            raise ValueError(f"TrainConfig.cross_sentence must be in [0, 1], got {self.cross_sentence}")
        if not 0 <= self.ar_self_feed < 1:
            raise ValueError(f"TrainConfig.ar_self_feed must be in [0, 1), got {self.ar_self_feed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device: expected auto, cpu or cuda, got {self.device!r}")


# --- losses --------------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def draw_stage(generator: torch.Generator, n_codebooks: int) -> int:
    """A NAR stage, 0-indexed codebook in 1..Q-1 (paper's j = stage + 1), uniformly."""
    return int(torch.randint(1, n_codebooks, (1,), generator=generator))


def draw_prompt_lens(audio_lens: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Prefix prompt length per item: U[min, max] x frames, floored, capped at ``nar_prompt_max_frames``."""
    lens = audio_lens.cpu().double()
    frac = cfg.nar_prompt_min + (cfg.nar_prompt_max - cfg.nar_prompt_min) * torch.rand(
        len(lens), generator=generator, dtype=torch.float64
    )
    return (frac * lens).floor().long().clamp(max=cfg.nar_prompt_max_frames).to(audio_lens.device)


def cross_sentence_item(item: Item, prompt: Item, max_frames: int, word_id: int) -> tuple[Item, int]:
    """``item`` after the last <= ``max_frames`` frames of ``prompt`` (cut at a phoneme start when
    ``prompt`` has durations, else at ``max_frames``, its text then kept whole) and a word boundary
    of 0 frames. Returns the joined item and its prompt length in frames."""
    T = len(prompt.codes)
    start, first = max(0, T - max_frames), 0
    if prompt.durations is not None:
        starts = prompt.durations.cumsum(0) - prompt.durations
        first = int((starts < start).sum())  # first phoneme starting at or after `start`
        first = min(first, len(starts) - 1)
        start = int(starts[first])
    text = torch.cat([prompt.text[first:], torch.tensor([word_id]), item.text])
    durations = None
    if item.durations is not None and prompt.durations is not None:
        durations = torch.cat([prompt.durations[first:], torch.tensor([0]), item.durations])
    codes = torch.cat([prompt.codes[start:], item.codes])
    joined = Item(item.index, item.id, item.speaker, text, codes, durations)
    return joined, T - start


def draw_items(
    dataset: TokenDataset,
    indices: list[int],
    cfg: TrainConfig,
    generator: torch.Generator,
    by_speaker: dict[str, list[int]],
) -> tuple[list[Item], torch.Tensor]:
    """The items of one micro-batch, a ``cfg.cross_sentence`` share of them joined after a prompt
    from another utterance of their speaker; returns them and each one's fixed prompt length (-1:
    none, draw one)."""
    items, fixed = [], []
    word_id = dataset.symbols.word_id
    for i in indices:
        item = dataset[i]
        others = [j for j in by_speaker[item.speaker] if j != i] if cfg.cross_sentence > 0 else []
        if others and float(torch.rand(1, generator=generator)) < cfg.cross_sentence:
            j = others[int(torch.randint(len(others), (1,), generator=generator))]
            item, plen = cross_sentence_item(item, dataset[j], cfg.nar_prompt_max_frames, word_id)
            fixed.append(plen)
        else:
            fixed.append(-1)
        items.append(item)
    return items, torch.tensor(fixed)


# --- model, optimizer, checkpoints ---------------------------------------------------------------


def build_model(cfg: TrainConfig, symbols: SymbolTable, card: CodecCard) -> VALLE:
    overrides: dict[str, Any] = {"n_codebooks": card.n_codebooks, "codebook_size": card.codebook_size}
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    if cfg.ar_pointer:
        overrides["ar_pointer"] = True
    return VALLE(make_config(cfg.preset, n_phonemes=len(symbols), **overrides))


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases, norms, positional alphas
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


# --- the loop ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    step: int
    epoch: int
    out_dir: Path
    resumed_from: int | None  # step of the checkpoint this invocation started from
    last_metrics: dict[str, float] = field(default_factory=dict)


def train(
    cfg: TrainConfig,
    cache_dir: str | Path,
    out_dir: str | Path,
    until_step: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train to ``cfg.max_steps`` (or stop early at ``until_step``, checkpointing there, as a
    preemptible job would), resuming from ``out_dir/last`` when it exists."""
    out_dir = Path(out_dir)
    info = setup_distributed(cfg.device)
    device, world = info.device, info.world_size
    dataset = TokenDataset(cache_dir)
    sampler = LengthBucketSampler(
        dataset.frames, cfg.max_frames, cfg.max_batch, cfg.bucket_size, cfg.seed, info.rank, world
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, dataset.symbols, dataset.codec_card).to(device)
    optimizer = build_optimizer(model, cfg, fused=device.type == "cuda")
    # the stage is shared by all ranks of a step; prompts and dropout get a per-rank seed offset
    gens = {
        "stage": torch.Generator().manual_seed(cfg.seed + 7919),
        "prompt": torch.Generator().manual_seed(cfg.seed + 1_000 * (info.rank + 1)),
    }
    torch.manual_seed(cfg.seed + info.rank)

    by_speaker: dict[str, list[int]] = {}
    for i, meta in enumerate(dataset.items):
        by_speaker.setdefault(meta["speaker"], []).append(i)
    ras_window = SamplingOptions().ras_window
    ras_threshold, ras_rate = calibrate_ras_threshold(dataset.codebook1(), ras_window)
    step, epoch, pos, resumed_from = 0, 0, 0, None
    # the halves whose weights mean something: those trained here and those loaded from a checkpoint.
    # Only they are saved, so a half never trained is not passed off as one (valle.checkpoint.parts)
    held = set(cfg.parts.split("+"))
    ckpt_dir = resume_dir(out_dir)
    if ckpt_dir is not None:
        step, epoch, pos, loaded = resume(ckpt_dir, model, optimizer, dataset, info, gens)
        held |= set(loaded)
        resumed_from = step
        if info.is_master:
            truncate_log(out_dir / LOG, step)
    elif cfg.init_from is not None:
        held |= set(init_from(Path(cfg.init_from), model, dataset))

    module = wrap_model(model, info, cfg.parts, cfg.ar_self_feed)
    autocast = cfg.bf16 and bf16_autocast_ok(device)
    stop = min(cfg.max_steps, until_step if until_step is not None else cfg.max_steps)

    writer = None
    if info.is_master:
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard:
            try:
                # tensorboard is optional at run time (ImportError -> no event files)
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                writer = None
    log_file = open(out_dir / LOG, "a") if info.is_master else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not (progress and info.is_master))
    batches = sampler.batches(epoch)
    metrics: dict[str, float] = {}
    tokens_since, t_since = 0.0, time.perf_counter()
    model.train()
    try:
        while step < stop:
            micro, fixed = [], []
            for _ in range(cfg.grad_accum):
                if pos >= len(batches):
                    epoch, pos = epoch + 1, 0
                    batches = sampler.batches(epoch)
                items, plens = draw_items(dataset, batches[pos], cfg, gens["prompt"], by_speaker)
                micro.append(collate(items).to(device))
                fixed.append(plens.to(device))
                pos += 1
            stage = draw_stage(gens["stage"], model.cfg.n_codebooks)
            prompt_lens = [
                torch.where(f >= 0, f, draw_prompt_lens(b.audio_lens, cfg, gens["prompt"]))
                for b, f in zip(micro, fixed, strict=True)
            ]
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            metrics = backward_step(module, micro, prompt_lens, stage, world, autocast)
            for part in {"ar", "nar"} - set(cfg.parts.split("+")):  # not trained: nothing to report
                metrics.pop(f"{part}_loss"), metrics.pop(f"{part}_acc")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
            optimizer.step()
            step += 1
            tokens_since += metrics["tokens"]
            bar.update(1)

            if info.is_master and (step % cfg.log_every == 0 or step == stop):
                now = time.perf_counter()
                row = {
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    **{k: v for k, v in metrics.items() if k != "tokens"},
                    "nar_stage": stage + 1,  # the paper's j
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens_since / max(now - t_since, 1e-9),
                }
                tokens_since, t_since = 0.0, now
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("ar_loss", "nar_loss") if k in row})
                if writer is not None:
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)

            if step % cfg.ckpt_every == 0 or step == stop:
                extra = {
                    "data": {"epoch": epoch, "batch": pos, "world_size": world},
                    # the lr is a pure function of the step (lr_at); recorded for readers
                    "scheduler": {"step": step, "next_lr": lr_at(step, cfg)},
                    "train_config": asdict(cfg),
                    "cache": {
                        "path": str(Path(cache_dir).resolve()),
                        "manifest_sha256": dataset.manifest_sha256,
                        "items": len(dataset),
                        "text_has_bos_eos": TEXT_HAS_BOS_EOS,
                    },
                    "metrics": metrics,
                    # repetition-aware sampling calibrated on this codec's ground-truth codebook 1
                    "ras": {"window": ras_window, "threshold": ras_threshold, "ground_truth_rate": ras_rate},
                }
                write_checkpoint(out_dir, model, optimizer, dataset, step, extra, info, gens, tuple(held))
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    return TrainResult(
        step=step, epoch=epoch, out_dir=out_dir, resumed_from=resumed_from, last_metrics=metrics
    )
