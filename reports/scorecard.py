"""Scorecard of one audit run: ``<run>/scorecard.json``, ``scorecard.md`` and ``scorecard.html``.

Schema of ``scorecard.json`` (``"format": "valle-scorecard"``, ``"schema_version": 1``)::

    format, schema_version, generated (ISO time), run (directory name), generator, profile
    definitions        {term: definition} (below)
    stages             {stage: {status, seconds, error, n_failed, n, note, source}}  audit.json order:
                       generate, verify, score, detect, asv, watermark, report
    intelligibility    part (score stage): metrics {wer, mean_utt_wer, sub/del/ins_rate, ..., ceiling_wer}
    similarity         part (score stage): metrics {sim_prompt, sim_target, ceiling_sim_target_prompt}
    flags              part (score stage): rates {<flag>: number, any_flag}, metrics {repetition_ratio, ...}
    quality            part (score stage): metrics {dnsmos_ovrl, dnsmos_sig, dnsmos_bak, ceiling_dnsmos_ovrl}
    watermark          {status, error, scoring: part (score stage; summary's watermark_verified_rate),
                        verify: part (verify stage; n_files, verdicts {<verdict>: count}, verified_rate,
                        detected_rate), robustness: part (watermark stage; attacks {<attack>: {family,
                        tpr, fpr}}, note)}
    detection          part (detect stage): metrics {eer, min_dcf, cllr, min_cllr, rates at the stored
                       threshold}, per_condition {<cond>: same}, per_generator {<gen>: same}, conditions,
                       generators, ci_unit, model {kind, name, path}
    asv                part (asv stage): metrics {sv_eer, spf_eer, sasv_eer, min_adcf, gated_*},
                       operating_points
                       {eer|far: {threshold, frr, far, spoof_acceptance, gated_frr, gated_far,
                       gated_spoof_acceptance, cm_added_frr}}, far_target, ci_unit, counts, cm {...}
    other              part: summary.json metrics no other section claims (empty when none)
    failures           {ok, n_failed_stages, n_failed_in_stages (sum of the stages' n_failed),
                        n_section_errors, n_sections_missing, n_attack_errors (attack failures on clips),
                        stages {<stage>: {status, error, n_failed}}, sections {<section>: {status, error}},
                        counts {summary.json counts}, invalid_item_reasons,
                        n_failed_rows, failed_rows [{key, status, error}] (first 50),
                        items [{stage, item, problem}]: non-authentic verify verdicts, ASV skips}
    reproducibility    {versions, git_commit, generator (card incl. weights sha256), scorers (cards with
                        sha256), seeds, audit_seeds, torch_threads, device, chunk_size, profile, backends,
                        testset_sha256, testset_source, n_items, thresholds, audit_options, started,
                        finished, scorecard_versions (packages that rendered the scorecard), problems}
    examples           {worst_wer: [...], flagged: [...]} (reports.examples): key, id, seed, wer, text, hyp,
                       flags, reasons, audio (path relative to the run directory)

A *part* is ``{status, stage, stage_status, error, ...}`` (:mod:`reports.sections`): a missing or failed
stage appears with its status and error, a corrupt file as ``status: "error"`` with an error naming the
file. Every numeric leaf of the metric sections (intelligibility, similarity, flags, quality, watermark,
detection, asv, other) is a number object ``{value, low, high, n, backend[, note]}``
(:mod:`reports.numbers`); ``low``/``high`` are null when no interval exists and the note says why.

Sources of the definitions: WER (jiwer; Morris et al. 2004), speaker similarity as in VALL-E (Wang et
al. 2023, arXiv:2301.02111), DNSMOS P.835 (Reddy et al. 2022), EER / minDCF / Cllr as in ASVspoof 5
(Wang et al. 2024, arXiv:2408.08739) and Brummer & du Preez 2006, SV/SPF/SASV-EER from SASV 2022 (Jung
et al. 2022, arXiv:2203.14732), watermark TPR/FPR at fixed thresholds as in AudioSeal (San Roman et al.
2024, arXiv:2401.17264), Wilson intervals (Wilson 1927; Brown, Cai & DasGupta 2001).
"""

