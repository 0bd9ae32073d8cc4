"""The stages of ``valle audit`` and the loop that runs them (:func:`run_audit`; :mod:`evaluation.audit.state`
holds the typed state, the order and the run directory).

Each ``stage_<name>(audit, progress)`` reads earlier stages' files from ``audit.dir``, writes its own
atomically and returns counts ``{"n", "n_failed", "note"}`` for ``audit.json``. An error that stops
the whole stage is raised (the caller records it); a failure of one utterance becomes a row with
its reason.

Who is who in the detector and ASV stages:

- bona fide: the real recordings of the test set (each item's target and the recording its prompt
  was cut from), one clip per distinct file, keyed by utterance id;
- spoof: every generated file with status ``ok``, keyed ``<item>.s<seed>``, speaker = the item's
  speaker (the voice it clones), generator = the run's generator name.

The watermark stage attacks generated files *as written* (already marked by the generator) and the
same number of real references (unmarked); the true-positive rate per attack is the share of attacked
generated files still detected, the false-positive rate the share of attacked real files detected.
Intervals are Wilson score intervals (scipy's ``binomtest(...).proportion_ci``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import serialization
from tqdm import tqdm

from detection.evaluate import SCORES_FILE, eval_report, evaluate, write_eval
from detection.split import Clip, split
from detection.train import CALIBRATION_FOLDS, build_detector, fit_and_calibrate, save_model
from evaluation.audit.preflight import ResolvedProfile, check_profile
from evaluation.audit.state import STAGES, Audit, AuditOptions, StageResult, default_keys, stage_plan
from evaluation.bypass.asv import run_asv, write_outputs
from evaluation.bypass.trials import AsvConfig
from evaluation.runs.run import build_run_options, score
from evaluation.runs.rundir import exclusive, write_json, write_parquet
from evaluation.scorers.scoring import Scorers
from evaluation.testsets.detector_data import degradations, load_clip_audio
from evaluation.testsets.testset import TestSet
from reports import write_scorecard
from valle.audio import load_audio
from watermark import load_watermarker
from watermark.attacks import attack_bank, select, skipped_attacks
from watermark.keys import KeyRing, load_key
from watermark.ledger import Ledger
from watermark.provenance import load_signing_key
from watermark.robustness import decision_rates, detect_under_attacks
from watermark.verify import verify_file

PUBLIC_KEY = "keys/signing.public.pem"


def _table(audit: Audit, name: str, needs: str) -> pd.DataFrame:
    path = audit.dir / "tables" / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the {needs} stage has not finished")
    return pd.read_parquet(path)


def _is_valle(audit: Audit) -> bool:
    return audit.options.generator.startswith("valle:")


def _watermarker(audit: Audit):
    if audit.loaded.watermarker is None:
        p = audit.loaded.profile
        kwargs = dict(p.watermark_kwargs)
        if p.watermark == "keyed":  # the run's watermark key places the mark and derives its payload
            kwargs["key"] = _keys(audit)[2]
        audit.loaded.watermarker = load_watermarker(p.watermark, audit.options.device, **kwargs)
        audit.backends["watermark"] = audit.loaded.watermarker.card()
    return audit.loaded.watermarker


def _keys(audit: Audit):
    """(signer, public key, watermark key); the public half is copied into the run directory."""
    if audit.loaded.keys is None:
        signing_path, key_file = default_keys(audit.options)
        signer = load_signing_key(signing_path)
        audit.loaded.keys = (signer, signer.public_key(), load_key(key_file))
        pem = signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (audit.dir / "keys").mkdir(exist_ok=True)
        (audit.dir / PUBLIC_KEY).write_bytes(pem)
    return audit.loaded.keys


def _run_options(audit: Audit, generate: bool):
    p, o = audit.loaded.profile, audit.options
    watermark = None
    if generate and _is_valle(audit):
        signer, _, key = _keys(audit)
        # Generator keyword arguments (evaluation.runs.generators.ValleGenerator passes them on)
        watermark = {"watermarker": _watermarker(audit), "key": key, "signer": signer}
        if p.codec_weights is not None:
            watermark["codec_weights"] = p.codec_weights
    return build_run_options(
        o.generator,
        seeds=o.seeds,
        chunk_size=o.chunk_size,
        device=o.device,
        asr=p.asr,
        asr_model=p.asr_model,
        speaker=p.speaker,
        speaker_model=p.speaker_model,
        quality=o.quality,
        vad=True,  # the audit always measures silence
        asr_compat=o.asr_compat,
        sampling=o.sampling or None,
        watermark=watermark,
    )


# --------------------------------------------------------------------------- generate, verify, score


def stage_generate(audit: Audit, progress: bool = True) -> dict:
    score(audit.dir, audit.testset, _run_options(audit, generate=True), ("generate",), progress=progress)
    gens = _table(audit, "generations", "generate")
    audit.backends["generator"] = json.loads((audit.dir / "config.json").read_text()).get("generator")
    failed = int((gens["status"] != "ok").sum())
    return {"n": len(gens), "n_failed": failed}


def stage_verify(audit: Audit, progress: bool = True) -> dict:
    """Every generated file through the auditor's check (``watermark.verify.verify_file``)."""
    gens = _table(audit, "generations", "generate")
    gens = gens[gens["audio"].notna()]
    _, public_key, key = _keys(audit)
    ledgers = sorted((audit.dir / "generated").glob("ledger.rank*.jsonl"))
    ledger = Ledger(ledgers[0]) if len(ledgers) == 1 else None  # sharded runs: manifests still checked
    wm, ring = _watermarker(audit), KeyRing([key])
    rows = []
    for r in tqdm(gens.itertuples(), total=len(gens), desc="verify", disable=not progress):
        row = {"key": r.key, "id": r.id, "audio": r.audio}
        try:
            v = verify_file(r.audio, public_key=public_key, ledger=ledger, watermarker=wm, keyring=ring)
            det = v.get("watermark") or {}
            row.update(
                verdict=v["verdict"],
                detected=bool(det.get("detected", False)),
                score=det.get("score"),
                signature_valid=v.get("signature_valid"),
                hash_match=v.get("hash_match"),
                reasons="; ".join(v.get("reasons", [])),
            )
        except (OSError, ValueError) as err:  # one unreadable file is a row, not the end of the stage
            row.update(verdict="unreadable", detected=False, score=None, reasons=str(err))
        rows.append(row)
    df = pd.DataFrame(rows, columns=["key", "id", "audio", "verdict", "detected", "score", "reasons"])
    df["detected"] = df["detected"].astype("boolean")
    write_parquet(df, audit.dir / "tables" / "verify.parquet")
    bad = int((df["verdict"] != "authentic").sum())
    note = None if _is_valle(audit) else "external generator: files are not ours, so not signed"
    return {"n": len(df), "n_failed": bad, "note": note}


