"""``valle detect train | score | eval``: train a synthetic-speech detector (countermeasure, CM) on a
speaker-disjoint split, score files with it, and evaluate it ASVspoof-style per generator and per
signal degradation.

Score convention (``detection``): a CM score is HIGHER for BONA FIDE speech (log-odds of bona fide).
A recording is called bona fide when ``score >= threshold``; ``p_spoof`` is Platt-calibrated on the
same train-split scores as the threshold (``training.calibration.platt``), so the probability and
the decision come from one piece of evidence (raw GMM log-likelihood ratios are far from calibrated:
a real clip at score 13.6 read as p_spoof 1.2e-6 while the threshold called it spoof).

``train``
    Splits the data (``evaluation.detect_data.split``: speaker-disjoint, optionally holding one
    generator out), fits the detector on the train split, and stores an EER threshold computed from
    TRAIN-split scores only as ``training.eer_threshold`` in ``detector.json`` (the ASV gate of
    ``valle asv`` reads it), so no test clip influences it. By default the scores are out-of-fold
    (``--calibration-folds 3``: three speaker-disjoint folds of the train split, each scored by a
    detector fitted on the other two); ``--calibration-folds 0`` uses the final detector's in-sample
    scores, whose EER threshold sits where the detector separates its own training clips and, in the
    detection benchmark, rejected 23-92% of unseen bona fide clips (``at_stored_threshold`` in
    ``eval.json`` shows the rates a threshold gives on the test split). The split description
    (parameters, speakers, ids) is written to ``split.json``; its sha256 is kept in ``detector.json``.
    The model directory is assembled beside the target and renamed into place, so a failure leaves no
    half-written model.
``score``
    Per-file score and p_spoof (JSON list with ``--json``); an unreadable file gets an entry with its
    error, and the exit code is 1 at the end.
``eval``
    Re-reads the data (same flags as ``train``), takes the test clips recorded in ``split.json``, and
    reports on them, under ``clean`` and under each degradation (a subset of ``watermark.attacks``
    applied to BOTH classes): EER (ASVspoof rule), minDCF (ASVspoof 5 costs: P_spoof 0.05, C_miss 1,
    C_fa 10), Cllr and minCllr (scores read as natural-log likelihood ratios of bona fide vs spoof;
    every detector here outputs log-odds, so Cllr measures their calibration and minCllr their
    discrimination), DET/ROC points, and a speaker-level bootstrap interval for the EER
    (``detection.metrics.bootstrap_ci`` with speaker groups; trial-level when fewer than two speakers).
    ``per_generator``: each spoof generator vs all test bona fide clips (clean);
    ``per_condition``: all spoofs vs all bona fide under each condition; ``grid``: both crossed.
    Writes ``eval.json`` and ``scores.parquet`` (one row per clip x condition) atomically.

Metric definitions and sources: ``detection/metrics.py``. Torch runs with one intra-op thread by
default (``--threads``): feature extraction of one clip is too small to gain from a second thread,
and on a busy two-core machine it was ~15x slower with two.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.detect_data import (
    Clip,
    Split,
    check_readable,
    collect_clips,
    load_clip_audio,
    recorded_test,
    speaker_folds,
    split,
)

MODELS = ("lfcc-gmm", "lfcc-lr", "lcnn")
SIZES = ("small", "paper", "full")  # paper = full = the published size
SPLIT_FILE = "split.json"
EVAL_FILE = "eval.json"
SCORES_FILE = "scores.parquet"
EVAL_FORMAT = "valle-detect-eval"
EVAL_VERSION = 1
CLEAN = "clean"
# A small, varied subset of the attack bank: additive noise, a low-bitrate lossy codec, the telephone
# band and a round trip through 8 kHz.
DEFAULT_DEGRADATIONS = ("white_noise_20db", "mp3_32k", "resample_8k", "bandpass_300_3400")  # bank order
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")
MAX_CURVE_POINTS = 400
CALIBRATION_FOLDS = 3  # out-of-fold EER threshold by default (see fit_and_calibrate)


# --------------------------------------------------------------------------- models


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
    from detection.features import Controls
    from detection.models import LfccGmm, LfccLogReg

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
        from detection.cnn import LcnnDetector

        return LcnnDetector(
            size="small" if size == "small" else "full", epochs=epochs, device=device, seed=seed, controls=ctl
        )
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def _labels(clips: Sequence[Clip]) -> np.ndarray:
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
    clips are cut into k speaker-disjoint folds (:func:`evaluation.detect_data.speaker_folds`) and each
    fold is scored by a fresh detector from ``make()`` fitted on the other folds (k extra fits); the
    final detector is fitted on all of them. ``folds=0``: the EER threshold of the final detector's
    scores on its own training clips. That in-sample threshold is always recorded too
    (``in_sample_eer_threshold``), but it sits where the detector separates clips it was fitted on: in
    the detection benchmark it rejected 23-92% of unseen bona fide test clips, so it is not the default.
    """
    from detection.metrics import compute_eer

    if folds == 1 or folds < 0:
        raise ValueError(f"calibration folds must be 0 or >= 2, got {folds}")
    labels = _labels(clips)
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


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "detector.json").is_file())):
        raise FileExistsError(f"{out}: exists and is not a detector directory; refusing to overwrite it")


