"""Generators under test, as plug-ins: our VALL-E checkpoint, an external command, or a folder of wavs.

Every plug-in turns a batch of :class:`GenRequest` into one :class:`GenResult` per request, in
order, and never raises for a single bad item: a command that fails, a file that is missing or
unreadable, a text the phonemizer refuses all become rows with ``status="failed"`` and the reason,
which the harness counts as failures (seed-tts-eval's scripts silently skip missing files, which
flatters a system that fails on hard items).

Spec strings (CLI and config): ``valle:<checkpoint dir>``, ``command:<template>`` and
``folder:<dir>``. A command template is split like a shell line and then each word is formatted
with ``{text}``, ``{prompt_wav}``, ``{prompt_text}``, ``{out_wav}`` and ``{seed}``, so a value is
always one argument and is never interpreted by a shell.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from evaluation.testsets.testset import TestItem
from valle.audio import AudioError, load_audio
from valle.generate import GenerationOptions
from valle.sampling import SamplingOptions
from valle.synthesize import Generator, SynthesisRequest
from watermark import load_watermarker
from watermark.keys import default_key


@dataclass(frozen=True)
class GenRequest:
    item: TestItem
    seed: int  # the run's seed (one of the run's seeds)
    sample_seed: int  # the sampler's seed for this (item, seed): independent of batch position
    prompt_wav: Path  # the prompt cut (mono wav)
    out_wav: Path  # where the output must be written
    ledger: Path | None = None  # provenance ledger of this writer (one per rank), for signed outputs

    @property
    def key(self) -> str:
        return self.out_wav.stem


@dataclass
class GenResult:
    key: str
    status: str  # "ok" | "failed"
    error: str | None = None
    audio: str | None = None  # path of the generated file
    stop_reason: str | None = None  # "eos" | "max_length" when the generator reports it
    ar_codes: list[int] | None = None  # AR (codebook 1) tokens, for code-level loop checks
    frame_rate: float | None = None
    watermark: dict = field(default_factory=dict)  # backend, applied, verified, score
    seconds: float | None = None


@runtime_checkable
class GeneratorPlugin(Protocol):
    name: str

    def card(self) -> dict: ...

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...


def _check_output(req: GenRequest, path: Path) -> GenResult:
    try:
        wav, sr = load_audio(path, allow_silent=True)
    except AudioError as err:
        return GenResult(req.key, "failed", error=str(err))
    return GenResult(req.key, "ok", audio=str(path), seconds=len(wav) / sr)


class ValleGenerator:
    """Our checkpoint through the public synthesis API: every output watermarked and verified."""

    name = "valle"

    def __init__(
        self, checkpoint: str | Path, device: str = "cpu", watermark: dict | None = None, **options
    ) -> None:
        """``watermark``: Generator keyword arguments (watermarker, key, signer); default: the keyed mark
        with the user's default key (``watermark.keys.default_key``), unsigned."""

        self.checkpoint = Path(checkpoint)
        if watermark is None:
            key = default_key()
            watermark = {"watermarker": load_watermarker("keyed", device, key=key), "key": key}
        self.gen = Generator(self.checkpoint, device=device, **watermark)
        sampling = SamplingOptions(**options.pop("sampling", {}))
        self.options = GenerationOptions(sampling=sampling, **options)

    def card(self) -> dict:
        ck = self.gen.ckpt
        return {
            "generator": self.name,
            "checkpoint": str(self.checkpoint),
            "weights_sha256": ck.weights_sha256,
            "step": ck.step,
            "codec": self.gen.codec.card.to_json(),
            "watermark": self.gen.watermarker.card(),
            "key_id": self.gen.key.key_id if self.gen.key else None,
            "signed": self.gen.signer is not None,
            "options": asdict(self.options),
        }

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results: dict[str, GenResult] = {}
        batch, seeds = [], []
        for req in requests:
            it = req.item
            # continuation: the model takes the whole target and keeps its first 3 s as the prompt
            prompt = it.target_audio if it.mode == "continuation" else req.prompt_wav
            batch.append(SynthesisRequest(req.key, it.text, prompt, it.prompt_text, it.mode))
            seeds.append(req.sample_seed)
        try:
            records = self.gen.synthesize_requests(batch, self.options, seeds)
        except (ValueError, RuntimeError) as err:
            if len(batch) == 1:
                return [GenResult(requests[0].key, "failed", error=f"generation failed: {err}")]
            # one bad item must not sink its batch: retry one by one to find it
            return [r for req in requests for r in self.generate([req])]
        out_dir = requests[0].out_wav.parent
        self.gen.save(records, out_dir, ledger=requests[0].ledger)
        for rec in records:
            results[rec.id] = GenResult(
                rec.id,
                "ok",
                audio=str(out_dir / f"{rec.id}.wav"),
                stop_reason=rec.stop_reason,
                ar_codes=rec.codes[:, 0].tolist(),
                frame_rate=float(self.gen.codec.frame_rate),
                watermark={
                    "backend": rec.watermark.get("name", rec.watermark.get("backend")),
                    "applied": bool(rec.watermark["applied"]),
                    "verified": bool(rec.verification.get("detected", False)),
                    "score": rec.verification.get("score"),
                },
                seconds=len(rec.audio) / rec.sample_rate,
            )
        return [results[req.key] for req in requests]


