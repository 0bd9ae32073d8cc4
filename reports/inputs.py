"""Read the files of an audit run directory for the scorecard, turning every problem into an error that
names the file (never a crash, never a silent gap).

The directory layout is the contract with ``valle audit`` (config.json, audit.json, summary.json,
tables/*.parquet, detect/eval.json, asv/asv_report.json, watermark/robustness.json, generated/*.wav).
This module imports none of the model packages: the scorecard reads result files only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

STAGES = ("generate", "verify", "score", "detect", "asv", "watermark", "report")
STAGE_STATUSES = ("done", "failed", "skipped", "not_run", "running")  # running: the report stage itself

# the files each stage leaves behind: when audit.json is absent, a stage counts as done if they exist
STAGE_FILES = {
    "generate": ("generated",),
    "verify": ("tables/verify.parquet",),
    "score": ("summary.json", "tables/scores.parquet"),
    "detect": ("detect/eval.json",),
    "asv": ("asv/asv_report.json",),
    "watermark": ("tables/watermark.parquet",),
    "report": ("scorecard.json",),
}


class InputError(Exception):
    """A run-directory file that exists but cannot be used (bad JSON, bad parquet, wrong shape)."""


class MissingInput(InputError):
    """A run-directory file that is not there."""


class RunInputs:
    """Lazy, cached readers for one run directory; every failure is an :class:`InputError` whose
    message starts with the file's path relative to the run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._cache: dict[str, Any] = {}

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def _cached(self, rel: str, reader):
        if rel not in self._cache:
            try:
                self._cache[rel] = reader()
            except InputError as err:
                self._cache[rel] = err
        value = self._cache[rel]
        if isinstance(value, InputError):
            raise value
        return value

    def json(self, rel: str, kind: type = dict) -> Any:
        """The parsed JSON file ``rel``; MissingInput / InputError naming ``rel``."""

        def read():
            p = self.path(rel)
            if not p.is_file():
                raise MissingInput(f"{rel}: not found")
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"{rel}: not valid JSON ({err})") from err
            except OSError as err:
                raise InputError(f"{rel}: unreadable ({err})") from err
            if not isinstance(data, kind):
                raise InputError(f"{rel}: expected a JSON {kind.__name__}, got {type(data).__name__}")
            return data

        return self._cached(rel, read)

    def table(self, rel: str, required: tuple[str, ...] = ()) -> pd.DataFrame:
        """The parquet table ``rel``; InputError naming the file (and any missing column)."""

        def read():
            p = self.path(rel)
            if not p.is_file():
                raise MissingInput(f"{rel}: not found")
            try:
                return pd.read_parquet(p)
            except Exception as err:  # pyarrow raises several types for a damaged file
                raise InputError(f"{rel}: unreadable parquet ({type(err).__name__}: {err})") from err

        df = self._cached(rel, read)
        missing = [c for c in required if c not in df.columns]
        if missing:
            raise InputError(f"{rel}: missing column(s) {', '.join(missing)}")
        return df

    def optional_json(self, rel: str, kind: type = dict) -> Any | None:
        """Like :meth:`json` but None when the file is absent (a corrupt file still raises)."""
        try:
            return self.json(rel, kind)
        except MissingInput:
            return None

    # ------------------------------------------------------------------ audit.json stages

    def audit(self) -> dict | None:
        """audit.json, or None when absent; a corrupt one raises InputError."""
        return self.optional_json("audit.json")

    def stages(self) -> tuple[dict[str, dict], str | None]:
        """``({stage: {status, seconds, error, n_failed, n, note, source}}, problem)``: from audit.json
        when it is there and readable, otherwise inferred from the files each stage writes (status
        ``done`` or ``not_run``) and the ``timings.<stage>.*.json`` files; ``problem`` says why
        audit.json was not used (None when it was)."""
        problem = None
        try:
            audit = self.audit()
        except InputError as err:
            audit, problem = None, str(err)
        if audit is not None:
            raw = audit.get("stages")
            if isinstance(raw, dict):
                out = {}
                for name in [*STAGES, *(s for s in raw if s not in STAGES)]:
                    entry = raw.get(name)
                    if not isinstance(entry, dict):
                        entry = {"status": "not_run", "note": "not listed in audit.json"}
                    status = entry.get("status")
                    if status not in STAGE_STATUSES:
                        entry = {**entry, "note": f"unknown status {status!r} in audit.json"}
                        status = "failed" if entry.get("error") else "not_run"
                    out[name] = {
                        "status": status,
                        **{k: entry.get(k) for k in ("seconds", "error", "n_failed", "n", "note")},
                        "source": "audit.json",
                    }
                return out, None
            problem = "audit.json: no 'stages' object"
        if problem is None:
            problem = "audit.json: not found"
        out = {}
        for name in STAGES:
            present = name != "report" and all(self.path(f).exists() for f in STAGE_FILES[name])
            out[name] = {
                "status": "done" if present else "not_run",
                "seconds": self._timing(name),
                "error": None,
                "n_failed": None,
                "n": None,
                "note": None,
                "source": "inferred from files (no usable audit.json)",
            }
        return out, problem

    def _timing(self, stage: str) -> float | None:
        # evaluation.runs.run writes timings.<stage>.rank<k>.json: {"seconds": {part: s}};
        # ranks run in parallel
        best = None
        for p in sorted(self.run_dir.glob(f"timings.{stage}.*.json")):
            try:
                secs = json.loads(p.read_text(encoding="utf-8")).get("seconds", {})
                total = float(sum(float(v) for v in secs.values()))
            except (OSError, ValueError, AttributeError, TypeError):
                continue
            best = total if best is None else max(best, total)
        return None if best is None else round(best, 3)