def save_model(detector, out: str | Path, split_description: dict) -> Path:
    """Write the detector and ``split.json`` to ``out`` as one unit: assembled in a sibling folder and
    renamed into place (a previous model there is replaced whole)."""
    out = Path(out)
    _check_target(out)
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
    from detection.io import DetectorFileError
    from detection.models import load_detector

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
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression().fit(np.asarray(scores, dtype=float)[:, None], labels)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def p_spoof_of(detector, scores: np.ndarray) -> np.ndarray:
    """Probability of spoof for raw scores: Platt-calibrated when the detector stores a calibration
    (every detector trained by ``valle detect train``), else ``sigmoid(-score)``."""
    from scipy.special import expit

    cal = (getattr(detector, "training", {}).get("calibration") or {}).get("platt")
    scores = np.asarray(scores, dtype=float)
    return expit(-(cal["slope"] * scores + cal["intercept"])) if cal else expit(-scores)


def stored_threshold(detector) -> float | None:
    value = getattr(detector, "training", {}).get("eer_threshold")
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


# --------------------------------------------------------------------------- evaluation


def degradations(names: str) -> list:
    """``default`` | ``none`` | comma-separated attack names of ``watermark.attacks.attack_bank()``."""
    from watermark.attacks import attack_bank, select

    if names == "none":
        return []
    wanted = list(DEFAULT_DEGRADATIONS) if names == "default" else names
    return select(attack_bank(), wanted)


def degrade(
    clips: Sequence[Clip], audio: Sequence[tuple[np.ndarray, int]], attacks: Sequence
) -> dict[str, list[tuple[np.ndarray, int]]]:
    """``{"clean": audio, attack.name: attacked audio}``; each attack is applied to every clip."""
    out = {CLEAN: list(audio)}
    for attack in attacks:
        if attack.name == CLEAN:
            raise ValueError(f"a degradation may not be called {CLEAN!r}")
        attacked = []
        for c, (wav, sr) in zip(clips, audio, strict=True):
            try:
                attacked.append(attack(wav, sr))
            except Exception as err:
                raise RuntimeError(f"degradation {attack.name!r} failed on clip {c.id!r}: {err}") from err
        out[attack.name] = attacked
    return out


