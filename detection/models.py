"""Countermeasures (synthetic-speech detectors) with one interface: fit, score, p_spoof, save, load.

Score convention (ASVspoof): ``score`` is HIGHER for BONA FIDE speech. Every detector here scores with a
log-odds of bona fide, so ``p_spoof = sigmoid(-score)`` is the probability of synthetic speech under
equal class priors (for ``LfccGmm`` the log-likelihood ratio is only as calibrated as the GMMs are;
treat its ``p_spoof`` as a monotone transform of the LLR, not a calibrated probability). Labels for
``fit`` are 1 = bona fide, 0 = spoof.

``LfccGmm``
    The ASVspoof 2021 LFCC-GMM baseline recipe (asvspoof-challenge/2021, ``LA/Baseline-LFCC-GMM``):
    LFCC + deltas + double deltas (``features.LfccConfig.gmm()``), one diagonal-covariance GMM per class
    fitted by EM (scikit-learn ``GaussianMixture``; 10 iterations as the baseline's ``max_iterations``),
    utterance score = mean frame log-likelihood under the bona fide GMM minus that under the spoof GMM.
    The baseline uses 512 components (``LfccGmm.paper()``); the default here is 64 so it trains on two
    CPU cores in minutes. Initialisation is k-means++ seeding (the MATLAB baseline: random), and at most
    ``max_frames`` frames per class (a seeded random subset) enter EM.

``LfccLogReg``
    Per-utterance statistics of the same 60-dim LFCCs (mean and standard deviation over frames,
    120 numbers) -> ``StandardScaler`` -> ``LogisticRegression``; score = ``decision_function``
    (the log-odds of bona fide).

``detection.cnn.LcnnDetector``
    A light CNN with Max-Feature-Map activations (see ``detection/cnn.py``).

Persistence (``save`` / ``load_detector``) goes through ``detection.io``: JSON + safetensors, no
pickle; scikit-learn objects are rebuilt from their arrays.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from detection.base import CLASS_NAMES, BaseDetector, Waveform, get_array, progress_iter
from detection.cnn import LcnnDetector
from detection.features import Controls, LfccConfig, lfcc
from detection.io import DetectorFileError, read_meta


class _LfccDetector(BaseDetector):
    def __init__(
        self, controls: Controls | None = None, name: str | None = None, lfcc_config: LfccConfig | None = None
    ):
        super().__init__(controls, name)
        self.lfcc_config = lfcc_config or LfccConfig.gmm()

    def _features(self, clips: list[Waveform]) -> list[np.ndarray]:
        cfg = self.lfcc_config
        return [lfcc(w, sr, n_lfcc=cfg.n_lfcc, deltas=cfg.deltas, config=cfg) for w, sr in clips]

    def _feature_config(self) -> dict:
        return {"type": "lfcc", **self.lfcc_config.to_dict()}


class LfccGmm(_LfccDetector):
    """Two diagonal GMMs on frame-level LFCCs; score = mean frame log-likelihood ratio (bona fide - spoof)."""

    kind = "lfcc-gmm"
    PAPER_COMPONENTS = 512  # ASVspoof 2021 LFCC-GMM baseline

    def __init__(
        self,
        n_components: int = 64,
        max_iter: int = 10,
        max_frames: int = 100_000,
        reg_covar: float = 1e-3,
        seed: int = 0,
        controls: Controls | None = None,
        name: str | None = None,
        lfcc_config: LfccConfig | None = None,
    ):
        super().__init__(controls, name, lfcc_config)
        if n_components < 1 or max_iter < 1 or max_frames < 1:
            raise ValueError("n_components, max_iter and max_frames must be >= 1")
        self.n_components = int(n_components)
        self.max_iter = int(max_iter)
        self.max_frames = int(max_frames)
        # Floor on every variance: frames of digital silence are nearly constant, and a variance that
        # collapses towards 0 would turn them into unbounded likelihoods.
        self.reg_covar = float(reg_covar)
        self.seed = int(seed)
        self.gmms: dict[int, object] = {}

    @classmethod
    def paper(cls, **kwargs) -> LfccGmm:
        """The baseline's size: 512 components, 10 EM iterations."""
        return cls(n_components=cls.PAPER_COMPONENTS, max_iter=10, **kwargs)

    def _new_gmm(self):
        return GaussianMixture(
            n_components=self.n_components,
            covariance_type="diag",
            max_iter=self.max_iter,
            reg_covar=self.reg_covar,
            init_params="k-means++",
            random_state=self.seed,
        )

    def _fit(self, feats: list[np.ndarray], labels: np.ndarray, progress: bool) -> dict:
        rng = np.random.default_rng(self.seed)
        summary: dict = {}
        for value in progress_iter([1, 0], progress, "GMM"):
            name = CLASS_NAMES[value]
            frames = np.concatenate([f for f, y in zip(feats, labels, strict=True) if y == value])
            if len(frames) < self.n_components:
                raise ValueError(
                    f"class {name!r} has {len(frames)} frames, fewer than n_components={self.n_components}; "
                    "give more audio or use fewer components"
                )
            if len(frames) > self.max_frames:
                frames = frames[np.sort(rng.choice(len(frames), self.max_frames, replace=False))]
            gmm = self._new_gmm()
            with warnings.catch_warnings():
                # The recipe runs a fixed number of EM iterations; not converging by then is expected.
                warnings.simplefilter("ignore", ConvergenceWarning)
                gmm.fit(frames.astype(np.float64))
            self.gmms[value] = gmm
            key = "bonafide" if value == 1 else "spoof"
            summary[f"frames_{key}"] = len(frames)
            summary[f"converged_{key}"] = bool(gmm.converged_)
            summary[f"avg_loglik_{key}"] = round(float(gmm.score(frames)), 4)
        return summary

    def _score(self, feats: list[np.ndarray]) -> np.ndarray:
        return np.array(
            [
                self.gmms[1].score(f.astype(np.float64)) - self.gmms[0].score(f.astype(np.float64))
                for f in feats
            ]
        )

    def _hyperparameters(self) -> dict:
        return {
            "n_components": self.n_components,
            "max_iter": self.max_iter,
            "max_frames": self.max_frames,
            "reg_covar": self.reg_covar,
            "seed": self.seed,
        }

    def _arrays(self) -> dict[str, dict[str, np.ndarray]]:
        tensors = {}
        for value, key in ((1, "bonafide"), (0, "spoof")):
            g = self.gmms[value]
            tensors[f"{key}.weights"] = g.weights_
            tensors[f"{key}.means"] = g.means_
            tensors[f"{key}.covariances"] = g.covariances_
        return {"gmm.safetensors": tensors}

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> LfccGmm:
        hp = meta["hyperparameters"]
        det = cls(
            **hp,
            controls=Controls.from_dict(meta["controls"]),
            name=meta.get("name"),
            lfcc_config=LfccConfig.from_dict({k: v for k, v in meta["features"].items() if k != "type"}),
        )
        for value, key in ((1, "bonafide"), (0, "spoof")):
            g = det._new_gmm()
            g.weights_ = get_array(arrays, "gmm.safetensors", f"{key}.weights")
            g.means_ = get_array(arrays, "gmm.safetensors", f"{key}.means")
            g.covariances_ = get_array(arrays, "gmm.safetensors", f"{key}.covariances")
            if (
                g.means_.shape != (det.n_components, det.lfcc_config.dim)
                or g.covariances_.shape != g.means_.shape
            ):
                raise DetectorFileError(f"gmm.safetensors: {key} GMM shapes do not match the hyperparameters")
            if not (g.covariances_ > 0).all():
                raise DetectorFileError(f"gmm.safetensors: {key} GMM has non-positive variances")
            g.precisions_cholesky_ = 1.0 / np.sqrt(g.covariances_)  # what sklearn derives for "diag"
            g.converged_ = bool(meta["training"].get(f"converged_{key}", True))
            g.n_features_in_ = g.means_.shape[1]
            det.gmms[value] = g
        det.training = meta["training"]
        det._fitted = True
        return det