def stage_score(audit: Audit, progress: bool = True) -> dict:
    options = _run_options(audit, generate=False)
    scorers = audit.loaded.scorers
    if scorers is None or scorers.config != options.scoring:
        scorers = audit.loaded.scorers = Scorers(options.scoring, options.device)
    score(audit.dir, audit.testset, options, ("score",), progress=progress, scorers=scorers)
    audit.backends.update({k: v for k, v in scorers.cards().items() if v is not None})
    scores = _table(audit, "scores", "score")
    return {"n": len(scores), "n_failed": int((scores["status"] != "ok").sum())}


# --------------------------------------------------------------------------- detector and ASV


def real_recordings(audit: Audit) -> list[dict]:
    """Distinct real recordings of the test set: ``{id, speaker, audio}`` (targets and prompt sources)."""
    rows: dict[str, dict] = {}
    paths: set[str] = set()
    for it in audit.testset.items:
        if it.problem:
            continue
        for uid, path in ((it.id, it.target_audio), (it.prompt_source, it.prompt_audio)):
            if uid and path and str(path) not in paths and uid not in rows:
                rows[uid] = {"id": uid, "speaker": it.speaker, "audio": str(path)}
                paths.add(str(path))
    return sorted(rows.values(), key=lambda r: r["id"])


def generated_rows(audit: Audit) -> list[dict]:
    """``{id (= key), item, speaker, audio}`` of every generated file with status ok."""
    gens = _table(audit, "generations", "generate")
    speaker = {it.id: it.speaker for it in audit.testset.items}
    ok = gens[(gens["status"] == "ok") & gens["audio"].notna()]
    return [{"id": r.key, "item": r.id, "speaker": speaker[r.id], "audio": r.audio} for r in ok.itertuples()]


