"""ASR backends: batch == per-item, seeded fallbacks, the fallback-exhausted flag, model cards, and the
openai-whisper loading path (on a random checkpoint; official weights are not reachable offline)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
import pytest
import scipy.signal

from evaluation.scorers.asr import (
    WHISPER_SR,
    ASROptions,
    FasterWhisperASR,
    OpenAIWhisperASR,
    Transcript,
    compat_options,
    default_model_dir,
    load_asr,
    to_whisper_rate,
)
from evaluation.scorers.wer import utterance_wer
from tests.conftest import tone
from valle.audio import AudioError, load_audio, resample
from valle.hardware import cpu_simd_flags

CLIPS = ("vctk_p243_023", "vctk_p225_002", "kathleen_arctic_a0008_1592748408")
# at temperature 0 this clip loops on some CPUs of the same kind and not on others (CTranslate2's int8
# kernels differ), so no test asserts what a greedy decode of it says
LOOPS_ON_SOME_CPUS = "vctk_p243_023"


@pytest.fixture(scope="module")
def fw() -> FasterWhisperASR:
    return FasterWhisperASR()


@pytest.fixture(scope="module")
def clips(real_speech_dir, real_speech_rows) -> dict[str, tuple[dict, np.ndarray]]:
    """Three real clips at 16 kHz (the named ones when present)."""
    rows = [r for r in real_speech_rows if r["id"] in CLIPS] or real_speech_rows[:3]
    return {r["id"]: (r, load_audio(real_speech_dir / r["audio"], sample_rate=WHISPER_SR)[0]) for r in rows}


@pytest.fixture(scope="module")
def per_item(fw, clips) -> dict[str, Transcript]:
    return {i: fw.transcribe(wav, WHISPER_SR, name=i) for i, (_, wav) in clips.items()}


@pytest.fixture(scope="module")
def batched(fw, clips) -> dict[str, Transcript]:
    ids = list(clips)[::-1]  # another order than per_item's
    return dict(zip(ids, fw.transcribe_batch([clips[i][1] for i in ids], WHISPER_SR, names=ids), strict=True))


def test_batch_equals_per_item(per_item, batched):
    assert batched == per_item


def test_real_speech_is_transcribed_or_honestly_flagged(clips, per_item):
    """A looping decode is either avoided or flagged, never passed off as a transcript. Which real clip
    exhausts the fallback differs between CPUs of the same kind (vctk_p243_023 does on some, not on
    others), so this asserts the promise, not one clip's borderline behaviour."""
    last = ASROptions().temperatures[-1]
    for item_id, (row, _) in clips.items():
        t, ref_words = per_item[item_id], len(row["text"].split())
        assert t.text, item_id
        if t.fallback_exhausted:  # flagged: it reached the last temperature and still failed there
            assert t.temperature == last, item_id
        else:  # not flagged: no repetition loop (a loop multiplies the word count)
            assert 0.5 * ref_words < len(t.text.split()) < 1.5 * ref_words, (item_id, t.text)


def test_sampled_fallback_is_seeded_and_flags_exhaustion(clips, real_speech_dir, real_speech_rows):
    """Genuinely repeated speech: 5x "Please call Stella." fails the compression-ratio check at
    temperature 0 (3.19 > 2.4, a wide margin; 4x was 2.55, too close to assert on every CPU) and is
    re-decoded by sampling; 6x fails it at every temperature. The 5x clip must decode the same before
    and after other sampled decodes (CTranslate2's generator would otherwise carry over from the
    previous utterance)."""
    row = next((r for r in real_speech_rows if r["id"] == "vctk_p225_001"), None)
    if row is None:
        pytest.skip("vctk_p225_001 is not in the real speech set")
    wav, _ = load_audio(real_speech_dir / row["audio"], sample_rate=WHISPER_SR)
    x5, x6 = np.tile(wav, 5), np.tile(wav, 6)
    asr = FasterWhisperASR(options=ASROptions(temperatures=(0.0, 1.0)))  # fewer temperatures: faster
    first, rep6, again = asr.transcribe_batch([x5, x6, x5], WHISPER_SR)
    assert first.temperature == 1.0 and first == again
    assert rep6.fallback_exhausted and rep6.temperature == 1.0 and rep6.compression_ratio > 2.4


def test_batch_rejects_bad_clip_by_name(fw):
    with pytest.raises(AudioError, match="clip-b"):
        fw.transcribe_batch(
            [tone(0.5, WHISPER_SR), np.zeros(800, np.float32)], WHISPER_SR, ["clip-a", "clip-b"]
        )


