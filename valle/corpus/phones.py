"""Phoneme timing of synthetic corpus audio, from the synthesisers themselves.

Both engines know where each phoneme is in the audio they make: eSpeak NG reports a phoneme event
with its sample position, Piper's VITS predicts a duration for every input token. The corpus
keeps the engine's tokens as they come (``<id>.phones.json`` beside each wav, times in seconds of
the written, trimmed file) and :func:`phone_segments` turns either engine's tokens into one
segmentation over one label set:

- labels are single IPA letters (eSpeak names a diphthong or affricate with several letters,
  ``"aʊ"``, ``"dʒ"``, and its time is split evenly over them; Piper feeds them letter by letter);
- stress marks, length marks and combining diacritics are not phones: a stress mark's time
  goes to the phone after it, a length mark's to the phone before;
- a word gap (Piper's ``" "``) is split between the phones on either side, since running
  speech has no pause there; punctuation, sentence markers and eSpeak's pauses are ``SILENCE``.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np

SILENCE = "sil"
STRESS = frozenset("ˈˌ")
LENGTH = frozenset("ːˑ")
SUFFIX = ".phones.json"
FORMAT = "valle-phones"


class PhonesError(ValueError):
    """A phones file is missing, unreadable or inconsistent."""


def phones_path(audio: str | Path) -> Path:
    """Where the phoneme timing of ``audio`` lives (``x.wav`` -> ``x.phones.json``)."""
    audio = Path(audio)
    return audio.with_name(audio.stem + SUFFIX)


def write_phones(
    audio: str | Path,
    engine: str,
    tokens: list[tuple[str, float, float]],
    offset: float = 0.0,
    duration: float | None = None,
) -> Path:
    """Store ``tokens`` ``[(name, start_s, end_s)]`` for ``audio``, shifted by ``-offset`` seconds
    (audio trimmed from the start) and clipped to ``[0, duration]``."""
    hi = np.inf if duration is None else duration
    kept = [
        [name, round(float(np.clip(s - offset, 0, hi)), 5), round(float(np.clip(e - offset, 0, hi)), 5)]
        for name, s, e in tokens
    ]
    path = phones_path(audio)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "engine": engine, "tokens": kept}, ensure_ascii=False))
    tmp.replace(path)
    return path


def read_phones(audio: str | Path) -> list[tuple[str, float, float]]:
    """The phone segments ``[(label, start_s, end_s)]`` of ``audio`` (see :func:`phone_segments`)."""
    path = phones_path(audio)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise PhonesError(f"{path}: no phoneme timing for {audio} (built by `valle corpus`)") from err
    except (OSError, ValueError) as err:
        raise PhonesError(f"{path}: unreadable phones file ({err})") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "tokens" not in doc:
        raise PhonesError(f"{path}: not a {FORMAT} file")
    try:
        tokens = [(str(n), float(s), float(e)) for n, s, e in doc["tokens"]]
    except (TypeError, ValueError) as err:
        raise PhonesError(f"{path}: tokens: expected [name, start, end] rows ({err})") from err
    return phone_segments(tokens)


def _letters(name: str) -> list[str]:
    return [
        c
        for c in unicodedata.normalize("NFD", name)
        if c not in STRESS and c not in LENGTH and not unicodedata.combining(c)
    ]


def phone_segments(tokens: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Engine tokens ``[(name, start_s, end_s)]`` -> contiguous ``[(label, start_s, end_s)]``."""
    segs: list[list] = []  # [label, start, end]
    carry_start: float | None = None  # a stress mark's time, given to the next phone
    gap: tuple[float, float] | None = None  # a word gap, split between its neighbours
    for name, start, end in tokens:
        if end < start:
            raise PhonesError(f"token {name!r} ends ({end}) before it starts ({start})")
        if name == " ":
            gap = (start, end)
            continue
        if name and all(c in STRESS for c in name):
            carry_start = start if carry_start is None else carry_start
            continue
        if name and all(c in LENGTH for c in name):
            if segs:
                segs[-1][2] = end
            continue
        letters = _letters(name)
        if not letters or not any(unicodedata.category(c).startswith("L") for c in letters):
            letters = [SILENCE]  # punctuation, "^" / "$" / "_", eSpeak's "" pause
        if gap is not None:
            middle = (gap[0] + gap[1]) / 2
            if segs:
                segs[-1][2] = middle
            start = middle if carry_start is None else min(carry_start, middle)
            gap = None
        elif carry_start is not None:
            start = carry_start
        carry_start = None
        step = (end - start) / len(letters)
        for i, letter in enumerate(letters):
            segs.append([letter, start + i * step, start + (i + 1) * step])
    if gap is not None and segs:
        segs[-1][2] = gap[1]
    merged: list[list] = []  # join neighbouring silences, drop empty segments
    for label, start, end in segs:
        if end <= start:
            continue
        if merged and merged[-1][0] == label == SILENCE:
            merged[-1][2] = end
        else:
            merged.append([label, start, end])
    return [(label, float(s), float(e)) for label, s, e in merged]


def frame_labels(
    segments: list[tuple[str, float, float]], n_frames: int, hop_s: float, inventory: dict[str, int]
) -> np.ndarray:
    """Phone index of each analysis frame ``[n_frames]`` (frame ``t`` covers time ``t * hop_s``);
    times outside every segment, and labels not in ``inventory``, get ``inventory[SILENCE]``."""
    labels = np.full(n_frames, inventory[SILENCE], dtype=np.int64)
    times = np.arange(n_frames) * hop_s
    for label, start, end in segments:
        labels[(times >= start) & (times < end)] = inventory.get(label, inventory[SILENCE])
    return labels
