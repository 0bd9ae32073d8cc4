"""Build, fit, calibrate, save and load a detector (audio in, scores out; no project package used).

``fit_and_calibrate`` stores an EER threshold computed on the training split only (out-of-fold
scores by default) and a Platt calibration of ``p_spoof`` on the same scores; ``save_model`` /
``load_model`` keep the split description beside the detector, tied to it by sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from detection.cnn import LcnnDetector
from detection.features import Controls
from detection.io import DetectorFileError
from detection.metrics import compute_eer
from detection.models import LfccGmm, LfccLogReg, load_detector
from detection.split import Clip, speaker_folds

MODELS = ("lfcc-gmm", "lfcc-lr", "lcnn")
SIZES = ("small", "paper", "full")  # paper = full = the published size
SPLIT_FILE = "split.json"
CALIBRATION_FOLDS = 3  # out-of-fold EER threshold by default (see fit_and_calibrate)


def build_detector(
    model: str,
    size: str = "small",
    controls: bool = True,
    seed: int = 0,
    epochs: int | None = None,
    device: str = "auto",
):
    """A new, unfitted detector: ``lfcc-gmm`` (LfccGmm, ``paper`` = 512 components), ``lfcc-lr``
    (LfccLogReg), ``lcnn`` (LcnnDetector small / full). ``controls=False`` = ``Controls.none()``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    ctl = Controls() if controls else Controls.none()
    if epochs is not None and model != "lcnn":
        raise ValueError("--epochs applies to --model lcnn only")
    if model == "lfcc-gmm":
        return LfccGmm.paper(seed=seed, controls=ctl) if size != "small" else LfccGmm(seed=seed, controls=ctl)
    if model == "lfcc-lr":
        if size != "small":
            raise ValueError("lfcc-lr has a single size; leave --size at small")
        return LfccLogReg(controls=ctl)
    if model == "lcnn":
        return LcnnDetector(
            size="small" if size == "small" else "full", epochs=epochs, device=device, seed=seed, controls=ctl
        )
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def labels_of(clips: Sequence[Clip]) -> np.ndarray:
    return np.array([c.label for c in clips], dtype=np.int64)


def fit_and_calibrate(
    detector,
    clips: Sequence[Clip],
    audio: Sequence[tuple[np.ndarray, int]],
    folds: int = CALIBRATION_FOLDS,
    make: Callable[[], object] | None = None,
    seed: int = 0,
) -> dict:
    """Fit ``detector`` on ``clips`` / ``audio`` and store an EER threshold computed on the training
    split only as ``detector.training["eer_threshold"]``; returns the calibration summary.

    ``folds=k >= 2`` (default 3): the threshold is the EER threshold of out-of-fold scores: the training
    clips are cut into k speaker-disjoint folds (:func:`detection.split.speaker_folds`) and each
    fold is scored by a fresh detector from ``make()`` fitted on the other folds (k extra fits); the
    final detector is fitted on all of them. ``folds=0``: the EER threshold of the final detector's
    scores on its own training clips. That in-sample threshold is always recorded too
    (``in_sample_eer_threshold``), but it sits where the detector separates clips it was fitted on: in
    the detection benchmark it rejected 23-92% of unseen bona fide test clips, so it is not the default.
    """
    if folds == 1 or folds < 0:
        raise ValueError(f"calibration folds must be 0 or >= 2, got {folds}")
    labels = labels_of(clips)
    audio = list(audio)
    fold = speaker_folds(clips, folds, seed) if folds else None  # fails fast on too few speakers
    t0 = time.perf_counter()
    detector.fit(audio, labels)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    in_sample = detector.score(audio)
    in_eer, in_thr = compute_eer(in_sample[labels == 1], in_sample[labels == 0])
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if fold is not None:
        if make is None:
            raise ValueError("out-of-fold calibration needs make(), a factory of fresh detectors")
        scores = np.full(len(clips), np.nan)
        for k in range(folds):
            held, rest = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
            if len(set(labels[rest])) < 2:
                raise ValueError(
                    f"calibration fold {k}: the other folds hold only one class; use fewer "
                    "--calibration-folds (0 = in-sample)"
                )
            d = make()
            d.fit([audio[i] for i in rest], labels[rest])
            scores[held] = d.score([audio[i] for i in held])
        eer, thr = compute_eer(scores[labels == 1], scores[labels == 0])
        on = f"train split, out-of-fold scores ({folds} speaker-disjoint folds; no test data)"
    else:
        eer, thr = in_eer, in_thr
        on = "train split, in-sample scores of the fitted detector (no test data)"
    cal_scores = scores if fold is not None else in_sample
    slope, intercept = platt(cal_scores, labels)
    calibration = {
        "eer_threshold": float(thr),
        # p_spoof = sigmoid(-(slope * score + intercept)), fitted on the same scores as the threshold,
        # so that a file's probability and its decision come from one piece of evidence
        "platt": {"slope": slope, "intercept": intercept},
        # share of the final detector's own bona fide training clips it would call spoof: a threshold
        # off the final detector's scale (it is set on other fits' scores) shows here first
        "train_bonafide_rejected": float(np.mean(in_sample[labels == 1] < thr)),
        "on": on,
        "folds": folds,
        "train_eer": float(eer),
        "in_sample_eer_threshold": float(in_thr),
        "in_sample_train_eer": float(in_eer),
        "n_bonafide": int((labels == 1).sum()),
        "n_spoof": int((labels == 0).sum()),
        "fit_seconds": round(fit_s, 3),
        "score_seconds": round(score_s, 3),
        "calibration_fit_seconds": round(time.perf_counter() - t0, 3) if folds else 0.0,
    }
    # `valle asv` looks for eer_threshold one level down in detector.json (here under "training")
    detector.training["eer_threshold"] = float(thr)
    detector.training["calibration"] = calibration
    return calibration