from __future__ import annotations

import json
import math
import os
import traceback
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from reports import sections as S
from reports.examples import N_EXAMPLES, select_examples
from reports.html import render_html, render_html_error
from reports.inputs import InputError, RunInputs
from reports.markdown import render_markdown

FORMAT = "valle-scorecard"
SCHEMA_VERSION = 1
METRIC_SECTIONS = (
    "intelligibility",
    "similarity",
    "flags",
    "quality",
    "watermark",
    "detection",
    "asv",
    "other",
)
MAX_FAILED_ROWS = 50
SCORECARD_PACKAGES = ("numpy", "pandas", "pyarrow", "scipy", "matplotlib", "soundfile")  # what renders it

DEFINITIONS = {
    "number": "{value, low, high, n, backend}: low/high bound a 95% interval (null when none exists; "
    "the note says why), n = units behind the value, backend = the model that produced it; counts "
    "(note 'count') are integers without an interval",
    "intervals": "summary.json intervals as given (evaluation.runs.summary: bootstrap over items); detector "
    "EER and ASV intervals: percentile bootstrap from eval.json / asv_report.json; rates given only as "
    "counts (verify verdicts, watermark TPR/FPR without bounds, rates at a stored threshold): Wilson "
    "score interval computed here, scipy.stats.binomtest(k, n).proportion_ci(method='wilson')",
    "wer": "corpus WER: (substitutions + deletions + insertions) / reference words, over scored rows",
    "ceiling": "the same scorer on the real target recordings (what a perfect clone would score)",
    "sim_prompt": "cosine of speaker embeddings, generated vs prompt audio (VALL-E SIM)",
    "sim_target": "cosine of speaker embeddings, generated vs real target utterance",
    "flags": "share of rows a loop / hallucination / failure rule flags (evaluation/scorers/flags.py)",
    "dnsmos": "DNSMOS P.835 predicted MOS (signal, background, overall), 1-5",
    "verified_rate": "share of generated files whose verify verdict is 'authentic'",
    "watermark_tpr": "share of attacked generated clips in which the mark is detected",
    "watermark_fpr": "share of attacked unmarked real clips in which a mark is detected",
    "eer": "detector equal error rate, ASVspoof rule; minDCF with ASVspoof 5 costs; Cllr in bits",
    "sv_eer": "ASV EER target vs non-target; spf_eer: target vs spoof; sasv_eer: target vs both",
    "min_adcf": "normalised minimum a-DCF of the SASV trials (Shim et al., Odyssey 2024; ASVspoof 5 Track 2 "
    "costs: C_miss 1, C_fa,asv 10, C_fa,cm 20; priors 0.9 / 0.05 / 0.05)",
    "spoof_acceptance": "share of clone trials the voice print accepts at the operating point "
    "(thresholds calibrated on bona fide trials only); gated: the CM must also accept",
    "status": "ok | partial (stage failed after writing) | failed | skipped | not_run | error (file "
    "corrupt, or missing although its stage reported done)",
}


def build_scorecard(run_dir: str | Path, n_examples: int = N_EXAMPLES) -> dict:
    """The scorecard dict of ``run_dir`` (schema in the module docstring). Never raises on bad or
    missing run files: they become section errors and failures."""
    ctx = RunInputs(run_dir)
    stages, stage_problem = ctx.stages()
    card: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": ctx.run_dir.resolve().name,
        "generator": None,
        "profile": None,
        "definitions": DEFINITIONS,
        "stages": stages,
    }

    def part(stage: str, build) -> dict:
        return S.run_part(ctx, stages, stage, build)

    card["intelligibility"] = part("score", S.intelligibility)
    card["similarity"] = part("score", S.similarity)
    card["flags"] = part("score", S.flags)
    card["quality"] = part("score", S.quality)
    wm = {"scoring": part("score", S.watermark_summary), "verify": part("verify", S.verify)}
    wm["robustness"] = part("watermark", S.robustness)
    card["watermark"] = {**_combined(wm), **wm}
    card["detection"] = part("detect", S.detection)
    card["asv"] = part("asv", S.asv)
    card["other"] = part("score", S.other_metrics)
    card["examples"] = _guard(lambda: select_examples(ctx, n_examples), {"worst_wer": [], "flagged": []})
    card["reproducibility"] = _guard(lambda: reproducibility(ctx, stage_problem), {})
    card["generator"] = card["reproducibility"].get("generator_spec")
    card["profile"] = card["reproducibility"].get("profile")
    card["failures"] = _guard(lambda: failures(ctx, card), {"ok": False})
    return _clean(card)


