"""The synthetic speakers of the corpus: a fixed, ordered catalogue of frozen specs.

A speaker is an engine plus the settings that give it its voice. The catalogue is plain code so
that a speaker id always means the same voice; ``select_speakers(n)`` takes the first ``n``
(for the chosen engines), so a smaller corpus is a prefix of a larger one.

eSpeak speakers combine an accent (the language voice), a variant (formant and pitch profile,
``espeak-ng-data/voices/!v``) and rate / pitch / pitch-range settings. Piper has one bundled
speaker (en_US-joe-medium); its derived voices change the apparent vocal-tract length by
synthesising at a different ``length_scale`` and resampling back to the original tempo, plus
different sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# Accent label (used in ids) -> eSpeak voice file name; eSpeak's British voice is called "en".
# en-029 (Caribbean) and en-gb-x-gbcwmd (West Midlands) are left out: Whisper tiny.en made
# 62% and 77% word errors on them against ~25% for the others (benchmarks/corpus.py method,
# variant m1), and a TTS corpus needs text the audio actually says.
ESPEAK_ACCENTS: dict[str, str] = {
    "en-us": "en-us",
    "en-gb": "en",
    "en-gb-scotland": "en-gb-scotland",
    "en-gb-x-rp": "en-gb-x-rp",
    "en-us-nyc": "en-us-nyc",
    "en-gb-x-gbclan": "en-gb-x-gbclan",
}

# Variants (espeak-ng-data/voices/!v) kept after two checks on 5 ARCTIC sentences each:
# Whisper tiny.en WER <= ~0.55 (dropped: shelby, boris, ian, aunty, Jacky, Andrea, Alicia,
# Andy) and Resemblyzer similarity to the others (dropped near-duplicates: steph2/3 ~ steph,
# benjamin ~ adam, robert ~ rob). Novelty voices (whisper, robots, croak) were never candidates.
# Ordered so the default 40 eSpeak speakers take the most intelligible, most distinct ones.
_FEMALE_VARIANTS = "f1 anika f3 f5 f2 Annie f4 steph belinda linda grandma".split()
_MALE_VARIANTS = (
    "m1 travis m3 iven m8 m6 Storm sandro edward m2 antonio norbert Hugo ed m5 m7 Gene quincy "
    "Reed max rob Mario Michael Denis john m4 marcelo gustave adam david caleb Lee paul"
).split()

# Settings cycled over the catalogue; odd lengths, so the alternating female / male order
# still reaches every value for both.
_RATES = (165, 180, 150, 172, 158, 185, 145)  # words per minute
_FEMALE_PITCHES = (55, 65, 48, 72, 60)  # eSpeak 0-100 scale, 50 = variant default
_MALE_PITCHES = (45, 52, 38, 58, 42)
_RANGES = (50, 65, 40, 75, 55)


@dataclass(frozen=True)
class EspeakSpeaker:
    """An eSpeak NG voice: accent + variant + prosody settings."""

    engine: ClassVar[str] = "espeak"
    accent: str
    variant: str
    pitch: int = 50
    pitch_range: int = 50
    rate: int = 175

    def __post_init__(self) -> None:
        if self.accent not in ESPEAK_ACCENTS:
            raise ValueError(f"unknown eSpeak accent {self.accent!r}; known: {sorted(ESPEAK_ACCENTS)}")

    @property
    def id(self) -> str:
        return f"espeak-{self.accent}-{self.variant.lower()}-p{self.pitch}"

    @property
    def voice(self) -> str:
        """The name passed to ``espeak_SetVoiceByName`` (voice file + ``+variant``)."""
        return f"{ESPEAK_ACCENTS[self.accent]}+{self.variant}"


@dataclass(frozen=True)
class PiperSpeaker:
    """The bundled Piper voice with a relative vocal-tract length and sampling noise.

    ``vtl > 1`` means a longer tract: pitch and formants scaled down by ``1 / vtl``.
    """

    engine: ClassVar[str] = "piper"
    vtl: float = 1.0
    noise_scale: float = 0.667
    noise_w_scale: float = 0.8
    voice: str = "joe"

    def __post_init__(self) -> None:
        if not 0.6 <= self.vtl <= 1.6:
            raise ValueError(f"piper vtl {self.vtl} outside 0.6-1.6 (speech becomes unusable)")

    @property
    def id(self) -> str:
        return f"piper-{self.voice}-vtl{self.vtl:.2f}"


SpeakerSpec = EspeakSpeaker | PiperSpeaker

# Geometric steps of ~8% around Joe's own voice (1.00). Resemblyzer puts neighbours 7% apart
# at ~0.85 cosine (same voice ~0.92), so finer steps would add names, not speakers.
_PIPER_VTLS = (1.00, 0.85, 1.17, 0.92, 1.38, 0.78, 1.08, 1.27)
_PIPER_NOISE = ((0.667, 0.8), (0.5, 0.6), (0.8, 1.0), (0.6, 0.9))


def espeak_catalogue() -> list[EspeakSpeaker]:
    """All eSpeak speakers, alternating female and male variants while both last."""
    variants: list[tuple[str, bool]] = []
    for i in range(max(len(_FEMALE_VARIANTS), len(_MALE_VARIANTS))):
        if i < len(_FEMALE_VARIANTS):
            variants.append((_FEMALE_VARIANTS[i], True))
        if i < len(_MALE_VARIANTS):
            variants.append((_MALE_VARIANTS[i], False))
    accents = list(ESPEAK_ACCENTS)
    speakers = []
    for i, (variant, female) in enumerate(variants):
        pitches = _FEMALE_PITCHES if female else _MALE_PITCHES
        # Shift by one accent per round: with an even number of accents and alternating
        # genders, plain i % n would give each gender only half of the accents.
        accent = accents[(i + i // len(accents)) % len(accents)]
        speakers.append(
            EspeakSpeaker(
                accent=accent,
                variant=variant,
                pitch=pitches[i % len(pitches)],
                pitch_range=_RANGES[i % len(_RANGES)],
                rate=_RATES[i % len(_RATES)],
            )
        )
    return speakers


def piper_catalogue() -> list[PiperSpeaker]:
    """All derived Piper speakers."""
    return [
        PiperSpeaker(vtl=vtl, noise_scale=ns, noise_w_scale=nw)
        for i, vtl in enumerate(_PIPER_VTLS)
        for ns, nw in [_PIPER_NOISE[i % len(_PIPER_NOISE)]]
    ]


def speaker_catalogue(engines: tuple[str, ...] = ("espeak", "piper")) -> list[SpeakerSpec]:
    """Every speaker for ``engines``, in the fixed order ``select_speakers`` draws from.

    One Piper speaker follows every five eSpeak ones (index 1, 7, 13, ...), so any prefix of
    six or more speakers mixes both engines in the same proportion.
    """
    unknown = set(engines) - {"espeak", "piper"}
    if unknown or not engines:
        raise ValueError(f"unknown engines {sorted(unknown) or engines!r}; use 'espeak' and/or 'piper'")
    espeak = espeak_catalogue() if "espeak" in engines else []
    piper = piper_catalogue() if "piper" in engines else []
    out: list[SpeakerSpec] = []
    while espeak or piper:
        if (piper and len(out) % 6 == 1) or not espeak:
            out.append(piper.pop(0))
        else:
            out.append(espeak.pop(0))
    return out


def select_speakers(n: int, engines: tuple[str, ...] = ("espeak", "piper")) -> list[SpeakerSpec]:
    """The first ``n`` speakers of the catalogue for ``engines``."""
    catalogue = speaker_catalogue(engines)
    if not 1 <= n <= len(catalogue):
        raise ValueError(f"n_speakers={n}: engines {engines} offer 1-{len(catalogue)} speakers")
    return catalogue[:n]
