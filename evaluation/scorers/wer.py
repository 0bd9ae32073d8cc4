"""Word error rate with Whisper's English text normaliser and jiwer's alignment.

Both reference and hypothesis go through ``whisper.normalizers.EnglishTextNormalizer`` (spelling,
numbers, punctuation, casing), so "Mr. Smith's 2 cats" and "mister smith's two cats" agree.
Corpus WER sums errors over all utterances before dividing (jiwer's convention); the mean of
per-utterance WERs is seed-tts-eval's convention; we report both because they differ when
utterance lengths vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import jiwer


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


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


def utterance_wer(reference: str, hypothesis: str) -> float:
    return word_error_rate([reference], [hypothesis]).wer


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> WER:
    """WER over normalised text. Raises ValueError for a reference that normalises to nothing."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
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