def check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "detector.json").is_file())):
        raise FileExistsError(f"{out}: exists and is not a detector directory; refusing to overwrite it")


def save_model(detector, out: str | Path, split_description: dict) -> Path:
    """Write the detector and ``split.json`` to ``out`` as one unit: assembled in a sibling folder and
    renamed into place (a previous model there is replaced whole)."""
    out = Path(out)
    check_target(out)
    text = json.dumps(split_description, indent=1) + "\n"
    # detector.json carries the split's hash, so an edited split.json is caught on load
    detector.training["split_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    old = None
    try:
        model_dir = staging / "model"
        detector.save(model_dir)
        (model_dir / SPLIT_FILE).write_text(text)
        if out.exists():
            old = staging / "old"
            out.rename(old)
        model_dir.rename(out)
    except BaseException:
        if old is not None and old.exists() and not out.exists():
            old.rename(out)  # put the previous model back
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_model(path: str | Path) -> tuple[object, dict | None]:
    """The detector of a model directory and its split description (None when there is none)."""
    path = Path(path)
    det = load_detector(path)
    split_path = path / SPLIT_FILE
    if not split_path.is_file():
        return det, None
    raw = split_path.read_bytes()
    expected = det.training.get("split_sha256")
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise DetectorFileError(f"{split_path}: sha256 does not match detector.json; the file was modified")
    try:
        return det, json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{split_path}: not valid JSON ({err})") from err


def platt(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling: (slope, intercept) of a logistic regression of the label (1 = bona fide) on the
    score (scikit-learn, default L2 strength, so separable training scores still give finite values)."""
    fit = LogisticRegression().fit(np.asarray(scores, dtype=float)[:, None], labels)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def p_spoof_of(detector, scores: np.ndarray) -> np.ndarray:
    """Probability of spoof for raw scores: Platt-calibrated when the detector stores a calibration
    (every detector trained by ``valle detect train``), else ``sigmoid(-score)``."""
    cal = (getattr(detector, "training", {}).get("calibration") or {}).get("platt")
    scores = np.asarray(scores, dtype=float)
    return expit(-(cal["slope"] * scores + cal["intercept"])) if cal else expit(-scores)


def stored_threshold(detector) -> float | None:
    value = getattr(detector, "training", {}).get("eer_threshold")
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None
