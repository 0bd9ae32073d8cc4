"""The audit's embedded default test set: a small committed corpus, plus real recordings when present.

``evaluation/testsets/demo/`` holds ``manifest.jsonl`` and FLAC files (24 kHz mono) that
:func:`build_demo_corpus` made with the offline corpus tools: six Piper voices, each reading two
*held-out* sentences (never used to train any checkpoint here; the voices themselves are corpus
voices, so this is zero-shot in text, not in speaker). Piper, not eSpeak NG: Whisper tiny.en
misrecognises half of eSpeak's words (corpus benchmark: 56% WER against 14% for Piper), so an
eSpeak target could not tell an intelligible clone from a mumbling one. The files are
committed, so the default audit needs neither the engines' exact builds nor a network; rebuild
with ``python -m evaluation.testsets.demo_set`` (same library versions give the same files).

Given an explicit manifest of real recordings (``valle audit --extra-real M``), :func:`real_rows` adds
up to ``max_speakers`` real speakers with at least two usable recordings each (two targets per
speaker), so the detector and the voice-authentication stage see real speech on both sides. Nothing
outside the repository is read unless asked for.

The test set itself is built by :func:`evaluation.testsets.testset.build_test_set` with the VALL-E
cross-sentence protocol (the prompt is the speaker's other utterance, whole, with its transcript).
"""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from evaluation.testsets.testset import TestSet, TestSetOptions, build_test_set
from valle.corpus.build import CorpusConfig, Synthesizers, condition
from valle.corpus.sentences import heldout_sentences
from valle.corpus.speakers import EspeakSpeaker, speaker_catalogue
from valle.manifest import read_manifest

DEMO_DIR = Path(__file__).parent / "demo"
PIPER_VOICES, PER_SPEAKER = 6, 2
MIN_WORDS, MAX_WORDS = 10, 13  # 2-5 s at these voices' rates
# below the paper's 4 s floor: these voices read such sentences in 2-5 s, and short targets keep the
# default audit inside its time budget
DEMO_OPTIONS = TestSetOptions(protocol="cross_sentence", min_seconds=2.0, max_seconds=10.0)


def build_demo_corpus(out_dir: str | Path = DEMO_DIR, seed: int = 0) -> Path:
    """Synthesise the committed demo corpus into ``out_dir``; returns the manifest path."""
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    config = CorpusConfig(seed=seed)
    piper = [s for s in speaker_catalogue() if not isinstance(s, EspeakSpeaker)][:PIPER_VOICES]
    sentences = [s for s in heldout_sentences() if MIN_WORDS <= len(s.text.split()) <= MAX_WORDS]
    synth = Synthesizers(seed=seed, sample_rate=config.sample_rate)
    rows = []
    try:
        for k, spk in enumerate(piper):
            for sent in sentences[k * PER_SPEAKER : (k + 1) * PER_SPEAKER]:
                wav, sr = synth(spk, sent.text)
                wav = condition(wav, sr, config, name=f"{spk.id}/{sent.id}")
                uid = f"{spk.id}_{sent.id}"
                rel = f"audio/{uid}.flac"
                sf.write(out_dir / rel, wav, config.sample_rate, subtype="PCM_16")
                rows.append(
                    {
                        "id": uid,
                        "audio": rel,
                        "text": sent.text,
                        "speaker": spk.id,
                        "duration": round(len(wav) / config.sample_rate, 4),
                        "sample_rate": config.sample_rate,
                        "sentence_id": sent.id,
                        "split": "heldout",
                    }
                )
    finally:
        synth.close()
    path = out_dir / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def real_rows(manifest: str | Path, max_speakers: int = 6, per_speaker: int = PER_SPEAKER) -> list:
    """Utterances of up to ``max_speakers`` real speakers (sorted by id) that have at least
    ``per_speaker`` recordings inside the demo duration range; all of each chosen speaker's
    recordings are kept (the extra ones serve as prompt sources and ASV enrolment)."""

    utts = read_manifest(manifest)
    by_spk: dict[str, list] = {}
    for u in sorted(utts, key=lambda u: u.id):
        by_spk.setdefault(u.speaker, []).append(u)
    chosen = []
    for spk in sorted(by_spk):
        in_range = [
            u
            for u in by_spk[spk]
            if DEMO_OPTIONS.min_seconds <= (u.duration or 0) <= DEMO_OPTIONS.max_seconds
        ]
        if len(in_range) >= per_speaker and len(chosen) < max_speakers:
            chosen.append((spk, in_range[:per_speaker], by_spk[spk]))
    return [(targets, all_utts) for _, targets, all_utts in chosen]


def demo_testset(real_manifest: str | Path | None = None, max_real_speakers: int = 6) -> TestSet:
    """The committed demo items plus, with ``real_manifest`` (which must exist), real-speech items."""
    utts = read_manifest(DEMO_DIR / "manifest.jsonl")
    source = "evaluation/testsets/demo (offline corpus tools, held-out sentences)"
    demo = build_test_set(utts, DEMO_OPTIONS, source=source)
    items, excluded = list(demo.items), dict(demo.excluded)
    if real_manifest is not None:
        if not Path(real_manifest).is_file():
            raise FileNotFoundError(f"real recordings manifest {real_manifest} not found")
        for targets, all_utts in real_rows(real_manifest, max_real_speakers):
            ids = {u.id for u in targets}
            items += [it for it in build_test_set(all_utts, DEMO_OPTIONS).items if it.id in ids]
        source += f" + {real_manifest} ({max_real_speakers} speakers at most)"
    return TestSet(sorted(items, key=lambda it: it.id), excluded, source)


if __name__ == "__main__":
    print(build_demo_corpus())
