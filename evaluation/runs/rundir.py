"""A run directory's layer: its layout, atomic table and JSON writes, and its writer lock.

Shared by the pipeline (:mod:`evaluation.runs.run`), the merge (:mod:`evaluation.runs.summary`) and the audit,
so none of them imports another for these (no import circles). Layout: see :mod:`evaluation.runs.run`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from evaluation.testsets.testset import TestSet

STAGES = ("generate", "score")
TABLE_OF_STAGE = {"generate": ("generations",), "score": ("scores", "references")}

BOOL_COLUMNS = ("any_flag", "asr_fallback_exhausted", "watermark_applied", "watermark_verified", "has_target")


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Atomic: a killed process leaves no half-written table under the final name.

    Yes/no columns are stored as nullable booleans whatever a chunk happened to hold (a chunk of
    only clean rows would otherwise infer ``bool`` and one with a failure ``object``).
    """
    for col in df.columns:
        if col in BOOL_COLUMNS or (col.startswith("flag_") and col != "flag_reasons"):
            df[col] = df[col].astype("boolean")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def write_json(path: Path, obj: dict, sort_keys: bool = True) -> None:
    """Atomic JSON write (a temporary name renamed into place); values JSON cannot hold become strings."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")
    tmp.replace(path)


class Run:
    """One run directory; see the module docstring for its layout."""

    def __init__(self, out: str | Path, testset: TestSet | None = None) -> None:
        self.dir = Path(out)
        self.tables = self.dir / "tables"
        if testset is None:
            testset = TestSet.load(self.dir / "testset.jsonl")
        self.testset = testset
        self.items = {it.id: it for it in testset.items}

    def chunked(self, chunk_size: int) -> list[list[str]]:
        ids = sorted(self.items)
        return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]

    def part(self, table: str, k: int) -> Path:
        return self.tables / "parts" / table / f"c{k:05d}.parquet"

    def read_parts(self, table: str, ks: list[int]) -> pd.DataFrame:
        frames = [pd.read_parquet(self.part(table, k)) for k in ks if self.part(table, k).is_file()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class RunLockedError(ValueError):
    """Another live process is writing the same run directory."""


@contextlib.contextmanager
def exclusive(directory: Path, role: str) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for ``role`` (``fcntl.flock`` on ``.<role>.lock``).

    A second writer is refused at once with :class:`RunLockedError`: two processes on one run directory
    would redo every chunk and write every ledger entry twice. The kernel drops the lock when its
    process dies, so a run killed with SIGKILL resumes without any clean-up.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".{role}.lock"
    f = open(path, "a+")  # held open (and locked) for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunLockedError(
            f"{directory} is in use by {holder} ({path.name}); wait for it to finish or use another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {platform.node()}")
    f.flush()
    try:
        yield
    finally:
        f.close()  # closing releases the lock


def records(df: pd.DataFrame) -> list[dict]:
    """Rows of a table as dicts, with missing cells as None. A chunk that mixes rows with and without
    a column (an unusable item beside good ones) comes back from parquet with NaN in those cells, and
    NaN is neither None nor a value: ``len(nan)`` fails, ``nan is not None`` passes."""
    return df.astype(object).where(df.notna(), None).to_dict("records")