def score_conditions(detector, clips: Sequence[Clip], conditions: dict[str, list]) -> pd.DataFrame:
    """One row per clip x condition: id, speaker, generator, label, condition, score, p_spoof."""
    frames = []
    for cond, audio in conditions.items():
        scores = np.asarray(detector.score(audio), dtype=np.float64)
        frames.append(
            pd.DataFrame(
                {
                    "id": [c.id for c in clips],
                    "speaker": [c.speaker for c in clips],
                    "generator": [c.generator for c in clips],
                    "label": _labels(clips),
                    "condition": cond,
                    "score": scores,
                    "p_spoof": p_spoof_of(detector, scores),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _thin(curve: dict, n: int = MAX_CURVE_POINTS) -> dict:
    k = len(curve["threshold"])
    idx = np.unique(np.linspace(0, k - 1, n).round().astype(int)) if k > n else np.arange(k)
    return {key: [round(float(v), 6) for v in np.asarray(values)[idx]] for key, values in curve.items()}


def cm_metrics(
    bona: pd.DataFrame, spoof: pd.DataFrame, bootstrap: int, seed: int, threshold: float | None
) -> dict:
    """EER (+ speaker-level bootstrap CI), minDCF, Cllr, minCllr and the rates at the stored threshold
    of one bona fide vs spoof comparison (rows of ``scores.parquet``)."""
    from detection.metrics import ASVSPOOF5_COSTS, bootstrap_ci, cm_report, compute_eer, rates_at

    b, s = bona["score"].to_numpy(float), spoof["score"].to_numpy(float)
    rep = cm_report(b, s, llr=True, bootstrap=0)
    out = {
        "eer": rep.eer,
        "eer_threshold": rep.eer_threshold,
        "eer_ci": None,
        "ci_unit": None,
        "min_dcf": rep.min_dcf,
        "min_dcf_threshold": rep.min_dcf_threshold,
        "cllr": rep.cllr,
        "min_cllr": rep.min_cllr,
        "n_bonafide": rep.n_bonafide,
        "n_spoof": rep.n_spoof,
        "n_bonafide_speakers": int(bona["speaker"].nunique()),
        "n_spoof_speakers": int(spoof["speaker"].nunique()),
        "dcf_costs": ASVSPOOF5_COSTS,
    }
    if bootstrap > 0:
        groups = (bona["speaker"].to_numpy(str), spoof["speaker"].to_numpy(str))
        try:
            _, low, high = bootstrap_ci(b, s, compute_eer, n=bootstrap, seed=seed, groups=groups)
            out["ci_unit"] = "speaker"
        except ValueError:  # one speaker in all (or almost every draw misses a class): resample trials
            _, low, high = bootstrap_ci(b, s, compute_eer, n=bootstrap, seed=seed)
            out["ci_unit"] = "trial"
        out["eer_ci"] = [low, high]
    if threshold is not None:
        miss, fa = rates_at(b, s, threshold)
        out["at_stored_threshold"] = {
            "threshold": threshold,
            "bonafide_rejection": miss,
            "spoof_acceptance": fa,
        }
    return out


def summarize(
    scores: pd.DataFrame, bootstrap: int = 1000, seed: int = 0, threshold: float | None = None
) -> dict:
    """The metric sections of ``eval.json`` from a ``scores.parquet`` table (module docstring)."""
    from detection.metrics import compute_eer, compute_min_dcf, det_points

    conditions = list(dict.fromkeys(scores["condition"]))
    generators = sorted(set(scores.loc[scores["label"] == 0, "generator"]))
    per_condition, per_generator, grid, curves = {}, {}, {}, {}
    for cond in conditions:
        rows = scores[scores["condition"] == cond]
        bona, spoof = rows[rows["label"] == 1], rows[rows["label"] == 0]
        per_condition[cond] = cm_metrics(bona, spoof, bootstrap, seed, threshold)
        curves[f"{cond}/all"] = _thin(det_points(bona["score"], spoof["score"]))
        grid[cond] = {}
        for gen in generators:
            g = spoof[spoof["generator"] == gen]
            if cond == CLEAN:
                per_generator[gen] = cm_metrics(bona, g, bootstrap, seed, threshold)
                curves[f"{cond}/{gen}"] = _thin(det_points(bona["score"], g["score"]))
            grid[cond][gen] = {
                "eer": compute_eer(bona["score"], g["score"])[0],
                "min_dcf": compute_min_dcf(bona["score"], g["score"])[0],
                "n_spoof": len(g),
            }
    return {
        "conditions": conditions,
        "generators": generators,
        "overall": per_condition.get(CLEAN),
        "per_generator": per_generator,
        "per_condition": per_condition,
        "grid": grid,
        "curves": curves,
    }


DEFINITIONS = {
    "score": "log-odds of bona fide (higher = more bona fide)",
    "p_spoof": "sigmoid(-(a * score + b)), a and b fitted (Platt) on the scores the threshold was set on",
    "decision": "bona fide when score >= threshold",
    "eer": "equal error rate, ASVspoof rule (detection.metrics.compute_eer)",
    "min_dcf": "normalised minimum DCF, ASVspoof 5 costs (P_spoof 0.05, C_miss 1, C_fa 10)",
    "cllr": "Brummer's Cllr in bits, scores read as natural-log LLRs; min_cllr after PAV recalibration",
    "eer_ci": "percentile bootstrap interval of the EER; ci_unit 'speaker': speakers drawn with "
    "replacement, all their bona fide and spoof trials together; 'trial': each class resampled",
    "per_generator": "each spoof generator vs all test bona fide clips (clean audio)",
    "per_condition": "all spoofs vs all bona fide, both classes under the same degradation",
    "grid": "condition x generator, point estimates",
    "curves": "DET points by ascending threshold (miss, fa and their probits); ROC: tpr = 1 - miss, fpr = fa",
    "at_stored_threshold": "rates at the EER threshold fixed on the training split (stored with the model)",
}


def write_eval(out: str | Path, report: dict, scores: pd.DataFrame) -> tuple[Path, Path]:
    """``eval.json`` + ``scores.parquet`` in ``out``, written under temporary names and renamed when
    both are complete (the report last), so a failure leaves no half-written output."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path, table_path = out / EVAL_FILE, out / SCORES_FILE
    tmp_report, tmp_table = (p.with_name(f".{p.name}.partial") for p in (report_path, table_path))
    try:
        scores.to_parquet(tmp_table, index=False)
        tmp_report.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    except BaseException:
        for p in (tmp_report, tmp_table):
            p.unlink(missing_ok=True)
        raise
    tmp_table.replace(table_path)
    tmp_report.replace(report_path)
    return report_path, table_path


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:5.1f}"


def format_eval(report: dict) -> str:
    """A compact table: one row per condition, EER% [CI] / minDCF / Cllr of all spoofs, then the EER%
    of each generator."""
    gens = report["generators"]
    head = f"{'condition':<20}{'EER%':>6} {'95% CI':<13}{'minDCF':>7}{'Cllr':>7}" + "".join(
        f"{g[:10]:>11}" for g in gens
    )
    lines = [head]
    for cond in report["conditions"]:
        m = report["per_condition"][cond]
        ci = m["eer_ci"]
        ci_s = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
        cllr = f"{m['cllr']:7.3f}" if m["cllr"] is not None else "    n/a"
        row = f"{cond:<20}{_pct(m['eer']):>6} {ci_s:<13}{m['min_dcf']:7.3f}{cllr}"
        row += "".join(f"{_pct(report['grid'][cond][g]['eer']):>11}" for g in gens)
        lines.append(row)
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands


def _threads(n: int) -> None:
    import torch

    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def _data(args: argparse.Namespace) -> tuple[list[Clip], list[dict]]:
    if not (args.run or args.bonafide or args.spoof):
        raise ValueError("no data: give --run DIR, or --bonafide M.jsonl and --spoof [NAME=]M.jsonl")
    return collect_clips(args.bonafide or (), args.spoof or (), args.run or ())


def _blas_limit(n: int):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n)


def run_train(args: argparse.Namespace) -> int:
    _threads(args.threads)
    _check_target(args.out)  # before any work: refuse a folder that is not a model
    if args.calibration_folds == 1 or args.calibration_folds < 0:
        raise ValueError(f"--calibration-folds must be 0 or >= 2, got {args.calibration_folds}")

    def make():
        return build_detector(
            args.model, args.size, not args.no_controls, args.seed, args.epochs, args.device
        )

    detector = make()
    clips, sources = _data(args)
    check_readable(clips)  # test files too: eval must not find a broken file after training
    sp: Split = split(clips, args.test_fraction, args.seed, args.holdout_generator)
    sp.description["sources"] = sources
    audio = load_clip_audio(sp.train, progress=args.progress)
    with _blas_limit(args.threads):
        calibration = fit_and_calibrate(detector, sp.train, audio, args.calibration_folds, make, args.seed)
    detector.training["split"] = {
        k: sp.description[k] for k in ("seed", "test_fraction", "holdout_generator", "counts")
    }
    save_model(detector, args.out, sp.description)
    counts = sp.description["counts"]
    print(
        f"{detector.kind} trained on {len(sp.train)} clips ({counts['train']}) of "
        f"{len(sp.description['train_speakers'])} speakers in {calibration['fit_seconds']:.1f} s; "
        f"test split: {len(sp.test)} clips ({counts['test']}) of "
        f"{len(sp.description['test_speakers'])} speakers"
    )
    print(
        f"train EER {100 * calibration['train_eer']:.2f}% at threshold {calibration['eer_threshold']:.4f} "
        f"({calibration['on']}; stored as eer_threshold)\nmodel: {args.out}"
    )
    rejected = calibration["train_bonafide_rejected"]
    if rejected > 0.5:  # the threshold is off this detector's scale: say so before anyone relies on it
        print(
            f"warning: the stored threshold calls {100 * rejected:.0f}% of the detector's own bona fide "
            "training clips spoof; its decisions will reject real speech (try --calibration-folds 0 "
            "or more training data)",
            file=sys.stderr,
        )
    return 0


def _audio_files(paths: Sequence[str | Path]) -> list[tuple[Path, str | None]]:
    """``(file, problem)`` per input: folders expand to their audio files (recursively, sorted); a
    folder without any gives one entry with a problem. Missing files are kept (their load fails)."""
    files: list[tuple[Path, str | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            files += [(f, None) for f in found] or [(p, f"no audio files ({', '.join(AUDIO_SUFFIXES)}) here")]
        else:
            files.append((p, None))
    return files


MIN_SCORE_SECONDS = 0.25  # shorter clips hold too few feature frames for any detector here


def score_files(detector, paths: Sequence[str | Path]) -> list[dict]:
    """Per file ``{path, score, p_spoof, decision}`` or ``{path, error}``; ``decision`` uses the
    detector's stored EER threshold (None when it has none), ``p_spoof`` its stored calibration."""
    from valle.audio import load_audio

    thr = stored_threshold(detector)
    entries: list[dict] = []
    loaded: list[tuple[int, tuple[np.ndarray, int]]] = []
    for f, problem in _audio_files(paths):
        entries.append({"path": str(f)})
        if problem is not None:
            entries[-1]["error"] = problem
            continue
        try:
            wav, sr = load_audio(f)
        except ValueError as err:
            entries[-1]["error"] = str(err)
            continue
        if len(wav) < MIN_SCORE_SECONDS * sr:  # a few samples carry no evidence either way
            entries[-1]["error"] = (
                f"{f}: {len(wav)} samples ({len(wav) / sr:.3f} s) is too short to score "
                f"(at least {MIN_SCORE_SECONDS:g} s)"
            )
            continue
        loaded.append((len(entries) - 1, (wav, sr)))
    if loaded:
        try:
            scores = list(detector.score([a for _, a in loaded]))
        except ValueError:  # attribute the failure to its file(s)
            scores = []
            for i, a in loaded:
                try:
                    scores.append(float(detector.score([a])[0]))
                except ValueError as err:
                    scores.append(None)
                    entries[i]["error"] = str(err)
        for (i, _), s in zip(loaded, scores, strict=True):
            if s is None:
                continue
            entries[i].update(score=float(s), p_spoof=float(p_spoof_of(detector, s)))
            # the score's own side of the stored threshold (higher = more bona fide)
            entries[i]["decision"] = None if thr is None else ("bona fide" if s >= thr else "spoof")
    return entries


def run_score(args: argparse.Namespace) -> int:
    _threads(args.threads)
    detector, _ = load_model(args.model)
    entries = score_files(detector, args.paths)
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        thr = stored_threshold(detector)
        print(f"{'score':>9} {'p_spoof':>8}  {'decision':<10}path   (threshold {thr})")
        for e in entries:
            if "error" in e:
                print(f"{'error':>9} {'':>8}  {'':<10}{e['path']}: {e['error']}")
            else:
                print(f"{e['score']:9.3f} {e['p_spoof']:8.4f}  {e['decision'] or '':<10}{e['path']}")
    n_err = sum("error" in e for e in entries)
    if n_err:
        print(f"valle detect score: {n_err} of {len(entries)} file(s) could not be scored", file=sys.stderr)
    return 1 if n_err else 0


def evaluate(
    detector,
    clips: Sequence[Clip],
    audio: Sequence[tuple[np.ndarray, int]],
    attacks: Sequence = (),
    bootstrap: int = 1000,
    seed: int = 0,
    conditions: dict[str, list] | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Score ``clips`` under clean audio and each attack (or under ``conditions`` already degraded)
    and summarise; returns (the metric sections of ``eval.json``, the scores table)."""
    t0 = time.perf_counter()
    conditions = conditions if conditions is not None else degrade(clips, audio, attacks)
    t_degrade = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_conditions(detector, clips, conditions)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = summarize(scores, bootstrap, seed, stored_threshold(detector))
    report["seconds"] = {
        "degrade": round(t_degrade, 3),
        "score": round(t_score, 3),
        "metrics": round(time.perf_counter() - t0, 3),
    }
    return report, scores


def eval_report(
    model_path: str | Path,
    detector,
    description: dict,
    attacks: Sequence,
    bootstrap: int,
    seed: int,
    metrics: dict,
    **extra,
) -> dict:
    """``eval.json``: the model, its split, the degradations and the metric sections of :func:`evaluate`;
    ``extra`` keys (e.g. ``inputs``) are appended."""
    return {
        "format": EVAL_FORMAT,
        "version": EVAL_VERSION,
        "model": {
            "path": str(model_path),
            "kind": detector.kind,
            "name": detector.name,
            "controls": detector.controls.to_dict(),
            "eer_threshold": stored_threshold(detector),
        },
        "split": {
            **{k: description.get(k) for k in ("seed", "test_fraction", "holdout_generator", "counts")},
            "test_speakers": description.get("test_speakers"),
        },
        "degradations": {a.name: {"family": a.family, **a.params} for a in attacks},
        "bootstrap": {"n": bootstrap, "seed": seed},
        **metrics,
        "definitions": DEFINITIONS,
        **extra,
    }


def run_eval(args: argparse.Namespace) -> int:
    _threads(args.threads)
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    detector, description = load_model(args.model)
    if description is None:
        raise FileNotFoundError(
            f"{Path(args.model) / SPLIT_FILE}: not found; was the model made by `valle detect train`?"
        )
    attacks = degradations(args.degradations)
    clips, sources = _data(args)
    test, notes = recorded_test(clips, description)
    audio = load_clip_audio(test, progress=args.progress)
    with _blas_limit(args.threads):
        metrics, scores = evaluate(detector, test, audio, attacks, args.bootstrap, args.seed)
    report = eval_report(
        args.model, detector, description, attacks, args.bootstrap, args.seed, metrics, inputs=sources
    )
    report["split"].update(notes)
    report_path, table_path = write_eval(args.out, report, scores)
    print(format_eval(report))
    print(f"report: {report_path}\nscores: {table_path}")
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (a run directory, manifests, or both)")
    g.add_argument(
        "--run",
        action="append",
        metavar="[NAME=]DIR",
        help="`valle score` run: bona fide = its test targets, spoof = its ok generations (repeatable)",
    )
    g.add_argument("--bonafide", action="append", type=Path, metavar="M.jsonl", help="real speech manifest")
    g.add_argument(
        "--spoof",
        action="append",
        metavar="[NAME=]M.jsonl",
        help="spoof manifest; generator NAME (default: the file stem) (repeatable)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1)")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="synthetic-speech detector: train, score files, evaluate (ASVspoof metrics)",
        description="Train a countermeasure on a speaker-disjoint split, score files, and evaluate it per "
        "generator and per degradation (EER, minDCF, Cllr, DET points, bootstrap CIs).",
        epilog="examples:\n"
        "  valle detect train --bonafide real.jsonl --spoof tts=tts.jsonl --model lfcc-gmm --out models/cm\n"
        "  valle detect score clip.wav generated/ --model models/cm --json\n"
        "  valle detect eval --model models/cm --bonafide real.jsonl --spoof tts=tts.jsonl --out runs/cm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="detect_command", required=True, metavar="SUBCOMMAND")

    t = sub.add_parser("train", help="train a detector; stores its train-split EER threshold and split.json")
    _data_args(t)
    t.add_argument("--model", choices=MODELS, required=True)
    t.add_argument(
        "--size", choices=SIZES, default="small", help="small (CPU) or paper/full (published size)"
    )
    t.add_argument(
        "--no-controls",
        action="store_true",
        help="no silence trimming / loudness matching (resampling to 16 kHz stays)",
    )
    t.add_argument(
        "--holdout-generator", default=None, metavar="NAME", help="keep this generator out of training"
    )
    t.add_argument("--test-fraction", type=float, default=0.3)
    t.add_argument("--seed", type=int, default=0, help="split and model seed")
    t.add_argument(
        "--calibration-folds",
        type=int,
        default=CALIBRATION_FOLDS,
        metavar="K",
        help="EER threshold from out-of-fold scores of K speaker-disjoint folds of the train split "
        f"(K extra fits; default {CALIBRATION_FOLDS}); 0 = in-sample scores of the trained detector",
    )
    t.add_argument("--epochs", type=int, default=None, help="lcnn: training epochs (default: by size)")
    t.add_argument("--device", default="auto", help="lcnn: cpu | cuda | auto")
    t.add_argument("--out", type=Path, required=True, help="model directory")
    _common(t)
    t.set_defaults(func=run_train)

    s = sub.add_parser("score", help="score audio files: p_spoof and score per file")
    s.add_argument("paths", nargs="+", metavar="FILES_OR_DIRS")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--json", action="store_true", help="print a JSON list")
    _common(s)
    s.set_defaults(func=run_score)

    e = sub.add_parser("eval", help="evaluate on the model's recorded test split (same data flags as train)")
    e.add_argument("--model", type=Path, required=True)
    _data_args(e)
    e.add_argument(
        "--degradations",
        default="default",
        help=f"default ({', '.join(DEFAULT_DEGRADATIONS)}), none, or comma-separated attack names",
    )
    e.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the EER CI (0 = none)"
    )
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    e.add_argument("--out", type=Path, required=True, help="output directory (eval.json, scores.parquet)")
    _common(e)
    e.set_defaults(func=run_eval)
