"""Safe persistence for detectors: a directory of JSON + safetensors, never pickle.

Layout of a model directory::

    detector.json        {"format": "valle-detector", "version": 1, "kind": ..., "files": {name: sha256}, ...}
    <name>.safetensors   named arrays (GMM parameters, scaler and regression coefficients, CNN state dict)

Loading reads only JSON and safetensors (neither can execute code), and refuses a directory whose
format name is not ``valle-detector``, whose version this build does not know, or whose array files
do not match the sha256 recorded in ``detector.json`` (the error names the file). Writing goes to a
temporary directory beside the target and is renamed into place, so a failed write leaves nothing
half-written and an existing model is replaced whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

FORMAT = "valle-detector"
VERSION = 1
META_FILE = "detector.json"


class DetectorFileError(ValueError):
    """A model directory is missing, malformed, from an unknown format version, or tampered with."""


def sha256_file(path: Path) -> str:
    # one line of hashlib in each leaf package: leaves may not import each other
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_name(name: str) -> None:
    # File names come from detector.json on load: allow plain names only (no paths, no traversal).
    if (
        not name
        or name != Path(name).name
        or name in (".", "..", META_FILE)
        or not name.endswith(".safetensors")
    ):
        raise DetectorFileError(f"invalid array file name {name!r} (expected a plain '<name>.safetensors')")


def save_model_dir(path: str | Path, meta: dict, arrays: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write ``meta`` (JSON-serialisable) and ``arrays`` (file name -> {tensor name: array}) to ``path``.

    Adds ``format``, ``version`` and ``files`` (sha256 of every array file) to the JSON. ``path`` must
    not exist, be empty, or hold a previous model (which is replaced); any other directory or a file
    there is refused rather than overwritten.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path}: exists and is not a model directory")
        if any(path.iterdir()) and not (path / META_FILE).is_file():
            raise FileExistsError(
                f"{path}: non-empty directory without {META_FILE}; refusing to overwrite it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        files = {}
        for name, tensors in arrays.items():
            _check_name(name)
            contiguous = {k: np.array(v, order="C") for k, v in tensors.items()}  # keeps 0-d arrays 0-d
            save_file(contiguous, str(tmp / name))
            files[name] = sha256_file(tmp / name)
        full = {"format": FORMAT, "version": VERSION, **meta, "files": files}
        with open(tmp / META_FILE, "w") as f:
            json.dump(full, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            # Move the old model aside, put the new one in place, then delete the old one: at every
            # moment ``path`` is absent or a complete model.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            old.rmdir()
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | Path) -> dict:
    """Read and check ``detector.json`` (format name and version) without touching the arrays."""
    path = Path(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise DetectorFileError(f"{path}: not a model directory")
    if not meta_path.is_file():
        raise DetectorFileError(f"{path}: no {META_FILE}; not a saved detector")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DetectorFileError(f"{meta_path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DetectorFileError(f"{meta_path}: format {got!r} is not {FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DetectorFileError(f"{meta_path}: missing or non-integer format version {version!r}")
    if version != VERSION:
        raise DetectorFileError(
            f"{meta_path}: model written by format version {version}; this build reads {VERSION}"
        )
    for field in ("kind", "files"):
        if field not in meta:
            raise DetectorFileError(f"{meta_path}: missing field {field!r}")
    if not isinstance(meta["files"], dict):
        raise DetectorFileError(f"{meta_path}: field 'files' must map file names to sha256")
    return meta


def load_model_dir(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Read a model directory: ``(meta, {file name: {tensor name: array}})``, every file's sha256 checked."""
    path = Path(path)
    meta = read_meta(path)
    arrays = {}
    for name, digest in meta["files"].items():
        _check_name(name)
        file = path / name
        if not file.is_file():
            raise DetectorFileError(f"{file}: array file listed in {META_FILE} is missing")
        actual = sha256_file(file)
        if actual != digest:
            raise DetectorFileError(
                f"{file}: sha256 {actual[:16]}... does not match {META_FILE} ({str(digest)[:16]}...); "
                "the file was modified or corrupted"
            )
        try:
            arrays[name] = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as err:
            raise DetectorFileError(f"{file}: unreadable safetensors file ({err})") from err
    return meta, arrays
