"""``scorecard.md``: a GitHub-markdown summary of the scorecard dict that fits a 100-column terminal or a
pull-request comment: headline table (metric, value, 95% CI, n, backend), flag rates, one line each for
watermark / detector / ASV, failures and stage timings. Reads only the scorecard dict."""

from __future__ import annotations

import re
import textwrap

from reports.numbers import fmt, fmt_ci, is_number

WIDTH = 100
BACKEND_W = 30
FAILURE_COUNTS = (
    ("failed stages", "n_failed_stages"),
    ("items failed inside stages", "n_failed_in_stages"),
    ("section errors", "n_section_errors"),
    ("sections missing", "n_sections_missing"),
    ("failed score rows", "n_failed_rows"),
    ("watermark attack errors", "n_attack_errors"),
)
# (label, section, path inside the section, shown as percent)
HEADLINE = (
    ("WER", "intelligibility", ("metrics", "wer"), True),
    ("WER, ASR-reliable items", "intelligibility", ("metrics", "wer_asr_reliable_items"), True),
    ("WER ceiling (real targets)", "intelligibility", ("metrics", "ceiling_wer"), True),
    ("SIM to prompt", "similarity", ("metrics", "sim_prompt"), False),
    ("SIM to target", "similarity", ("metrics", "sim_target"), False),
    ("SIM ceiling (real target)", "similarity", ("metrics", "ceiling_sim_target_prompt"), False),
    ("DNSMOS OVRL", "quality", ("metrics", "dnsmos_ovrl"), False),
    ("DNSMOS OVRL ceiling", "quality", ("metrics", "ceiling_dnsmos_ovrl"), False),
    ("any flag (loop/halluc.)", "flags", ("rates", "any_flag"), True),
    ("generation failures", "intelligibility", ("metrics", "generation_failure_rate"), True),
    ("watermark verified", "watermark", ("verify", "verified_rate"), True),
    ("verified at scoring", "watermark", ("scoring", "metrics", "watermark_verified_rate"), True),
    ("detector EER (clean)", "detection", ("metrics", "eer"), True),
    ("ASV SV-EER", "asv", ("metrics", "sv_eer"), True),
    ("spoof accepted @EER thr", "asv", ("operating_points", "eer", "spoof_acceptance"), True),
    ("spoof acc. @EER, CM gate", "asv", ("operating_points", "eer", "gated_spoof_acceptance"), True),
    ("spoof accepted @FAR thr", "asv", ("operating_points", "far", "spoof_acceptance"), True),
    ("spoof acc. @FAR, CM gate", "asv", ("operating_points", "far", "gated_spoof_acceptance"), True),
)


def lookup(card: dict, section: str, path: tuple[str, ...]):
    node = card.get(section)
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if is_number(node) else None


def _cell(text: object, width: int) -> str:
    s = str(text).replace("|", "/").replace("\n", " ")
    if len(s) > width:  # a long backend label: drop its weight-hash prefixes first
        s = re.sub(r" \([0-9a-f]{8,}\)", "", s)
    return s if len(s) <= width else s[: width - 1] + "~"


