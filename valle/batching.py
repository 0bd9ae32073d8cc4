"""Batches for VALL-E training: a length-bucketing sampler over a token cache, and collation."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler

from valle.data import DataError, Item
from valle.model import IGNORE


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of similar length: shuffle, cut into buckets, sort each bucket by frames, batch greedily.

    A batch holds at most ``max_batch`` items and its padded size (items x longest) stays within
    ``max_frames``. The batch order is shuffled too. Everything derives from ``seed + epoch``, so
    every rank computes the same global list and takes ``batches[rank::world_size]``. When the count
    does not divide by ``world_size`` the largest batches are split in two until it does: every
    item is seen exactly once per epoch and every rank runs the same number of steps.
    """

    def __init__(
        self,
        frames: Sequence[int],
        max_frames: int,
        max_batch: int = 64,
        bucket_size: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world size {world_size}")
        if len(frames) < world_size:
            raise DataError(f"{len(frames)} items cannot give each of {world_size} ranks a batch")
        longest = max(frames)
        if longest > max_frames:
            raise DataError(
                f"max_frames {max_frames} is below the longest item ({longest} frames, index "
                f"{list(frames).index(longest)}); raise max_frames or prepare with a lower max_seconds"
            )
        if max_batch < 1 or bucket_size < 1:
            raise DataError(f"max_batch ({max_batch}) and bucket_size ({bucket_size}) must be >= 1")
        self.frames = list(frames)
        self.max_frames, self.max_batch, self.bucket_size = max_frames, max_batch, bucket_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of ``epoch`` in order (rank r runs entries r, r + world, ...)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.frames)))
        if self.shuffle:
            rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.bucket_size):
            bucket = sorted(order[start : start + self.bucket_size], key=lambda i: self.frames[i])
            batch: list[int] = []
            for i in bucket:
                # sorted ascending, so item i is the longest: padded size = (n + 1) * frames[i]
                if batch and (
                    len(batch) >= self.max_batch or (len(batch) + 1) * self.frames[i] > self.max_frames
                ):
                    batches.append(batch)
                    batch = []
                batch.append(i)
            batches.append(batch)
        while len(batches) % self.world_size:
            largest = max(range(len(batches)), key=lambda b: (len(batches[b]), -b))
            big = batches.pop(largest)
            if len(big) == 1:  # only single items left: repeat a few, as DistributedSampler pads
                batches.insert(largest, big)
                batches += batches[: -len(batches) % self.world_size]
                break
            half = len(big) // 2
            batches[largest:largest] = [big[:half], big[half:]]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``."""
        return self.global_batches(epoch)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


@dataclass(frozen=True)
class Batch:
    """Padded tensors: text 0-padded, codes IGNORE-padded (the models mask both by length)."""

    ids: list[str]
    text: torch.Tensor  # [B, Lx] long
    text_lens: torch.Tensor  # [B]
    codes: torch.Tensor  # [B, T, Q] long
    audio_lens: torch.Tensor  # [B]
    durations: torch.Tensor | None = None  # [B, Lx] frames per phoneme, 0-padded (caches with alignments)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.ids,
            self.text.to(device, non_blocking=True),
            self.text_lens.to(device),
            self.codes.to(device, non_blocking=True),
            self.audio_lens.to(device),
            None if self.durations is None else self.durations.to(device),
        )


def collate(items: Sequence[Item]) -> Batch:
    """Pad a list of items into a :class:`Batch`."""
    if not items:
        raise DataError("cannot collate an empty batch")
    return Batch(
        ids=[it.id for it in items],
        text=pad_sequence([it.text for it in items], batch_first=True, padding_value=0),
        text_lens=torch.tensor([len(it.text) for it in items]),
        codes=pad_sequence([it.codes for it in items], batch_first=True, padding_value=IGNORE),
        audio_lens=torch.tensor([len(it.codes) for it in items]),
        durations=None
        if any(it.durations is None for it in items)
        else pad_sequence([it.durations for it in items], batch_first=True, padding_value=0),
    )
