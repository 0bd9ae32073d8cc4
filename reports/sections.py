"""The metric sections of the scorecard, each built from one stage's result file.

A *part* is what one stage contributes: ``{"status", "stage", "stage_status", "error", ...body}``.
``status``: ``ok`` (file read), ``partial`` (file read but the stage failed), ``failed`` / ``skipped`` /
``not_run`` (no file; the stage's status from audit.json, or ``not_run`` when nothing says otherwise),
``error`` (the file is corrupt, or missing although the stage says done). ``error`` names the file.
Every numeric leaf of a body is a number object (:mod:`reports.numbers`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pandas as pd

from reports.inputs import InputError, MissingInput, RunInputs
from reports.numbers import from_metric, number, rate

INTELLIGIBILITY = (
    "wer",
    "mean_utt_wer",
    "sub_rate",
    "del_rate",
    "ins_rate",
    "wer_generated_only",
    "wer_asr_reliable_items",
    "generation_failure_rate",
    "rate_asr_fallback_exhausted",
    "ceiling_wer",
    "ceiling_mean_utt_wer",
)
SIMILARITY = ("sim_prompt", "sim_target", "ceiling_sim_target_prompt")
QUALITY = ("dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808", "ceiling_dnsmos_ovrl")
FLAG_EXTRA = ("repetition_ratio", "duration_ratio")
WATERMARK_SUMMARY = ("watermark_verified_rate",)
# which scorer decides each flag (evaluation/scorers/flags.py): the backend shown next to its rate
FLAG_SOURCE = {
    "transcript_repetition": "asr",
    "transcript_compression": "asr",
    "wer_failure": "asr",
    "truncation": "asr",
    "silence": "vad",
    "max_length": "rule on generated codes",
    "code_repetition": "rule on generated codes",
    "code_loop": "rule on generated codes",
    "duration": "rule on audio length",
}
# metrics of a section measured by another role than the section's scorer
METRIC_ROLE = {
    "generation_failure_rate": "generator",
    "duration_ratio": "rule on audio length",
    "repetition_ratio": "rule on generated codes",
}
# watermark.verify.VERDICTS, in its order (a leaf package may not import another; a test keeps them equal)
VERDICTS = (
    "authentic",
    "altered_copy",
    "marked_unverified",
    "inconclusive",
    "not_in_ledger",
    "ledger_invalid",
    "tampered_manifest",
    "not_marked",
    "unreadable",
)


def backend(ctx: RunInputs, key: str) -> str | None:
    """A short backend label: audit.json ``backends[key]``, else summary.json's, else config.json's
    scorer card (``name (sha256[:12])``); None when nothing names one."""
    for source in (_safe(ctx, "audit.json"), _safe(ctx, "summary.json")):
        value = (source or {}).get("backends", {}).get(key) if isinstance(source, dict) else None
        if value:
            return backend_label(value)
    card = ((_safe(ctx, "config.json") or {}).get("scorers") or {}).get(key)
    if key == "generator":
        gen = (_safe(ctx, "config.json") or {}).get("generator")
        card = gen if isinstance(gen, dict) else None
    return backend_label(card) if card else None


def backend_label(value) -> str:
    if not isinstance(value, dict):
        return str(value)
    name = value.get("backend") or value.get("name") or value.get("generator") or value.get("kind") or "?"
    sha = value.get("sha256") or value.get("weights_sha256")
    return f"{name} ({sha[:12]})" if isinstance(sha, str) else str(name)


def _safe(ctx: RunInputs, rel: str) -> dict | None:
    try:
        return ctx.json(rel)
    except InputError:
        return None


def run_part(ctx: RunInputs, stages: dict, stage: str, build: Callable[[RunInputs], dict]) -> dict:
    """Run one part builder and attach its status (see the module docstring); never raises."""
    info = stages.get(stage) or {}
    st = info.get("status")
    note = None
    try:
        body = build(ctx)
        status, error = "ok", None
        if st == "failed":
            status, error = "partial", info.get("error") or f"stage {stage} failed"
        elif st in ("skipped", "not_run"):
            status = st
            note = f"results file present although audit.json says stage {stage} is {st} (an earlier run?)"
    except MissingInput as err:
        body = {}
        if st in ("failed", "skipped", "not_run"):
            status, error = st, info.get("error") or f"stage {stage} {st.replace('_', ' ')}: {err}"
        elif st == "done":
            status, error = "error", f"{err}, although stage {stage} reported done"
        else:
            status, error = "not_run", f"not run: {err}"
    except InputError as err:
        body, status, error = {}, "error", str(err)
    except Exception as err:  # a malformed field deep in a file must not stop the scorecard
        body, status, error = {}, "error", f"{stage} results: unexpected {type(err).__name__}: {err}"
    part = {"status": status, "stage": stage, "stage_status": st, "error": error}
    if note:
        part["note"] = note
    return {**part, **body}


# ---------------------------------------------------------------------------- score stage


def _summary_metrics(ctx: RunInputs, names: tuple[str, ...], key: str) -> dict:
    summary = ctx.json("summary.json")
    metrics = summary.get("metrics")
    if not isinstance(metrics, dict):
        raise InputError("summary.json: no 'metrics' object")
    out = {}
    for name in names:
        if name in metrics:
            note = (
                "ceiling: the real target recordings scored the same way"
                if name.startswith("ceiling")
                else None
            )
            role = METRIC_ROLE.get(name, key)
            be = (
                backend(ctx, role)
                if role in ("asr", "speaker", "quality", "generator", "watermark")
                else role
            )
            out[name] = from_metric(metrics[name], be, note)
    return out


def intelligibility(ctx: RunInputs) -> dict:
    out = {"metrics": _summary_metrics(ctx, INTELLIGIBILITY, "asr")}
    summary = ctx.json("summary.json")
    counts = summary.get("counts") or {}
    if counts.get("asr_unreliable_items"):
        reasons = Counter(u.get("reason") for u in summary.get("asr_unreliable") or [] if isinstance(u, dict))
        why = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
        out["note"] = (
            f"{counts['asr_unreliable_items']} item(s) ASR-unreliable ({why or 'reasons not recorded'}): "
            "left out of wer_asr_reliable_items, kept in wer"
        )
    return out


def _noted(metrics: dict, what: str) -> dict:
    out = {"metrics": metrics}
    if not metrics:  # the stage ran but this scorer did not (e.g. `valle audit --no-quality`)
        out["note"] = f"summary.json has no {what} metrics: that scorer was not run"
    return out


def similarity(ctx: RunInputs) -> dict:
    return _noted(_summary_metrics(ctx, SIMILARITY, "speaker"), "speaker similarity")


def quality(ctx: RunInputs) -> dict:
    return _noted(_summary_metrics(ctx, QUALITY, "quality"), "DNSMOS")


def flags(ctx: RunInputs) -> dict:
    metrics = ctx.json("summary.json").get("metrics")
    if not isinstance(metrics, dict):
        raise InputError("summary.json: no 'metrics' object")
    rates = {}
    for name in sorted(k for k in metrics if k.startswith("rate_") and k != "rate_asr_fallback_exhausted"):
        flag = name.removeprefix("rate_")
        src = FLAG_SOURCE.get(flag, "asr" if flag != "any_flag" else "all flag rules")
        rates[flag] = from_metric(metrics[name], backend(ctx, src) if src in ("asr", "vad") else src)
    return {
        "rates": rates,
        "metrics": _summary_metrics(ctx, FLAG_EXTRA, "generator"),
    }


def other_metrics(ctx: RunInputs) -> dict:
    """summary.json metrics no section claims, so that none is dropped silently."""
    metrics = ctx.json("summary.json").get("metrics") or {}
    known = set(INTELLIGIBILITY + SIMILARITY + QUALITY + FLAG_EXTRA + WATERMARK_SUMMARY)
    rest = tuple(k for k in metrics if k not in known and not k.startswith("rate_"))
    return {"metrics": _summary_metrics(ctx, rest, "unknown (not a known summary metric)")}


# ---------------------------------------------------------------------------- watermark


def watermark_summary(ctx: RunInputs) -> dict:
    return {"metrics": _summary_metrics(ctx, WATERMARK_SUMMARY, "watermark")}


def verify(ctx: RunInputs) -> dict:
    df = ctx.table("tables/verify.parquet", ("verdict",))
    be = backend(ctx, "watermark")
    n = len(df)
    counts = df["verdict"].astype("string").fillna("missing").value_counts()
    names = [*VERDICTS, *(v for v in counts.index if v not in VERDICTS)]
    verdicts = {
        v: number(int(counts.get(v, 0)), n=n, backend=be, note="count of files", count=True) for v in names
    }
    out = {
        "n_files": number(n, n=n, backend=be, note="files verified", count=True),
        "verdicts": verdicts,
        "verified_rate": rate(int(counts.get("authentic", 0)), n, be, "share of files verified authentic"),
    }
    if "detected" in df.columns:
        det = df["detected"].astype("boolean")
        out["detected_rate"] = rate(int(det.fillna(False).sum()), n, be, "share with the watermark detected")
    return out


def robustness(ctx: RunInputs) -> dict:
    df = ctx.table("tables/watermark.parquet", ("attack", "tpr"))
    meta = ctx.optional_json("watermark/robustness.json") or {}
    be = backend(ctx, "watermark") or (backend_label(meta["backend"]) if meta.get("backend") else None)
    attacks = {}
    for row in df.to_dict("records"):
        n = row.get("n")
        entry = {"family": str(row.get("family") or "")}
        if row.get("n_errors") is not None and not pd.isna(row["n_errors"]):
            entry["n_errors"] = number(
                row["n_errors"], n=n, backend=be, note="clips the attack failed on", count=True
            )
        for key, count_key in (("tpr", "n"), ("fpr", "n_unmarked")):
            if key not in row:
                continue
            cnt = row.get(count_key, n)
            entry[key] = _rate_or_given(row[key], row.get(f"{key}_low"), row.get(f"{key}_high"), cnt, be)
        attacks[str(row["attack"])] = entry
    out = {"attacks": attacks}
    if meta.get("note"):
        out["note"] = str(meta["note"])
    return out


def _rate_or_given(value, low, high, n, be) -> dict:
    if low is not None and high is not None and not (pd.isna(low) or pd.isna(high)):
        return number(value, low, high, n, be)
    if n is not None and not pd.isna(n) and value is not None and not pd.isna(value):
        return rate(round(float(value) * int(n)), int(n), be)
    return number(value, n=n, backend=be, note="no count to compute an interval from")


# ---------------------------------------------------------------------------- detection


def _cm_numbers(m: dict, be: str | None) -> dict:
    """EER (bootstrap CI from eval.json), minDCF, Cllr, minCllr and the stored-threshold rates."""
    if not isinstance(m, dict):
        raise InputError(f"detect/eval.json: expected a metrics object, got {type(m).__name__}")
    nb, ns = m.get("n_bonafide"), m.get("n_spoof")
    n = (nb or 0) + (ns or 0) if nb is not None or ns is not None else None
    trials = f"n = {nb} bona fide + {ns} spoof clips"
    ci = m.get("eer_ci") if isinstance(m.get("eer_ci"), list) and len(m["eer_ci"]) == 2 else None
    eer_note = f"{trials}; bootstrap CI, unit {m.get('ci_unit')}" if ci else f"{trials}; no bootstrap run"
    point = f"{trials}; point estimate (eval.json gives no interval)"
    out = {
        "eer": number(m.get("eer"), *(ci or (None, None)), n, be, eer_note),
        "min_dcf": number(m.get("min_dcf"), n=n, backend=be, note=point),
        "cllr": number(m.get("cllr"), n=n, backend=be, note=point + "; bits"),
        "min_cllr": number(m.get("min_cllr"), n=n, backend=be, note=point + "; bits"),
    }
    at = m.get("at_stored_threshold")
    if isinstance(at, dict):
        out["threshold_stored"] = number(at.get("threshold"), backend=be, note="score units; fixed on train")
        for key, cnt in (("bonafide_rejection", nb), ("spoof_acceptance", ns)):
            val = at.get(key)
            if val is None or cnt is None:
                out[f"{key}_at_stored_threshold"] = number(val, n=cnt, backend=be, note="no count")
            else:
                note = "at the train-split EER threshold; trial-level (ignores speaker correlation)"
                out[f"{key}_at_stored_threshold"] = rate(round(val * cnt), int(cnt), be, note)
    return out


def detection(ctx: RunInputs) -> dict:
    ev = ctx.json("detect/eval.json")
    model = ev.get("model") or {}
    be = backend(ctx, "detector") or (f"{model.get('kind')} {model.get('name') or ''}".strip() or None)
    if not isinstance(ev.get("overall"), dict):
        raise InputError("detect/eval.json: no 'overall' metrics (no clean condition?)")
    out = {
        "metrics": _cm_numbers(ev["overall"], be),
        "ci_unit": ev["overall"].get("ci_unit"),
        "conditions": [str(c) for c in ev.get("conditions") or []],
        "generators": [str(g) for g in ev.get("generators") or []],
        "per_condition": {str(c): _cm_numbers(m, be) for c, m in (ev.get("per_condition") or {}).items()},
        "per_generator": {str(g): _cm_numbers(m, be) for g, m in (ev.get("per_generator") or {}).items()},
        "model": {"kind": model.get("kind"), "name": model.get("name"), "path": model.get("path")},
        "definitions_source": "detect/eval.json definitions",
    }
    return out


# ---------------------------------------------------------------------------- ASV bypass


def asv(ctx: RunInputs) -> dict:
    rep = ctx.json("asv/asv_report.json")
    counts = rep.get("counts") or {}
    be = backend(ctx, "asv") or (backend_label(rep["encoder"]) if rep.get("encoder") else None)
    cm_name = ((rep.get("notes") or {}).get("cm") or {}).get("detector")
    cm_be = backend(ctx, "detector") or cm_name or "CM"
    gated_be = f"{be} + {cm_be}"
    ci_block = rep.get("ci") if isinstance(rep.get("ci"), dict) else None
    intervals = (ci_block or {}).get("intervals") or {}
    unit = (ci_block or {}).get("unit")
    nt, nn, ns = counts.get("target"), counts.get("nontarget"), counts.get("spoof")

    def total(*xs):
        return sum(x for x in xs if x is not None) if any(x is not None for x in xs) else None

    def num(value, key: str, n, note: str | None = None) -> dict:
        by = gated_be if "gated" in key or "cm_added" in key else be
        ci = intervals.get(key)
        if isinstance(ci, list) and len(ci) == 2:
            note = "; ".join(x for x in (note, f"bootstrap CI, unit {unit}") if x)
            return number(value, ci[0], ci[1], n, by, note)
        why = "no bootstrap in asv_report.json" if ci_block is None else "bootstrap gave no interval"
        return number(value, n=n, backend=by, note="; ".join(x for x in (note, why) if x))

    gated = rep.get("gated") if isinstance(rep.get("gated"), dict) else None
    metrics = {
        "sv_eer": num(rep.get("sv_eer"), "sv_eer", total(nt, nn), "target vs non-target"),
        "spf_eer": num(rep.get("spf_eer"), "spf_eer", total(nt, ns), "target vs spoof"),
        "sasv_eer": num(rep.get("sasv_eer"), "sasv_eer", total(nt, nn, ns), "target vs both"),
        "min_adcf": num(rep.get("min_adcf"), "min_adcf", total(nt, nn, ns), "normalised; ASVspoof 5 costs"),
    }
    if gated:
        for k in ("sv_eer", "spf_eer", "sasv_eer", "min_adcf"):
            metrics[f"gated_{k}"] = num(gated.get(k), f"gated.{k}", metrics[k]["n"], "CM gate in front")
    ops = {}
    for op, entry in (rep.get("operating_points") or {}).items():
        if not isinstance(entry, dict):
            continue
        o = {
            "threshold": num(entry.get("threshold"), f"t_{op}", total(nt, nn), "cosine; bona fide only"),
            "frr": num(entry.get("frr"), f"{op}.frr", nt, "targets rejected"),
            "far": num(entry.get("far"), f"{op}.far", nn, "non-targets accepted"),
            "spoof_acceptance": num(
                entry.get("spoof_acceptance"),
                f"{op}.spoof_acceptance",
                ns,
                "clones accepted by the voice print",
            ),
        }
        g = entry.get("gated")
        if isinstance(g, dict):
            o["gated_frr"] = num(g.get("frr"), f"{op}.gated_frr", nt, "with CM gate")
            o["gated_far"] = num(g.get("far"), f"{op}.gated_far", nn, "with CM gate")
            o["gated_spoof_acceptance"] = num(
                g.get("spoof_acceptance"),
                f"{op}.gated_spoof_acceptance",
                ns,
                "clones accepted by voice print and CM",
            )
            o["cm_added_frr"] = num(g.get("cm_added_frr"), f"{op}.cm_added_frr", nt, "FRR the CM adds")
        ops[str(op)] = o
    out = {
        "metrics": metrics,
        "operating_points": ops,
        "far_target": number(rep.get("far_target"), backend=be, note="configured FAR that fixes t_far"),
        "ci_unit": unit,
        "counts": {k: number(v, backend=be, note="count", count=True) for k, v in counts.items()},
    }
    cm = rep.get("cm")
    if isinstance(cm, dict):
        nb, nsp = cm.get("n_bonafide_utterances"), cm.get("n_spoof_utterances")
        out["cm"] = {
            "threshold": number(cm.get("threshold"), backend=cm_be, note="CM score units"),
            "threshold_source": str(cm.get("threshold_source")),
            "bonafide_rejection_rate": _rate_or_given(
                cm.get("bonafide_rejection_rate"), None, None, nb, cm_be
            ),
            "spoof_acceptance_rate": _rate_or_given(cm.get("spoof_acceptance_rate"), None, None, nsp, cm_be),
        }
    return out
