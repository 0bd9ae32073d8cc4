"""JSONL utterance manifests: one JSON object per line, one utterance per row.

A row looks like::

    {"id": "spk1_003", "audio": "audio/spk1_003.wav", "text": "Hello there.", "speaker": "spk1",
     "duration": 2.41, "sample_rate": 24000, "licence": "CC BY 4.0"}

``id``, ``text``, ``speaker`` and the key ``audio`` are required (``audio`` may be ``null`` for
test-set rows that have no recording). ``duration``, ``prompt_audio`` and ``prompt_text`` are
optional; any other key is kept in :attr:`Utterance.extra` and written back unchanged.

Paths in the file are relative to a root folder (the manifest's own folder unless told
otherwise) and may never leave it, even through ``..`` or a symlink: a manifest is data we may
have received from someone else, and later stages read and write files named by it.

:func:`read_manifest` checks every row before returning and raises one :class:`ManifestError`
that lists every problem at once, each naming the file, line, id and field, so a broken
manifest is fixed in one pass rather than one error per run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valle.audio import AudioError
from valle.audio import duration as audio_duration
from valle.text import rate_problem, text_problem

# Keys with a dedicated Utterance field, in the order they are written.
CORE_KEYS = ("id", "audio", "text", "speaker", "duration", "prompt_audio", "prompt_text")
REQUIRED_KEYS = ("id", "text", "speaker", "audio")


class ManifestError(ValueError):
    """A manifest (or a list of utterances) with one or more problems, all listed in the message."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{n} manifest problem{'s' if n != 1 else ''}:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class Utterance:
    """One utterance. Paths are absolute; ``audio`` is None only for rows without a recording."""

    id: str
    text: str
    speaker: str
    audio: Path | None
    duration: float | None  # seconds
    prompt_audio: Path | None = None
    prompt_text: str | None = None
    # hash=False keeps Utterance hashable although a dict is not.
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        problems = [f"{name}: {msg}" for name, msg in _field_problems(self)]
        if problems:
            label = self.id if isinstance(self.id, str) and self.id else "?"
            raise ManifestError([f"Utterance(id={label}): {p}" for p in problems])

    def to_json(self, root: Path) -> dict[str, Any]:
        """The manifest row: paths relative to ``root`` (posix), optional fields left out when None.

        Raises :class:`ManifestError` if a path lies outside ``root``.
        """
        row, problems = self._to_row(Path(root).resolve())
        if problems:
            raise ManifestError([f"id={self.id}: {name}: {msg}" for name, msg in problems])
        assert row is not None
        return row

    def _to_row(self, root: Path) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
        problems = []
        paths: dict[str, str | None] = {}
        for name in ("audio", "prompt_audio"):
            path = getattr(self, name)
            if path is None:
                paths[name] = None
            elif not (resolved := path.resolve()).is_relative_to(root):
                problems.append((name, f"path is outside the manifest root {root}: {path}"))
            else:
                paths[name] = resolved.relative_to(root).as_posix()
        shadowed = sorted(set(self.extra) & set(CORE_KEYS))
        if shadowed:
            problems.append(("extra", f"keys {shadowed} clash with Utterance fields"))
        if problems:
            return None, problems
        row: dict[str, Any] = {
            "id": self.id,
            "audio": paths["audio"],
            "text": self.text,
            "speaker": self.speaker,
        }
        if self.duration is not None:
            row["duration"] = self.duration
        if self.prompt_audio is not None:
            row["prompt_audio"] = paths["prompt_audio"]
            row["prompt_text"] = self.prompt_text
        # Sorted so the same utterance always serialises to the same bytes, whoever built it.
        row.update(sorted(self.extra.items(), key=lambda kv: str(kv[0])))
        return row, []

    @classmethod
    def from_json(cls, row: Any, root: Path, check_files: bool = True) -> Utterance:
        """Build from one manifest row (paths relative to ``root``); raises :class:`ManifestError`."""
        utt, problems = _parse_row(row, Path(root).resolve(), check_files)
        if problems:
            label = f"id={row['id']}" if isinstance(row, dict) and _is_text(row.get("id")) else "row"
            raise ManifestError([f"{label}: {name}: {msg}" for name, msg in problems])
        assert utt is not None
        return utt


