"""Scoring one chunk of generated utterances: WER, speaker similarity, speech activity, DNSMOS, flags.

Models are loaded once (:class:`Scorers`) and every model sees the whole chunk in one batched call.
All audio is read once at 16 kHz, the rate of every scorer here (Whisper, ECAPA / GE2E, Silero,
DNSMOS).

Who is charged for what:

- a test item that cannot be run (its ``problem``) is an ``invalid_item`` row: counted, never scored;
- a generation that failed (command error, missing file) is charged to the generator: an empty
  hypothesis, so all its reference words are deletions;
- unreadable or NaN output audio is ``invalid_audio``, also charged as an empty hypothesis; silent
  or sub-0.5 s output is scored (empty hypothesis, flags raised) but has no similarity or MOS;
- an ASR crash on a file is ``asr_failed``: counted separately and left out of WER, never charged
  to the generator. The ASR ceiling (the same ASR on the ground-truth recording) is in the
  reference rows, so a reader can see which items the recogniser itself gets wrong.

The ASR convention (``ScoringConfig.asr_options.compat``, :mod:`evaluation.scorers.asr`) decides how
the recogniser's input is resampled and how text is normalised for WER; under ``seed-tts-eval`` the
recogniser's input is read again at the file's own rate and resampled as that toolkit does, while
every other scorer keeps the shared 16 kHz copy.

For continuation items the recogniser hears the prompt followed by the continuation and is scored
against the full transcript (the paper's protocol: the text of the continuation alone is unknown
without an alignment); similarity and MOS use the generated continuation only.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import jiwer
import numpy as np

from evaluation.scorers.asr import ASROptions, to_whisper_rate
from evaluation.scorers.flags import (
    FLAG_NAMES,
    FlagThresholds,
    gzip_compression_ratio,
    periodic_repeat,
    repetition_ratio,
    utterance_flags,
)
from evaluation.scorers.registry import load_scorer
from evaluation.scorers.speaker import DEFAULT_SPEAKER, cosine
from evaluation.scorers.wer import normalize
from evaluation.testsets.testset import TestItem
from valle.audio import SILENCE_PEAK, AudioError, load_audio

SR = 16_000
MIN_SCORABLE_SECONDS = 0.5


@dataclass(frozen=True)
class ScoringConfig:
    asr: str = "faster-whisper"
    asr_model: str | None = None  # CTranslate2 dir / Whisper name or .pt; None = backend default
    asr_options: ASROptions = field(default_factory=ASROptions)
    speaker: str = DEFAULT_SPEAKER
    speaker_model: str | None = None
    quality: bool = True  # DNSMOS
    vad: bool = True  # Silero speech activity (silence flag)
    thresholds: FlagThresholds = field(default_factory=FlagThresholds)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def time(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] += time.perf_counter() - t0


def load16k(path) -> np.ndarray:
    """16 kHz mono; resampling a full-scale file overshoots [-1, 1] slightly, which DNSMOS refuses."""
    return np.clip(load_audio(path, SR, allow_silent=True)[0], -1.0, 1.0)


def text_scheme(options: ASROptions) -> str:
    """The WER text normaliser (:data:`evaluation.scorers.wer.NORMALIZERS`) of an ASR convention."""
    return "seed-tts-eval" if options.compat == "seed-tts-eval" else "whisper"


def word_counts(ref_norm: str, hyp_norm: str) -> dict[str, int]:
    """S/D/I/hits of one utterance on normalised strings (empty hypothesis = all deletions)."""
    n = len(ref_norm.split())
    if not hyp_norm:
        return {"substitutions": 0, "deletions": n, "insertions": 0, "hits": 0, "n_ref_words": n}
    out = jiwer.process_words(ref_norm, hyp_norm)
    return {
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
        "n_ref_words": n,
    }


class Scorers:
    """Every model the score stage needs, loaded once per process."""

    def __init__(self, config: ScoringConfig = ScoringConfig(), device: str = "cpu") -> None:
        self.config = config
        self.asr = load_scorer("asr", config.asr, config.asr_model, device, options=config.asr_options)
        self.compat = config.asr_options.compat
        self.scheme = text_scheme(config.asr_options)
        self.speaker = load_scorer("speaker", config.speaker, config.speaker_model, device)
        self.vad = load_scorer("vad") if config.vad else None
        self.dnsmos = load_scorer("quality") if config.quality else None
        self.timer = Timer()

    def cards(self) -> dict:
        return {
            "asr": {**self.asr.card(), "text_normalizer": self.scheme},
            "speaker": self.speaker.card(),
            "vad": {"backend": "silero-vad"} if self.vad else None,
            "quality": self.dnsmos.card() if self.dnsmos else None,
        }

    def _asr_input(self, path, shared: np.ndarray) -> np.ndarray:
        """What the recogniser hears for ``path``: the shared 16 kHz copy, or under ``seed-tts-eval``
        the file read at its own rate and resampled as that toolkit does."""
        if self.compat == "project":
            return shared
        wav, sr = load_audio(path, None, allow_silent=True)
        return to_whisper_rate(wav, sr, self.compat)

    # --- batched model calls that isolate a crashing item instead of losing the chunk ---------
    def _batched(self, stage: str, fn, wavs: list[np.ndarray]) -> list:
        """``fn(wavs, SR)`` as one batch; if it raises, item by item, so one bad clip costs one
        result (an Exception in its place) instead of the whole chunk."""
        if not wavs:
            return []
        try:
            return list(self.timer.time(stage, fn, wavs, SR))
        except Exception:
            out = []
            for w in wavs:
                try:
                    out.append(self.timer.time(stage, fn, [w], SR)[0])
                except Exception as err:
                    out.append(err)
            return out

    def score_chunk(
        self, gen_rows: list[dict], items: dict[str, TestItem], prompt_dir
    ) -> tuple[list[dict], list[dict]]:
        """Score one chunk: generation rows (one per item x seed) -> (score rows, reference rows)."""
        t = self.config.thresholds
        chunk_items = sorted({r["id"] for r in gen_rows})
        audio: dict[str, np.ndarray] = {}  # key -> 16 kHz wav of each generated row
        paths: dict[str, str] = {}  # key -> its file
        rows: dict[str, dict] = {}
        io_t0 = time.perf_counter()
        prompts, targets, lost = {}, {}, {}
        for iid in sorted({g["id"] for g in gen_rows if g["status"] != "skipped"}):
            try:
                prompts[iid] = load16k(prompt_dir / f"{iid}.wav")
                if items[iid].target_audio is not None:
                    targets[iid] = load16k(items[iid].target_audio)
            except AudioError as err:  # a file that went missing or bad after the test set was built
                lost[iid] = str(err)
                prompts.pop(iid, None)
        for g in gen_rows:
            it = items[g["id"]]
            row = {
                "key": g["key"],
                "id": g["id"],
                "seed": g["seed"],
                "speaker": it.speaker,
                "mode": it.mode,
                "text": it.text,
                "status": "ok",
                "error": None,
                "hyp": "",
            }
            rows[g["key"]] = row
            if g["status"] == "skipped" or g["id"] in lost:  # the item's problem, or its prompt/target
                row.update(status="invalid_item", error=lost.get(g["id"]) or g["error"])
                continue
            row["ref_norm"] = normalize(it.text, self.scheme)
            if g["status"] != "ok":
                row.update(status="generation_failed", error=g["error"])
                continue
            try:
                wav = load16k(g["audio"])
            except AudioError as err:
                row.update(status="invalid_audio", error=str(err))
                continue
            row["seconds"] = len(wav) / SR
            paths[g["key"]] = g["audio"]
            if float(np.abs(wav).max()) < SILENCE_PEAK or row["seconds"] < MIN_SCORABLE_SECONDS:
                row["degenerate"] = "silent" if float(np.abs(wav).max()) < SILENCE_PEAK else "too short"
            audio[g["key"]] = wav
        self.timer.seconds["io"] += time.perf_counter() - io_t0

        scorable = [k for k, w in audio.items() if "degenerate" not in rows[k]]
        # ASR: continuation items are heard with their prompt in front (see module doc)
        asr_in = []
        for k in scorable:
            heard = self._asr_input(paths[k], audio[k])
            if rows[k]["mode"] == "continuation":
                iid = rows[k]["id"]
                heard = np.concatenate([self._asr_input(prompt_dir / f"{iid}.wav", prompts[iid]), heard])
            asr_in.append(heard)
        ref_ids = sorted(targets)
        ref_in = [self._asr_input(items[i].target_audio, targets[i]) for i in ref_ids]
        transcripts = self._batched("asr", self.asr.transcribe_batch, asr_in + ref_in)
        for k, tr in zip(scorable, transcripts[: len(scorable)], strict=True):
            if isinstance(tr, Exception):
                rows[k].update(status="asr_failed", error=f"ASR failed: {tr}")
                continue
            rows[k].update(
                hyp=tr.text,
                asr_temperature=tr.temperature,
                asr_fallback_exhausted=bool(getattr(tr, "fallback_exhausted", False)),
            )
        gt_text = dict(zip(ref_ids, transcripts[len(scorable) :], strict=True))

        # speaker embeddings: generated rows, prompts and targets in one batch
        emb_keys = [k for k in scorable if rows[k]["status"] == "ok"]
        emb_wavs = [audio[k] for k in emb_keys] + list(prompts.values()) + [targets[i] for i in ref_ids]
        emb = self._batched("speaker", self.speaker.embed_batch, emb_wavs)
        n = len(emb_keys)
        prompt_emb = dict(zip(prompts, emb[n : n + len(prompts)], strict=True))
        target_emb = dict(zip(ref_ids, emb[n + len(prompts) :], strict=True))
        for k, e in zip(emb_keys, emb[:n], strict=True):
            iid = rows[k]["id"]
            for col, other in (("sim_prompt", prompt_emb.get(iid)), ("sim_target", target_emb.get(iid))):
                bad = next((x for x in (e, other) if isinstance(x, Exception)), None)
                if bad is not None:
                    rows[k].setdefault("score_errors", {})["speaker"] = str(bad)
                elif other is not None:
                    rows[k][col] = float(cosine(e, other))

        if self.vad is not None:
            for k in audio:
                ratio, pause = self.timer.time("vad", self.vad.measure, audio[k], SR)
                rows[k].update(speech_ratio=ratio, longest_pause=pause)
        gt_mos = {}
        if self.dnsmos is not None:
            mos = self._batched(
                "quality",
                self.dnsmos.score_batch,
                [audio[k] for k in emb_keys] + [targets[i] for i in ref_ids],
            )
            for k, m in zip(emb_keys, mos[: len(emb_keys)], strict=True):
                if isinstance(m, Exception):
                    rows[k].setdefault("score_errors", {})["quality"] = str(m)
                else:
                    rows[k].update({f"dnsmos_{name}": v for name, v in m.items()})
            gt_mos = {
                i: m
                for i, m in zip(ref_ids, mos[len(emb_keys) :], strict=True)
                if not isinstance(m, Exception)
            }

        gen_by_key = {g["key"]: g for g in gen_rows}
        for k, row in rows.items():
            if row["status"] in ("invalid_item", "asr_failed"):
                continue
            it, g = items[row["id"]], gen_by_key[k]
            row["hyp_norm"] = normalize(row["hyp"], self.scheme)
            row.update(word_counts(row["ref_norm"], row["hyp_norm"]))
            row["wer"] = (row["substitutions"] + row["deletions"] + row["insertions"]) / max(
                row["n_ref_words"], 1
            )
            if row["status"] != "ok":
                continue
            codes = np.asarray(g["ar_codes"]) if g.get("ar_codes") is not None else None
            frame_rate = g.get("frame_rate")
            expected = _expected_seconds(it)
            if codes is not None and len(codes):
                row["repetition_ratio"] = repetition_ratio(codes, t.repetition_window)
                row["loop_seconds"], row["loop_period"] = periodic_repeat(codes, frame_rate, t)
            row["gzip_ratio"] = gzip_compression_ratio(row["hyp_norm"])
            row["expected_seconds"] = expected
            if expected:
                row["duration_ratio"] = row["seconds"] / expected
            if "degenerate" in row:
                row.setdefault("speech_ratio", 0.0)
            flags = utterance_flags(
                stop_reason=g.get("stop_reason"),
                codes=codes if codes is not None and len(codes) else None,
                frame_rate=frame_rate,
                ref_norm=row["ref_norm"],
                hyp_norm=row["hyp_norm"],
                wer=row["wer"],
                deletions=row["deletions"],
                seconds=row["seconds"],
                expected_seconds=expected,
                speech_ratio=row.get("speech_ratio"),
                longest_pause=row.get("longest_pause"),
                t=t,
            )
            row["flag_reasons"] = json.dumps(flags, sort_keys=True)
            has_codes = codes is not None and len(codes) > 0
            evaluated = {
                "max_length": g.get("stop_reason") is not None,
                "code_repetition": has_codes,
                "code_loop": has_codes,
                "duration": expected is not None,
                "silence": row.get("speech_ratio") is not None,
            }
            for name in FLAG_NAMES:
                # None = not measurable for this generator (no codes, no stop reason): not a pass
                row[f"flag_{name}"] = (name in flags) if evaluated.get(name, True) else None
            row["any_flag"] = bool(flags)
            row["watermark_verified"] = g.get("watermark_verified")

        refs = []
        for iid in chunk_items:
            it = items[iid]
            ref = {"id": iid, "speaker": it.speaker, "mode": it.mode, "has_target": iid in targets}
            if iid in gt_text and not isinstance(gt_text[iid], Exception):
                tr = gt_text[iid]
                ref_norm, hyp_norm = normalize(it.text, self.scheme), normalize(tr.text, self.scheme)
                ref.update(
                    gt_hyp=tr.text,
                    gt_asr_fallback_exhausted=bool(tr.fallback_exhausted),
                    **word_counts(ref_norm, hyp_norm),
                )
                ref["wer"] = (ref["substitutions"] + ref["deletions"] + ref["insertions"]) / max(
                    ref["n_ref_words"], 1
                )
            pair = (target_emb.get(iid), prompt_emb.get(iid))
            if all(x is not None and not isinstance(x, Exception) for x in pair):
                ref["sim_target_prompt"] = float(cosine(target_emb[iid], prompt_emb[iid]))
            if iid in gt_mos:
                ref.update({f"dnsmos_{name}": v for name, v in gt_mos[iid].items()})
            refs.append(ref)
        for row in rows.values():
            if "score_errors" in row:  # a scorer failed on this file: kept, visible, not fatal
                row["score_errors"] = json.dumps(row["score_errors"], sort_keys=True)
        return [rows[g["key"]] for g in gen_rows], refs


def _expected_seconds(it: TestItem) -> float | None:
    """Duration the output should have: the ground truth's (minus the prompt when continuing), else
    the prompt's speaking rate in characters per second times the target's length."""
    if it.target_seconds:
        if it.mode == "continuation":
            return max(it.target_seconds - (it.prompt_end or 0.0), 0.1)
        return it.target_seconds
    if it.prompt_text and it.prompt_end:
        return (it.prompt_end - it.prompt_start) / max(len(it.prompt_text), 1) * len(it.text)
    return None
