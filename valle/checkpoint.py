"""VALL-E checkpoints: ``model.safetensors`` + ``config.json``; loading never unpickles.

``config.json`` holds everything needed to rebuild and trust the model: the format tag and version,
the model config, the phoneme symbol table, the codec card (so codes are never decoded by the
wrong codec), the training step, and the sha256 of the weights file, which is verified on load.
Optimizer state for resuming lives beside it in ``optimizer.pt`` (tensors and numbers only, read
with ``weights_only=True``).

A checkpoint may hold one half of the model only (``parts``, e.g. an AR exported to be trained on
while the NAR is trained elsewhere, or a ``valle train --parts ar`` run that never loaded a NAR;
training saves only the halves it trained or loaded): the absent half is left at its random
initialisation on load, and whatever needs it (generation, NAR diagnostics) refuses the checkpoint
via :func:`require_parts`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from valle.codec.base import CodecCard, sha256_file
from valle.model import VALLE, VALLEConfig
from valle.phonemes import SymbolTable

FORMAT = "valle-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
PARTS = ("ar", "nar")  # the model's two halves, the top-level names of its parameters


class CheckpointError(ValueError):
    """A checkpoint that is missing, tampered with, from another version, or inconsistent."""


@dataclass
class Checkpoint:
    model: VALLE
    config: VALLEConfig
    symbols: SymbolTable
    codec: CodecCard
    step: int
    weights_sha256: str
    path: Path
    extra: dict = field(default_factory=dict)
    parts: tuple[str, ...] = PARTS  # the halves whose weights the file holds


def require_parts(ckpt: Checkpoint, *parts: str, what: str) -> None:
    """Refuse ``ckpt`` for ``what`` unless it holds trained weights for every one of ``parts``."""
    absent = [p for p in parts if p not in ckpt.parts]
    if absent:
        raise CheckpointError(
            f"{ckpt.path}: holds the {'/'.join(ckpt.parts).upper()} weights only "
            "(trained or exported with --parts); "
            f"{what} needs the {'/'.join(absent).upper()} too"
        )


def _check_parts(parts, where: str) -> tuple[str, ...]:
    parts = tuple(parts)
    if not parts or len(set(parts)) != len(parts) or not set(parts) <= set(PARTS):
        raise CheckpointError(f"{where}: parts must be one or both of {PARTS}, got {list(parts)}")
    return tuple(p for p in PARTS if p in parts)


def _take_nar(ckpt: Checkpoint, donor: Checkpoint) -> None:
    """Put ``donor``'s NAR into ``ckpt`` (in memory), refusing one that does not belong with it."""
    require_parts(donor, "nar", what="taking its NAR")
    if donor.codec != ckpt.codec or donor.symbols != ckpt.symbols:
        raise CheckpointError(
            f"{donor.path}: its NAR was trained with another codec or symbol table than {ckpt.path}"
        )
    try:
        ckpt.model.nar.load_state_dict(donor.model.nar.state_dict())
    except RuntimeError as err:
        raise CheckpointError(f"{donor.path}: its NAR does not fit the model of {ckpt.path} ({err})") from err
    ckpt.parts = tuple(p for p in PARTS if p in ckpt.parts or p == "nar")
    ckpt.extra = {**ckpt.extra, "nar_from_sha256": donor.weights_sha256}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    model: VALLE,
    symbols: SymbolTable,
    codec: CodecCard,
    step: int,
    optimizer_state: dict | None = None,
    extra: dict | None = None,
    dtype: torch.dtype | None = None,
    parts: tuple[str, ...] = PARTS,
) -> Path:
    """Write weights, then config (which names the weights' sha256), each atomically.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors at lower precision for
    distribution; loading casts them back to the model's float32 parameters. ``parts`` keeps only
    those halves of the model (``("ar",)``: the AR alone).
    """
    directory = Path(directory)
    parts = _check_parts(parts, str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS
    tmp = directory / f".{WEIGHTS}.partial"
    # tied NAR heads (tie_nar_heads) share storage with embeddings; safetensors refuses shared tensors, so the
    # state dict is de-duplicated here and the ties are restored by the constructor on load
    state = {
        k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
        for k, v in model.state_dict().items()
        if not _is_tied_head(k, model.cfg) and k.split(".")[0] in parts
    }
    save_file(state, str(tmp), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    os.replace(tmp, weights)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.cfg.to_json(),
        "symbols": symbols.to_json(),
        "codec": codec.to_json(),
        "step": int(step),
        "parts": list(parts),
        "weights_sha256": sha256_file(weights),
        "extra": extra or {},
    }
    if optimizer_state is not None:
        tmp_opt = directory / f".{OPTIMIZER}.partial"
        torch.save(optimizer_state, tmp_opt)
        os.replace(tmp_opt, directory / OPTIMIZER)
    _atomic_write_text(directory / CONFIG, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return directory


def _is_tied_head(key: str, cfg: VALLEConfig) -> bool:
    # nar.heads.{i}.weight for i < n_codebooks - 2 is audio_embs[i + 2].weight (see NARModel)
    parts = key.split(".")
    return (
        cfg.tie_nar_heads
        and len(parts) == 4
        and parts[:2] == ["nar", "heads"]
        and parts[3] == "weight"
        and int(parts[2]) < cfg.n_codebooks - 2
    )


def read_config(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a checkpoint ({CONFIG} not found)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON ({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta.get('version')!r}; this code reads {FORMAT_VERSION}"
        )
    for key in ("model", "symbols", "codec", "step", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return meta


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from ``config.json`` and load verified weights (no pickle involved)."""
    directory = Path(directory)
    meta = read_config(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS} not found")
    actual = sha256_file(weights)
    if actual != meta["weights_sha256"]:
        raise CheckpointError(
            f"{weights}: sha256 {actual} does not match {meta['weights_sha256']} recorded in {CONFIG} "
            "(weights modified or from another checkpoint)"
        )
    try:
        # checkpoints from before ``tie_nar_heads`` existed all tied the NAR heads
        cfg = VALLEConfig(**{"tie_nar_heads": True, **meta["model"]})
        symbols = SymbolTable.from_json(meta["symbols"])
        codec = CodecCard.from_json(meta["codec"])
        # no "parts": written before checkpoints could hold one half
        parts = _check_parts(meta.get("parts", PARTS), str(directory / CONFIG))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / CONFIG}: inconsistent config ({err})") from err
    if len(symbols) != cfg.n_phonemes:
        raise CheckpointError(
            f"{directory / CONFIG}: symbol table has {len(symbols)} entries, model expects {cfg.n_phonemes}"
        )
    if (codec.n_codebooks, codec.codebook_size) != (cfg.n_codebooks, cfg.codebook_size):
        raise CheckpointError(f"{directory / CONFIG}: codec card {codec} does not match the model config")
    model = VALLE(cfg)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:  # a pickle renamed, an absurd header, ...
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied_head(k, cfg) and k.split(".")[0] in parts]
    unexpected += [k for k in state if k.split(".")[0] not in parts]
    if missing or unexpected:
        raise CheckpointError(f"{weights}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    return Checkpoint(
        model=model.to(device).eval(),
        config=cfg,
        symbols=symbols,
        codec=codec,
        step=int(meta["step"]),
        weights_sha256=actual,
        path=directory,
        extra=meta.get("extra", {}),
        parts=parts,
    )


def load_optimizer_state(directory: str | Path) -> dict | None:
    path = Path(directory) / OPTIMIZER
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure: torch's own message suggests weights_only=False
        raise CheckpointError(
            f"{path}: not an optimizer state of tensors and numbers ({type(err).__name__}), so it was not "
            "loaded; training cannot resume from this checkpoint (restore the file or start a new run)"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: optimizer state is a {type(state).__name__}, not a dict")
    return state


def export_checkpoint(
    src: str | Path,
    dst: str | Path,
    dtype: torch.dtype = torch.float16,
    nar_min_confidence: float = 0.0,
    parts: tuple[str, ...] = PARTS,
    ar_greedy: bool = False,
    ar_repeat_penalty: float = 0.0,
    nar_from: str | Path | None = None,
) -> Path:
    """Copy a training checkpoint for distribution: weights only (no optimizer), at ``dtype``.

    ``nar_min_confidence`` > 0 records a generation setting that is not in the paper (the NAR's
    confidence gate, ``valle.generate.nar_generate``) as this checkpoint's default, and ``ar_greedy``
    another (argmax AR decoding instead of the paper's sampling; ``valle.sampling.calibrated``),
    ``ar_repeat_penalty`` > 0 a third (``valle.sampling.SamplingOptions.repeat_penalty``). Settings
    a source checkpoint already records are kept unless given again.
    ``parts`` keeps only those halves (an AR trained with ``--parts ar`` is exported without its
    untrained NAR). ``nar_from`` takes the NAR from another checkpoint of the same architecture,
    codec and symbols (an AR trained alone put beside a NAR that exists; its sha256 is recorded as
    ``nar_from_sha256``)."""
    ckpt = load_checkpoint(src)
    parts = _check_parts(parts, str(dst))
    if nar_from is not None:
        _take_nar(ckpt, load_checkpoint(nar_from))
    require_parts(ckpt, *parts, what=f"exporting {'/'.join(parts).upper()}")
    # an export of an export names the training checkpoint the weights came from
    origin = ckpt.extra.get("exported_from_sha256", ckpt.weights_sha256)
    extra = {**ckpt.extra, "exported_from_sha256": origin, "export_dtype": str(dtype)}
    if nar_min_confidence > 0:
        extra["nar"] = {"min_confidence": nar_min_confidence}
    if ar_greedy:
        extra["ar"] = {**extra.get("ar", {}), "greedy": True}
    if ar_repeat_penalty > 0:
        extra["ar"] = {**extra.get("ar", {}), "repeat_penalty": ar_repeat_penalty}
    return save_checkpoint(
        dst, ckpt.model, ckpt.symbols, ckpt.codec, ckpt.step, extra=extra, dtype=dtype, parts=parts
    )
