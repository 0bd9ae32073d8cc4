"""Data for the synthetic-speech detectors: labelled clips from manifests or a scoring run, their
audio, and the signal degradations (``watermark.attacks``) that ``detection.evaluate`` applies.

A :class:`Clip` is one recording: ``label`` 1 = bona fide (real speech), 0 = spoof (synthetic), and
``generator`` names its source (``"bonafide"`` for real speech, else the spoofing system). Sources:

* **manifests** (JSONL, one object per line): ``--bonafide M.jsonl`` rows ``{"id", "audio", "speaker"}``
  and ``--spoof NAME=M.jsonl`` rows of the same shape (``generator = NAME``, default the file's stem;
  a spoof row's ``speaker`` is the voice it imitates or the system's voice). ``id`` defaults to the
  audio file's stem. Paths are relative to the manifest's folder and may not leave it (after
  resolving ``..`` and symlinks, as ``valle.manifest`` does): a manifest may come from someone else.
* **a ``valle score`` run directory** (``evaluation.runs.run``): bona fide = the test set's target
  recordings (items flagged with a ``problem`` are left out and counted), spoof = the generations with
  ``status == "ok"``, ``generator`` = the run's generator name (``config.json``), ``speaker`` = the test
  item's speaker (the cloned target), spoof id = ``<generator>:<generation key>``. Paths come from the
  run's own files and are used as recorded.

Every problem (missing field, missing file, path outside the folder, duplicate id, an empty class) is
collected and raised as one ``ValueError`` that lists them all, before anything is trained or written.

Splits, the :class:`Clip` type and its checks live in :mod:`detection.split`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from detection.split import BONAFIDE, LABELS, Clip, check_clips, is_text, problems_error
from evaluation.testsets.testset import TestSet
from valle.audio import load_audio
from watermark.attacks import attack_bank, select

# --------------------------------------------------------------------------- sources


def parse_source(spec: str) -> tuple[str | None, Path]:
    """``"NAME=PATH"`` -> ``(NAME, PATH)``; a plain ``PATH`` -> ``(None, PATH)``. A left side that
    looks like a path (has a ``/``) is not a name, so paths containing ``=`` still work."""
    name, sep, rest = spec.partition("=")
    if sep and rest and name and "/" not in name and "\\" not in name:
        return name.strip(), Path(rest)
    return None, Path(spec)


def jsonl_objects(path: Path, what: str, problems: list[str]) -> list[tuple[str, dict]]:
    """``(file:line, row)`` for each JSON-object line of a manifest; a malformed line is appended to
    ``problems`` (so every problem of a file is reported at once) and skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read {what} manifest ({err})") from err
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: invalid JSON: {err.msg}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: expected a JSON object")
            continue
        out.append((where, row))
    return out


def read_manifest_clips(path: str | Path, label: int, generator: str | None = None) -> list[Clip]:
    """Clips of one JSONL manifest (see the module docstring); ``generator`` defaults to the file's
    stem for spoofs and is ``"bonafide"`` for bona fide. Every problem is reported in one error."""
    path = Path(path)
    if label not in LABELS:
        raise ValueError(f"label must be 1 (bona fide) or 0 (spoof), got {label!r}")
    what = "bona fide" if label == 1 else "spoof"
    generator = BONAFIDE if label == 1 else (generator or path.stem)
    if label == 0 and generator == BONAFIDE:
        raise ValueError(f"{path}: {BONAFIDE!r} is reserved for real speech; name the spoof source otherwise")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} manifest not found")
    root = path.parent.resolve()
    clips, problems, seen = [], [], {}
    for where, row in jsonl_objects(path, what, problems):
        bad = [k for k in ("audio", "speaker") if not is_text(row.get(k))]
        if "id" in row and not is_text(row["id"]):
            bad.append("id")
        if bad:
            problems.append(f"{where}: missing or empty {', '.join(bad)}")
            continue
        # resolve() folds '..' and follows symlinks, so containment is checked on the real target
        audio = (root / row["audio"]).resolve()
        if not audio.is_relative_to(root):
            problems.append(f"{where}: audio path escapes the manifest folder {root}: {row['audio']}")
            continue
        if not audio.is_file():
            problems.append(f"{where}: audio file not found: {row['audio']}")
            continue
        uid = str(row.get("id") or audio.stem)
        if uid in seen:
            problems.append(f"{where}: id {uid!r} duplicates line {seen[uid]}")
            continue
        seen[uid] = where.rsplit(":", 1)[1]  # the line number
        clips.append(Clip(uid, str(audio), str(row["speaker"]), label, generator))
    if not clips and not problems:
        problems.append(f"{path}: {what} manifest has no rows")
    if problems:
        raise problems_error(f"{what} manifest problem(s)", problems)
    return clips


