"""What every detector shares: the clip type, the protocol, training-set checks and ``BaseDetector``
(validation, shortcut controls, features, persistence plumbing). The models (:mod:`detection.models`,
:mod:`detection.cnn`) build on it; it imports neither, so they do not import each other for it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import sklearn
import torch
import torchaudio
from scipy.special import expit
from tqdm import tqdm

from detection.features import Controls, check_wav, preprocess
from detection.io import DetectorFileError, load_model_dir, read_meta, save_model_dir

Waveform = tuple[np.ndarray, int]  # (mono waveform [N], sample rate); a labelled clip is detection.split.Clip
CLASS_NAMES = {1: "bona fide", 0: "spoof"}


@runtime_checkable
class Detector(Protocol):
    name: str
    controls: Controls

    def fit(self, wavs: list[Waveform], labels: np.ndarray, progress: bool = False) -> Detector: ...

    def score(self, wavs: list[Waveform]) -> np.ndarray: ...

    def p_spoof(self, wavs: list[Waveform]) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Detector: ...


def check_training_set(wavs: list[Waveform], labels: np.ndarray) -> np.ndarray:
    """Validate a training set; returns labels as int64 ``[n]``. Errors name the empty class or bad clip."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if len(wavs) == 0:
        raise ValueError("no clips given: a detector needs bona fide and spoof clips")
    if len(wavs) != len(labels):
        raise ValueError(f"{len(wavs)} clips but {len(labels)} labels")
    if labels.size and not np.isin(labels, (0, 1)).all():
        bad = sorted({str(v) for v in labels[~np.isin(labels, (0, 1))]})[:5]
        raise ValueError(f"labels must be 1 (bona fide) or 0 (spoof); found {', '.join(bad)}")
    labels = labels.astype(np.int64)
    for value, name in CLASS_NAMES.items():
        if not (labels == value).any():
            raise ValueError(f"class {name!r} (label {value}) has no clips; a detector needs both classes")
    return labels


def _as_clip(item: object, i: int) -> Waveform:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise ValueError(f"clip {i}: expected a (waveform, sample_rate) pair, got {type(item).__name__}")
    wav, sr = item
    return check_wav(wav, sr, what=f"clip {i}"), int(sr)


def progress_iter(items, progress: bool, desc: str):
    """``items``, with a tqdm bar when ``progress``."""
    if not progress:
        return items

    return tqdm(items, desc=desc, leave=False)


class BaseDetector(ABC):
    """Shared plumbing: validation, shortcut controls, feature extraction, persistence. Each model
    implements the abstract hooks (front end, fit, score, and what it saves)."""

    kind: ClassVar[str] = ""

    def __init__(self, controls: Controls | None = None, name: str | None = None):
        self.controls = controls if controls is not None else Controls()
        self.name = name or self.kind
        self.training: dict = {}
        self._fitted = False

    # -- features -------------------------------------------------------------------------------
    def _preprocess(
        self, wavs: list[Waveform], progress: bool = False, desc: str = "preprocess"
    ) -> list[Waveform]:
        if len(wavs) == 0:
            raise ValueError("no clips given")
        clips = [_as_clip(item, i) for i, item in enumerate(wavs)]
        return [preprocess(w, sr, self.controls) for w, sr in progress_iter(clips, progress, desc)]

    @abstractmethod
    def _features(self, clips: list[Waveform]) -> list[np.ndarray]:
        """Per-clip features ``[T, D]`` of already preprocessed clips (subclasses choose the front end)."""

    # -- interface ------------------------------------------------------------------------------
    def fit(self, wavs: list[Waveform], labels: np.ndarray, progress: bool = False) -> BaseDetector:
        labels = check_training_set(wavs, labels)
        start = time.perf_counter()
        clips = self._preprocess(wavs, progress, "preprocess")
        feats = self._features(clips)
        summary = self._fit(feats, labels, progress)
        durations = np.array([len(w) / sr for w, sr in clips])
        self.training = {
            "n_bonafide": int((labels == 1).sum()),
            "n_spoof": int((labels == 0).sum()),
            "seconds_bonafide": round(float(durations[labels == 1].sum()), 3),
            "seconds_spoof": round(float(durations[labels == 0].sum()), 3),
            "fit_seconds": round(time.perf_counter() - start, 3),
            "versions": _versions(),
            **summary,
        }
        self._fitted = True
        return self

    def score(self, wavs: list[Waveform], progress: bool = False) -> np.ndarray:
        """Countermeasure scores ``[n]`` (log-odds of bona fide; higher = more bona fide)."""
        if not self._fitted:
            raise RuntimeError(f"{self.name}: detector is not fitted; call fit() or load a saved model")
        clips = self._preprocess(wavs, progress, "score")
        return np.asarray(self._score(self._features(clips)), dtype=np.float64)

    def p_spoof(self, wavs: list[Waveform]) -> np.ndarray:
        """Probability of synthetic speech ``[n]`` = sigmoid(-score) (equal class priors)."""
        return expit(-self.score(wavs))

    def save(self, path: str | Path) -> None:
        if not self._fitted:
            raise RuntimeError(f"{self.name}: nothing to save; the detector is not fitted")
        meta = {
            "kind": self.kind,
            "name": self.name,
            "hyperparameters": self._hyperparameters(),
            "controls": self.controls.to_dict(),
            "features": self._feature_config(),
            "training": self.training,
        }
        save_model_dir(path, meta, self._arrays())

    @classmethod
    def load(cls, path: str | Path) -> BaseDetector:
        """Load a saved detector of this class (``detection.models.load_detector`` loads any kind)."""
        path = Path(path)
        kind = read_meta(path)["kind"]
        if kind != cls.kind:
            raise DetectorFileError(f"{path}: holds a {kind!r} detector, not {cls.kind!r}")
        meta, arrays = load_model_dir(path)
        try:
            return cls._from_saved(meta, arrays)
        except (KeyError, TypeError) as err:
            raise DetectorFileError(f"{path / 'detector.json'}: malformed {kind!r} model ({err!r})") from err

    # -- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, feats: list[np.ndarray], labels: np.ndarray, progress: bool) -> dict:
        """Train on per-clip features; returns a summary merged into ``self.training``."""

    @abstractmethod
    def _score(self, feats: list[np.ndarray]) -> np.ndarray:
        """Scores ``[n]``, log-odds of bona fide."""

    @abstractmethod
    def _hyperparameters(self) -> dict:
        """Constructor arguments, saved with the model."""

    @abstractmethod
    def _feature_config(self) -> dict:
        """The front end's settings, saved with the model."""

    @abstractmethod
    def _arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Named groups of arrays to save (safetensors)."""

    @classmethod
    @abstractmethod
    def _from_saved(cls, meta: dict, arrays: dict[str, dict[str, np.ndarray]]) -> BaseDetector:
        """A fitted instance from what :meth:`save` wrote."""


def _versions() -> dict:
    return {
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "scikit-learn": sklearn.__version__,
    }


def get_array(arrays: dict, file: str, name: str) -> np.ndarray:
    """``arrays[file][name]`` of a loaded model directory, or an error naming the missing array."""
    try:
        return arrays[file][name]
    except KeyError:
        raise DetectorFileError(f"{file}: missing array {name!r}") from None
