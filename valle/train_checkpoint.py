"""Training checkpoints: ``out_dir/last`` written atomically with every rank's RNG states, exact
resume, initialising a new run from another run's weights, and the log cut back to the resumed step.

A resumed run repeats exactly what an uninterrupted run would have done: the optimizer file holds
every rank's RNG states, and ``extra["data"]`` the data position (epoch, batch, world size).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from valle.checkpoint import (
    PARTS,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from valle.data import TokenDataset
from valle.distributed import DistInfo
from valle.model import VALLE, VALLEConfig

LAST = "last"


def rng_state(device: torch.device, gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {name: g.get_state() for name, g in gens.items()}
    state["torch"] = torch.get_rng_state()
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device, gens: dict[str, torch.Generator]):
    for name, g in gens.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_dir(out_dir: Path) -> Path | None:
    # last.old survives only if a run died between the two renames of _save; it is then complete
    for name in (LAST, f"{LAST}.old"):
        if (out_dir / name / "config.json").is_file():
            return out_dir / name
    return None


def save_last(
    out_dir: Path,
    model: VALLE,
    dataset: TokenDataset,
    step: int,
    opt_state: dict,
    extra: dict,
    parts: tuple[str, ...] = PARTS,
) -> Path:
    """Write the checkpoint (the halves in ``parts`` only) into a temp folder, then swap it in for
    ``out_dir/last`` by renames."""
    tmp, last, old = out_dir / f".{LAST}.tmp", out_dir / LAST, out_dir / f"{LAST}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(
        tmp,
        model,
        dataset.symbols,
        dataset.codec_card,
        step,
        optimizer_state=opt_state,
        extra=extra,
        parts=parts,
    )
    if last.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(last, old)
    os.replace(tmp, last)
    shutil.rmtree(old, ignore_errors=True)
    return last


def _load_for(path: Path, dataset: TokenDataset) -> Checkpoint:
    """The checkpoint at ``path``, refused unless its codec and symbol table are the token cache's."""
    ckpt = load_checkpoint(path)
    dataset.codec_card.check_compatible(ckpt.codec, what=f"checkpoint {path}")
    if ckpt.symbols != dataset.symbols:
        raise CheckpointError(f"{path}: phoneme symbol table differs from the token cache's")
    return ckpt


def check_resumable(ckpt_dir: Path, model_cfg: VALLEConfig, dataset: TokenDataset):
    ckpt = _load_for(ckpt_dir, dataset)
    if ckpt.config != model_cfg:
        diff = {
            k: (v, getattr(model_cfg, k))
            for k, v in asdict(ckpt.config).items()
            if getattr(model_cfg, k) != v
        }
        raise CheckpointError(f"{ckpt_dir}: model config differs from this run's (checkpoint vs now: {diff})")
    opt = load_optimizer_state(ckpt_dir)
    if opt is None:
        raise CheckpointError(f"{ckpt_dir}: no optimizer state; cannot resume training from it")
    return ckpt, opt


def init_from(path: Path, model: VALLE, dataset: TokenDataset) -> tuple[str, ...]:
    """Load another checkpoint's weights into a new run's ``model`` (see ``TrainConfig.init_from``);
    returns the halves it held."""
    ckpt = _load_for(path, dataset)
    shape = ("d_model", "n_heads", "n_layers", "d_ff", "n_codebooks", "codebook_size", "tie_nar_heads")
    diff = {
        k: (getattr(ckpt.config, k), getattr(model.cfg, k))
        for k in shape
        if getattr(ckpt.config, k) != getattr(model.cfg, k)
    }
    if diff:
        raise CheckpointError(
            f"{path}: cannot initialise from it, model shapes differ (checkpoint vs now: {diff})"
        )
    # only the halves the file holds: an AR-only checkpoint leaves this run's NAR as initialised
    state = {k: v for k, v in ckpt.model.state_dict().items() if k.split(".")[0] in ckpt.parts}
    own = model.state_dict()
    extra = sorted(state.keys() - own.keys())
    if extra:
        raise CheckpointError(f"{path}: has parameters this model lacks: {', '.join(extra[:5])}")
    model.load_state_dict(state, strict=False)
    return ckpt.parts


def resume(
    ckpt_dir: Path,
    model: VALLE,
    optimizer: torch.optim.Optimizer,
    dataset: TokenDataset,
    info: DistInfo,
    gens: dict[str, torch.Generator],
) -> tuple[int, int, int, tuple[str, ...]]:
    """Load weights, optimizer and this rank's RNG states; returns (step, epoch, batch position,
    the halves the checkpoint held)."""
    ckpt, opt_state = check_resumable(ckpt_dir, model.cfg, dataset)
    model.load_state_dict(ckpt.model.state_dict())
    optimizer.load_state_dict(opt_state["optimizer"])
    position = ckpt.extra["data"]
    if position["world_size"] == info.world_size:
        set_rng_state(opt_state["rng"][info.rank], info.device, gens)
        return ckpt.step, position["epoch"], position["batch"], ckpt.parts
    # batches are sharded per world size, so the old position means nothing with another one
    if info.is_master:
        print(
            f"resuming {ckpt_dir} with {info.world_size} ranks instead of {position['world_size']}: "
            f"starting epoch {position['epoch'] + 1} afresh, RNGs not restored",
            file=sys.stderr,
        )
    return ckpt.step, position["epoch"] + 1, 0, ckpt.parts


def write_checkpoint(
    out_dir: Path,
    model: VALLE,
    optimizer: torch.optim.Optimizer,
    dataset: TokenDataset,
    step: int,
    extra: dict,
    info: DistInfo,
    gens: dict[str, torch.Generator],
    parts: tuple[str, ...] = PARTS,
) -> None:
    """Collective: every rank contributes its RNG states, rank 0 writes ``out_dir/last`` (the halves
    in ``parts``)."""
    rngs = [{k: v.cpu() for k, v in rng_state(info.device, gens).items()}]
    if info.distributed:
        gathered: list = [None] * info.world_size
        dist.all_gather_object(gathered, rngs[0])
        rngs = gathered
    if info.is_master:
        opt_state = {"optimizer": optimizer.state_dict(), "rng": rngs}
        save_last(out_dir, model, dataset, step, opt_state, extra, parts)
    if info.distributed:
        dist.barrier()  # nobody runs ahead (or exits) while rank 0 writes


def truncate_log(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from, so the log reads as one run."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by the kill
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
