"""Zero-shot TTS test sets, built from manifests the way the VALL-E paper built its LibriSpeech one.

VALL-E (Wang et al., 2023, sec. 5.2) evaluates utterances of 4-10 s in two modes:

- **cross-sentence**: the voice prompt is *another* utterance of the same speaker, whole, with its
  transcript as the phoneme prompt; the target text is new to the prompt. The paper cuts 3 s
  prompts, which needs a word alignment of the prompt to know which words the cut still says; a cut
  made without one keeps words in the transcript that the audio no longer says, and a model that
  reads the text then speaks them before the target (insertions in the WER, a wrong speaking rate).
  So the prompt is drawn among the speaker's utterances of at most ``max_prompt_seconds`` (default
  4 s, near the paper's 3 s prompts and the <= 3 s prompts the demo's AR trained with), and is the
  speaker's shortest other utterance when none is that short. seed-tts-eval's
  lists (below) give whole prompt clips too.
- **continuation**: the prompt is the first 3 s of the target utterance itself and the text is
  its full transcript; the model continues the utterance.

seed-tts-eval meta lists (``utt|prompt_text|prompt_wav|target_text[|gt_wav]``) are test sets
as they are: whole prompt clips, cross-sentence mode.

Choices are deterministic (the prompt utterance is drawn with a seed derived from the run seed and
the target id), so the same manifest and seed always give the same test set. Rows that cannot be
used are not dropped: each becomes an item with ``problem`` set (empty or non-English transcript,
unreadable / NaN / silent / too-short audio, a speaker with no second utterance for a
cross-sentence prompt), so it is counted as a failure in every table and summary. Only rows
outside the duration range are left out, and their number is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from valle.audio import AudioError, load_audio, save_audio
from valle.importers import import_seed_tts_eval
from valle.manifest import Utterance, by_speaker

PROTOCOLS = ("cross_sentence", "continuation")
MIN_AUDIO_SECONDS = 0.5
MIN_PROMPT_SECONDS = 1.0


@dataclass(frozen=True)
class TestSetOptions:
    protocol: str = "cross_sentence"
    min_seconds: float = 4.0  # target duration range (the paper's 4-10 s)
    max_seconds: float = 10.0
    prompt_seconds: float = 3.0  # continuation: the prompt is the target's first prompt_seconds
    max_prompt_seconds: float = 4.0  # cross-sentence: longest prompt utterance drawn (see module doc)
    seed: int = 0  # of the cross-sentence prompt choice
    max_items: int | None = None  # first N valid targets in id order (after the duration filter)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"need 0 <= min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}"
            )
        if not self.prompt_seconds >= MIN_PROMPT_SECONDS:
            raise ValueError(f"prompt_seconds must be >= {MIN_PROMPT_SECONDS}, got {self.prompt_seconds}")
        if not self.max_prompt_seconds >= MIN_PROMPT_SECONDS:
            raise ValueError(
                f"max_prompt_seconds must be >= {MIN_PROMPT_SECONDS}, got {self.max_prompt_seconds}"
            )


@dataclass(frozen=True)
class TestItem:
    """One thing to synthesise and score. ``problem`` set = it cannot be run; it stays as a failure row."""

    id: str
    text: str
    speaker: str
    mode: str
    target_audio: str | None  # ground truth recording (absolute in memory; relative in the file), or None
    target_seconds: float | None
    prompt_audio: str | None  # the file the prompt is cut from
    prompt_text: str | None
    prompt_start: float = 0.0  # seconds: the prompt is prompt_audio[start:end]
    prompt_end: float | None = None  # None = to the end of the file
    prompt_source: str | None = None  # id of the utterance the prompt comes from
    problem: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


PATH_FIELDS = ("target_audio", "prompt_audio")


@dataclass
class TestSet:
    items: list[TestItem]
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> count of rows left out
    source: str = ""

    @property
    def problems(self) -> dict[str, str]:
        return {it.id: it.problem for it in self.items if it.problem}

    def save(self, path: str | Path) -> Path:
        """One JSON object per line; the first line is a header with the build's summary. Audio paths
        are written relative to the file's folder, so a run directory carries no machine paths."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "w", encoding="utf-8") as f:
            header = {"testset": 1, "source": self.source, "excluded": self.excluded}
            f.write(json.dumps(header) + "\n")
            for it in self.items:
                row = it.to_json()
                for key in PATH_FIELDS:  # relative to this file: no machine path, and the run can move
                    if row[key] is not None:
                        row[key] = os.path.relpath(row[key], path.parent.absolute())
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TestSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: test set not found")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:1: invalid JSON ({err.msg})") from err
        if header.get("testset") != 1:
            raise ValueError(f"{path}: not a test set file (first line must be a test set header)")
        items, seen = [], set()
        for lineno, line in enumerate(lines[1:], start=2):
            try:
                row = json.loads(line)
                for key in PATH_FIELDS:  # relative to the file (absolute ones, from older files, stay)
                    if isinstance(row.get(key), str):
                        row[key] = os.path.normpath(os.path.join(path.parent.absolute(), row[key]))
                item = TestItem(**row)
            except (json.JSONDecodeError, TypeError, AttributeError) as err:
                raise ValueError(f"{path}:{lineno}: not a test item ({err})") from err
            if item.id in seen:
                raise ValueError(f"{path}:{lineno}: duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
        if not items:
            raise ValueError(f"{path}: test set has no items")
        return cls(items, header.get("excluded", {}), header.get("source", ""))


def text_problem(text: str) -> str | None:
    """Why a transcript cannot be a WER reference for English ASR, or None."""
    if not text or not text.strip():
        return "empty transcript"
    if not any(c.isalpha() for c in text):
        return f"transcript has no letters: {text[:40]!r}"
    return None  # other scripts, control characters, emoji: refused by every Utterance already


def _audio_seconds(path: Path | None) -> tuple[float | None, str | None]:
    """Load and check a recording: (seconds, None) or (None, reason)."""
    if path is None:
        return None, None
    try:
        wav, sr = load_audio(path)
    except AudioError as err:
        return None, str(err)
    seconds = len(wav) / sr
    if seconds < MIN_AUDIO_SECONDS:
        return None, f"{path}: audio is {seconds:.2f} s, shorter than {MIN_AUDIO_SECONDS} s"
    return seconds, None


def _stable_rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def build_test_set(
    utts: Iterable[Utterance], options: TestSetOptions = TestSetOptions(), source: str = ""
) -> TestSet:
    """Targets in ``[min_seconds, max_seconds]`` with a prompt per ``options.protocol`` (see module doc)."""
    utts = sorted(utts, key=lambda u: u.id)
    seconds: dict[str, float | None] = {}
    audio_problem: dict[str, str | None] = {}
    for u in utts:
        seconds[u.id], audio_problem[u.id] = _audio_seconds(u.audio)
        if u.audio is None:
            audio_problem[u.id] = "no recording (audio is null)"

    excluded: dict[str, int] = {}
    targets = []
    for u in utts:
        s = seconds[u.id]
        if s is not None and not options.min_seconds <= s <= options.max_seconds:
            key = f"duration outside {options.min_seconds:g}-{options.max_seconds:g} s"
            excluded[key] = excluded.get(key, 0) + 1
            continue
        targets.append(u)
    if options.max_items is not None:
        targets = targets[: options.max_items]

    # usable prompt sources: readable audio long enough, with a usable transcript
    speakers = by_speaker(
        u
        for u in utts
        if audio_problem[u.id] is None and seconds[u.id] >= MIN_PROMPT_SECONDS and not text_problem(u.text)
    )
    items = []
    for u in targets:
        problem = text_problem(u.text) or audio_problem[u.id]
        common = dict(id=u.id, text=u.text, speaker=u.speaker, mode=options.protocol)
        target = str(u.audio) if u.audio is not None else None
        if options.protocol == "continuation":
            if problem is None and seconds[u.id] <= options.prompt_seconds + MIN_AUDIO_SECONDS:
                problem = (
                    f"target is {seconds[u.id]:.2f} s: too short to continue "
                    f"after a {options.prompt_seconds:g} s prompt"
                )
            items.append(
                TestItem(
                    **common,
                    target_audio=target,
                    target_seconds=seconds[u.id],
                    prompt_audio=target,
                    prompt_text=u.text,
                    prompt_end=options.prompt_seconds,
                    prompt_source=u.id,
                    problem=problem,
                )
            )
            continue
        others = [o for o in speakers.get(u.speaker, []) if o.id != u.id]
        if problem is None and not others:
            problem = f"speaker {u.speaker} has no other usable utterance for a cross-sentence prompt"
        short = [o for o in others if seconds[o.id] <= options.max_prompt_seconds]
        pool = short or ([min(others, key=lambda o: (seconds[o.id], o.id))] if others else [])
        prompt = pool[_stable_rng(options.seed, u.id).integers(len(pool))] if pool else None
        items.append(
            TestItem(
                **common,
                target_audio=target,
                target_seconds=seconds[u.id],
                prompt_audio=str(prompt.audio) if prompt else None,
                prompt_text=prompt.text if prompt else None,  # the whole prompt utterance says it all
                prompt_source=prompt.id if prompt else None,
                problem=problem,
            )
        )
    return TestSet(items, excluded, source)


def seed_tts_eval_test_set(meta_path: str | Path) -> TestSet:
    """A seed-tts-eval ``meta.lst`` as a test set: whole prompt clips, cross-sentence mode."""
    items = []
    for u in import_seed_tts_eval(meta_path):
        seconds, problem = _audio_seconds(u.audio) if u.audio is not None else (None, None)
        prompt_seconds, prompt_problem = _audio_seconds(u.prompt_audio)
        if prompt_problem is None and prompt_seconds < MIN_PROMPT_SECONDS:
            prompt_problem = f"prompt is {prompt_seconds:.2f} s, shorter than {MIN_PROMPT_SECONDS} s"
        items.append(
            TestItem(
                id=u.id,
                text=u.text,
                speaker=u.speaker,
                mode="cross_sentence",
                target_audio=str(u.audio) if u.audio is not None else None,
                target_seconds=seconds,
                prompt_audio=str(u.prompt_audio),
                prompt_text=u.prompt_text,
                prompt_source=Path(u.prompt_audio).stem,
                problem=text_problem(u.text) or problem or prompt_problem,
            )
        )
    return TestSet(items, {}, f"seed-tts-eval:{meta_path}")


def cut_prompt(item: TestItem, out_dir: str | Path) -> Path:
    """Write the item's prompt (``prompt_audio[start:end]``) as ``<out_dir>/<id>.wav``, mono, native rate."""
    if item.prompt_audio is None:
        raise ValueError(f"{item.id}: item has no prompt audio")
    wav, sr = load_audio(item.prompt_audio)
    start = round(item.prompt_start * sr)
    end = len(wav) if item.prompt_end is None else round(item.prompt_end * sr)
    return save_audio(Path(out_dir) / f"{item.id}.wav", wav[start:end], sr)