def _table(head: list[str], rows: list[list[str]], widths: list[int]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h, w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    lines += ["| " + " | ".join(_cell(c, w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return lines


def _wrap(text: str, bullet: str = "- ") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=bullet, subsequent_indent=" " * len(bullet)) or [bullet]


def _val(num: dict | None, pct: bool) -> str:
    if num is None:
        return "n/a"
    ci = fmt_ci(num, pct)
    return fmt(num["value"], pct) + ("" if ci == "-" else f" {ci}")


def _status_line(name: str, part: dict) -> list[str]:
    return _wrap(f"{name}: {part.get('status')}" + (f" - {part['error']}" if part.get("error") else ""))


def render_markdown(card: dict) -> str:
    """The markdown text (every line at most 100 characters)."""
    rep = card.get("reproducibility") or {}
    commit = (rep.get("git_commit") or "?")[:12]
    lines = [f"# Scorecard: {_cell(card.get('run'), 80)}", ""]
    lines += _wrap(
        f"generator {card.get('generator') or '?'} | profile {card.get('profile') or '?'} | "
        f"commit {commit} | schema {card.get('schema_version')} | {card.get('generated')}",
        "",
    )
    lines += ["", "## Headline", ""]
    rows = []
    for label, section, path, pct in HEADLINE:
        num = lookup(card, section, path)
        if num is None:
            continue
        rows.append(
            [label, fmt(num["value"], pct), fmt_ci(num, pct), str(num["n"] or "-"), num["backend"] or "-"]
        )
    lines += _table(["metric", "value", "95% CI", "n", "backend"], rows, [26, 7, 16, 5, BACKEND_W])
    if not rows:
        lines.append("_no metric could be read; see Failures_")
    note = (card.get("intelligibility") or {}).get("note")
    if note:
        lines += ["", *_wrap(f"WER: {note}")]

    flags = card.get("flags") or {}
    lines += ["", "## Flag rates (share of rows)", ""]
    if flags.get("rates"):
        frows = [
            [f, fmt(n["value"], True), fmt_ci(n, True), str(n["n"] or "-"), n["backend"] or "-"]
            for f, n in sorted(flags["rates"].items(), key=lambda kv: -(kv[1]["value"] or 0))
        ]
        lines += _table(["flag", "rate", "95% CI", "n", "decided by"], frows, [26, 7, 16, 5, BACKEND_W])
    else:
        lines += _status_line("flags", flags)

    lines += ["", "## Watermark, detector, ASV", ""]
    lines += _watermark_lines(card.get("watermark") or {})
    lines += _detector_lines(card.get("detection") or {})
    lines += _asv_lines(card.get("asv") or {})

    lines += ["", "## Failures", ""]
    lines += _failure_lines(card.get("failures") or {})

    lines += ["", "## Stages", ""]
    srows = [
        [
            name,
            s.get("status"),
            "-" if s.get("seconds") is None else f"{s['seconds']:.1f}",
            str(s.get("n") if s.get("n") is not None else "-"),
            str(s.get("n_failed") or 0),
        ]
        for name, s in (card.get("stages") or {}).items()
    ]
    lines += _table(["stage", "status", "seconds", "n", "failed"], srows, [10, 8, 9, 6, 6])
    src = {s.get("source") for s in (card.get("stages") or {}).values()}
    lines += ["", *_wrap(f"stage status source: {', '.join(sorted(str(x) for x in src))}", "")]
    lines += ["", *_wrap("Full definitions, intervals and provenance: scorecard.json / scorecard.html.", "")]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _watermark_lines(wm: dict) -> list[str]:
    ver = wm.get("verify") or {}
    if ver.get("status") in ("ok", "partial") and "verdicts" in ver:
        counts = ", ".join(f"{int(v['value'])} {k}" for k, v in ver["verdicts"].items() if v["value"])
        out = _wrap(
            f"verify: {int(ver['n_files']['value'])} files ({counts}); verified "
            f"{_val(ver['verified_rate'], True)}"
        )
    else:
        out = _status_line("verify", ver)
    rob = wm.get("robustness") or {}
    if rob.get("status") in ("ok", "partial") and rob.get("attacks"):
        tpr = {
            a: e["tpr"] for a, e in rob["attacks"].items() if e.get("tpr") and e["tpr"]["value"] is not None
        }
        worst = sorted(tpr.items(), key=lambda kv: kv[1]["value"])[:3]
        fprs = [
            e["fpr"]["value"]
            for e in rob["attacks"].values()
            if e.get("fpr") and e["fpr"]["value"] is not None
        ]
        txt = ", ".join(f"{a} {fmt(n['value'], True)}" for a, n in worst)
        out += _wrap(
            f"watermark robustness: {len(rob['attacks'])} attacks; lowest TPR: {txt}; "
            f"max FPR {fmt(max(fprs), True) if fprs else 'n/a'}"
        )
    else:
        out += _status_line("watermark robustness", rob)
    return out


def _detector_lines(det: dict) -> list[str]:
    if det.get("status") not in ("ok", "partial"):
        return _status_line("detector", det)
    m = det["metrics"]
    n = m["eer"]["n"]
    worst = max(
        ((c, v["eer"]) for c, v in det.get("per_condition", {}).items() if v["eer"]["value"] is not None),
        key=lambda cv: cv[1]["value"],
        default=None,
    )
    txt = (
        f"detector ({det.get('model', {}).get('name') or '?'}): EER {_val(m['eer'], True)} on {n} clips "
        f"(clean), minDCF {fmt(m['min_dcf']['value'])}, Cllr {fmt(m['cllr']['value'])} bits"
    )
    if worst:
        txt += f"; worst condition {worst[0]}: EER {fmt(worst[1]['value'], True)}"
    return _wrap(txt)


def _asv_lines(asv: dict) -> list[str]:
    if asv.get("status") not in ("ok", "partial"):
        return _status_line("ASV bypass", asv)
    m, ops = asv["metrics"], asv.get("operating_points", {})
    txt = f"ASV bypass: SV-EER {_val(m['sv_eer'], True)}, SPF-EER {fmt(m['spf_eer']['value'], True)}"
    for op, label in (("eer", "EER thr"), ("far", "FAR thr")):
        o = ops.get(op)
        if o:
            txt += f"; clones accepted @{label} {_val(o['spoof_acceptance'], True)}"
            if "gated_spoof_acceptance" in o:
                txt += f" (CM gate {fmt(o['gated_spoof_acceptance']['value'], True)})"
    return _wrap(txt)


def failure_summary(f: dict) -> str:
    """``OK: 0 failed stages, ...`` / ``NOT OK: ...`` from the scorecard's failures section."""
    counts = ", ".join(f"{f.get(key, '?')} {label}" for label, key in FAILURE_COUNTS)
    return f"{'OK' if f.get('ok') else 'NOT OK'}: {counts}"


def _failure_lines(f: dict) -> list[str]:
    if f.get("error"):
        return _wrap(f"failures could not be collected: {f['error']}")
    out = _wrap(failure_summary(f))
    for name, s in (f.get("stages") or {}).items():
        err = f" - {s['error']}" if s.get("error") else ""
        out += _wrap(f"stage {name}: {s['status']}, {s.get('n_failed') or 0} failed{err}")
    for name, s in (f.get("sections") or {}).items():
        out += _status_line(name, s)
    counts = {k: v for k, v in (f.get("counts") or {}).items() if v}
    if counts:
        out += _wrap("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for item in (f.get("items") or [])[:5]:
        out += _wrap(f"{item['stage']} {item['item']}: {item['problem']}")
    for row in (f.get("failed_rows") or [])[:5]:
        err = f" - {row['error']}" if row.get("error") else ""
        out += _wrap(f"row {row['key']}: {row['status']}{err}")
    return out
