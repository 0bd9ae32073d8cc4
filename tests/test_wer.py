from __future__ import annotations

import string

import jiwer
import pytest
from zhon.hanzi import punctuation as hanzi_punctuation

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import normalize, utterance_wer, word_error_rate
from valle.audio import load_audio


def test_normalisation_makes_spelling_variants_agree():
    assert normalize("Mr. Smith's 2 cats!") == normalize("mister smith's two cats")
    assert utterance_wer("Hello, World.", "hello world") == 0.0


def _seed_tts_eval_wer(hypo: str, truth: str) -> float:
    """A direct transcription of seed-tts-eval ``run_wer.py``'s ``process_one`` for English."""
    for x in string.punctuation + hanzi_punctuation:
        if x == "'":
            continue
        truth, hypo = truth.replace(x, ""), hypo.replace(x, "")
    truth, hypo = truth.replace("  ", " ").lower(), hypo.replace("  ", " ").lower()
    return jiwer.wer(truth, hypo)


@pytest.mark.parametrize(
    "ref, hyp",
    [
        ("Mr. Smith's 2 cats!", "mister smith's two cats"),  # no spelling normalisation: 3 errors
        ("He said, \u201cdon\u2019t\u201d \u2014 twice.", "he said don't twice"),  # curly quotes go
        ("Well--it's  fine; (really)", "well its fine really"),
        ("The  year 1999 ended.", "the year nineteen ninety nine ended"),
    ],
)
def test_seed_tts_eval_normaliser_equals_its_reference(ref, hyp):
    assert utterance_wer(ref, hyp, "seed-tts-eval") == pytest.approx(_seed_tts_eval_wer(hyp, ref))
    with pytest.raises(ValueError, match="unknown text normaliser"):
        normalize(ref, "nemo")


def test_corpus_wer_equals_jiwer_on_normalised_strings():
    refs = ["the cat sat on the mat", "a quick brown fox", "hello there general kenobi"]
    hyps = ["the cat sat on mat", "a quick brown fox jumps", "hello their general"]
    ours = word_error_rate(refs, hyps)
    expected = jiwer.wer([normalize(r) for r in refs], [normalize(h) for h in hyps])
    assert ours.wer == pytest.approx(expected)
    assert (ours.deletions, ours.insertions) == (2, 1) and ours.substitutions == 1
    # mean per-utterance WER weights short utterances more: here it differs from corpus WER
    assert ours.mean_utterance_wer == pytest.approx((1 / 6 + 1 / 4 + 2 / 4) / 3)


def test_empty_hypothesis_counts_all_deletions_and_empty_reference_is_an_error():
    out = word_error_rate(["the cat sat"], [""])
    assert out.wer == 1.0 and out.deletions == 3
    with pytest.raises(ValueError, match="reference 0"):
        word_error_rate(["!?,"], ["x"])
    with pytest.raises(ValueError, match="2 references but 1"):
        word_error_rate(["a", "b"], ["a"])


def test_bundled_whisper_transcribes_real_speech(real_speech_dir, real_speech_rows):
    """Validity: on read English speech (one clip of each of the 16 speakers) the ground-truth WER of
    tiny.en is in the single digits, as expected for read speech (all 50 clips: 3.0%)."""
    asr = FasterWhisperASR()
    rows = list({r["speaker"]: r for r in real_speech_rows}.values())
    assert len(rows) >= 10
    refs, hyps = [], []
    for r in rows:
        wav, sr = load_audio(real_speech_dir / r["audio"])
        refs.append(r["text"])
        hyps.append(asr.transcribe(wav, sr).text)
    assert word_error_rate(refs, hyps).wer < 0.1
    # a fixed seed makes the decode repeatable, fallbacks included
    wav, sr = load_audio(real_speech_dir / rows[0]["audio"])
    assert asr.transcribe(wav, sr).text == hyps[rows.index(rows[0])]
