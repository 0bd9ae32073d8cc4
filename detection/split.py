"""Labelled clips and speaker-disjoint train/test splits for the detectors (no audio is read here).

A :class:`Clip` is one recording: ``label`` 1 = bona fide (real speech), 0 = spoof (synthetic), and
``generator`` names its source (``"bonafide"`` for real speech, else the spoofing system).

**Splits** (:func:`split`) follow ASVspoof practice of disjoint speakers between partitions (Wang et al.,
"ASVspoof 2019: a large-scale public database of synthesized, converted and replayed speech", Computer
Speech & Language 2020): every clip of a speaker is on one side. Speakers are grouped into *strata* by
the set of sources they have clips of (e.g. real speakers who also have clones; eSpeak voices; Piper
voices), so each kind of speaker is split, not only the population as a whole. Within a stratum,
speakers are ordered by ``sha256(seed, speaker id)`` (stable across machines and runs) and join the test
side in that order while each brings its clip count closer to ``test_fraction`` of the stratum's clips
(the first always joins; never all of a stratum's speakers), so the test share is measured in clips, not
speakers; a stratum of one speaker goes to the test side when its hash (as a number in [0, 1)) is below
``test_fraction``.

With a **held-out generator** G (an unseen attack, as in ASVspoof's evaluation partitions): G's clips
never enter training; the test set is the test speakers' bona fide clips plus G's clips of test
speakers; speakers whose only clips are G's are all test speakers. So when G imitates the bona fide
speakers (a cloning run) its test clips are those of test speakers, and when G's voices are its own
(a TTS manifest) all its clips are test clips; either way no test speaker is seen in training. Other
generators' clips of test speakers and G's clips of training speakers are unused (listed as such).
Both classes must be present in train and in test, else a ``ValueError`` says which is missing.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

BONAFIDE = "bonafide"  # the generator name of real speech
LABELS = {1: "bona fide", 0: "spoof"}
SPLIT_FORMAT = "valle-detect-split"
SPLIT_VERSION = 1
MAX_LISTED = 20  # problems listed in one error message


@dataclass(frozen=True)
class Clip:
    """One labelled recording. ``path`` is absolute; ``label`` 1 = bona fide, 0 = spoof."""

    id: str
    path: str
    speaker: str
    label: int
    generator: str

    def to_json(self) -> dict:
        return asdict(self)


def problems_error(what: str, problems: Sequence[str]) -> ValueError:
    listed = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return ValueError(f"{len(problems)} {what}:\n  {listed}{more}")


def is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_clips(clips: Sequence[Clip]) -> None:
    """ValueError naming the empty class, or listing duplicate ids / bad labels."""
    problems = []
    first: dict[str, Clip] = {}
    for c in clips:
        if c.label not in LABELS:
            problems.append(f"clip {c.id!r}: label must be 1 (bona fide) or 0 (spoof), got {c.label!r}")
        if not is_text(c.id) or not is_text(c.speaker) or not is_text(c.generator):
            problems.append(f"clip {c.id!r}: id, speaker and generator must be non-empty strings")
        if c.label == 0 and c.generator == BONAFIDE:
            problems.append(f"clip {c.id!r}: a spoof cannot have generator {BONAFIDE!r}")
        if c.id in first:
            problems.append(f"duplicate id {c.id!r}: {first[c.id].path} and {c.path}")
        else:
            first[c.id] = c
    if problems:
        raise problems_error("clip problem(s)", problems)
    for value, name in LABELS.items():
        if not any(c.label == value for c in clips):
            raise ValueError(
                f"the {name} class has no files: a detector needs bona fide and spoof clips "
                f"(give {'--bonafide or --run' if value == 1 else '--spoof or --run'})"
            )


def _hash_key(seed: int, speaker: str) -> str:
    return hashlib.sha256(f"{seed}\x00{speaker}".encode()).hexdigest()


def _hash_unit(seed: int, speaker: str) -> float:
    return int(_hash_key(seed, speaker)[:13], 16) / 16**13


@dataclass
class Split:
    train: list[Clip]
    test: list[Clip]
    description: dict  # JSON-able: parameters, speakers, ids, counts (see split())


def _counts(clips: Iterable[Clip]) -> dict[str, int]:
    return dict(sorted(Counter(c.generator for c in clips).items()))


def split(
    clips: Sequence[Clip], test_fraction: float = 0.3, seed: int = 0, holdout_generator: str | None = None
) -> Split:
    """Speaker-disjoint train/test split (rules in the module docstring)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    check_clips(clips)
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        by_speaker[c.speaker].append(c)
    if len(by_speaker) < 2:
        raise ValueError(
            "a speaker-disjoint split needs at least two speakers; all clips are of "
            f"{next(iter(by_speaker))!r}"
        )
    generators = sorted({c.generator for c in clips if c.label == 0})
    if holdout_generator is not None and holdout_generator not in generators:
        raise ValueError(
            f"held-out generator {holdout_generator!r} is not among the spoof generators {generators}"
        )
    held = holdout_generator
    held_only = {
        s for s, cs in by_speaker.items() if held is not None and all(c.generator == held for c in cs)
    }
    strata: dict[tuple, list[str]] = defaultdict(list)
    for s, cs in by_speaker.items():
        if s not in held_only:
            strata[tuple(sorted({c.generator for c in cs if c.generator != held}))].append(s)
    test_speakers = set(held_only)
    for speakers in strata.values():
        speakers.sort(key=lambda s: _hash_key(seed, s))
        if len(speakers) == 1:
            if _hash_unit(seed, speakers[0]) < test_fraction:
                test_speakers.add(speakers[0])
            continue
        target = test_fraction * sum(len(by_speaker[s]) for s in speakers)
        n_test = 0
        for s in speakers[:-1]:  # never every speaker of a stratum
            n = len(by_speaker[s])
            # the first always joins; later ones while they bring the count closer to the target
            if n_test and abs(n_test + n - target) >= abs(n_test - target):
                break
            test_speakers.add(s)
            n_test += n

    train = [c for c in clips if c.speaker not in test_speakers and c.generator != held]
    if held is None:
        test = [c for c in clips if c.speaker in test_speakers]
    else:
        test = [c for c in clips if c.speaker in test_speakers and (c.label == 1 or c.generator == held)]
    used = {c.id for c in train} | {c.id for c in test}
    unused = [c for c in clips if c.id not in used]
    for side, part in (("train", train), ("test", test)):
        for value, name in LABELS.items():
            if not any(c.label == value for c in part):
                raise ValueError(
                    f"the {side} split has no {name} clips (seed {seed}, test_fraction {test_fraction}"
                    + (f", held-out generator {held!r}" if held else "")
                    + f"; {len(by_speaker)} speakers): use another --seed or --test-fraction, or more "
                    "speakers"
                )
    train_speakers = sorted({c.speaker for c in train})
    assert not set(train_speakers) & {c.speaker for c in test}
    description = {
        "format": SPLIT_FORMAT,
        "version": SPLIT_VERSION,
        "seed": seed,
        "test_fraction": test_fraction,
        "holdout_generator": held,
        "rule": "speaker-disjoint; speakers stratified by their set of sources, ordered by sha256(seed, "
        "speaker) and moved to test while that brings its clip count closer to test_fraction of the stratum's"
        " clips"
        + (
            f"; generator {held!r} held out: never in train, test = test speakers' bona fide + its clips "
            "of test speakers (all its clips for speakers it alone has)"
            if held
            else ""
        ),
        "train_speakers": train_speakers,
        "test_speakers": sorted(test_speakers & {c.speaker for c in test}),
        "counts": {"train": _counts(train), "test": _counts(test), "unused": _counts(unused)},
        "train_ids": sorted(c.id for c in train),
        "test": [[c.id, c.speaker, c.label, c.generator] for c in sorted(test, key=lambda c: c.id)],
        "unused_ids": sorted(c.id for c in unused),
    }
    return Split(train, test, description)