def read_manifest(path: str | Path, root: Path | None = None, check_files: bool = True) -> list[Utterance]:
    """Read and validate a JSONL manifest; every problem in the file is reported in one error.

    ``root`` (default: the manifest's folder) is where relative paths start and which no path may
    leave. With ``check_files`` the audio and prompt files must exist. A missing ``duration`` is
    read from the audio header when the file exists.
    """
    path = Path(path)
    root = Path(root if root is not None else path.parent).resolve()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ManifestError([f"{path}: manifest not found"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError([f"{path}: cannot read manifest ({err})"]) from err

    problems: list[str] = []
    utts: list[Utterance] = []
    first_line: dict[str, int] = {}
    n_rows = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        n_rows += 1
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: invalid JSON: {err.msg} (column {err.colno})")
            continue
        if isinstance(row, dict) and _is_text(row.get("id")):
            where += f" (id={row['id']})"
        utt, row_problems = _parse_row(row, root, check_files)
        problems += [f"{where}: {name}: {msg}" for name, msg in row_problems]
        if isinstance(row, dict) and _is_text(row.get("id")):
            if row["id"] in first_line:
                problems.append(f"{where}: id: duplicate of line {first_line[row['id']]}")
            else:
                first_line[row["id"]] = lineno
        if utt is not None:
            utts.append(utt)
    if n_rows == 0:
        problems.append(f"{path}: manifest is empty (no rows)")
    if problems:
        raise ManifestError(problems)
    return utts


def write_manifest(path: str | Path, utterances: Iterable[Utterance], root: Path | None = None) -> Path:
    """Write utterances as JSONL (UTF-8, paths relative to ``root``), atomically; returns the path.

    ``root`` defaults to the manifest's folder. Paths outside ``root``, duplicate ids, extra keys
    that clash with fields and non-JSON extra values are refused with one :class:`ManifestError`.
    """
    path = Path(path)
    root = Path(root if root is not None else path.parent).resolve()
    problems: list[str] = []
    lines: list[str] = []
    first: dict[str, int] = {}
    utterances = list(utterances)
    for i, utt in enumerate(utterances, start=1):
        where = f"{path}: utterance #{i}"
        if utt.id in first:
            problems.append(f"{where} (id={utt.id}): id: duplicate of utterance #{first[utt.id]}")
        else:
            first[utt.id] = i
        row, row_problems = utt._to_row(root)
        if row is None:
            problems += [f"{where} (id={utt.id}): {name}: {msg}" for name, msg in row_problems]
            continue
        try:
            lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as err:
            problems.append(f"{where} (id={utt.id}): extra: not JSON-serialisable ({err})")
    if not utterances:
        problems.append(f"{path}: refusing to write an empty manifest")
    if problems:
        raise ManifestError(problems)

    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same folder so the rename is atomic: readers never see half a manifest.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def by_speaker(utts: Iterable[Utterance]) -> dict[str, list[Utterance]]:
    """Group utterances by speaker, keeping first-seen speaker order and input order within each."""
    groups: dict[str, list[Utterance]] = {}
    for utt in utts:
        groups.setdefault(utt.speaker, []).append(utt)
    return groups


# --- validation -------------------------------------------------------------------------------


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _id_problem(value: str) -> str | None:
    # Ids become file names later (generated/<id>.wav), so they must not name another folder.
    if value in (".", "..") or any(c in value for c in "/\\") or not value.isprintable():
        return f"{value!r} is not usable as a file name (no '/', '\\', control characters, '.' or '..')"
    if value != value.strip():
        return f"{value!r} has leading or trailing whitespace"
    return None


def _duration_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number of seconds, got {_type_name(value)}"
    if not math.isfinite(value) or value <= 0:
        return f"must be a finite positive number of seconds, got {value!r}"
    return None


def _field_problems(utt: Utterance) -> list[tuple[str, str]]:
    """Problems with an already-built Utterance (types, emptiness, absolute paths, pairing)."""
    out = []
    for name in ("id", "text", "speaker"):
        value = getattr(utt, name)
        if not isinstance(value, str):
            out.append((name, f"expected a string, got {_type_name(value)}"))
        elif not value.strip():
            out.append((name, "empty"))
    if isinstance(utt.id, str) and utt.id.strip() and (msg := _id_problem(utt.id)):
        out.append(("id", msg))
    for name in ("audio", "prompt_audio"):
        value = getattr(utt, name)
        if value is not None and not (isinstance(value, Path) and value.is_absolute()):
            out.append((name, f"expected an absolute Path or None, got {value!r}"))
    if utt.duration is not None and (msg := _duration_problem(utt.duration)):
        out.append(("duration", msg))
    if utt.prompt_text is not None and not _is_text(utt.prompt_text):
        out.append(("prompt_text", "expected a non-empty string or None"))
    if not out:
        out += _speech_text_problems(utt.text, utt.prompt_text, utt.duration)
    if (utt.prompt_audio is None) != (utt.prompt_text is None):
        out += _pairing_problem(utt.prompt_audio is None)
    if not isinstance(utt.extra, dict):
        out.append(("extra", f"expected a dict, got {_type_name(utt.extra)}"))
    elif bad := [k for k in utt.extra if not isinstance(k, str)]:
        out.append(("extra", f"keys must be strings, got {bad!r}"))
    return out


def _speech_text_problems(
    text: str, prompt_text: str | None, duration: float | None
) -> list[tuple[str, str]]:
    """Text (and prompt text) that cannot be English speech, or a transcript far too long for its
    clip (see :func:`valle.text.text_problem` and :func:`valle.text.rate_problem`)."""
    out = [(name, msg) for name, value in (("text", text), ("prompt_text", prompt_text))
           if value is not None and (msg := text_problem(value))]  # fmt: skip
    if duration is not None and (msg := rate_problem(text, duration)):
        out.append(("text", msg))
    return out


def _pairing_problem(audio_missing: bool) -> list[tuple[str, str]]:
    if audio_missing:
        return [("prompt_text", "given without prompt_audio (a prompt needs both)")]
    return [("prompt_audio", "given without prompt_text (a prompt needs both)")]


def _resolve(name: str, value: Any, root: Path, check_files: bool, problems: list) -> Path | None:
    """Resolve a path field against ``root``; record a problem and return None if it is bad."""
    if not isinstance(value, str):
        problems.append((name, f"expected a path string or null, got {_type_name(value)}"))
        return None
    if not value.strip():
        problems.append((name, "empty path (use null for no recording)"))
        return None
    # resolve() follows symlinks and folds '..', so the containment test sees the real target.
    resolved = (root / value).resolve()
    if not resolved.is_relative_to(root):
        problems.append((name, f"path escapes the manifest root {root}: {value}"))
        return None
    if check_files and not resolved.is_file():
        problems.append((name, f"file not found: {value}"))
        return None
    return resolved


def _parse_row(row: Any, root: Path, check_files: bool) -> tuple[Utterance | None, list[tuple[str, str]]]:
    """Validate one decoded JSON row; returns (utterance or None, [(field, message), ...])."""
    if not isinstance(row, dict):
        return None, [("row", f"expected a JSON object, got {_type_name(row)}")]
    problems: list[tuple[str, str]] = []
    for key in REQUIRED_KEYS:
        if key not in row:
            hint = " (use null for rows without a recording)" if key == "audio" else ""
            problems.append((key, f"missing{hint}"))
    for key in ("id", "text", "speaker"):
        if key in row:
            value = row[key]
            if not isinstance(value, str):
                problems.append((key, f"expected a string, got {_type_name(value)}"))
            elif not value.strip():
                problems.append((key, "empty"))
            elif key == "id" and (msg := _id_problem(value)):
                problems.append((key, msg))

    audio = prompt_audio = None
    if row.get("audio") is not None:
        audio = _resolve("audio", row["audio"], root, check_files, problems)
    if row.get("prompt_audio") is not None:
        prompt_audio = _resolve("prompt_audio", row["prompt_audio"], root, check_files, problems)
    prompt_text = row.get("prompt_text")
    if prompt_text is not None and not _is_text(prompt_text):
        what = (
            "empty" if isinstance(prompt_text, str) else f"expected a string, got {_type_name(prompt_text)}"
        )
        problems.append(("prompt_text", what))
    if (row.get("prompt_audio") is None) != (prompt_text is None):
        problems += _pairing_problem(row.get("prompt_audio") is None)

    duration = row.get("duration")
    if duration is not None and (msg := _duration_problem(duration)):
        problems.append(("duration", msg))
    elif duration is None and audio is not None and audio.is_file():
        try:
            duration = audio_duration(audio)
        except AudioError as err:
            problems.append(("audio", f"cannot read duration: {err}"))

    if not problems:
        problems += _speech_text_problems(row["text"], prompt_text, duration)
    if problems:
        return None, problems
    extra = {k: v for k, v in row.items() if k not in CORE_KEYS}
    utt = Utterance(
        id=row["id"],
        text=row["text"],
        speaker=row["speaker"],
        audio=audio,
        duration=float(duration) if duration is not None else None,
        prompt_audio=prompt_audio,
        prompt_text=prompt_text,
        extra=extra,
    )
    return utt, []