def stage_detect(audit: Audit, progress: bool = True) -> dict:
    o, p = audit.options, audit.loaded.profile
    name = audit.options.generator.partition(":")[0]
    clips = [
        Clip(r["id"], str(Path(r["audio"]).resolve()), r["speaker"], 1, "bonafide")
        for r in real_recordings(audit)
    ]
    clips += [
        Clip(r["id"], str(Path(r["audio"]).resolve()), r["speaker"], 0, name) for r in generated_rows(audit)
    ]
    if not any(c.label == 0 for c in clips):
        raise ValueError("no generated file to train on (every generation failed?)")
    sp = split(clips, o.detect_test_fraction, o.seed)

    def make():
        return build_detector(p.detector, p.detector_size, controls=True, seed=o.seed)

    detector = make()
    train_audio = load_clip_audio(sp.train, progress=progress)
    train_speakers = len({c.speaker for c in sp.train})
    folds = CALIBRATION_FOLDS if train_speakers >= CALIBRATION_FOLDS else 0
    calibration = fit_and_calibrate(detector, sp.train, train_audio, folds=folds, make=make, seed=o.seed)
    save_model(detector, audit.dir / "detect" / "detector", sp.description)
    attacks = degradations(",".join(o.detect_degradations)) if o.detect_degradations else []
    test_audio = load_clip_audio(sp.test, progress=progress)
    metrics, scores = evaluate(detector, sp.test, test_audio, attacks, o.bootstrap, o.seed)
    report = eval_report("detect/detector", detector, sp.description, attacks, o.bootstrap, o.seed, metrics)
    report["model"]["calibration"] = calibration
    write_eval(audit.dir / "detect", report, scores)
    shutil.copyfile(audit.dir / "detect" / SCORES_FILE, audit.dir / "tables" / "detector.parquet")
    audit.backends["detector"] = {"backend": detector.kind, "name": detector.name}
    note = None if folds else f"in-sample EER threshold: only {train_speakers} training speaker(s)"
    return {"n": len(sp.test), "n_failed": 0, "note": note}


def stage_asv(audit: Audit, progress: bool = True) -> dict:
    o, p = audit.options, audit.loaded.profile
    cm_dir = audit.dir / "detect" / "detector"
    detect_ok = audit.stages["detect"].status == "done" and (cm_dir / "detector.json").is_file()
    config = AsvConfig(
        encoder=p.speaker, encoder_model=p.speaker_model, enrol_per_speaker=o.asv_enrol,
        seed=o.seed, bootstrap=o.bootstrap, device=o.device,
    )  # fmt: skip
    spoofs = [{k: r[k] for k in ("id", "speaker", "audio")} for r in generated_rows(audit)]
    report, trials = run_asv(real_recordings(audit), spoofs, config, cm=cm_dir if detect_ok else None)
    write_outputs(audit.dir / "asv", report, trials)
    shutil.copyfile(audit.dir / "asv" / "asv_trials.parquet", audit.dir / "tables" / "asv_trials.parquet")
    audit.backends["asv"] = report.get("encoder")
    note = None if detect_ok else "no detector (detect stage not done): ungated rates only"
    return {"n": len(trials), "n_failed": len(report.get("skipped_spoofs") or {}), "note": note}


# --------------------------------------------------------------------------- watermark robustness