def speaker_folds(clips: Sequence[Clip], k: int, seed: int = 0) -> np.ndarray:
    """Fold index ``[n]`` in ``0..k-1`` per clip, speaker-disjoint: within each stratum (speakers with the
    same set of sources, as in :func:`split`) speakers in ``sha256(seed, speaker)`` order are dealt to
    the folds in turn, so every kind of speaker is spread over the folds."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    by_speaker: dict[str, set[str]] = defaultdict(set)
    for c in clips:
        by_speaker[c.speaker].add(c.generator)
    if len(by_speaker) < k:
        raise ValueError(f"{k} speaker-disjoint folds need at least {k} speakers, got {len(by_speaker)}")
    strata: dict[tuple, list[str]] = defaultdict(list)
    for s, gens in by_speaker.items():
        strata[tuple(sorted(gens))].append(s)
    fold_of, turn = {}, 0
    for key in sorted(strata):
        for s in sorted(strata[key], key=lambda s: _hash_key(seed, s)):
            fold_of[s] = turn % k
            turn += 1
    return np.array([fold_of[c.speaker] for c in clips], dtype=np.int64)


def recorded_test(clips: Sequence[Clip], description: dict) -> tuple[list[Clip], dict]:
    """The test clips a split description recorded, found in ``clips`` by id (the data flags given
    again at evaluation). Every recorded test clip must be present with the same speaker, label and
    generator; clips the split does not list are ignored and counted. Returns (test clips, notes)."""
    if description.get("format") != SPLIT_FORMAT or description.get("version") != SPLIT_VERSION:
        raise ValueError(
            f"split description has format {description.get('format')!r} version "
            f"{description.get('version')!r}; this build reads {SPLIT_FORMAT!r} version {SPLIT_VERSION}"
        )
    try:
        rows = [(str(u), str(s), int(lab), str(g)) for u, s, lab, g in description["test"]]
        train_ids = {str(u) for u in description["train_ids"]}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed split description: 'test' / 'train_ids' ({err!r})") from err
    by_id = {c.id: c for c in clips}
    test, problems = [], []
    for uid, speaker, label, generator in rows:
        c = by_id.get(uid)
        if c is None:
            problems.append(f"{uid}: recorded test clip not found in the data given")
        elif (c.speaker, c.label, c.generator) != (speaker, label, generator):
            problems.append(
                f"{uid}: recorded as (speaker {speaker!r}, label {label}, generator {generator!r}), "
                f"the data say ({c.speaker!r}, {c.label}, {c.generator!r})"
            )
        else:
            test.append(c)
    if problems:
        raise problems_error(
            "mismatch(es) between the model's recorded test split and the data given (use the same "
            "--run / --bonafide / --spoof as for training)",
            problems,
        )
    test_ids = {c.id for c in test}
    leaked = sorted(test_ids & train_ids)
    if leaked:
        raise ValueError(
            f"split description lists {len(leaked)} clip(s) in both train and test: {leaked[:5]}"
        )
    notes = {
        "in_train_split": sum(c.id in train_ids for c in clips),
        "not_in_split": sum(c.id not in train_ids and c.id not in test_ids for c in clips),
    }
    return test, notes
