"""Shared fixtures. Tests run real libraries on small real inputs; nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REAL_SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_speech"


@pytest.fixture(scope="session", autouse=True)
def private_valle_home(tmp_path_factory):
    """Generation creates the user's default watermark key on first use ($VALLE_HOME/keys): keep the
    tests' keys out of the real home directory."""
    import os

    before = os.environ.get("VALLE_HOME")
    home = tmp_path_factory.mktemp("valle_home")
    (home / "keys").mkdir(mode=0o700)  # a fixed default key: marks do not depend on a random draw
    key_file = home / "keys" / "watermark.key.json"
    key_file.write_text(json.dumps({"key_id": "default", "secret": bytes(range(200, 232)).hex()}))
    key_file.chmod(0o600)
    os.environ["VALLE_HOME"] = str(home)
    yield
    if before is None:
        os.environ.pop("VALLE_HOME", None)
    else:
        os.environ["VALLE_HOME"] = before


@pytest.fixture(scope="session")
def real_speech_dir() -> Path:
    """``../shared/data/real_speech`` (real read English speech); skip when it is absent."""
    if not (REAL_SPEECH / "manifest.jsonl").is_file():
        pytest.skip(f"real speech set not found at {REAL_SPEECH}")
    return REAL_SPEECH


@pytest.fixture(scope="session")
def real_speech_rows(real_speech_dir: Path) -> list[dict]:
    with open(real_speech_dir / "manifest.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' matmuls gain nothing from a second intra-op thread, and on a busy 2-core
    machine spinning worker threads made such tests ~10x slower and erratic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tone(seconds: float = 1.0, sr: int = 24000, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    """A harmonic tone with a little noise: a small stand-in signal with speech-like spectrum."""
    t = np.arange(int(seconds * sr)) / sr
    wav = sum(amp / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, 6))
    rng = np.random.default_rng(0)
    return (wav + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every summer morning.",
    "A large crowd gathered to watch the old ship sail into the harbour.",
)
VOICES = {"spk-a": "en-us+m1", "spk-b": "en-us+f3", "spk-c": "en+m3"}


@pytest.fixture(scope="session")
def espeak_corpus(tmp_path_factory) -> Path:
    """Nine real (synthetic-speech) utterances: three eSpeak NG voices x three sentences of ~4 s,
    as ``manifest.jsonl`` + ``wavs/``. Small real speech for pipeline tests that must not need ../shared."""
    import soundfile as sf

    from valle.corpus.espeak import EspeakSynth

    root = tmp_path_factory.mktemp("espeak_corpus")
    (root / "wavs").mkdir()
    rows = []
    with EspeakSynth() as synth:
        for spk, voice in VOICES.items():
            for i, text in enumerate(SENTENCES):
                wav, sr = synth.synthesize(text, voice=voice)
                uid = f"{spk}_{i}"
                sf.write(root / "wavs" / f"{uid}.wav", wav, sr)
                rows.append({"id": uid, "audio": f"wavs/{uid}.wav", "text": text, "speaker": spk,
                             "duration": round(len(wav) / sr, 3)})  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
