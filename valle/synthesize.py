"""The public synthesis API: text + a voice prompt -> watermarked speech, with a record per utterance.

Every waveform this module returns or writes has gone through a watermark backend (the protocol in
``watermark.base``); there is no switch to turn that off. ``save`` reads each file back and runs
the detector, and records whether the mark was found.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from valle.audio import SILENCE_PEAK, AudioError, load_audio, save_audio
from valle.checkpoint import Checkpoint, load_checkpoint, require_parts
from valle.codec import load_codec_for
from valle.generate import (
    GenerationOptions,
    continuation_inputs,
    cross_sentence_inputs,
    expected_frames,
    generate,
)
from valle.phonemes import Phonemizer, text_to_ids
from valle.sampling import calibrated
from valle.text import rate_problem
from watermark import check_registered
from watermark.base import Watermarker, WatermarkError, carries_payload
from watermark.keys import WatermarkKey
from watermark.ledger import Ledger
from watermark.provenance import build_manifest, payload_from_str, payload_to_str, sign_manifest

MIN_PROMPT_SECONDS = 1.0
MAX_PROMPT_SECONDS = 30.0
MODES = ("cross_sentence", "continuation")


@dataclass
class GenerationRecord:
    """One generated utterance. ``audio`` is always the watermarked waveform."""

    id: str
    text: str
    audio: np.ndarray  # [N] float32, watermarked
    sample_rate: int
    # [T, 8] codec tokens, for code-level analysis (loops, repetition). Codes are not audio: the
    # watermark promise covers ``audio`` and every file this package writes, not a waveform someone
    # decodes from these codes with the codec themselves (`valle codec roundtrip` marks its output).
    codes: torch.Tensor
    stop_reason: str  # "eos" | "max_length"
    seed: int
    mode: str
    sampling: dict
    watermark: dict  # backend card and payload (None for presence-only backends)
    model_sha256: str
    codec: dict
    verification: dict = field(default_factory=dict)  # filled by save(): read back and detected

    def metadata(self) -> dict:
        """Everything but the arrays, JSON-serialisable."""
        d = {k: v for k, v in asdict(self).items() if k not in ("audio", "codes")}
        d["n_frames"] = int(self.codes.shape[0])
        d["seconds"] = round(len(self.audio) / self.sample_rate, 3)
        return d


@dataclass(frozen=True)
class SynthesisRequest:
    """One item of a batch: its own text and prompt (a file, or codes already encoded [Tp, Q])."""

    id: str
    text: str
    prompt_audio: str | Path | torch.Tensor
    prompt_text: str | None = None  # transcript of the prompt (cross-sentence mode)
    mode: str = "cross_sentence"
    prompt_sr: int | None = None


class Generator:
    """A loaded checkpoint, its codec, the phonemizer and a watermark backend, ready to synthesise."""

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        watermarker: Watermarker,
        device: str = "cpu",
        codec_weights: str | Path | None = None,
        min_length_ratio: float = 0.5,
        key: WatermarkKey | None = None,
        signer: Ed25519PrivateKey | None = None,
    ) -> None:
        """``key`` derives each output's payload (needed by backends that carry one); ``signer``
        signs a provenance manifest per saved file and appends it to the folder's ledger."""
        check_registered(watermarker)  # only registered backends: their own embed and detect run
        if watermarker.payload_bits and key is None:
            raise WatermarkError(
                f"{watermarker.name} carries a {watermarker.payload_bits}-bit payload, which is derived from "
                "a secret watermark key: give a key file (or set VALLE_WATERMARK_KEY)"
            )
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, device)
        require_parts(self.ckpt, "ar", "nar", what="generating speech")
        self.model = self.ckpt.model.to(device).eval()
        self.codec = load_codec_for(self.ckpt.codec, weights=codec_weights, device=device)
        self.phonemizer = Phonemizer()
        self.watermarker = watermarker
        self.min_length_ratio = min_length_ratio
        self.key = key
        self.signer = signer

    def _ids(self, text: str, what: str) -> list[int]:
        try:
            ids, _ = text_to_ids(text, self.ckpt.symbols, self.phonemizer, strict=True)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from err
        return ids

    def _prompt_codes(self, prompt_audio: str | Path | np.ndarray, sr: int | None) -> torch.Tensor:
        name = str(prompt_audio) if isinstance(prompt_audio, (str, Path)) else "prompt audio"
        if isinstance(prompt_audio, (str, Path)):
            wav, sr = load_audio(prompt_audio)
        else:
            if sr is None:
                raise AudioError("prompt audio given as an array needs its sample rate (prompt_sr)")
            wav = np.asarray(prompt_audio, dtype=np.float32)
        seconds = len(wav) / sr
        if not MIN_PROMPT_SECONDS <= seconds <= MAX_PROMPT_SECONDS:
            raise AudioError(
                f"{name}: prompt is {seconds:.2f} s; it must be "
                f"{MIN_PROMPT_SECONDS:g}-{MAX_PROMPT_SECONDS:g} s (VALL-E uses 3 s)"
            )
        return self.codec.encode(wav, sr, name=name)

    def synthesize(
        self,
        texts: list[str],
        prompt_audio: str | Path | np.ndarray,
        prompt_text: str,
        options: GenerationOptions | None = None,
        ids: list[str] | None = None,
        mode: str = "cross_sentence",
        prompt_sr: int | None = None,
    ) -> list[GenerationRecord]:
        """Generate one utterance per text in the prompt's voice, as one batch.

        ``cross_sentence``: ``prompt_audio`` is another utterance of the speaker and ``prompt_text`` its
        transcript. ``continuation``: ``prompt_audio`` is the whole target utterance and ``texts`` its
        full transcript; its first 3 s are the prompt and the rest is regenerated.
        """
        if not texts:
            raise ValueError("no texts to synthesise")
        ids = ids or [f"utt{i:04d}" for i in range(len(texts))]
        if len(ids) != len(texts):
            raise ValueError(f"need {len(texts)} distinct ids, got {ids}")
        prompt = self._prompt_codes(prompt_audio, prompt_sr)
        requests = [
            SynthesisRequest(uid, text, prompt, prompt_text, mode)
            for uid, text in zip(ids, texts, strict=True)
        ]
        return self.synthesize_requests(requests, options)

    def synthesize_requests(
        self,
        requests: list[SynthesisRequest],
        options: GenerationOptions | None = None,
        seeds: list[int] | None = None,
    ) -> list[GenerationRecord]:
        """Generate a batch in which every request has its own prompt (an evaluation test set).

        Item i samples with ``seeds[i]`` (default ``options.seed + i``): give explicit seeds to make
        an item's output independent of its position in the batch.
        """
        options = options or GenerationOptions()
        if not requests:
            raise ValueError("no texts to synthesise")
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"need distinct ids, got {ids}")
        frame_rate = self.codec.frame_rate
        prompted = []
        for i, r in enumerate(requests):
            if r.mode not in MODES:
                raise ValueError(f"request {r.id}: mode must be one of {MODES}, got {r.mode!r}")
            prompt = (
                r.prompt_audio
                if isinstance(r.prompt_audio, torch.Tensor)
                else self._prompt_codes(r.prompt_audio, r.prompt_sr)
            )
            if r.mode == "cross_sentence":
                # a prompt text that cannot be what the prompt audio says (10,000 words on 3 s) is
                # refused here, as manifests refuse it, not read as if it were
                if problem := rate_problem(r.prompt_text or "", len(prompt) / frame_rate):
                    raise ValueError(f"prompt text {i} ({r.id}): {problem}")
                prompt_ids = self._ids(r.prompt_text or "", f"prompt text {i} ({r.id})")
                text_ids = self._ids(r.text, f"text {i} ({r.id})")
                prompted.append(
                    cross_sentence_inputs(prompt_ids, text_ids, prompt, self.ckpt.symbols.word_id)
                )
            else:
                text_ids = self._ids(r.text, f"text {i} ({r.id})")
                prompted.append(continuation_inputs(text_ids, prompt, frame_rate))
        # Early <eos> is this model family's commonest failure when the prompt is a whole utterance
        # (training always put <eos> after an utterance's end): <eos> is not allowed before
        # min_length_ratio x the length expected at the prompt's speaking rate.
        expected = min(
            expected_frames(len(p.prompt_codes), p.prompt_phonemes, len(p.text_ids) - p.prompt_phonemes)
            for p in prompted
        )
        min_frames = max(options.min_frames, math.floor(self.min_length_ratio * expected))
        gate = options.nar_min_confidence
        if gate is None:  # the checkpoint's recommendation (a demo built with the gate on records it)
            gate = float((self.ckpt.extra.get("nar") or {}).get("min_confidence", 0.0))
        options = replace(
            options,
            min_frames=min_frames,
            sampling=calibrated(options.sampling, self.ckpt.extra),
            nar_min_confidence=gate,
        )
        outputs = generate(
            self.model,
            [p.text_ids for p in prompted],
            [p.prompt_codes for p in prompted],
            [p.prompt_phonemes for p in prompted],
            options,
            frame_rate,
            seeds=seeds,
            nar_fallback=self.codec.neutral_codes() if gate > 0 else None,
        )
        records = []
        for r, out in zip(requests, outputs, strict=True):
            wav, sr = self.codec.decode(out.codes)
            bits = self.watermarker.payload_bits
            # payload = truncated HMAC(key, id | model): ties the file to this request and model
            payload = self.key.payload(r.id, self.ckpt.weights_sha256, bits) if bits else None
            mark = {
                **self.watermarker.card(),
                "payload": payload_to_str(payload),
                "key_id": self.key.key_id if bits else None,
                "applied": True,
            }
            if float(np.abs(wav).max()) < SILENCE_PEAK:
                # a known VALL-E failure (e.g. <eos> at once): nothing audible to mark or to misuse;
                # kept, all zeros, so harnesses count it as a silence failure instead of losing it
                marked = np.zeros_like(wav)
                mark.update(applied=False, reason="silent output: nothing to mark")
            else:
                # the class's method, not the instance's attribute: a patched instance cannot skip it
                marked = type(self.watermarker).embed(self.watermarker, wav, sr, payload=payload)
            records.append(
                GenerationRecord(
                    id=r.id,
                    text=r.text,
                    audio=marked,
                    sample_rate=sr,
                    codes=out.codes,
                    stop_reason=out.stop_reason,
                    seed=out.seed,
                    mode=r.mode,
                    sampling={**asdict(options), "resampled_count": out.resampled_count},
                    watermark=mark,
                    model_sha256=self.ckpt.weights_sha256,
                    codec=self.codec.card.to_json(),
                )
            )
        return records

    def save(
        self, records: list[GenerationRecord], out_dir: str | Path, ledger: str | Path | None = None
    ) -> list[Path]:
        """Write ``<id>.wav`` + ``<id>.json`` per record, then read each back and check its mark
        (presence, and the payload where the backend carries one).

        With a signer, ``<id>.manifest.json`` (signed provenance) is written too and appended to
        ``ledger`` (default ``<out_dir>/ledger.jsonl``; one writer per ledger file).
        """
        out_dir = Path(out_dir)
        ledger = Ledger(ledger or out_dir / "ledger.jsonl") if self.signer is not None else None
        paths = []
        for rec in records:
            path = save_audio(out_dir / f"{rec.id}.wav", rec.audio, rec.sample_rate)
            back, sr = load_audio(path, allow_silent=True)
            if rec.watermark["applied"]:
                det = type(self.watermarker).detect(self.watermarker, back, sr)  # the backend's own
                ok = bool(det.detected)
                rec.verification = {"detected": ok, "score": round(det.score, 4)}
                if rec.watermark["payload"] is not None:
                    same = carries_payload(self.watermarker, det, payload_from_str(rec.watermark["payload"]))
                    rec.verification.update(payload_match=same, detected=ok and same)
            else:
                rec.verification = {"detected": False, "score": 0.0, "reason": rec.watermark["reason"]}
            if ledger is not None:
                manifest = build_manifest(
                    path,
                    utterance_id=rec.id,
                    payload=payload_from_str(rec.watermark["payload"]),
                    key_id=rec.watermark["key_id"],
                    model_sha256=rec.model_sha256,
                    generator={"name": "valle", "step": self.ckpt.step, "mode": rec.mode, "codec": rec.codec},
                    sampling={**rec.sampling, "seed": rec.seed},
                    watermark={k: v for k, v in rec.watermark.items() if k not in ("payload", "key_id")},
                )
                signed = sign_manifest(manifest, self.signer)
                manifest_path = out_dir / f"{rec.id}.manifest.json"
                tmp = manifest_path.with_name(f".{manifest_path.name}.partial")
                tmp.write_text(json.dumps(signed, indent=2, ensure_ascii=False) + "\n")
                tmp.replace(manifest_path)
                ledger.append(signed)
                rec.verification["provenance"] = manifest_path.name
            meta = out_dir / f"{rec.id}.json"
            meta.write_text(json.dumps(rec.metadata(), indent=2) + "\n")
            paths.append(path)
        return paths
