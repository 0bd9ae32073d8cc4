"""Build utterance lists from public corpus layouts, without copying any audio.

Each importer walks a corpus as it is distributed, returns :class:`~valle.manifest.Utterance`
rows with absolute paths and header durations, and checks everything before returning: every
malformed line or missing file is collected and raised in one :class:`CorpusImportError`
naming the file and line. (seed-tts-eval's own scripts skip missing files silently, which
quietly shrinks a test set; we refuse instead.)

Write the result with :func:`valle.manifest.write_manifest`.
"""

from __future__ import annotations

import re
from pathlib import Path

from valle.audio import AudioError
from valle.audio import duration as audio_duration
from valle.manifest import ManifestError, Utterance

# Extensions seed-tts-eval paths may already carry; anything else gets ".wav" appended, as its
# scripts do (they build every file name as `<name> + ".wav"`).
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
SEED_TTS_FIELDS = ("utt", "prompt_text", "prompt_wav", "target_text", "gt_wav")


class CorpusImportError(ManifestError):
    """A corpus that cannot be imported; ``problems`` lists every bad line or missing file."""


def _require_dir(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CorpusImportError([f"{root}: {what} root folder not found"])
    return root.resolve()


def _header_duration(path: Path, where: str, problems: list[str]) -> float | None:
    try:
        return audio_duration(path)
    except AudioError as err:
        problems.append(f"{where}: audio: {err}")
        return None


def _add(utts: list[Utterance], problems: list[str], where: str, **fields) -> None:
    # Utterance checks its own fields (e.g. an id that is not a usable file name); collect those
    # with the rest instead of stopping at the first.
    try:
        utts.append(Utterance(**fields))
    except ManifestError as err:
        prefix = f"Utterance(id={fields['id']}): "
        problems += [f"{where}: {p.removeprefix(prefix)}" for p in err.problems]


def _finish(utts: list[Utterance], problems: list[str]) -> list[Utterance]:
    if problems:
        raise CorpusImportError(problems)
    return utts


def import_librispeech(root: str | Path) -> list[Utterance]:
    """One LibriSpeech split: ``<root>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac``.

    Text comes from ``<speaker>-<chapter>.trans.txt`` (lines ``<utt-id> <UPPER CASE TEXT>``) and
    is kept verbatim; speakers are labelled ``libri-<speaker>``.
    """
    root = _require_dir(root, "LibriSpeech")
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise CorpusImportError(
            [
                f"{root}: no <speaker>/<chapter>/<speaker>-<chapter>.trans.txt found "
                "(point root at one split, e.g. LibriSpeech/test-clean)"
            ]
        )
    utts: list[Utterance] = []
    problems: list[str] = []
    first: dict[str, str] = {}
    for trans in transcripts:
        speaker, chapter = trans.parent.parent.name, trans.parent.name
        if trans.name != f"{speaker}-{chapter}.trans.txt":
            problems.append(f"{trans}: expected the name {speaker}-{chapter}.trans.txt for its folder")
            continue
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{trans}:{lineno}"
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                problems.append(f"{where}: expected '<utt-id> <TEXT>', got {line.strip()!r}")
                continue
            utt_id, text = parts
            where += f" (id={utt_id})"
            if not re.fullmatch(rf"{re.escape(speaker)}-{re.escape(chapter)}-\d+", utt_id):
                problems.append(f"{where}: id: expected {speaker}-{chapter}-<NNNN> in this folder")
                continue
            if utt_id in first:
                problems.append(f"{where}: id: duplicate of {first[utt_id]}")
                continue
            first[utt_id] = where
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                problems.append(f"{where}: audio: file not found: {audio}")
                continue
            dur = _header_duration(audio, where, problems)
            if dur is not None:
                _add(
                    utts,
                    problems,
                    where,
                    id=utt_id,
                    text=text,
                    speaker=f"libri-{speaker}",
                    audio=audio.resolve(),
                    duration=dur,
                    extra={"corpus": "librispeech"},
                )
    return _finish(utts, problems)


def import_libritts(root: str | Path) -> list[Utterance]:
    """One LibriTTS split: ``<root>/<speaker>/<chapter>/<speaker>_<chapter>_<a>_<b>.wav``.

    Text is read from the ``.normalized.txt`` beside each wav, falling back to ``.original.txt``;
    ``extra["text_source"]`` records which. Speakers are labelled ``libri-<speaker>``.
    """
    root = _require_dir(root, "LibriTTS")
    wavs = sorted(root.glob("*/*/*.wav"))
    if not wavs:
        raise CorpusImportError(
            [
                f"{root}: no <speaker>/<chapter>/*.wav found "
                "(point root at one split, e.g. LibriTTS/test-clean)"
            ]
        )
    utts: list[Utterance] = []
    problems: list[str] = []
    first: dict[str, str] = {}
    for wav in wavs:
        speaker, chapter = wav.parent.parent.name, wav.parent.name
        utt_id = wav.stem
        where = f"{wav} (id={utt_id})"
        if not re.fullmatch(rf"{re.escape(speaker)}_{re.escape(chapter)}_\d+_\d+", utt_id):
            problems.append(f"{where}: id: expected {speaker}_{chapter}_<a>_<b> in this folder")
            continue
        if utt_id in first:
            problems.append(f"{where}: id: duplicate of {first[utt_id]}")
            continue
        first[utt_id] = str(wav)
        for kind in ("normalized", "original"):
            text_path = wav.with_suffix(f".{kind}.txt")
            if text_path.is_file():
                break
        else:
            problems.append(f"{where}: text: neither {utt_id}.normalized.txt nor .original.txt found")
            continue
        lines = [ln.strip() for ln in text_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(lines) != 1:
            problems.append(f"{text_path}: text: expected one non-empty line, found {len(lines)}")
            continue
        dur = _header_duration(wav, where, problems)
        if dur is not None:
            _add(
                utts,
                problems,
                where,
                id=utt_id,
                text=lines[0],
                speaker=f"libri-{speaker}",
                audio=wav.resolve(),
                duration=dur,
                extra={"corpus": "libritts", "text_source": kind},
            )
    return _finish(utts, problems)


def _with_suffix(value: str) -> str:
    return value if value.lower().endswith(AUDIO_SUFFIXES) else value + ".wav"


def _seed_wav(value: str, base: Path) -> Path:
    return (base / _with_suffix(value)).resolve()


def import_seed_tts_eval(meta_path: str | Path) -> list[Utterance]:
    """seed-tts-eval's ``meta.lst``: ``utt|prompt_text|prompt_wav|target_text[|gt_wav]`` per line.

    Wav paths are relative to the meta file's folder (absolute ones are kept); a path without an
    audio extension gets ``.wav`` appended. ``audio`` is the ground truth wav, or None with four
    fields. The speaker is ``seedtts-<prompt wav stem>``: each prompt clip stands for one voice.
    """
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise CorpusImportError([f"{meta_path}: seed-tts-eval meta file not found"])
    base = meta_path.resolve().parent
    utts: list[Utterance] = []
    problems: list[str] = []
    first: dict[str, str] = {}
    for lineno, line in enumerate(meta_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta_path}:{lineno}"
        fields = [f.strip() for f in line.strip().split("|")]
        if len(fields) not in (4, 5):
            problems.append(
                f"{where}: expected 4 or 5 '|'-separated fields ({'|'.join(SEED_TTS_FIELDS)}), "
                f"got {len(fields)}"
            )
            continue
        if fields[0]:
            where += f" (id={fields[0]})"
        empty = [name for name, value in zip(SEED_TTS_FIELDS, fields, strict=False) if not value]
        if empty:
            problems += [f"{where}: {name}: empty" for name in empty]
            continue
        utt_id, prompt_text, prompt_value, target_text = fields[:4]
        if utt_id in first:
            problems.append(f"{where}: id: duplicate of {first[utt_id]}")
            continue
        first[utt_id] = f"line {lineno}"
        prompt_wav = _seed_wav(prompt_value, base)
        gt_wav = _seed_wav(fields[4], base) if len(fields) == 5 else None
        missing = False
        for name, path in (("prompt_wav", prompt_wav), ("gt_wav", gt_wav)):
            if path is not None and not path.is_file():
                problems.append(f"{where}: {name}: file not found: {path}")
                missing = True
        if missing:
            continue
        dur = _header_duration(gt_wav, where, problems) if gt_wav is not None else None
        if gt_wav is not None and dur is None:
            continue
        _add(
            utts,
            problems,
            where,
            id=utt_id,
            text=target_text,
            # From the name as written, not the resolved target, so a symlinked prompt keeps its label.
            speaker=f"seedtts-{Path(_with_suffix(prompt_value)).stem}",
            audio=gt_wav,
            duration=dur,
            prompt_audio=prompt_wav,
            prompt_text=prompt_text,
            extra={"corpus": "seed-tts-eval"},
        )
    if not first and not problems:
        problems.append(f"{meta_path}: meta file has no rows")
    return _finish(utts, problems)