def stage_watermark(audit: Audit, progress: bool = True) -> dict:
    o, p = audit.options, audit.loaded.profile
    rng = np.random.default_rng(o.seed)
    gen = generated_rows(audit)
    if not gen:
        raise ValueError("no generated file to attack (every generation failed?)")
    real = real_recordings(audit)
    k = min(o.watermark_clips, len(gen))
    marked = [gen[i] for i in sorted(rng.choice(len(gen), k, replace=False))]
    unmarked = [real[i] for i in sorted(rng.choice(len(real), min(k, len(real)), replace=False))]
    attacks = select(attack_bank(p.encodec_weights, seed=o.seed), list(o.watermark_attacks))
    wm = _watermarker(audit)
    rows = []
    clips = [(r, True) for r in marked] + [(r, False) for r in unmarked]
    for r, is_marked in tqdm(clips, desc="watermark attacks", disable=not progress):
        wav, sr = load_audio(r["audio"])
        # one attack failing on one clip is a row, not the end of the stage
        for c in detect_under_attacks(wm, wav, sr, attacks, errors="record", clip_id=r["id"]):
            det = c["detection"]
            row = {"clip": r["id"], "marked": is_marked, "attack": c["attack"], "family": c["family"]}
            row["detected"] = None if det is None else bool(det.detected)
            row["score"] = None if det is None else float(det.score)
            rows.append(row | {"error": c["error"]})
    per_clip = pd.DataFrame(rows)
    per_attack = []
    for name, g in per_clip.groupby("attack", sort=False):
        m, u = g[g["marked"] & g["error"].isna()], g[~g["marked"] & g["error"].isna()]
        per_attack.append(
            {"attack": name, "family": g["family"].iloc[0]}
            | decision_rates(m["detected"].astype(bool), u["detected"].astype(bool))
            | {"n_errors": int(g["error"].notna().sum())}
        )
    per_attack = pd.DataFrame(per_attack)
    write_parquet(per_clip, audit.dir / "tables" / "watermark_clips.parquet")
    write_parquet(per_attack, audit.dir / "tables" / "watermark.parquet")
    (audit.dir / "watermark").mkdir(exist_ok=True)
    write_json(
        audit.dir / "watermark" / "robustness.json",
        {
            "backend": wm.card(),
            "n_clips": len(marked),
            "n_unmarked": len(unmarked),
            "attacks": [a.name for a in attacks],
            "skipped_attacks": skipped_attacks(p.encodec_weights),
            "seed": o.seed,
            "note": "generated files as written (marked) vs real references (unmarked), each attacked; "
            "detected = the backend's own decision; Wilson 95% intervals",
        },
    )
    return {"n": len(per_clip), "n_failed": int(per_clip["error"].notna().sum())}


def stage_report(audit: Audit, progress: bool = True) -> dict:
    # the scorecard reads audit.json: give it this call's stage results so far
    audit.stages["report"] = StageResult(status="running")
    audit.save()
    paths = write_scorecard(audit.dir)
    return {"n": len(paths), "note": str(paths.get("html", ""))}


STAGE_FUNCTIONS: dict[str, Callable[..., dict | None]] = {
    "generate": stage_generate,
    "verify": stage_verify,
    "score": stage_score,
    "detect": stage_detect,
    "asv": stage_asv,
    "watermark": stage_watermark,
    "report": stage_report,
}
assert tuple(STAGE_FUNCTIONS) == STAGES, "one function per stage, in pipeline order"


def run_audit(
    out: str | Path,
    testset: TestSet,
    options: AuditOptions | None = None,
    only: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Audit:
    """Run (or resume) the audit in ``out``; returns its state. See the module docstring.

    A stage already ``done`` in an earlier call is not redone unless named in ``only``. A second
    process on the same ``out`` is refused (:func:`evaluation.runs.rundir.exclusive`).
    """
    options = options or AuditOptions()
    plan = stage_plan(only, skip)
    resolved = check_profile(options.profile, dict(options.model_paths), generator=options.generator)
    with exclusive(Path(out), "audit"):  # one audit per directory; a killed one's lock dies with it
        return _run_stages(Audit.open(out, options, testset), resolved, plan, only, progress, log)


def _run_stages(
    audit: Audit,
    resolved: ResolvedProfile,
    plan: tuple[str, ...],
    only: tuple[str, ...],
    progress: bool,
    log: Callable[[str], None],
) -> Audit:
    audit.loaded.profile = resolved
    audit.profile_check = resolved.to_json()
    for name in STAGES:
        if name not in plan:
            if audit.stages[name].status == "not_run":
                audit.stages[name] = StageResult(status="skipped", note="not selected for this call")
            continue
        if audit.stages[name].status == "done" and name not in only and name != "report":
            log(f"[{name}] done in an earlier call; skipped (select it with --stage {name} to redo it)")
            continue
        log(f"[{name}] ...")
        t0 = time.perf_counter()
        result = StageResult(status="done")
        try:
            counts = STAGE_FUNCTIONS[name](audit, progress=progress) or {}
            result.n, result.n_failed, result.note = (
                counts.get("n"),
                counts.get("n_failed"),
                counts.get("note"),
            )
        except KeyboardInterrupt:
            audit.stages[name] = StageResult(
                status="failed", error="interrupted", seconds=time.perf_counter() - t0
            )
            audit.save()
            raise
        except Exception as err:  # recorded on the scorecard; later stages that need it fail in turn
            result.status, result.error = "failed", f"{type(err).__name__}: {err}"
            log(f"[{name}] FAILED: {result.error}")
            if os.environ.get("VALLE_DEBUG"):
                traceback.print_exc()
        result.seconds = round(time.perf_counter() - t0, 2)
        audit.stages[name] = result
        audit.save()
    return audit
