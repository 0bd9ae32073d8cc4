"""AudioSeal: Meta's localized 16-bit speech watermark, loaded safely and used with explicit payloads.

Source: San Roman et al., "Proactive Detection of Voice Cloning with Localized Watermarking", ICML 2024;
code and weights https://github.com/facebookresearch/audioseal (package ``audioseal`` 0.2.0, whose
``builder.py`` builds the networks and ``cards/*.yaml`` hold their configurations and download URLs).

Definitions (all at AudioSeal's native 16 kHz):

- generator ``G`` (card ``audioseal_wm_16bits``): ``x [1, 1, T]`` and a message ``m [1, 16]`` of bits ->
  a residual ``w [1, 1, T]``; the marked audio is ``x + w``.
- detector ``D`` (card ``audioseal_detector_16bits``): ``x [1, 1, T]`` -> per-sample presence
  probabilities ``p [T]`` (softmax over marked/unmarked) and per-bit probabilities ``q [16]``
  (sigmoid of the time-averaged bit logits).
- ``score`` = fraction of samples with ``p > 0.5``: exactly ``AudioSealDetector.detect_watermark``'s
  ``detect_prob``. ``detected = score >= threshold``; ``payload = (q > 0.5)`` as 16 bits.

What this backend does differently from calling ``audioseal`` directly:

- Checkpoints are read with ``torch.load(weights_only=True)`` only. audioseal 0.2.0's loader uses
  ``weights_only=False`` (arbitrary code on load); here the networks are built from the package's
  card configuration and only the tensors are taken from the file. The official files also carry the
  training config as an OmegaConf ``DictConfig`` (audioseal's ``_safe_load_checkpoint`` works around
  exactly that), so OmegaConf's plain container/node classes are allowlisted; nothing else is.
- The message is always explicit: ``AudioSealWM.get_watermark`` draws a random message when given
  none (and keeps it on the module), which makes the payload meaningless for attribution.
- Any input rate: audio is resampled to 16 kHz, and only the *residual* is resampled back and added
  to the original, so the original's band above 8 kHz is kept intact.
- ``threshold`` is a constructor argument. AudioSeal ships no calibrated decision threshold
  (audioseal issues #14/#15/#79): the default 0.5 is a placeholder, and the project's attack battery
  calibrates one threshold on clean real speech at a target false-positive rate and passes it here.
- torch.compile is switched off around every call: audioseal's Moshi SEANet compiles lazily, and the
  first CPU call here took ~160 s to compile, then ~0.3 s per second of audio without it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import pickle
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torchaudio.functional as AF

from watermark.base import Detection, WatermarkError, check_payload, check_wav, fit_length
from watermark.provenance import file_sha256

GENERATOR_CARD = "audioseal_wm_16bits"
DETECTOR_CARD = "audioseal_detector_16bits"
SAMPLE_RATE = 16_000  # AudioSeal's models are trained on 16 kHz audio
NBITS = 16


class AudioSealWatermarker:
    """AudioSeal 16-bit watermark (see the module docstring for definitions).

    ``generator`` / ``detector``: paths to the official ``generator_base.pth`` / ``detector_base.pth``;
    ``None`` looks in audioseal's cache (:func:`cache_candidates`). ``generator_sha256`` /
    ``detector_sha256``: expected file hashes, checked when given; the actual ones are always in
    :meth:`card`. Raises :class:`WatermarkError` naming the file on any loading problem.
    """

    name = "audioseal"
    payload_bits = NBITS

    def __init__(
        self,
        generator: str | Path | None = None,
        detector: str | Path | None = None,
        *,
        device: str = "cpu",
        threshold: float = 0.5,
        generator_sha256: str | None = None,
        detector_sha256: str | None = None,
    ) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise WatermarkError(f"audioseal threshold must be in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.generator_path = resolve_weights(generator, GENERATOR_CARD, "generator")
        self.detector_path = resolve_weights(detector, DETECTOR_CARD, "detector")
        self.generator_sha256 = check_sha256(self.generator_path, generator_sha256)
        self.detector_sha256 = check_sha256(self.detector_path, detector_sha256)
        self._generator = build_model(GENERATOR_CARD, self.generator_path).to(self.device)
        self._detector = build_model(DETECTOR_CARD, self.detector_path).to(self.device)

    def card(self) -> dict:
        return {
            "name": self.name,
            "generator": str(self.generator_path),
            "generator_sha256": self.generator_sha256,
            "detector": str(self.detector_path),
            "detector_sha256": self.detector_sha256,
            "threshold": self.threshold,
            "payload_bits": self.payload_bits,
            "sample_rate": SAMPLE_RATE,
        }

    def embed(self, wav: np.ndarray, sr: int, payload: Sequence[int] | None = None) -> np.ndarray:
        """Return ``wav [N] + resample(G(resample(wav, 16k), payload), sr)``: same length, rate, dtype."""
        bits = check_payload(payload, self.payload_bits, self.name)
        check_wav(wav, sr, "audio to watermark")
        x = self._to_16k(wav, sr)
        message = torch.tensor([bits], dtype=torch.long, device=self.device)  # [1, 16]
        with _no_compile(), torch.inference_mode():
            residual = self._generator.get_watermark(x, message=message)  # [1, 1, T16]
        residual = residual[0, 0].float().cpu()
        if sr != SAMPLE_RATE:
            residual = AF.resample(residual, SAMPLE_RATE, sr)
        residual = fit_length(residual.numpy(), len(wav))
        return (wav + residual).astype(wav.dtype, copy=False)

    def detect(self, wav: np.ndarray, sr: int) -> Detection:
        check_wav(wav, sr, "audio to check")
        x = self._to_16k(wav, sr)
        with _no_compile(), torch.inference_mode():
            presence, bit_probs = self._detector(x)  # [1, 2, T16] softmax, [1, 16] sigmoid
        probs = presence[0, 1].float().cpu()
        # same statistic as AudioSealDetector.detect_watermark (detection_threshold 0.5), from one pass
        score = float(torch.count_nonzero(probs > 0.5)) / probs.numel()
        payload = tuple(int(b) for b in (bit_probs[0] > 0.5).tolist())
        # per-sample presence probabilities at 16 kHz (not the input rate): AudioSeal's localisation
        return Detection(
            score=score, detected=score >= self.threshold, payload=payload, frame_probs=probs.numpy()
        )

    def _to_16k(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        """``wav [N]`` at ``sr`` -> ``[1, 1, T16]`` float32 at 16 kHz on the model's device."""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        if sr != SAMPLE_RATE:
            x = AF.resample(x, sr, SAMPLE_RATE)
        return x.view(1, 1, -1).to(self.device)


