"""``valle audit``: one command from a generator and a test set to a scorecard (DESIGN.md, "Data flow").

Stages, in order; each reads what the earlier ones wrote in the run directory and writes its own
files, so any stage can be re-run alone (``--stage``), skipped (``--skip``) or resumed::

    generate   evaluation.runs.run: batched, seeded; every file watermarked, verified and signed
    verify     watermark.verify on every generated file          -> tables/verify.parquet
    score      ASR / speaker / flags / DNSMOS (evaluation.runs.run)   -> tables/scores.parquet, summary.json
    detect     detector trained on this run's output vs the real references, speaker-disjoint
                                                                  -> detect/, tables/detector.parquet
    asv        voice-authentication bypass, CM-gated             -> asv/, tables/asv_trials.parquet
    watermark  attack bank on a sample of generated files        -> watermark/, tables/watermark.parquet
    report     reports.write_scorecard                           -> scorecard.{json,md,html}

``audit.json`` records each stage's status (``done`` | ``failed`` | ``skipped`` | ``not_run``),
seconds, error and counts. A stage that fails is recorded and the audit goes on with the stages
that do not need it; utterance-level failures are rows with a status, never dropped; the report
stage runs last whatever happened before it, so a scorecard is always written and shows every
failure. ``generate`` and ``score`` resume chunk by chunk after a kill (``evaluation.runs.run``); the
other stages are short and are redone when they did not finish.

Secrets: the signing key and watermark key are read from the user's key directory (``$VALLE_HOME``,
default ``~/.config/valle``; created on first use, mode 0600) or given explicitly; only the public key
is copied into the run directory (``keys/signing.public.pem``), for ``valle verify``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from evaluation.audit.preflight import ResolvedProfile
from evaluation.runs.rundir import write_json
from evaluation.scorers.scoring import Scorers
from evaluation.testsets.testset import TestSet
from watermark.base import Watermarker
from watermark.keys import WatermarkKey, default_key, default_key_path
from watermark.provenance import generate_signing_key

STAGES = ("generate", "verify", "score", "detect", "asv", "watermark", "report")
AUDIT_FILE = "audit.json"
AUDIT_FORMAT, AUDIT_VERSION = "valle-audit", 1
# the degradations of the detector stage and the attacks of the watermark stage (watermark.attacks names)
DETECT_DEGRADATIONS = ("white_noise_20db", "mp3_32k", "resample_8k")
WATERMARK_ATTACKS = (
    "white_noise_20db", "pink_noise_20db", "mp3_32k", "aac_64k", "opus_16k", "resample_8k",
    "lowpass_3k", "highpass_500", "speed_1.1", "stretch_1.1", "echo", "crop_middle_50",
)  # fmt: skip


@dataclass(frozen=True)
class AuditOptions:
    """Everything that decides an audit's results besides the test set (recorded in audit.json)."""

    generator: str = "valle:checkpoints/demo"  # valle:<ckpt> | command:<template> | folder:<dir>
    profile: str = "offline"
    seeds: tuple[int, ...] = (0,)
    chunk_size: int = 8
    device: str = "cpu"
    sampling: tuple[tuple[str, object], ...] = ()  # valle: SamplingOptions overrides (top_p, ras, ...)
    quality: bool = True  # DNSMOS
    asr_compat: str = "project"  # evaluation.scorers.asr.ASR_COMPAT
    detector: str = "lfcc-gmm"
    detect_degradations: tuple[str, ...] = DETECT_DEGRADATIONS
    detect_test_fraction: float = 0.3
    asv_enrol: int = 1  # real utterances averaged per enrolled speaker
    watermark_clips: int = 6  # generated files (and as many real references) attacked
    watermark_attacks: tuple[str, ...] = WATERMARK_ATTACKS
    bootstrap: int = 1000
    seed: int = 0  # detector split / bootstrap / attack seed
    model_paths: tuple[tuple[str, str], ...] = ()  # profile overrides: asr_model, speaker_model, ...
    signing_key: str | None = None  # Ed25519 PEM; default: <VALLE_HOME>/keys/signing.pem
    key_file: str | None = None  # watermark key JSON; default: <VALLE_HOME>/keys/watermark.key.json

    def __post_init__(self) -> None:
        if self.watermark_clips < 1:
            raise ValueError(f"watermark_clips must be >= 1, got {self.watermark_clips}")
        if self.asv_enrol < 1:
            raise ValueError(f"asv_enrol must be >= 1, got {self.asv_enrol}")


@dataclass
class StageResult:
    status: str = "not_run"  # done | failed | skipped | not_run
    seconds: float | None = None
    error: str | None = None
    n: int | None = None  # units the stage handled (files, clips, trials, ...)
    n_failed: int | None = None  # of which failed (they stay in the tables, marked)
    note: str | None = None


