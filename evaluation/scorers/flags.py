"""Per-utterance failure flags for VALL-E-style zero-shot TTS, each with a human-readable reason.

An AR model that emits codebook-1 tokens one frame at a time (75 frames/s) fails in a few typical
ways: it stutters (a word or syllable repeats), it falls into a loop that runs until the length cap
("loop of death"), it stops early (truncation), or it emits silence. Each flag below catches one of
these from the signals a harness has: the AR codes, the stop reason, the ASR transcript, the WER
alignment, the durations and a voice-activity profile. A flag whose input is ``None`` (e.g. an
external generator gives no codes) is not evaluated.

Definitions (thresholds in :class:`FlagThresholds`):

``max_length``
    ``stop_reason == "max_length"``: the AR never emitted end-of-sequence and hit the length cap.
``code_repetition``
    :func:`repetition_ratio` of the codebook-1 tokens > ``repetition_ratio_max``. The ratio is the
    one repetition-aware sampling (RAS) thresholds in VALL-E 2 (Chen et al., 2024, arXiv 2406.05370,
    sec. 3.2): for frame t, r_t = share of the K = 10 previous tokens equal to token t. VALL-E 2 uses
    it per step at sampling time (t_r = 0.1); here it is averaged over the utterance, and the
    threshold is calibrated on real speech encoded by the project's codecs (see below), because
    codec frames at 75 Hz repeat a lot in steady vowels and pauses even in natural speech.
``code_loop``
    :func:`periodic_repeat` >= ``loop_min_seconds``: a stretch over which ``codes[i] == codes[i + p]``
    for one period p in [0.2 s, 3 s] at a match rate >= 0.8, i.e. the same material replayed. The
    length counted is that of the replayed copies (the region minus its first period), so a phrase
    said twice counts one period and "the the" a few frames. Stationary frames are excluded: frames
    inside a run of one token held >= 0.2 s (silence, a stall, a held vowel) neither match nor add
    length, and the region must hold >= 3 distinct tokens. (Excluding only single-token runs is not
    enough: in ``melvq_24khz`` room silence is long runs of two tokens, which then "looped" for 1.27 s
    in a real VCTK clip.)
``transcript_repetition``
    :func:`repeated_ngrams`: a word 2-, 3- or 4-gram that occurs >= 3 times in the ASR hypothesis and
    more often than in the reference (so a reference that itself repeats a phrase is not flagged).
``transcript_compression``
    gzip compression ratio of the hypothesis > 2.4: Whisper's own hallucination/loop test
    (``compression_ratio_threshold`` in ``whisper/transcribe.py``; ratio = ``len(b) /
    len(zlib.compress(b))`` of the UTF-8 text, ``whisper.utils.compression_ratio``).
``wer_failure``
    utterance WER > 0.5: the output does not say the text. seed-tts-eval reports WER per utterance
    (mean of utterance WERs); a WER above 50% is a failed generation, not a mispronunciation.
``duration``
    ``seconds / expected_seconds`` outside [0.5, 2.0]: far too short (early stop) or too long (loop,
    long silences). The expected duration comes from the caller (e.g. the reference recording).
``silence``
    Silero VAD (the ``silero-vad`` package; :class:`SpeechActivity`) finds speech in less than 30% of
    the clip, or a pause longer than 2 s between the first and last speech. Measured on the 50 real
    clips below: speech ratio 0.24-1.00 (mean 0.82; 49 of 50 >= 0.55), longest pause 0.71 s. The one
    real clip under 0.3 is a raw VCTK recording with 2.7 s of room tone before a 1.1 s sentence, the
    very shape (mostly non-speech) the flag exists to catch in generated audio.
``truncation``
    ASR deletions / reference words > 0.5: more than half the text is missing (early stop). A
    WER-failure that is mostly deletions is truncation rather than garbling.

Calibration, on codebook 1 of the offline codec ``melvq_24khz`` (75 Hz, 1024 entries):

- 50 real read-English clips (``shared/data/real_speech``: LibriTTS, LibriSpeech, VCTK, CMU ARCTIC,
  LJ Speech, 16 speakers, 5.1 min): repetition ratio 0.08-0.42 (mean 0.19); periodic repeat
  0.03-0.37 s (mean 0.13 s).
- 1724 synthetic training clips (eSpeak NG and Piper, ``data/corpus``, cached tokens): repetition
  ratio 0.05-0.43 (mean 0.14, 99th percentile 0.28); periodic repeat 0.00-0.73 s (99th percentile
  0.33 s; the maximum is eSpeak saying "incidental, accidental", a true repeat of "-idental").
- 24 outputs of the demo checkpoint (``runs/demo_eval``, audio re-encoded since the records keep no
  codes): repetition ratio 0.08-0.38, periodic repeat <= 0.28 s.
- a constant run (stall, digital silence) scores 1.0.

So ``repetition_ratio_max = 0.6`` is 1.4x the highest natural value measured and is reached when
about half of an utterance is a held token; 1.0 s of replayed material is 2.7x the longest real-speech
value. The ratio counts short-range repetition (periods under K frames); loops with longer periods
are ``code_loop``'s job. Not measured for EnCodec (its weights are not available offline): check
these ranges before trusting the thresholds with another codec.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from valle.audio import check_audio, resample

FLAG_NAMES: tuple[str, ...] = (
    "max_length",
    "code_repetition",
    "code_loop",
    "transcript_repetition",
    "transcript_compression",
    "wer_failure",
    "duration",
    "silence",
    "truncation",
)
STOP_REASONS = ("eos", "max_length")
VAD_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class FlagThresholds:
    repetition_window: int = 10  # VALL-E 2's K
    repetition_ratio_max: float = 0.6  # real speech (melvq codes) 0.08-0.42; see module docstring
    loop_min_seconds: float = 1.0  # this much replayed material is a loop, not a stutter
    loop_min_period_s: float = 0.2  # shorter periods are within-phone steady states
    loop_max_period_s: float = 3.0
    loop_match: float = 0.8
    ngram_n: tuple[int, ...] = (2, 3, 4)
    ngram_min_count: int = 3
    gzip_ratio_max: float = 2.4  # Whisper's compression_ratio_threshold
    wer_max: float = 0.5
    duration_ratio_range: tuple[float, float] = (0.5, 2.0)
    speech_ratio_min: float = 0.3  # real clips 0.24-1.00 (49 of 50 >= 0.55); see module docstring
    pause_max_s: float = 2.0
    deletion_rate_max: float = 0.5


def _check_codes(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 1:
        raise ValueError(
            f"codes: expected codebook-1 tokens of shape [T], got {codes.shape} (pass codes[:, 0])"
        )
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes: expected integer tokens, got dtype {codes.dtype}")
    return codes.astype(np.int64, copy=False)


def repetition_ratio(codes: np.ndarray, window: int = 10) -> float:
    """Mean over frames of VALL-E 2's repetition ratio. ``codes``: ``[T]`` int (codebook 1).

    For frame t >= 1 the window is the min(t, K) previous tokens and r_t is the share of them equal
    to ``codes[t]``; the result is the mean of r_1 .. r_{T-1} (0.0 when T < 2). Dividing by the
    tokens actually present (RAS divides by K throughout) only changes the first K frames, and makes
    a constant sequence score exactly 1 and an all-distinct one exactly 0.
    """
    codes = _check_codes(codes)
    if window < 1:
        raise ValueError(f"repetition window must be >= 1, got {window}")
    T = len(codes)
    if T < 2:
        return 0.0
    counts = np.zeros(T, dtype=np.int64)
    for k in range(1, min(window, T - 1) + 1):
        counts[k:] += codes[k:] == codes[:-k]  # token t equals token t - k
    denom = np.minimum(np.arange(T), window)
    return float(np.mean(counts[1:] / denom[1:]))


def periodic_repeat(
    codes: np.ndarray, frame_rate: float, t: FlagThresholds = FlagThresholds()
) -> tuple[float, float]:
    """Longest replayed stretch in ``codes`` ``[T]``: ``(seconds, period_seconds)``; ``(0.0, 0.0)`` if none.

    Stationary frames, those inside a run of one token held >= p_min frames (silence, a stall, a held
    vowel), are dropped first. For each period p (frames) in [loop_min_period_s, loop_max_period_s] *
    frame_rate, m_p[i] = ``codes[i] == codes[i + p]`` over the remaining i; the stretch is the longest
    interval whose mean of m_p is >= ``loop_match``, trimmed to its first and last match. Its length
    in remaining frames is the replayed material (the region it covers minus the first period). A
    region with fewer than 3 distinct tokens is rejected (stall or silence, not a loop).

    Longest interval with mean >= m is the longest [i, j) with S[j] >= S[i] for the prefix sums S of
    x = m_p - m; with the prefix minima L (non-increasing) and suffix maxima R, it is max over j of
    j - (first i with L[i] <= R[j]), one ``searchsorted`` for all periods at once: O(T P log(T P)).
    """
    codes = _check_codes(codes)
    if not frame_rate > 0:
        raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
    if not 0 < t.loop_match <= 1:
        raise ValueError(f"loop_match must be in (0, 1], got {t.loop_match}")
    T = len(codes)
    p_min = max(1, math.ceil(t.loop_min_period_s * frame_rate))
    p_max = min(math.floor(t.loop_max_period_s * frame_rate), T - 1)
    if p_max < p_min:
        return 0.0, 0.0
    # Frames inside a run of one token held >= p_min frames are stationary (silence, a stall, a held
    # vowel): they neither count as matches nor add length. In this codec silence is long runs of
    # two or three tokens, which would otherwise match themselves at every period.
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    run_len = np.diff(np.concatenate([starts, [T]]))
    kept = np.flatnonzero(np.repeat(run_len, run_len) < p_min)  # original frame index of each kept frame
    periods = np.arange(p_min, p_max + 1)  # [P]
    i = kept[kept < T - p_min]  # [n] match positions (for the smallest period)
    n = len(i)
    if n == 0:
        return 0.0, 0.0
    j = i[None, :] + periods[:, None]  # [P, n]: partner frame i + p
    valid = j < T
    match = valid & (codes[i][None, :] == codes[np.minimum(j, T - 1)])
    # integer arithmetic keeps the prefix-sum comparisons and the row offsets below exact
    unit = 1_000_000
    need = round(t.loop_match * unit)
    pad = -(n + 1) * unit  # past the end of a row: no interval can reach into it
    x = np.where(valid, np.where(match, unit - need, -need), pad).astype(np.int64)
    S = np.concatenate([np.zeros((len(periods), 1), np.int64), np.cumsum(x, axis=1)], axis=1)  # [P, n+1]
    L = np.minimum.accumulate(S, axis=1)
    R = np.maximum.accumulate(S[:, ::-1], axis=1)[:, ::-1]
    # first k with L[k] <= R[e] == first k with -L[k] >= -R[e]; -L rows are sorted, so offset each
    # row past the previous one and search the flattened array once
    span = int(S.max() - S.min()) + 1
    offset = (np.arange(len(periods), dtype=np.int64) * span)[:, None]
    first = np.searchsorted((-L + offset).ravel(), (-R + offset).ravel(), side="left")
    first = first.reshape(S.shape) - np.arange(len(periods))[:, None] * S.shape[1]
    length = np.arange(S.shape[1])[None, :] - first  # [P, n+1], in kept frames
    end = length.argmax(axis=1)
    best = length[np.arange(len(periods)), end]
    found = (0, 0)  # (kept frames, period)
    for r in np.flatnonzero(best > 0):
        # the interval may reach past the repeat into mismatches the surplus absorbs (up to
        # 1 - loop_match of it); trim it to its first and last match so only replayed frames count
        hits = np.flatnonzero(match[r, end[r] - best[r] : end[r]]) + end[r] - best[r]
        k = int(hits[-1] - hits[0]) + 1
        p = int(periods[r])
        if k > found[0] and len(np.unique(codes[i[hits[0]] : i[hits[-1]] + p + 1])) >= 3:
            found = (k, p)
    return found[0] / frame_rate, found[1] / frame_rate


def gzip_compression_ratio(text: str) -> float:
    """Whisper's ``compression_ratio``: UTF-8 bytes / zlib-compressed bytes; ``""`` -> 0.0."""
    b = text.encode("utf-8")
    if not b:
        return 0.0
    return len(b) / len(zlib.compress(b))


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(" ".join(words[k : k + n]) for k in range(len(words) - n + 1))