# ---- weights: where they are, what they hash to, how they are read -------------------------------


def card_config(card: str) -> dict:
    """The model card shipped inside the audioseal package, as a plain dict (with ``checkpoint`` URL)."""
    # audioseal and omegaconf are heavy; imported only when this backend is used
    from audioseal.loader import load_local_model_config
    from omegaconf import OmegaConf

    config = load_local_model_config(card)
    if config is None:
        raise WatermarkError(f"the installed audioseal package has no model card {card!r}")
    return OmegaConf.to_container(config)


def audioseal_cache_dir() -> Path:
    """audioseal's cache folder: ``<$AUDIOSEAL_CACHE_DIR or $XDG_CACHE_HOME or ~/.cache>/audioseal``.

    Mirrors ``audioseal.loader._get_cache_dir`` without creating the folder.
    """
    for env in ("AUDIOSEAL_CACHE_DIR", "XDG_CACHE_HOME"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser() / "audioseal"
    return Path("~/.cache").expanduser() / "audioseal"


def cache_candidates(card: str) -> list[Path]:
    """Where a card's checkpoint may already be: the URL's file name (a manual or Hugging Face
    ``--local-dir`` download), then the hashed name audioseal's loader gives a card's https URL."""
    url = card_config(card)["checkpoint"]
    path = urlparse(url).path
    cache = audioseal_cache_dir()
    return [cache / Path(path).name, cache / hashlib.sha1(path.encode()).hexdigest()[:24]]


def resolve_weights(path: str | Path | None, card: str, role: str) -> Path:
    """An explicit path that must exist, or the first cached copy; else a WatermarkError saying where
    the file goes and where to download it."""
    url = card_config(card)["checkpoint"]
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WatermarkError(
                f"AudioSeal {role} weights not found: {path} does not exist; "
                f"download {url} to that path (card {card})"
            )
        return path.resolve()
    candidates = cache_candidates(card)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise WatermarkError(
        f"AudioSeal {role} weights not found (looked for {', '.join(str(c) for c in candidates)}); "
        f"download {url} to {candidates[0]} or pass {role}=PATH (card {card})"
    )


def check_sha256(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise if ``expected`` is given and differs."""
    actual = file_sha256(path)
    if expected is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
            raise WatermarkError(f"expected sha256 for {path} must be 64 hex digits, got {expected!r}")
        if actual != expected.lower():
            raise WatermarkError(f"{path}: sha256 {actual} does not match the expected {expected.lower()}")
    return actual


def _config_globals() -> list:
    """Classes an OmegaConf config pickles to (what the official checkpoints' ``xp.cfg`` holds).

    They hold values only and run no code on load beyond OmegaConf's own state restore; the config
    itself is discarded (the networks are built from the package's card).
    """
    # audioseal and omegaconf are heavy; imported only when this backend is used
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    nodes = [AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode]
    builtins = [int, float, str, bool, dict, list, collections.defaultdict]
    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        *nodes,
        *builtins,
        (typing.Any, "typing.Any"),
    ]


def load_state_dict_file(path: Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read tensors from an AudioSeal ``.pth`` with ``weights_only=True``; never unpickle other objects.

    Accepts ``{"xp.cfg": ..., "model": state_dict}`` (the official layout), ``{"best_state":
    {"model": ...}}`` (an audiocraft training checkpoint) or a bare state dict.
    """
    try:
        with torch.serialization.safe_globals(_config_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise WatermarkError(
                f"{what} {path} was refused: it holds objects other than tensors and plain config "
                f"({unsafe}); only weights_only=True loading is allowed"
            ) from None
        raise WatermarkError(
            f"{what} {path} is not a readable torch checkpoint (weights_only=True): {_reason(err)}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WatermarkError(f"{what} {path} is not a readable torch checkpoint: {err}") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("best_state"), dict):
        ckpt = ckpt["best_state"].get("model")
    elif isinstance(ckpt, dict) and "model" in ckpt:
        ckpt = ckpt["model"]
    if (
        not isinstance(ckpt, dict)
        or not ckpt
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.items())
    ):
        raise WatermarkError(
            f"{what} {path} holds no state dict of named tensors (under 'model' or at the top)"
        )
    return ckpt


def _reason(err: Exception) -> str:
    """The one informative line of torch's long weights-only error."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)


def _unsafe_globals(path: Path) -> str:
    """The disallowed globals a checkpoint references, for the error message ('' if unlisted)."""
    try:
        allowed = {f"{o.__module__}.{o.__qualname__}" for o in _config_globals() if not isinstance(o, tuple)}
        found = sorted(
            set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed - {"typing.Any"}
        )
    except Exception:  # a legacy (non-zip) file cannot be listed; the caller's error then speaks
        return ""
    return "references " + ", ".join(found) if found else ""


def build_model(card: str, path: Path) -> torch.nn.Module:
    """Build the card's network with audioseal's builder and load the file's tensors into it (strict)."""
    # audioseal is heavy; imported only when this backend is used
    from audioseal.builder import (
        AudioSealDetectorConfig,
        AudioSealWMConfig,
        create_detector,
        create_generator,
    )
    from audioseal.loader import AudioSeal

    config = card_config(card)
    config.pop("checkpoint")
    nbits = config.get("nbits", NBITS)
    if card == GENERATOR_CARD:
        model = create_generator(AudioSeal.parse_config(config, AudioSealWMConfig, nbits=nbits))
    else:
        model = create_detector(AudioSeal.parse_config(config, AudioSealDetectorConfig, nbits=nbits))
    state = to_model_keys(fold_weight_norm(load_state_dict_file(path, f"AudioSeal {card} checkpoint")), model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: another architecture or bit count
        raise WatermarkError(f"{path} does not fit the {card} network: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise WatermarkError(
            f"{path} does not fit the {card} network: {len(result.missing_keys)} missing tensors"
            f" {result.missing_keys[:3]}, {len(result.unexpected_keys)} unexpected"
            f" {result.unexpected_keys[:3]}"
        )
    return model.eval()


# (magnitude g, direction v) names: torch.nn.utils.weight_norm, then its parametrizations successor
WEIGHT_NORM_PAIRS = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by the plain weight ``g * v / ||v||`` (norm over all dims but 0).

    The official checkpoints were trained with weight norm (``*.weight_g``/``*.weight_v``, or the newer
    ``*.parametrizations.weight.original0/1``); audioseal builds its networks without it.
    """
    out = dict(state)
    for key in list(state):
        for g_suffix, v_suffix in WEIGHT_NORM_PAIRS:
            if key.endswith(g_suffix):
                prefix = key[: -len(g_suffix)]
                v = out.pop(prefix + v_suffix, None)
                if v is None:
                    raise WatermarkError(f"weight-norm tensor {key} has no matching {prefix + v_suffix}")
                out[prefix + ".weight"] = torch._weight_norm(v, out.pop(key), 0)
    return out


def to_model_keys(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map audiocraft-era names (``...conv.conv.weight``) to audioseal 0.2's scriptable layers
    (``...conv.conv.inner_conv.weight``); names the model already has are kept as they are.

    (audioseal's own ``convert_state_dict_for_scriptable_model`` rewrites already-converted names a
    second time, so it cannot read a checkpoint saved from an audioseal 0.2 model.)
    """
    names = set(model.state_dict())
    out = {}
    for key, value in state.items():
        if key not in names:
            alt = re.sub(r"\.(conv|convtr)\.(weight|bias)$", r".\1.inner_conv.\2", key)
            key = alt if alt in names else key
        out[key] = value
    return out


def _no_compile() -> contextlib.AbstractContextManager:
    try:
        # audioseal was imported by build_model; a cheap lookup
        from audioseal.libs.moshi.utils.compile import no_compile
    except ImportError:  # audioseal < 0.2 or Python < 3.10: audiocraft's SEANet, never compiled
        return contextlib.nullcontext()
    return no_compile()