@dataclass
class Loaded:
    """What the stages load once per process and share in memory (never written to audit.json)."""

    profile: ResolvedProfile | None = None  # the pre-flight check's backends and files
    watermarker: Watermarker | None = None
    # the signing key, its public half, the watermark key
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey, WatermarkKey] | None = None
    scorers: Scorers | None = None


@dataclass
class Audit:
    """The state of one run directory's audit (``audit.json``) plus what the stages share in memory."""

    dir: Path
    options: AuditOptions
    testset: TestSet
    stages: dict[str, StageResult] = field(default_factory=lambda: {s: StageResult() for s in STAGES})
    backends: dict = field(default_factory=dict)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    loaded: Loaded = field(default_factory=Loaded)
    profile_check: dict = field(default_factory=dict)  # resolved backends + file hashes (preflight.py)

    def to_json(self) -> dict:
        return {
            "format": AUDIT_FORMAT,
            "version": AUDIT_VERSION,
            "profile": self.options.profile,
            "generator": self.options.generator,
            "options": {
                k: v for k, v in asdict(self.options).items() if k not in ("signing_key", "key_file")
            },
            "backends": self.backends,
            "profile_check": self.profile_check,
            "started": self.started,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "stages": {k: asdict(v) for k, v in self.stages.items()},
            "seeds": {"generation": list(self.options.seeds), "analysis": self.options.seed},
        }

    def save(self) -> None:
        write_json(self.dir / AUDIT_FILE, self.to_json(), sort_keys=False)  # stages stay in pipeline order

    @classmethod
    def open(cls, out: str | Path, options: AuditOptions, testset: TestSet) -> Audit:
        """A new audit in ``out``, or the saved state of an earlier one with the same options."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        audit = cls(out, options, testset)
        saved = out / "testset.jsonl"
        if saved.is_file() and [it.to_json() for it in TestSet.load(saved).items] != [
            it.to_json() for it in testset.items
        ]:
            raise ValueError(
                f"{saved} holds a different test set; use another --out, or delete it to start over"
            )
        path = out / AUDIT_FILE
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}: not valid JSON ({err.msg}); delete it to start the audit over"
                ) from err
            mine = json.loads(json.dumps(audit.to_json()["options"], default=str))
            if old.get("options") != mine:
                differ = sorted(k for k in mine if old.get("options", {}).get(k) != mine[k])
                raise ValueError(
                    f"{out} holds an audit with different options ({', '.join(differ)}); "
                    "use another --out, or delete it to start over"
                )
            audit.started = old.get("started", audit.started)
            audit.backends = old.get("backends", {})
            for name, st in old.get("stages", {}).items():
                if name in audit.stages:
                    audit.stages[name] = StageResult(**st)
        return audit


def valle_home() -> Path:
    return Path(os.environ.get("VALLE_HOME") or Path.home() / ".config" / "valle")


def default_keys(options: AuditOptions) -> tuple[Path, Path | None]:
    """(signing key, watermark key file or None). Without explicit paths, the user's default keys are
    used and created on first use: secrets live in one private place, never in a run directory."""

    keys = valle_home() / "keys"
    signing = Path(options.signing_key) if options.signing_key else keys / "signing.pem"
    if options.signing_key is None and not signing.is_file():
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        generate_signing_key(signing, keys / "signing.public.pem")
        print(f"created a signing key pair in {keys} (first use)", file=sys.stderr)
    if options.key_file is not None:
        return signing, Path(options.key_file)
    default_key()  # created on first use
    return signing, default_key_path()


def stage_plan(only: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The stages a call runs: ``only`` (in pipeline order) or all, minus ``skip``; ``report`` always
    runs unless skipped by name, so every call leaves an up-to-date scorecard."""
    for s in (*only, *skip):
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; stages are {', '.join(STAGES)}")
    chosen = [s for s in STAGES if (not only or s in only or s == "report") and s not in skip]
    return tuple(chosen)


def timing_summary(audit: Audit) -> str:
    """One line per stage: status, seconds, counts; then the total."""
    lines = [f"{'stage':<10} {'status':<8} {'seconds':>8}  details"]
    total = 0.0
    for name, st in audit.stages.items():
        total += st.seconds or 0.0
        details = []
        if st.n is not None:
            details.append(f"n={st.n}")
        if st.n_failed:
            details.append(f"failed={st.n_failed}")
        if st.error:
            details.append(st.error.splitlines()[0][:90])
        elif st.note:
            details.append(st.note[:90])
        secs = "" if st.seconds is None else f"{st.seconds:8.1f}"
        lines.append(f"{name:<10} {st.status:<8} {secs:>8}  {', '.join(details)}")
    lines.append(f"{'total':<10} {'':<8} {total:8.1f}")
    return "\n".join(lines)