def run_generator_name(run_dir: str | Path) -> str:
    """The generator name of a ``valle score`` run (``config.json`` -> ``generator.generator``)."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found; name the generator as NAME={run_dir}")
    try:
        card = json.loads(config_path.read_text(encoding="utf-8")).get("generator")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{config_path}: not a run config ({err})") from err
    name = card.get("generator") if isinstance(card, dict) else None
    if not is_text(name):
        raise ValueError(f"{config_path}: no generator recorded; name it as NAME={run_dir}")
    return str(name)


def clips_from_run(run_dir: str | Path, name: str | None = None) -> tuple[list[Clip], dict]:
    """Bona fide and spoof clips of a ``valle score`` run (module docstring) and a description of it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    name = name or run_generator_name(run_dir)
    if name == BONAFIDE:
        raise ValueError(f"{run_dir}: {BONAFIDE!r} is reserved for real speech; name the generator otherwise")
    testset = TestSet.load(run_dir / "testset.jsonl")
    table = run_dir / "tables" / "generations.parquet"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found (is {run_dir} a finished `valle score` run?)")
    gens = pd.read_parquet(table)
    missing = [c for c in ("key", "id", "status", "audio") if c not in gens.columns]
    if missing:
        raise ValueError(f"{table}: missing column(s) {', '.join(missing)}")
    items = {it.id: it for it in testset.items}
    clips, problems, targets = [], [], {}
    excluded_items = 0
    for it in testset.items:
        if it.problem or not it.target_audio:
            excluded_items += 1
            continue
        path = str(Path(it.target_audio))
        if targets.get(path, it.id) != it.id:
            continue  # one recording is the target of several items: one bona fide clip
        targets[path] = it.id
        clips.append(Clip(it.id, path, it.speaker, 1, BONAFIDE))
    not_ok = Counter(str(s) for s in gens.loc[gens["status"] != "ok", "status"])
    for g in gens[gens["status"] == "ok"].to_dict("records"):
        if g["id"] not in items:
            problems.append(f"{table}: generation {g['key']!r} names unknown test item {g['id']!r}")
            continue
        audio = Path(str(g["audio"]))
        # the table records the path as the run saw it (maybe relative to its working directory)
        if not audio.is_file() and (run_dir / "generated" / audio.name).is_file():
            audio = run_dir / "generated" / audio.name
        if not audio.is_file():
            problems.append(f"{table}: generation {g['key']!r}: audio file not found: {g['audio']}")
            continue
        clips.append(Clip(f"{name}:{g['key']}", str(audio.resolve()), items[g["id"]].speaker, 0, name))
    if problems:
        raise problems_error(f"problem(s) in run {run_dir}", problems)
    source = {
        "kind": "run",
        "path": str(run_dir),
        "generator": name,
        "bonafide": sum(c.label == 1 for c in clips),
        "spoof": sum(c.label == 0 for c in clips),
        "items_without_target": excluded_items,
        "generations_not_ok": dict(not_ok),
    }
    return clips, source


def collect_clips(
    bonafide: Iterable[str | Path] = (),
    spoof: Iterable[str] = (),
    runs: Iterable[str] = (),
) -> tuple[list[Clip], list[dict]]:
    """All clips of the given sources and a description of each source; ``spoof`` and ``runs`` are
    ``[NAME=]PATH`` strings. Checked with :func:`check_clips` (both classes, unique ids)."""
    clips: list[Clip] = []
    sources: list[dict] = []
    for path in bonafide:
        got = read_manifest_clips(path, 1)
        clips += got
        sources.append({"kind": "manifest", "path": str(path), "label": 1, "rows": len(got)})
    for spec in spoof:
        name, path = parse_source(str(spec))
        got = read_manifest_clips(path, 0, name)
        clips += got
        sources.append(
            {
                "kind": "manifest",
                "path": str(path),
                "label": 0,
                "generator": got[0].generator,
                "rows": len(got),
            }
        )
    for spec in runs:
        name, path = parse_source(str(spec))
        got, source = clips_from_run(path, name)
        clips += got
        sources.append(source)
    # the same bona fide recording listed by two sources (two runs over one test set) counts once
    unique, seen = [], {}
    for c in clips:
        key = (c.id, c.path, c.label, c.speaker)
        if key in seen:
            continue
        seen[key] = True
        unique.append(c)
    check_clips(unique)
    return unique, sources


def check_readable(clips: Sequence[Clip]) -> None:
    """Read every file's header (fast; no samples): one error listing every missing or unreadable file."""
    problems = []
    for c in clips:
        try:
            info = sf.info(c.path)
            if info.frames == 0:
                problems.append(f"{c.id}: {c.path}: no audio samples")
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            problems.append(f"{c.id}: {c.path}: unreadable audio file ({err})")
    if problems:
        raise problems_error("unreadable audio file(s)", problems)


def load_clip_audio(clips: Sequence[Clip], progress: bool = False) -> list[tuple[np.ndarray, int]]:
    """``[(wav [N] float32 mono, sr)]`` in clip order; every unreadable file is listed in one error."""
    out, problems = [], []
    items = clips
    if progress:
        items = tqdm(clips, desc="load audio", leave=False)
    for c in items:
        try:
            out.append(load_audio(c.path))
        except ValueError as err:  # AudioError: missing, unreadable, empty, silent, non-finite
            problems.append(f"{c.id}: {err}")
    if problems:
        raise problems_error("unreadable audio file(s)", problems)
    return out


# --------------------------------------------------------------------------- splits


# --------------------------------------------------------------------------- degradations


# A small, varied subset of the attack bank: additive noise, a low-bitrate lossy codec, the telephone
# band and a round trip through 8 kHz.
DEFAULT_DEGRADATIONS = ("white_noise_20db", "mp3_32k", "resample_8k", "bandpass_300_3400")  # bank order


def degradations(names: str) -> list:
    """``default`` | ``none`` | comma-separated attack names of ``watermark.attacks.attack_bank()``."""
    if names == "none":
        return []
    wanted = list(DEFAULT_DEGRADATIONS) if names == "default" else names
    return select(attack_bank(), wanted)