def _guard(fn, fallback: dict) -> dict:
    try:
        return fn()
    except Exception as err:  # the scorecard is always written; the problem is shown in place
        return {**fallback, "error": f"{type(err).__name__}: {err}"}


def _combined(parts: dict[str, dict]) -> dict:
    statuses = {p["status"] for p in parts.values()}
    if len(statuses) == 1:
        (status,) = statuses
    elif "error" in statuses:
        status = "error"
    elif statuses & {"ok", "partial"}:
        status = "partial"
    else:
        status = "failed" if "failed" in statuses else "not_run"
    errors = [f"{k}: {p['error']}" for k, p in parts.items() if p.get("error")]
    return {"status": status, "error": "; ".join(errors) or None}


def reproducibility(ctx: RunInputs, stage_problem: str | None) -> dict:
    problems = [stage_problem] if stage_problem else []
    cfg = audit = None
    for rel in ("config.json", "audit.json"):
        try:
            data = ctx.json(rel)
        except InputError as err:
            problems.append(str(err))
            continue
        cfg, audit = (data, audit) if rel == "config.json" else (cfg, data)
    cfg, audit = cfg or {}, audit or {}
    gen = cfg.get("generator")
    return {
        "versions": cfg.get("versions"),
        "git_commit": cfg.get("git_commit"),
        "generator_spec": audit.get("generator") or (gen.get("generator") if isinstance(gen, dict) else gen),
        "generator": gen,
        "scorers": cfg.get("scorers"),
        "seeds": cfg.get("seeds"),
        "audit_seeds": audit.get("seeds"),
        "torch_threads": cfg.get("torch_threads"),
        "device": cfg.get("device"),
        "chunk_size": cfg.get("chunk_size"),
        "profile": audit.get("profile"),
        "backends": audit.get("backends"),
        "testset_sha256": cfg.get("testset_sha256"),
        "testset_source": cfg.get("testset_source"),
        "n_items": cfg.get("n_items"),
        "thresholds": cfg.get("thresholds"),
        "audit_options": audit.get("options"),
        "started": audit.get("started"),
        "finished": audit.get("finished") or audit.get("updated"),
        "scorecard_versions": _versions(SCORECARD_PACKAGES),
        "problems": problems,
    }