def utterance_stats(feats: np.ndarray) -> np.ndarray:
    """Per-utterance statistics of frame features ``[T, D]`` -> ``[2 D]``: mean and std over frames."""
    return np.concatenate([feats.mean(axis=0), feats.std(axis=0)])


class LfccLogReg(_LfccDetector):
    """LFCC utterance statistics -> StandardScaler -> LogisticRegression; score = log-odds of bona fide."""

    kind = "lfcc-logreg"

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int = 1000,
        controls: Controls | None = None,
        name: str | None = None,
        lfcc_config: LfccConfig | None = None,
    ):
        super().__init__(controls, name, lfcc_config)
        if not C > 0:
            raise ValueError(f"C must be > 0, got {C!r}")
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.pipeline = None

    def _new_pipeline(self):
        return Pipeline(
            [("scaler", StandardScaler()), ("lr", LogisticRegression(C=self.C, max_iter=self.max_iter))]
        )

    def _fit(self, feats: list[np.ndarray], labels: np.ndarray, progress: bool) -> dict:
        x = np.stack([utterance_stats(f) for f in feats])
        self.pipeline = self._new_pipeline().fit(x, labels)
        return {"train_accuracy": round(float(self.pipeline.score(x, labels)), 4), "n_stats": int(x.shape[1])}

    def _score(self, feats: list[np.ndarray]) -> np.ndarray:
        # classes_ == [0, 1], so decision_function is the log-odds of class 1 = bona fide.
        return self.pipeline.decision_function(np.stack([utterance_stats(f) for f in feats]))

    def _hyperparameters(self) -> dict:
        return {"C": self.C, "max_iter": self.max_iter}

    def _arrays(self) -> dict[str, dict[str, np.ndarray]]:
        scaler, lr = self.pipeline.named_steps["scaler"], self.pipeline.named_steps["lr"]
        return {
            "logreg.safetensors": {
                "scaler.mean": scaler.mean_,
                "scaler.scale": scaler.scale_,
                "scaler.var": scaler.var_,
                "lr.coef": lr.coef_,
                "lr.intercept": lr.intercept_,
                "lr.classes": lr.classes_.astype(np.int64),
            }
        }

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> LfccLogReg:
        det = cls(
            **meta["hyperparameters"],
            controls=Controls.from_dict(meta["controls"]),
            name=meta.get("name"),
            lfcc_config=LfccConfig.from_dict({k: v for k, v in meta["features"].items() if k != "type"}),
        )
        pipe = det._new_pipeline()
        scaler, lr = pipe.named_steps["scaler"], pipe.named_steps["lr"]
        file = "logreg.safetensors"
        n = 2 * det.lfcc_config.dim
        scaler.mean_ = get_array(arrays, file, "scaler.mean")
        scaler.scale_ = get_array(arrays, file, "scaler.scale")
        scaler.var_ = get_array(arrays, file, "scaler.var")
        scaler.n_features_in_ = n
        scaler.n_samples_seen_ = meta["training"].get("n_bonafide", 0) + meta["training"].get("n_spoof", 0)
        lr.coef_, lr.intercept_ = get_array(arrays, file, "lr.coef"), get_array(arrays, file, "lr.intercept")
        lr.classes_ = get_array(arrays, file, "lr.classes")
        lr.n_features_in_ = n
        if scaler.mean_.shape != (n,) or lr.coef_.shape != (1, n) or list(lr.classes_) != [0, 1]:
            raise DetectorFileError(f"{file}: array shapes do not match a {n}-statistic binary model")
        det.pipeline = pipe
        det.training = meta["training"]
        det._fitted = True
        return det


def detector_kinds() -> dict[str, type[BaseDetector]]:
    return {c.kind: c for c in (LfccGmm, LfccLogReg, LcnnDetector)}


def load_detector(path: str | Path) -> BaseDetector:
    """Load any saved detector, dispatching on the ``kind`` in ``detector.json``; every file is checked."""
    path = Path(path)
    kinds = detector_kinds()
    kind = read_meta(path)["kind"]
    if kind not in kinds:
        raise DetectorFileError(f"{path}: unknown detector kind {kind!r}; this build knows {sorted(kinds)}")
    return kinds[kind].load(path)
