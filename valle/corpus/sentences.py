"""The CMU ARCTIC prompt sentences and their fixed train / held-out split.

The split never depends on a seed or on the corpus size, so a sentence held out today is held
out by every corpus ever built, and a model trained on any of them can be evaluated on it:

- ``excluded``: sentences read in the shared real-speech set (``REAL_SPEECH_OVERLAP``), so
  neither training nor held-out evaluation ever sees text a real recording also covers;
- ``heldout``: about ``HELDOUT_FRACTION`` of the rest, chosen by a hash of the id;
- ``train``: everything else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

HELDOUT_FRACTION = 0.05
# Read in ../shared/data/real_speech (cmu_arctic-aew a0001-a0003; rhasspy-kathleen a0007-a0024,
# some with small wording changes). A fixed list: the package must not read ../shared at run time.
REAL_SPEECH_OVERLAP = frozenset(
    [f"arctic_a{i:04d}" for i in (1, 2, 3)] + [f"arctic_a{i:04d}" for i in range(7, 25)]
)
SPLITS = ("train", "heldout", "excluded")
_ID = re.compile(r"arctic_[ab]\d{4}")


class SentenceError(ValueError):
    """A malformed sentence list; the message names the file and line."""


@dataclass(frozen=True)
class Sentence:
    id: str
    text: str


def default_path() -> Path:
    """The bundled ``cmuarctic.txt`` (``id<TAB>sentence`` per line)."""
    return Path(str(resources.files("valle.corpus") / "data" / "cmuarctic.txt"))


def load_sentences(path: str | Path | None = None) -> list[Sentence]:
    """Read an ``id<TAB>sentence`` file (default: the bundled ARCTIC list), in file order."""
    path = Path(path) if path is not None else default_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SentenceError(f"{path}: cannot read sentence list ({err})") from err
    out: list[Sentence] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip():
            raise SentenceError(f"{path}:{lineno}: expected 'id<TAB>sentence', got {line!r}")
        sid, text = parts[0].strip(), parts[1].strip()
        if not _ID.fullmatch(sid):
            raise SentenceError(f"{path}:{lineno}: id {sid!r} is not of the form arctic_a0001")
        if sid in seen:
            raise SentenceError(f"{path}:{lineno}: id {sid} duplicates line {seen[sid]}")
        seen[sid] = lineno
        out.append(Sentence(sid, text))
    if not out:
        raise SentenceError(f"{path}: no sentences")
    return out


def split_of(sentence_id: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """``"excluded"``, ``"heldout"`` or ``"train"`` for one id (see the module docstring)."""
    if sentence_id in REAL_SPEECH_OVERLAP:
        return "excluded"
    # sha256, not hash(): Python salts str hashes per process.
    bucket = int.from_bytes(hashlib.sha256(sentence_id.encode()).digest()[:8], "big") / 2**64
    return "heldout" if bucket < heldout_fraction else "train"


def split_sentences(
    sentences: list[Sentence] | None = None, heldout_fraction: float = HELDOUT_FRACTION
) -> dict[str, list[Sentence]]:
    """Group sentences (default: all of ARCTIC) by split, keeping file order in each."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    groups: dict[str, list[Sentence]] = {name: [] for name in SPLITS}
    for s in sentences if sentences is not None else load_sentences():
        groups[split_of(s.id, heldout_fraction)].append(s)
    return groups


def training_sentences() -> list[Sentence]:
    """ARCTIC sentences a training corpus may use."""
    return split_sentences()["train"]


def heldout_sentences() -> list[Sentence]:
    """ARCTIC sentences kept out of every training corpus, for evaluating trained models."""
    return split_sentences()["heldout"]


def normalize_text(text: str) -> str:
    """Lower-case letters and digits only, single-spaced: for matching transcripts to prompts."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).replace("'", "").split())