def repeated_ngrams(
    hyp_words: list[str],
    ref_words: list[str],
    n_values: tuple[int, ...] = (2, 3, 4),
    min_count: int = 3,
) -> list[tuple[str, int, int]]:
    """Word n-grams seen >= ``min_count`` times in the hypothesis and more often than in the reference.

    Returns ``(ngram, hyp_count, ref_count)`` ordered by n, then by hypothesis count (descending).
    """
    out: list[tuple[str, int, int]] = []
    for n in n_values:
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        hyp, ref = _ngrams(hyp_words, n), _ngrams(ref_words, n)
        hits = [(g, c, ref[g]) for g, c in hyp.items() if c >= min_count and c > ref[g]]
        out += sorted(hits, key=lambda h: (-h[1], h[0]))
    return out


class SpeechActivity:
    """Speech ratio and longest internal pause from Silero VAD (weights bundled in ``silero-vad``)."""

    def __init__(self, threshold: float = 0.5) -> None:
        # silero_vad.model calls torch.set_num_threads(1) at import; keep the caller's setting
        n_threads = torch.get_num_threads()
        try:
            # Silero VAD loads a TorchScript model; imported only when VAD is on
            from silero_vad import get_speech_timestamps, load_silero_vad
        finally:
            torch.set_num_threads(n_threads)
        self.threshold = threshold
        self._timestamps = get_speech_timestamps
        self._model = load_silero_vad()

    def measure(self, wav: np.ndarray, sr: int) -> tuple[float, float]:
        """``wav`` ``[N]`` mono float at ``sr`` -> (speech_ratio, longest internal pause in seconds).

        Audio is resampled to 16 kHz. The internal pause is the longest gap between consecutive
        speech segments (0.0 for one segment); with no speech the result is ``(0.0, nan)``.
        """
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"wav: expected mono audio of shape [N], got {wav.shape}")
        check_audio(wav, sr, "wav", allow_silent=True)
        wav = resample(wav, sr, VAD_SAMPLE_RATE)
        # the model steps through 32 ms chunks one at a time: a second intra-op thread only adds
        # overhead (5x slower on 2 busy cores), hence silero's own set_num_threads(1)
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            segs = self._timestamps(
                torch.from_numpy(np.ascontiguousarray(wav)),
                self._model,
                threshold=self.threshold,
                sampling_rate=VAD_SAMPLE_RATE,
            )
        finally:
            torch.set_num_threads(n_threads)
        if not segs:
            return 0.0, math.nan
        speech = sum(s["end"] - s["start"] for s in segs)
        gaps = [b["start"] - a["end"] for a, b in itertools.pairwise(segs)]
        return speech / len(wav), max(gaps, default=0) / VAD_SAMPLE_RATE