class CommandGenerator:
    """An external TTS system run once per request from a command template (no shell)."""

    name = "command"
    FIELDS = ("text", "prompt_wav", "prompt_text", "out_wav", "seed")

    def __init__(self, template: str, timeout: float = 600.0) -> None:
        self.template = template
        self.words = shlex.split(template)
        if not self.words:
            raise ValueError("command generator: empty command template")
        if not any("{out_wav}" in w for w in self.words):
            raise ValueError(f"command generator: template must contain {{out_wav}}: {template!r}")
        self.timeout = timeout

    def card(self) -> dict:
        return {"generator": self.name, "template": self.template}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [self._one(req) for req in requests]

    def _one(self, req: GenRequest) -> GenResult:
        values = {
            "text": req.item.text,
            "prompt_wav": str(req.prompt_wav),
            "prompt_text": req.item.prompt_text or "",
            "out_wav": str(req.out_wav),
            "seed": str(req.seed),
        }
        try:
            argv = [w.format(**values) for w in self.words]
        except (KeyError, IndexError) as err:
            raise ValueError(
                f"command template {self.template!r}: unknown field {err}; use {self.FIELDS}"
            ) from None
        req.out_wav.unlink(missing_ok=True)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            return GenResult(req.key, "failed", error=f"command failed: {err}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-300:]
            return GenResult(req.key, "failed", error=f"command exited {proc.returncode}: {tail}")
        if not req.out_wav.is_file():
            return GenResult(req.key, "failed", error=f"command exited 0 but wrote no {req.out_wav}")
        return _check_output(req, req.out_wav)


class FolderGenerator:
    """Already generated audio, matched by id: ``<dir>/<id>.wav`` (one output per test item)."""

    name = "folder"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"generated-audio folder not found: {self.folder}")

    def card(self) -> dict:
        return {"generator": self.name, "folder": str(self.folder.resolve())}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for req in requests:
            path = self.folder / f"{req.item.id}.wav"
            if not path.is_file():
                out.append(GenResult(req.key, "failed", error=f"{path}: file not found"))
            else:
                out.append(_check_output(req, path))
        return out


def load_generator(
    spec: str, device: str = "cpu", watermark: dict | None = None, **valle_options
) -> GeneratorPlugin:
    """``valle:<checkpoint>``, ``command:<template>`` or ``folder:<dir>``; ``watermark`` and the
    generation options apply to ``valle:`` only."""
    kind, sep, value = spec.partition(":")
    if not sep or not value:
        raise ValueError(
            f"generator spec must be valle:<checkpoint>, command:<template> or folder:<dir>, got {spec!r}"
        )
    if kind == "valle":
        return ValleGenerator(value, device=device, watermark=watermark, **valle_options)
    if kind == "command":
        return CommandGenerator(value)
    if kind == "folder":
        return FolderGenerator(value)
    raise ValueError(f"unknown generator kind {kind!r} in {spec!r}: use valle, command or folder")


def sample_seed(seed: int, item_id: str) -> int:
    """The sampler seed of one (run seed, item): stable across batchings, resumes and machines."""
    digest = hashlib.sha256(f"{seed}|{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
