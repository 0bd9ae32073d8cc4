"""Voice-authentication bypass: can a cloned voice pass a speaker-embedding voice-print check, and
does a synthetic-speech detector (countermeasure, CM) in front of it stop the clone?

Three parts: enrolment and trials (:mod:`evaluation.bypass.trials`), thresholds, metrics and the report
(:mod:`evaluation.bypass.report`), and here the whole run from audio files to report and tables
(:func:`run_asv`). Reading manifests / run directories, the plain-text summary and the ``valle asv``
command are in :mod:`evaluation.cli.asv`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from detection.metrics import compute_eer
from detection.models import load_detector
from evaluation.bypass.report import asv_report, trial_table
from evaluation.bypass.trials import (
    MIN_SECONDS,
    AsvConfig,
    check_ids,
    embed_audio,
    load_encoder,
    split_enrolment,
    trials_from_embeddings,
)
from valle.audio import load_audio

REPORT_FILE = "asv_report.json"
TRIALS_FILE = "asv_trials.parquet"
# keys under which a saved detector may carry its own EER threshold (detector attribute or json)
CM_THRESHOLD_KEYS = ("eer_threshold", "cm_threshold")


# --------------------------------------------------------------------------- audio files -> report


def _load(row: Mapping) -> tuple[np.ndarray, int]:
    wav, sr = load_audio(row["audio"])
    if wav.size < MIN_SECONDS * sr:
        raise ValueError(
            f"{row['audio']}: {wav.size / sr:.3f} s is shorter than the {MIN_SECONDS} s a speaker "
            "embedding needs"
        )
    return wav, sr


def _check_rows(rows: Sequence[Mapping], what: str) -> None:
    for i, row in enumerate(rows):
        missing = [k for k in ("id", "speaker", "audio") if not row.get(k)]
        if missing:
            raise ValueError(f"{what} row {i}: missing {', '.join(missing)}")


def stored_cm_threshold(detector, path: str | Path | None) -> float | None:
    """The detector's own EER threshold, looked up under ``CM_THRESHOLD_KEYS``: an attribute, a key of
    a dict attribute (e.g. its training summary), or a key in ``detector.json`` at the top level or one
    level down; None when it carries none."""
    places: list[Mapping] = [{k: getattr(detector, k, None) for k in CM_THRESHOLD_KEYS}]
    places += (
        [v for v in vars(detector).values() if isinstance(v, Mapping)]
        if hasattr(detector, "__dict__")
        else []
    )
    if path is not None and (Path(path) / "detector.json").is_file():
        meta = json.loads((Path(path) / "detector.json").read_text(encoding="utf-8"))
        places += [meta, *(v for v in meta.values() if isinstance(v, Mapping))]
    for place in places:
        for key in CM_THRESHOLD_KEYS:
            value = place.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value)
    return None


def run_asv(
    real_rows: Sequence[Mapping],
    spoof_rows: Sequence[Mapping],
    config: AsvConfig = AsvConfig(),
    cm=None,
    *,
    cm_threshold: float | None = None,
    encoder=None,
) -> tuple[dict, pd.DataFrame]:
    """Load, embed, score: rows are mappings with ``id``, ``speaker`` and ``audio`` (a file path);
    a spoof row's ``speaker`` is the cloned target. ``cm``: a detector (``.score([(wav, sr)]) ->
    [n]``, higher = bona fide) or a detector directory (``detection.models.load_detector``).
    ``cm_threshold`` defaults to the detector's stored EER threshold, else to the CM EER threshold
    over this run's bona fide test utterances vs spoofs (the report says which).

    Audio is read in batches (one encoder, loaded once). An unreadable or too-short real file is
    an error (the calibration would silently change); such a spoof is listed in
    ``skipped_spoofs`` and left out of the rates. Returns ``(report, trials DataFrame)``.
    """
    _check_rows(real_rows, "real")
    _check_rows(spoof_rows, "spoof")
    check_ids([(r["id"], r["speaker"]) for r in real_rows], [(r["id"], r["speaker"]) for r in spoof_rows])
    if cm is None and cm_threshold is not None:
        raise ValueError("cm_threshold was given without a CM (detector)")
    cm_path = None
    if isinstance(cm, (str, Path)):
        cm_path, cm = Path(cm), load_detector(cm)
    encoder = encoder if encoder is not None else load_encoder(config)
    ids_by_speaker: dict[str, list[str]] = {}
    for r in real_rows:
        ids_by_speaker.setdefault(r["speaker"], []).append(r["id"])
    enrol_ids, _, _ = split_enrolment(ids_by_speaker, config.enrol_per_speaker)
    enrolment = {u for ids in enrol_ids.values() for u in ids}

    embeddings: dict[str, np.ndarray] = {}
    cm_scores: dict[str, float] = {}
    problems: dict[str, str] = {}
    timing = {"load": 0.0, "embed": 0.0, "cm": 0.0}
    rows = [("real", r) for r in real_rows] + [("spoof", r) for r in spoof_rows]
    real_failed = False
    for start in range(0, len(rows), config.batch_size):
        chunk = rows[start : start + config.batch_size]
        if real_failed:  # only read the rest of the real set, to list every problem in one error
            chunk = [(what, row) for what, row in chunk if what == "real"]
        batch = []
        t0 = time.perf_counter()
        for what, row in chunk:
            try:
                batch.append((row, _load(row)))
            except ValueError as err:  # AudioError included
                problems[row["id"]] = f"{what}: {err}"
                real_failed = real_failed or what == "real"
        timing["load"] += time.perf_counter() - t0
        if real_failed or not batch:
            continue
        t0 = time.perf_counter()
        for (row, _), e in zip(
            batch, embed_audio(encoder, [a for _, a in batch], config.batch_size), strict=True
        ):
            embeddings[row["id"]] = e
        timing["embed"] += time.perf_counter() - t0
        if cm is not None:  # enrolment recordings are never trials: no CM score needed
            scored = [(row, a) for row, a in batch if row["id"] not in enrolment]
            if scored:
                t0 = time.perf_counter()
                values = np.asarray(cm.score([a for _, a in scored]), dtype=np.float64).reshape(-1)
                timing["cm"] += time.perf_counter() - t0
                if values.shape != (len(scored),):
                    raise ValueError(f"CM returned {values.shape[0]} scores for {len(scored)} recordings")
                cm_scores.update({row["id"]: float(v) for (row, _), v in zip(scored, values, strict=True)})
    real_problems = {k: v for k, v in problems.items() if v.startswith("real:")}
    if real_problems:  # (checked after the loop so the message lists them all)
        listed = "\n  ".join(f"{k}: {v}" for k, v in list(real_problems.items())[:20])
        raise ValueError(f"{len(real_problems)} real utterance(s) cannot be used:\n  {listed}")

    _, trials = trials_from_embeddings(
        [(r["id"], r["speaker"], embeddings[r["id"]]) for r in real_rows],
        [(r["id"], r["speaker"], embeddings[r["id"]]) for r in spoof_rows if r["id"] in embeddings],
        config,
    )
    trials.skipped_spoofs.update({k: v for k, v in problems.items() if v.startswith("spoof:")})
    trials.encoder_card = encoder.card()
    trials.notes["seconds"] = {k: round(v, 3) for k, v in timing.items()}

    source = "given"
    if cm is not None:
        trial_utts = {t.utterance for t in trials}
        cm_scores = {k: v for k, v in cm_scores.items() if k in trial_utts}
        bad = sorted(k for k, v in cm_scores.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"the CM returned NaN/Inf scores for {len(bad)} recording(s): {bad[:10]}")
        if cm_threshold is None:
            cm_threshold = stored_cm_threshold(cm, cm_path)
            source = "stored with the detector (its own EER threshold)"
        if cm_threshold is None:
            # distinct recordings: a non-target recording appears in one trial per claimed speaker
            bona = list({t.utterance: cm_scores[t.utterance] for t in trials if t.kind != "spoof"}.values())
            spoof = list({t.utterance: cm_scores[t.utterance] for t in trials if t.kind == "spoof"}.values())
            if not spoof:
                raise ValueError(
                    "the detector stores no EER threshold and there are no spoof trials to set one"
                )
            cm_threshold = float(compute_eer(np.array(bona), np.array(spoof))[1])
            source = (
                "computed here: the CM EER threshold over this run's bona fide test utterances vs its "
                "spoofs (the detector stores none); it has seen the test data, so gated rates are optimistic"
            )
        trials.notes["cm"] = {
            "detector": getattr(cm, "name", type(cm).__name__),
            "path": None if cm_path is None else str(cm_path),
        }
    report = asv_report(trials, cm_scores if cm is not None else None, cm_threshold, source)
    return report, trial_table(trials, report, cm_scores if cm is not None else None)


def write_outputs(out: str | Path, report: dict, table: pd.DataFrame) -> tuple[Path, Path]:
    """``asv_report.json`` and ``asv_trials.parquet`` in ``out``: both are written under temporary
    names first and renamed only when both are complete, so a failure leaves no half-written file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_path, table_path = out / REPORT_FILE, out / TRIALS_FILE
    tmp_report, tmp_table = (p.with_name(f".{p.name}.partial") for p in (report_path, table_path))
    try:
        table.to_parquet(tmp_table, index=False)
        tmp_report.write_text(json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
    except BaseException:
        for p in (tmp_report, tmp_table):
            p.unlink(missing_ok=True)
        raise
    tmp_table.replace(table_path)
    tmp_report.replace(report_path)  # last: the report marks a complete output
    return report_path, table_path
