"""One optimizer step of VALL-E training: the AR and NAR losses of ``valle.train``'s docstring.

:class:`LossModule` is what DDP wraps (one ``forward`` runs both models); :func:`backward_step`
turns its summed statistics into the gradients of the global mean losses over micro-batches and
ranks; :func:`self_fed_history` is the AR's optional self-feeding (``TrainConfig.ar_self_feed``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from valle.batching import Batch
from valle.distributed import DistInfo
from valle.model import IGNORE, VALLE, lengths_to_mask


def self_fed_history(
    logits: torch.Tensor,
    codes1: torch.Tensor,
    audio_lens: torch.Tensor,
    prompt_lens: torch.Tensor,
    share: float,
) -> torch.Tensor:
    """AR inputs ``[B, T]`` with a ``share`` of the target frames replaced by the model's own draws.

    Not in the paper: two-pass scheduled sampling for transformers (Mihaylova & Martins, ACL SRW
    2019). ``logits`` [B, T+1, V] come from a gradient-free teacher-forced pass; frame t's draw
    (temperature 1, codes only) is what the AR would have said there, so the second pass learns to
    predict the true frame after its own kind of mistakes, as it must when generating. The
    acoustic prompt's frames (t < prompt_lens) stay true, as they are at inference.
    """
    B, T = codes1.shape
    K = logits.shape[-1] - 1  # the last class is <eos>
    probs = logits[:, :T, :K].float().softmax(-1)
    drawn = torch.multinomial(probs.flatten(0, 1), 1).view(B, T)
    t = torch.arange(T, device=codes1.device)
    target = (t < audio_lens[:, None]) & (t >= prompt_lens[:, None])
    swap = target & (torch.rand(B, T, device=codes1.device) < share)
    return torch.where(swap, drawn, codes1)


class LossModule(nn.Module):
    """Wraps :class:`VALLE` so one ``forward`` (what DDP hooks) runs both the AR and the NAR.

    Returns summed statistics ``[ar_loss_sum, ar_correct, nar_loss_sum, nar_correct,
    advance_loss_sum, advance_frames]``; the caller divides by the global token counts. A part left
    out of ``parts`` is not run and gives zeros, as do the advance entries without the phone pointer.
    """

    def __init__(self, model: VALLE, parts: str = "ar+nar", ar_self_feed: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.parts = parts.split("+")
        self.ar_self_feed = ar_self_feed

    def forward(
        self,
        text: torch.Tensor,
        text_lens: torch.Tensor,
        codes: torch.Tensor,
        audio_lens: torch.Tensor,
        prompt_lens: torch.Tensor,
        stage: int,
        durations: torch.Tensor | None = None,
    ) -> torch.Tensor:
        zero = codes.new_zeros((), dtype=torch.float32)
        stats, advance = [], [zero, zero]
        for part in ("ar", "nar"):
            if part not in self.parts:
                stats += [zero] * 2
                continue
            if part == "ar" and self.model.cfg.ar_pointer:
                if durations is None:
                    raise ValueError(
                        "the AR's phone pointer needs frames per phoneme: prepare the token cache "
                        "with alignments (valle train --ar-pointer, a corpus with phones files)"
                    )
                ar_inputs = (text, text_lens, codes[..., 0], audio_lens, durations, prompt_lens)
                history = self._self_fed(self.model.ar.forward_pointer, ar_inputs, prompt_lens)
                logits, targets, adv_logits, adv_targets = self.model.ar.forward_pointer(
                    *ar_inputs, history=history
                )
                on = adv_targets != IGNORE
                advance = [
                    F.binary_cross_entropy_with_logits(
                        adv_logits.float()[on], adv_targets[on].float(), reduction="sum"
                    ),
                    on.sum().float(),
                ]
            elif part == "ar":
                ar_inputs = (text, text_lens, codes[..., 0], audio_lens)
                history = self._self_fed(self.model.ar, ar_inputs, prompt_lens)
                logits, targets = self.model.ar(*ar_inputs, history=history)  # [B, T+1, V]
            else:
                logits = self.model.nar(text, text_lens, codes, audio_lens, prompt_lens, stage)  # [B, T, K]
                T = codes.shape[1]
                in_target = lengths_to_mask(audio_lens, T) & ~lengths_to_mask(prompt_lens, T)
                targets = codes[..., stage].masked_fill(~in_target, IGNORE)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            correct = ((logits.argmax(-1) == targets) & (targets != IGNORE)).sum()
            stats += [loss, correct.float()]
        return torch.stack(stats + advance)

    def _self_fed(self, ar_pass, ar_inputs: tuple, prompt_lens: torch.Tensor) -> torch.Tensor | None:
        """The AR's inputs under ``ar_self_feed`` (None = the true codes): a first pass without
        gradients, then :func:`self_fed_history`."""
        if not (self.training and self.ar_self_feed > 0):
            return None
        with torch.no_grad():
            logits = ar_pass(*ar_inputs)[0]
        codes1, audio_lens = ar_inputs[2], ar_inputs[3]
        return self_fed_history(logits, codes1, audio_lens, prompt_lens, self.ar_self_feed)


def wrap_model(model: VALLE, info: DistInfo, parts: str = "ar+nar", ar_self_feed: float = 0.0) -> nn.Module:
    """:class:`LossModule` around ``model``, DDP-wrapped when running distributed."""
    module: nn.Module = LossModule(model, parts, ar_self_feed)
    if info.distributed:
        # the NAR heads of the stages not drawn this step get no gradient
        ids = [info.device.index] if info.device.type == "cuda" else None
        module = DDP(module, device_ids=ids, find_unused_parameters=True)
    return module


def backward_step(
    module: nn.Module,
    micro_batches: list[Batch],
    prompt_lens: list[torch.Tensor],
    stage: int,
    world_size: int = 1,
    autocast: bool = False,
) -> dict[str, float]:
    """Forward + backward every micro-batch; gradients end up as those of the global mean losses.

    ``module`` is a :class:`LossModule`, DDP-wrapped when ``world_size > 1``. Returns the step's
    global ``ar_loss, ar_acc, nar_loss, nar_acc`` (and ``advance_loss`` with the phone pointer) and
    target token counts.
    """
    device = micro_batches[0].codes.device
    counts = torch.tensor(
        [
            [float((b.audio_lens + 1).sum()), float((b.audio_lens - p).sum())]
            for b, p in zip(micro_batches, prompt_lens, strict=True)
        ],
        dtype=torch.float64,
        device=device,
    ).sum(0)
    if world_size > 1:
        dist.all_reduce(counts)
    n_ar, n_nar = counts.tolist()
    parts = getattr(module, "module", module).parts  # the LossModule, DDP-wrapped or not
    sums = torch.zeros(6, device=device)
    for i, (batch, plens) in enumerate(zip(micro_batches, prompt_lens, strict=True)):
        last = i == len(micro_batches) - 1
        # gradients are all-reduced once, on the last micro-batch
        sync = nullcontext() if last or not isinstance(module, DDP) else module.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                stats = module(
                    batch.text, batch.text_lens, batch.codes, batch.audio_lens, plens, stage, batch.durations
                )
            # DDP averages gradients over ranks; x world_size turns that into the global sum / count
            loss = ((stats[0] + stats[4]) / n_ar + stats[2] / n_nar) * world_size
            loss.backward()
        sums += stats.detach()
    if world_size > 1:
        dist.all_reduce(sums)
    ar_sum, ar_correct, nar_sum, nar_correct, adv_sum, adv_n = sums.tolist()
    pointer = {"advance_loss": adv_sum / adv_n} if adv_n else {}
    return {
        **pointer,
        "ar_loss": ar_sum / n_ar,
        "ar_acc": ar_correct / n_ar,
        "nar_loss": nar_sum / n_nar,
        "nar_acc": nar_correct / n_nar,
        "tokens": ("ar" in parts) * n_ar + ("nar" in parts) * n_nar,  # target tokens of the trained parts
    }
