"""Frames per phoneme token, from the synthesiser's own phone timing (for the AR's phone pointer).

The corpus keeps the phone segments the engines report (:mod:`valle.corpus.phones`): single IPA
letters and ``sil``, in the engine's own accent. The model reads another sequence, eSpeak NG's
en-us IPA of the transcript split into tokens (:mod:`valle.phonemes`), which holds stress marks,
length marks, word boundaries and punctuation besides the phones. :func:`token_durations` maps one
onto the other:

1. each model token becomes letters (``"tʃ"`` -> ``t, ʃ``; punctuation -> ``sil``; stress, length,
   diacritics and word boundaries -> none);
2. the two letter strings are aligned by ``difflib.SequenceMatcher`` (standard library); matched
   letters take their engine times, and a replaced run (an accent voice says ``ɑ`` where en-us has
   ``æ``) takes the time of what it replaces, letter for letter or, if the counts differ, evenly;
3. token ``i`` starts where its first letter starts; a token without letters starts where the
   previous one ends; engine time no model letter claims (an inserted pause) stays with the token
   before it;
4. boundaries are rounded to codec frames and every token gets at least one frame, so the pointer
   moves by exactly one token per advance (a stress mark or word boundary costs 13 ms at 75 Hz).

We checked ``phonemizer`` (it separates phones but has no timing) and torchaudio's forced aligner
(needs acoustic model weights this machine cannot download); neither gives this mapping.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Sequence

import numpy as np

from valle.corpus.phones import SILENCE
from valle.phonemes import PUNCTUATION

__all__ = ["ALIGNMENT_VERSION", "AlignmentError", "spaced_durations", "token_durations", "token_letters"]

ALIGNMENT_VERSION = 1  # bump when token_durations changes: token caches with alignments rebuild


class AlignmentError(ValueError):
    """Phone segments and tokens that cannot be mapped onto the utterance's frames."""


def token_letters(token: str) -> list[str]:
    """The phone letters a model token stands for (punctuation: one pause; marks: none)."""
    if len(token) == 1 and token in PUNCTUATION:
        return [SILENCE]
    return [
        c
        for c in unicodedata.normalize("NFD", token)
        if unicodedata.category(c).startswith("L") and c not in "ˈˌːˑ"
    ]


def token_durations(
    tokens: Sequence[str],
    segments: Sequence[tuple[str, float, float]],
    n_frames: int,
    frame_rate: float,
) -> list[int]:
    """Frames per token ``[len(tokens)]``, each >= 1, summing to ``n_frames``.

    ``segments`` ``[(letter, start_s, end_s)]`` are contiguous engine phones of the same audio
    (:func:`valle.corpus.phones.read_phones`).
    """
    n = len(tokens)
    if n == 0 or n > n_frames:
        raise AlignmentError(f"{n} tokens cannot each get a frame of {n_frames}")
    if not segments:
        raise AlignmentError("no phone segments")
    letters, owner = [], []  # model letters and the token each comes from
    for i, tok in enumerate(tokens):
        for letter in token_letters(tok):
            letters.append(letter)
            owner.append(i)
    seg_letters = [s[0] for s in segments]
    starts = np.full(len(letters), np.nan)
    ends = np.full(len(letters), np.nan)
    matcher = difflib.SequenceMatcher(a=letters, b=seg_letters, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and a1 - a0 == b1 - b0):  # letter for letter
            starts[a0:a1] = [seg[1] for seg in segments[b0:b1]]
            ends[a0:a1] = [seg[2] for seg in segments[b0:b1]]
        elif op == "replace":  # m letters said as n others: they share that time evenly
            edges = np.linspace(segments[b0][1], segments[b1 - 1][2], a1 - a0 + 1)
            starts[a0:a1], ends[a0:a1] = edges[:-1], edges[1:]
    # token start times: first matched letter's start; else the previous token's end
    token_start = np.full(n, np.nan)
    token_end = np.full(n, np.nan)
    for k, i in enumerate(owner):
        if not np.isnan(starts[k]):
            token_start[i] = starts[k] if np.isnan(token_start[i]) else token_start[i]
            token_end[i] = ends[k]
    bounds = np.zeros(n + 1)
    cursor = 0.0
    for i in range(n):
        bounds[i] = cursor if np.isnan(token_start[i]) else max(cursor, token_start[i])
        cursor = bounds[i] if np.isnan(token_end[i]) else max(bounds[i], token_end[i])
    frames = np.rint(bounds * frame_rate).astype(np.int64)
    frames[0], frames[n] = 0, n_frames
    return spaced_durations(frames)


def spaced_durations(edges: np.ndarray) -> list[int]:
    """Frames per token from integer boundaries ``edges`` [n + 1] (``edges[0]`` = 0, ``edges[n]`` = the
    frame count >= n), moved just enough that every token gets at least one frame: pushed forward,
    then pulled back from the end."""
    edges = np.array(edges, dtype=np.int64)
    n = len(edges) - 1
    for i in range(1, n):
        edges[i] = max(edges[i], edges[i - 1] + 1)
    for i in range(n - 1, 0, -1):
        edges[i] = min(edges[i], edges[i + 1] - 1)
    durations = np.diff(edges)
    assert durations.min() >= 1 and durations.sum() == edges[n]
    return durations.tolist()
