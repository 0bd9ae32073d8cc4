"""Word error rate with Whisper's English text normaliser and jiwer's alignment.

Both reference and hypothesis go through ``whisper.normalizers.EnglishTextNormalizer`` (spelling,
numbers, punctuation, casing), so "Mr. Smith's 2 cats" and "mister smith's two cats" agree. The
``seed-tts-eval`` scheme instead does what that toolkit's ``run_wer.py`` does for English: delete
every character of ``string.punctuation + zhon.hanzi.punctuation`` except the ASCII apostrophe,
collapse double spaces once, lower-case; numbers and spellings are left as they are.
Corpus WER sums errors over all utterances before dividing (jiwer's convention); the mean of
per-utterance WERs is seed-tts-eval's convention; we report both because they differ when
utterance lengths vary.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import jiwer
from zhon.hanzi import punctuation as _HANZI_PUNCTUATION

NORMALIZERS = ("whisper", "seed-tts-eval")
_SEED_TTS_EVAL_DELETE = str.maketrans("", "", (string.punctuation + _HANZI_PUNCTUATION).replace("'", ""))


@lru_cache(maxsize=1)
def _normalizer():
    # whisper's package import is heavy; the normaliser is built once, on first use
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str, scheme: str = "whisper") -> str:
    """``text`` as the WER sees it under ``scheme`` (:data:`NORMALIZERS`), words single-spaced."""
    if scheme == "whisper":
        return " ".join(_normalizer()(text).split())
    if scheme == "seed-tts-eval":
        # jiwer's default transform splits on any whitespace afterwards, as run_wer.py's does
        return " ".join(text.translate(_SEED_TTS_EVAL_DELETE).lower().split())
    raise ValueError(f"unknown text normaliser {scheme!r}; choose one of {', '.join(NORMALIZERS)}")


@dataclass(frozen=True)
class WER:
    wer: float  # corpus WER: (S + D + I) / N
    mean_utterance_wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    n_ref_words: int

    @property
    def sub_rate(self) -> float:
        return self.substitutions / max(self.n_ref_words, 1)

    @property
    def del_rate(self) -> float:
        return self.deletions / max(self.n_ref_words, 1)

    @property
    def ins_rate(self) -> float:
        return self.insertions / max(self.n_ref_words, 1)


def utterance_wer(reference: str, hypothesis: str, scheme: str = "whisper") -> float:
    return word_error_rate([reference], [hypothesis], scheme).wer


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], scheme: str = "whisper") -> WER:
    """WER over text normalised by ``scheme``. Raises ValueError for a reference that normalises to
    nothing."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize(r, scheme) for r in references]
    hyps = [normalize(h, scheme) for h in hypotheses]
    for i, r in enumerate(refs):
        if not r:
            raise ValueError(f"reference {i} ({references[i]!r}) is empty after normalisation")
    per_utt = []
    s = d = ins = h = 0
    for r, hyp in zip(refs, hyps, strict=True):
        # jiwer refuses an empty hypothesis string; an empty hypothesis is all deletions
        out = jiwer.process_words(r, hyp) if hyp else None
        n = len(r.split())
        if out is None:
            d += n
            per_utt.append(1.0)
            continue
        s, d, ins, h = s + out.substitutions, d + out.deletions, ins + out.insertions, h + out.hits
        per_utt.append((out.substitutions + out.deletions + out.insertions) / n)
    n_ref = sum(len(r.split()) for r in refs)
    return WER(
        wer=(s + d + ins) / n_ref,
        mean_utterance_wer=sum(per_utt) / len(per_utt),
        substitutions=s,
        deletions=d,
        insertions=ins,
        hits=h,
        n_ref_words=n_ref,
    )
