"""The scorers and the metrics they produce, with metadata, in one table (as VERSA's metric registry).

Each :class:`ScorerSpec` names a role (``asr``, ``speaker``, ``quality``, ``vad``, ``flags``), its
backends and default, what it reads, where it comes from, how to load it, and every metric of
``summary.json`` it is responsible for (:class:`Metric`: what it means, which direction is better,
its unit). :class:`evaluation.scorers.scoring.Scorers` loads its models through :func:`load_scorer`;
``valle scorers`` prints this table; a test checks that a real run's ``summary.json`` produces
exactly the metrics listed here, so the metadata cannot drift from the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evaluation.scorers.asr import ASROptions, load_asr
from evaluation.scorers.flags import FLAG_NAMES, SpeechActivity
from evaluation.scorers.quality import DNSMOS
from evaluation.scorers.speaker import DEFAULT_SPEAKER, load_speaker_encoder


@dataclass(frozen=True)
class Metric:
    name: str  # key in summary.json "metrics" (rates of a per-row column are "rate_<column>")
    what: str
    better: str  # "lower" | "higher" | "closer to the ceiling" | "-" (a count-like diagnostic)
    unit: str


@dataclass(frozen=True)
class ScorerSpec:
    role: str
    what: str
    backends: tuple[str, ...]
    default: str
    reads: str
    source: str
    metrics: tuple[Metric, ...]
    loader: Callable[..., object] | None  # (backend, model, device, **options) -> scorer; None: rules


DEFAULT_ASR = ASROptions()


def _share(name: str, what: str) -> Metric:
    return Metric(name, what, "lower", "share of items")


SCORERS: dict[str, ScorerSpec] = {
    "asr": ScorerSpec(
        "asr",
        "speech recognition, for word error rates",
        ("faster-whisper", "openai-whisper"),
        "faster-whisper",
        "output audio (continuation: prompt + output) and the real target recording (the ceiling)",
        "Whisper (Radford et al. 2022); corpus and per-utterance WER as jiwer and seed-tts-eval",
        (
            Metric(
                "wer", "corpus WER: errors / reference words, failed generations charged", "lower", "ratio"
            ),
            Metric("mean_utt_wer", "mean of per-utterance WERs (seed-tts-eval's headline)", "lower", "ratio"),
            Metric("sub_rate", "substitutions / reference words", "lower", "ratio"),
            Metric("del_rate", "deletions / reference words", "lower", "ratio"),
            Metric("ins_rate", "insertions / reference words", "lower", "ratio"),
            Metric("wer_generated_only", "WER over outputs that exist (failures left out)", "lower", "ratio"),
            Metric("wer_asr_reliable_items", "WER without ASR-unreliable items and rows", "lower", "ratio"),
            _share("rate_asr_fallback_exhausted", "outputs on which Whisper's fallback was exhausted"),
            Metric("ceiling_wer", "corpus WER of the real target recordings", "-", "ratio"),
            Metric("ceiling_mean_utt_wer", "mean per-utterance WER of the real targets", "-", "ratio"),
        ),
        lambda backend, model, device, options=None: load_asr(backend, model, device, options or DEFAULT_ASR),
    ),
    "speaker": ScorerSpec(
        "speaker",
        "speaker similarity: cosine of speaker embeddings",
        ("campplus", "resemblyzer", "ecapa"),
        DEFAULT_SPEAKER,
        "output, prompt and real target audio",
        "SIM as in VALL-E sec. 5 (Wang et al. 2023); CAM++ (Wang et al. 2023), GE2E, ECAPA-TDNN",
        (
            Metric("sim_prompt", "cos(output, prompt)", "higher", "cosine"),
            Metric("sim_target", "cos(output, real target)", "higher", "cosine"),
            Metric("ceiling_sim_target_prompt", "cos(real target, prompt)", "-", "cosine"),
        ),
        lambda backend, model, device: load_speaker_encoder(backend, model, device),
    ),
    "quality": ScorerSpec(
        "quality",
        "reference-free speech quality",
        ("dnsmos",),
        "dnsmos",
        "output and real target audio",
        "DNSMOS P.835 (Reddy et al. 2022) through speechmos",
        (
            Metric("dnsmos_sig", "speech signal quality", "higher", "MOS 1-5"),
            Metric("dnsmos_bak", "background noise (higher = less intrusive)", "higher", "MOS 1-5"),
            Metric("dnsmos_ovrl", "overall quality", "higher", "MOS 1-5"),
            Metric("ceiling_dnsmos_ovrl", "overall quality of the real targets", "-", "MOS 1-5"),
        ),
        lambda backend, model, device: DNSMOS(),
    ),
    "vad": ScorerSpec(
        "vad",
        "speech activity, for the silence flag",
        ("silero-vad",),
        "silero-vad",
        "output audio",
        "Silero VAD",
        (),  # feeds the silence flag only
        lambda backend, model, device: SpeechActivity(),
    ),
    "flags": ScorerSpec(
        "flags",
        "loop and hallucination flags, per utterance with a reason each; generation failures",
        ("rules",),
        "rules",
        "the AR's codes and stop reason, the transcript, the audio length, speech activity",
        "evaluation/scorers/flags.py (VALL-E 2's repetition ratio, Whisper's compression ratio, ...)",
        (
            *(_share(f"rate_{n}", f"outputs flagged {n}") for n in FLAG_NAMES),
            _share("rate_any_flag", "outputs with any flag"),
            _share("generation_failure_rate", "generations that failed (no usable audio; charged)"),
            Metric(
                "repetition_ratio",
                "mean share of the 10 previous AR tokens equal to the current",
                "lower",
                "ratio",
            ),
            Metric("duration_ratio", "output / expected duration", "closer to 1", "ratio"),
        ),
        None,
    ),
    "watermark": ScorerSpec(
        "watermark",
        "the generator's own read-back of its mark on every written file",
        ("keyed", "perth", "audioseal"),
        "keyed",
        "the generator's verification record",
        "watermark/ (the keyed mark's analytic p-value)",
        (Metric("watermark_verified_rate", "outputs whose mark was read back", "higher", "share of items"),),
        None,  # loaded by the generator, not by the scorer
    ),
}


def load_scorer(role: str, backend: str | None = None, model=None, device: str = "cpu", **options) -> object:
    """The scorer of ``role`` with ``backend`` (default: the role's default) and its options."""
    spec = SCORERS.get(role)
    if spec is None or spec.loader is None:
        loadable = ", ".join(r for r, s in SCORERS.items() if s.loader is not None)
        raise ValueError(f"no loadable scorer for role {role!r}; roles: {loadable}")
    backend = backend or spec.default
    if backend not in spec.backends:
        raise ValueError(f"unknown {role} backend {backend!r}; choose one of {', '.join(spec.backends)}")
    return spec.loader(backend, model, device, **options)


def metric_specs() -> dict[str, tuple[str, Metric]]:
    """Every summary metric -> (role, its metadata)."""
    return {m.name: (role, m) for role, spec in SCORERS.items() for m in spec.metrics}


def describe() -> str:
    """The registry as Markdown (``valle scorers``)."""
    lines = []
    for role, s in SCORERS.items():
        backends = ", ".join(f"**{b}**" if b == s.default else b for b in s.backends)
        lines += [
            f"## {role}: {s.what}",
            "",
            f"- backends: {backends} (default in bold)",
            f"- reads: {s.reads}",
        ]
        lines += [f"- source: {s.source}", ""]
        if s.metrics:
            lines += ["| metric | meaning | better | unit |", "|---|---|---|---|"]
            lines += [f"| {m.name} | {m.what} | {m.better} | {m.unit} |" for m in s.metrics]
            lines.append("")
    return "\n".join(lines)