def utterance_flags(
    *,
    stop_reason: str | None,
    codes: np.ndarray | None,
    frame_rate: float | None,
    ref_norm: str,
    hyp_norm: str,
    wer: float | None,
    deletions: int | None,
    seconds: float | None,
    expected_seconds: float | None,
    speech_ratio: float | None,
    longest_pause: float | None,
    t: FlagThresholds = FlagThresholds(),
) -> dict[str, str]:
    """``{flag: reason}`` for every flag raised (empty = clean); see the module docstring.

    ``codes`` is ``[T]`` codebook-1 tokens; ``ref_norm`` / ``hyp_norm`` are normalised texts (the WER
    normaliser's output). An input that is ``None`` means "not available" and skips its flags.
    """
    flags: dict[str, str] = {}
    if stop_reason is not None:
        if stop_reason not in STOP_REASONS:
            raise ValueError(f"stop_reason: expected one of {STOP_REASONS}, got {stop_reason!r}")
        if stop_reason == "max_length":
            flags["max_length"] = "hit the length cap without end-of-sequence"
    if codes is not None:
        r = repetition_ratio(codes, t.repetition_window)
        if r > t.repetition_ratio_max:
            flags["code_repetition"] = f"repetition ratio {r:.2f} > {t.repetition_ratio_max:.2f}"
        if frame_rate is not None:
            loop_s, period_s = periodic_repeat(codes, frame_rate, t)
            if loop_s >= t.loop_min_seconds:
                flags["code_loop"] = (
                    f"{loop_s:.2f} s repeated with period {period_s:.2f} s >= {t.loop_min_seconds:.2f} s"
                )
    hyp_words, ref_words = hyp_norm.split(), ref_norm.split()
    reps = repeated_ngrams(hyp_words, ref_words, t.ngram_n, t.ngram_min_count)
    if reps:
        g, c, rc = max(reps, key=lambda h: (len(h[0].split()), h[1]))  # longest, then most frequent
        flags["transcript_repetition"] = f"{g!r} x{c} (reference x{rc})" + (
            f" and {len(reps) - 1} more n-grams" if len(reps) > 1 else ""
        )
    g = gzip_compression_ratio(hyp_norm)
    if g > t.gzip_ratio_max:
        flags["transcript_compression"] = f"gzip ratio {g:.2f} > {t.gzip_ratio_max:.2f}"
    if wer is not None and wer > t.wer_max:
        flags["wer_failure"] = f"WER {wer:.2f} > {t.wer_max:.2f}"
    if seconds is not None and expected_seconds is not None:
        if not expected_seconds > 0:
            raise ValueError(f"expected_seconds must be > 0, got {expected_seconds}")
        ratio = seconds / expected_seconds
        lo, hi = t.duration_ratio_range
        if not lo <= ratio <= hi:
            flags["duration"] = (
                f"{seconds:.2f} s is {ratio:.2f}x the expected {expected_seconds:.2f} s "
                f"(outside {lo:g}-{hi:g}x)"
            )
    silence = []
    if speech_ratio is not None and speech_ratio < t.speech_ratio_min:
        silence.append(f"speech ratio {speech_ratio:.2f} < {t.speech_ratio_min:.2f}")
    if longest_pause is not None and longest_pause > t.pause_max_s:  # nan (no speech) compares False
        silence.append(f"pause {longest_pause:.2f} s > {t.pause_max_s:.2f} s")
    if silence:
        flags["silence"] = "; ".join(silence)
    if deletions is not None:
        if not ref_words:
            raise ValueError("ref_norm is empty: cannot compute a deletion rate")
        rate = deletions / len(ref_words)
        if rate > t.deletion_rate_max:
            flags["truncation"] = (
                f"{deletions}/{len(ref_words)} reference words deleted "
                f"({rate:.2f} > {t.deletion_rate_max:.2f})"
            )
    return {k: flags[k] for k in FLAG_NAMES if k in flags}
