"""Pre-flight check, before any work: every weight file a profile needs is present and intact, and a
checkpoint fits the profile. Problems are reported all at once, each with how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from evaluation.audit.model_files import RequiredFile, cached_sha256, describe_file, required_files
from evaluation.audit.profiles import Overrides, Profile, ProfileError, get_profile
from evaluation.scorers.asr import whisper_cache_dir
from valle.checkpoint import WEIGHTS, read_config
from valle.codec import CODECS
from valle.codec.encodec import CHECKPOINT_SHA256, CHECKPOINT_URL, default_checkpoint_path

# ---- checks ---------------------------------------------------------------------------------------


def _file_problem(f: RequiredFile) -> tuple[str | None, str | None]:
    """(problem text or None, actual sha256 or None)."""
    if not f.path.is_file():
        return describe_file(f, "MISSING"), None
    if f.sha256 is None:
        return None, None  # presence only; hashed by the loader and recorded in config.json
    actual = cached_sha256(f.path)
    if actual != f.sha256:
        return describe_file(f, f"SHA256 MISMATCH (file has {actual})"), actual
    return None, actual


def checkpoint_of(generator: str) -> Path | None:
    """The checkpoint folder of a ``valle:<dir>`` generator spec; None for ``command:`` / ``folder:``."""
    kind, _, value = generator.partition(":")
    return Path(value) if kind == "valle" and value else None


def _checkpoint_problems(p: Profile, directory: str | Path) -> tuple[dict | None, list[str]]:
    directory = Path(directory)
    if not directory.is_dir():
        return None, [f"- checkpoint folder {directory} does not exist"]
    try:
        meta = read_config(directory)  # JSON only: nothing is unpickled or loaded
    except ValueError as err:
        return None, [f"- {err}"]
    card = meta["codec"] if isinstance(meta["codec"], dict) else {}
    name = card.get("name")
    problems = []
    if not (directory / WEIGHTS).is_file():
        problems.append(f"- checkpoint {directory} has no {WEIGHTS}")
    if name not in CODECS:
        problems.append(
            f"- {directory} uses codec {name!r}, which this project does not know ({', '.join(CODECS)})"
        )
    elif p.codec is not None and name != p.codec:
        problems.append(
            f"- {directory} uses codec {name}; profile {p.name!r} needs {p.codec} "
            "(train a checkpoint on EnCodec codes, or use --profile offline)"
        )
    elif p.codec == "encodec_24khz_6kbps":
        if card.get("weights_sha256") != CHECKPOINT_SHA256:
            problems.append(
                f"- {directory} was trained on EnCodec weights with sha256 {card.get('weights_sha256')}, not "
                f"the official {CHECKPOINT_SHA256}; profile {p.name!r} needs the official codec"
            )
    info = {
        "path": str(directory),
        "codec": card,
        "step": meta["step"],
        "weights_sha256": meta["weights_sha256"],
    }
    return info, problems


def check_checkpoint(profile: str | Profile, checkpoint_dir: str | Path) -> dict:
    """Read a checkpoint's ``config.json`` (never its weights) and refuse a codec the profile cannot use.

    Returns ``{path, codec (card), step, weights_sha256}``.
    """
    p = get_profile(profile)
    info, problems = _checkpoint_problems(p, checkpoint_dir)
    if problems:
        raise ProfileError(
            f"profile {p.name!r} cannot use checkpoint {checkpoint_dir}:\n" + "\n".join(problems)
        )
    return info


@dataclass(frozen=True)
class ResolvedProfile:
    """What :func:`check_profile` found: the backends and the checked paths to load them from."""

    profile: str
    asr: str
    asr_model: str | None  # ScoringConfig.asr_model: None = the backend's default (bundled tiny.en)
    speaker: str
    speaker_model: str | None  # ScoringConfig.speaker_model: the checked ECAPA folder; None = bundled
    watermark: str
    watermark_kwargs: dict  # watermark.load_watermarker(watermark, device, **watermark_kwargs)
    codec: str | None  # the checkpoint's codec; None without a checkpoint
    codec_weights: str | None  # Generator(codec_weights=...): None = the codec's default place
    encodec_weights: str | None  # official EnCodec file for the attack bank; None where absent (offline)
    detector: str
    detector_size: str  # detection.train.build_detector size
    quality: str
    checkpoint: dict | None  # check_checkpoint's dict
    files: tuple[dict, ...]  # {role, what, path, sha256}: what a run's config.json records

    def scoring_kwargs(self) -> dict:
        """Keyword arguments of :class:`evaluation.scorers.scoring.ScoringConfig`."""
        return {"asr": self.asr, "asr_model": self.asr_model, "speaker": self.speaker,
                "speaker_model": self.speaker_model}  # fmt: skip

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"files": list(self.files)}


def as_overrides(overrides: Overrides | dict | None) -> Overrides:
    """``Overrides``, or a dict of the same names (None values ignored); unknown names are refused."""
    if overrides is None or isinstance(overrides, Overrides):
        return overrides or Overrides()
    known = {f.name for f in fields(Overrides)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ProfileError(
            f"unknown model path option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return Overrides(**{k: v for k, v in overrides.items() if v is not None})


def check_profile(
    profile: str | Profile,
    overrides: Overrides | dict | None = None,
    checkpoint: str | Path | None = None,
    *,
    generator: str | None = None,
) -> ResolvedProfile:
    """Check everything ``profile`` needs before any work; ProfileError lists EVERY problem.

    ``checkpoint``: a ``valle:`` checkpoint folder, or give the ``generator`` spec instead
    (:func:`checkpoint_of`); ``command:`` / ``folder:`` generators have none. The codec is checked
    when there is a checkpoint to decode, and always for ``paper``, whose watermark robustness stage
    attacks with EnCodec.
    """
    p = get_profile(profile)
    o = as_overrides(overrides)
    if checkpoint is None and generator is not None:
        checkpoint = checkpoint_of(generator)
    problems, ckpt = [], None
    with_codec = checkpoint is not None or p.codec is not None
    if not with_codec and o.codec_weights is not None:
        raise ProfileError("--codec-weights does not apply: only a valle: checkpoint decodes codes")
    if checkpoint is not None:
        ckpt, problems = _checkpoint_problems(p, checkpoint)
    files = required_files(p, o, codec_card=(ckpt or {}).get("codec"), include_codec=with_codec)
    resolved = []
    for f in files:
        problem, actual = _file_problem(f)
        if problem:
            problems.append(problem)
        resolved.append({"role": f.role, "what": f.what, "path": str(f.path), "sha256": actual or f.sha256})
    if problems:
        raise ProfileError(
            f"profile {p.name!r} cannot run here; nothing was started. {len(problems)} problem(s):\n"
            + "\n".join(problems)
        )
    first = {}
    for f in files:
        first.setdefault(f.role, f)
    asr_model = str(o.asr_model) if o.asr_model is not None else None
    if p.asr == "openai-whisper":
        path = first["asr"].path  # by name from whisper's cache (word-timing heads set), else the file
        asr_model = p.asr_model if path == whisper_cache_dir() / path.name else str(path)
    wm_kwargs = {}
    if p.watermark == "audioseal":  # _audioseal_files lists the generator, then the detector
        gen, det = (str(f.path) for f in files if f.role == "watermark")
        wm_kwargs = {"generator": gen, "detector": det}

    codec = first.get("codec")
    encodec = str(codec.path) if codec and codec.url == CHECKPOINT_URL else None
    if encodec is None and default_checkpoint_path().is_file():  # offline: an extra attack when it is here
        encodec = str(default_checkpoint_path())
    return ResolvedProfile(
        profile=p.name,
        asr=p.asr,
        asr_model=asr_model,
        speaker=p.speaker,
        speaker_model=str(first["speaker"].path.parent) if p.speaker == "ecapa" else None,
        watermark=p.watermark,
        watermark_kwargs=wm_kwargs,
        codec=(ckpt or {}).get("codec", {}).get("name"),
        codec_weights=str(codec.path) if codec and (o.codec_weights or p.codec) else None,
        encodec_weights=encodec,
        detector=p.detector,
        detector_size=p.detector_size,
        quality=p.quality,
        checkpoint=ckpt,
        files=tuple(resolved),
    )
