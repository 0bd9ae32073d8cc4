"""``valle detect train | score | eval``: train a synthetic-speech detector (countermeasure, CM) on a
speaker-disjoint split, score files with it, and evaluate it ASVspoof-style per generator and per
signal degradation.

Score convention (``detection``): a CM score is HIGHER for BONA FIDE speech (log-odds of bona fide).
A recording is called bona fide when ``score >= threshold``; ``p_spoof`` is Platt-calibrated on the
same train-split scores as the threshold (``training.calibration.platt``), so the probability and
the decision come from one piece of evidence (raw GMM log-likelihood ratios are far from calibrated:
a real clip at score 13.6 read as p_spoof 1.2e-6 while the threshold called it spoof).

``train``
    Splits the data (``evaluation.testsets.detector_data.split``: speaker-disjoint, optionally holding one
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
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from detection.evaluate import eval_report, evaluate, format_eval, write_eval
from detection.split import Clip, Split, recorded_test, split
from detection.train import (
    CALIBRATION_FOLDS,
    MODELS,
    SIZES,
    SPLIT_FILE,
    build_detector,
    check_target,
    fit_and_calibrate,
    load_model,
    p_spoof_of,
    save_model,
    stored_threshold,
)
from evaluation.testsets.detector_data import (
    DEFAULT_DEGRADATIONS,
    check_readable,
    collect_clips,
    degradations,
    load_clip_audio,
)
from valle.audio import load_audio

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac")


# --------------------------------------------------------------------------- commands


def _threads(n: int) -> None:
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)


def _data(args: argparse.Namespace) -> tuple[list[Clip], list[dict]]:
    if not (args.run or args.bonafide or args.spoof):
        raise ValueError("no data: give --run DIR, or --bonafide M.jsonl and --spoof [NAME=]M.jsonl")
    return collect_clips(args.bonafide or (), args.spoof or (), args.run or ())


def _blas_limit(n: int):
    return threadpool_limits(n)


def run_train(args: argparse.Namespace) -> int:
    _threads(args.threads)
    check_target(args.out)  # before any work: refuse a folder that is not a model
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