def _versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def failures(ctx: RunInputs, card: dict) -> dict:
    """Failed stages, sections that could not be read, the summary's failure counts and failed rows."""
    stages = {
        k: {"status": v["status"], "error": v.get("error"), "n_failed": v.get("n_failed")}
        for k, v in card["stages"].items()
        if v["status"] == "failed" or v.get("n_failed")
    }
    secs = {}
    for name in METRIC_SECTIONS:
        sec = card[name]
        if name == "watermark":
            bad = {f"watermark.{k}": sec[k] for k in ("scoring", "verify", "robustness")}
        else:
            bad = {name: sec}
        secs.update(
            {
                k: {"status": p["status"], "error": p.get("error")}
                for k, p in bad.items()
                if p["status"] != "ok"
            }
        )
    out: dict[str, Any] = {"stages": stages, "sections": secs, "counts": {}, "invalid_item_reasons": {}}
    try:
        summary = ctx.json("summary.json")
        out["counts"] = summary.get("counts") or {}
        out["invalid_item_reasons"] = summary.get("invalid_item_reasons") or {}
    except InputError as err:
        out["counts_error"] = str(err)
    try:
        df = ctx.table("tables/scores.parquet", ("key", "status"))
        bad_rows = df[df["status"] != "ok"]
        out["n_failed_rows"] = len(bad_rows)
        out["failed_rows"] = [
            {"key": str(r["key"]), "status": str(r["status"]), "error": r.get("error")}
            for r in bad_rows.head(MAX_FAILED_ROWS).to_dict("records")
        ]
    except InputError as err:
        out["rows_error"] = str(err)
    out["items"] = _failed_items(ctx)
    try:
        ctx.audit()
    except InputError as err:  # the stages were inferred from files instead
        secs["audit"] = {"status": "error", "error": str(err)}
    robust = card["watermark"]["robustness"].get("attacks") or {}
    out["n_attack_errors"] = int(sum((e.get("n_errors") or {}).get("value") or 0 for e in robust.values()))
    out["n_failed_stages"] = sum(v["status"] == "failed" for v in card["stages"].values())
    out["n_failed_in_stages"] = int(sum(v.get("n_failed") or 0 for v in card["stages"].values()))
    out["n_section_errors"] = sum(v["status"] == "error" for v in secs.values())
    out["n_sections_missing"] = sum(v["status"] in ("failed", "not_run", "partial") for v in secs.values())
    counted = ("n_failed_stages", "n_failed_in_stages", "n_section_errors", "n_sections_missing")
    out["ok"] = not any(out.get(k) for k in (*counted, "n_failed_rows", "n_attack_errors"))
    return out


def _failed_items(ctx: RunInputs) -> list[dict]:
    """What the stages' ``n_failed`` counts, one entry per item (first ``MAX_FAILED_ROWS`` per stage):
    files verify did not find authentic, spoofs and speakers the ASV stage left out."""
    items: list[dict] = []
    try:
        df = ctx.table("tables/verify.parquet", ("key", "verdict"))
        bad = df[df["verdict"] != "authentic"].head(MAX_FAILED_ROWS)
        for r in bad.to_dict("records"):
            items.append(
                {"stage": "verify", "item": str(r["key"]), "problem": f"{r['verdict']}: {r.get('reasons')}"}
            )
    except InputError:
        pass  # reported as the section's error
    try:
        rep = ctx.json("asv/asv_report.json")
        for key in ("skipped_spoofs", "skipped_speakers"):
            entries = list((rep.get(key) or {}).items())[:MAX_FAILED_ROWS]
            items += [{"stage": "asv", "item": str(k), "problem": f"{key}: {v}"} for k, v in entries]
    except (InputError, AttributeError):
        pass
    return items


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None, tuples to lists, keys to str."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / pandas scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)  # pd.NA, Timestamps, paths


def _atomic_write(path: Path, text: str) -> None:
    # a sibling temporary file (same file system, so the rename is atomic) with the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_scorecard(run_dir: str | Path, n_examples: int = N_EXAMPLES) -> dict[str, Path]:
    """Write ``scorecard.json``, ``scorecard.md`` and ``scorecard.html`` into ``run_dir`` (each to a
    temporary file, then renamed) and return ``{"json", "md", "html"}`` paths. All three are written
    even when stage outputs are missing or corrupt; a renderer that fails leaves a page with its error.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise NotADirectoryError(f"{run}: run directory not found")
    card = build_scorecard(run, n_examples)
    try:
        md = render_markdown(card)
    except Exception:
        md = f"# Scorecard: {card['run']}\n\nMarkdown rendering failed:\n\n```\n{traceback.format_exc()}```\n"
    try:
        page = render_html(card, RunInputs(run))
    except Exception:
        page = render_html_error(card, traceback.format_exc())
    paths = {"json": run / "scorecard.json", "md": run / "scorecard.md", "html": run / "scorecard.html"}
    _atomic_write(paths["json"], json.dumps(card, indent=1, allow_nan=False) + "\n")
    _atomic_write(paths["md"], md)
    _atomic_write(paths["html"], page)
    return paths