def test_faster_whisper_card(fw):
    card = fw.card()
    assert card["sha256"] == hashlib.sha256((default_model_dir() / "model.bin").read_bytes()).hexdigest()
    assert card == {
        "backend": "faster-whisper",
        "model": str(default_model_dir()),
        "sha256": card["sha256"],
        "compat": "project",
        "beam_size": 5,
        "temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        "timestamps": True,
        "seed": 0,
        # what can change a transcript between machines is on the card
        "device": "cpu",
        "compute_type": "int8",
        "cpu_threads": 2,
        "cpu_simd_flags": cpu_simd_flags(),
    }


def test_seed_tts_eval_convention(fw, clips):
    """--asr-compat seed-tts-eval: run_wer.py's greedy, fallback-free, timestamp-free decode on audio
    resampled by scipy's FFT resampler from the file's own rate."""
    o = compat_options("seed-tts-eval")
    assert (o.beam_size, o.temperatures, o.without_timestamps) == (1, (0.0,), True)
    with pytest.raises(ValueError, match="unknown ASR convention"):
        compat_options("espnet")
    x = tone(1.0, 24_000)
    assert np.array_equal(
        to_whisper_rate(x, 24_000, "seed-tts-eval"),
        scipy.signal.resample(x.astype(np.float64), 16_000).astype(np.float32),
    )
    assert np.array_equal(to_whisper_rate(x, 24_000), resample(x, 24_000, WHISPER_SR))
    seed = FasterWhisperASR(options=o)
    assert seed.card()["compat"] == "seed-tts-eval" and seed.card()["timestamps"] is False
    for item_id, (row, wav) in clips.items():
        if item_id == LOOPS_ON_SOME_CPUS:  # greedy, fallback-free decoding of it loops on some CPUs
            continue
        # a clear read sentence: greedy decoding gets it mostly right (wide margin, not one clip's bits)
        assert utterance_wer(row["text"], seed.transcribe(wav, WHISPER_SR).text, "seed-tts-eval") < 0.5, (
            item_id
        )


@pytest.fixture(scope="module")
def random_pt(tmp_path_factory):
    """A randomly initialised, very small Whisper saved as the official checkpoints are. Only for the
    loading path: it transcribes nonsense."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():  # whisper leaves this torch.empty (checkpoints fill it); garbage gives NaN logits
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    path = tmp_path_factory.mktemp("whisper") / "tiny_random.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def test_openai_whisper_loads_a_checkpoint_and_transcribes(random_pt, one_torch_thread):
    options = ASROptions(temperatures=(0.0,), max_new_tokens=8)
    asr = load_asr("openai-whisper", model=random_pt, options=options)
    assert isinstance(asr, OpenAIWhisperASR)
    card = asr.card()
    assert card["sha256"] == hashlib.sha256(random_pt.read_bytes()).hexdigest()
    assert (card["backend"], card["model"], card["temperatures"]) == ("openai-whisper", str(random_pt), [0.0])
    wavs = [tone(1.0), tone(0.7, freq=330.0)]
    out = asr.transcribe_batch(wavs, 24000)
    assert len(out) == 2 and all(isinstance(t, Transcript) and isinstance(t.text, str) for t in out)
    assert all(isinstance(t.avg_logprob, float) and isinstance(t.fallback_exhausted, bool) for t in out)
    assert asr.transcribe_batch(wavs, 24000) == out


def test_openai_whisper_missing_or_corrupt_named_model(tmp_path):
    import whisper

    url = whisper._MODELS["tiny.en"]
    with pytest.raises(FileNotFoundError) as err:
        OpenAIWhisperASR("tiny.en", download_root=tmp_path)
    msg = str(err.value)
    assert url in msg and url.split("/")[-2] in msg and str(tmp_path / "tiny.en.pt") in msg
    (tmp_path / "tiny.en.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="expected " + url.split("/")[-2]):
        OpenAIWhisperASR("tiny.en", download_root=tmp_path)


def test_bad_names_and_files_are_reported(tmp_path):
    import torch

    with pytest.raises(ValueError, match=r"tiny\.en"):
        OpenAIWhisperASR("tiny-en")
    with pytest.raises(ValueError, match="faster-whisper, openai-whisper"):
        load_asr("whisper.cpp")
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match=r"weights\.pt: not a Whisper checkpoint"):
        OpenAIWhisperASR(bad)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        OpenAIWhisperASR(tmp_path / "nowhere.pt")
