"""``scorecard.html``: one self-contained page (inline CSS, plots as base64 PNG, example audio as base64
WAV (:mod:`reports.examples`); no external URL, no script). Every text from the run is escaped with
``html.escape``; a plot or an audio clip that cannot be made is replaced by its error, never dropped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from html import escape

from reports import plots
from reports.examples import examples_html
from reports.inputs import InputError, RunInputs
from reports.markdown import FAILURE_COUNTS, HEADLINE, failure_summary, lookup
from reports.numbers import fmt, fmt_ci, is_number
from reports.sections import backend_label

PCT_HINTS = ("wer", "rate", "eer", "frr", "far", "acceptance", "rejection", "tpr", "fpr", "verified")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:
tabular-nums;white-space:nowrap}.note{color:#666;font-size:.85em}.err{color:#a00}.ok{color:#070}.st-ok{color:#070}
.st-error,.st-failed{color:#a00;font-weight:bold}.st-not_run,.st-skipped,.st-partial{color:#a60}
img{max-width:100%;border:1px solid #eee}code{font-size:.9em}.ex{border:1px solid #ddd;padding:.5em;
margin:.6em 0}.ex audio{display:block;margin:.3em 0}
"""


def _e(x: object) -> str:
    return escape("" if x is None else str(x))


def _pct(name: str) -> bool:
    return any(h in name for h in PCT_HINTS) and "threshold" not in name and "dnsmos" not in name


def _status(part: dict) -> str:
    st = part.get("status")
    out = f'<p>status: <span class="st-{_e(st)}">{_e(st)}</span>'
    if part.get("stage"):
        out += f" (stage <code>{_e(part['stage'])}</code>: {_e(part.get('stage_status') or 'unknown')})"
    if part.get("error"):
        out += f'<br><span class="err">{_e(part["error"])}</span>'
    if part.get("note"):
        out += f'<br><span class="note">{_e(part["note"])}</span>'
    return out + "</p>"


def _numbers_table(items: list[tuple[str, dict]], as_pct: bool | None = None) -> str:
    """Number objects as a table; shares as percentages (``as_pct``, or guessed from the name)."""
    if not items:
        return '<p class="note">no values</p>'
    rows = []
    for name, n in items:
        pct = _pct(name) if as_pct is None else as_pct
        cells = [fmt(n["value"], pct), fmt_ci(n, pct), "-" if n["n"] is None else n["n"]]
        rows.append(
            f"<tr><td>{_e(name)}</td>"
            + "".join(f"<td class=num>{_e(c)}</td>" for c in cells)
            + f"<td>{_e(n['backend'] or '-')}</td><td class=note>{_e(n.get('note') or '')}</td></tr>"
        )
    head = "<tr><th>metric</th><th>value</th><th>95% CI</th><th>n</th><th>backend</th><th>note</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _flat(d: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Number objects of a nested dict as ``[("a.b", number)]``."""
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if is_number(v):
            out.append((name, v))
        elif isinstance(v, dict):
            out += _flat(v, name + ".")
    return out


def _img(alt: str, fn: Callable[..., bytes], *args) -> str:
    try:
        png = fn(*args)
    except Exception as err:  # a plot that cannot be drawn is reported, the page still renders
        return f'<p class="err">plot "{_e(alt)}" unavailable: {_e(type(err).__name__)}: {_e(err)}</p>'
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(head: list[str], rows: list[list[object]]) -> str:
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _optional_table(ctx: RunInputs, rel: str):
    try:
        return ctx.table(rel), None
    except InputError as err:
        return None, str(err)


def _section(title: str, part: dict, body: str) -> str:
    return f"<h2>{_e(title)}</h2>{_status(part)}{body}"


def render_html(card: dict, ctx: RunInputs) -> str:
    """The page for ``card`` (from :func:`reports.scorecard.build_scorecard`); ``ctx`` supplies the
    raw tables the plots need."""
    scores, scores_err = _optional_table(ctx, "tables/scores.parquet")
    refs, _ = _optional_table(ctx, "tables/references.parquet")
    out = [_header(card)]

    intel = card["intelligibility"]
    body = _numbers_table(_flat(intel.get("metrics", {})))
    body += _img("WER distribution", plots.wer_distribution, scores, refs) if scores is not None else ""
    out.append(_section("Intelligibility (WER)", intel, body))

    sim = card["similarity"]
    body = _numbers_table(_flat(sim.get("metrics", {})))
    body += (
        _img("speaker similarity distribution", plots.similarity_distribution, scores, refs)
        if (scores is not None)
        else ""
    )
    out.append(_section("Speaker similarity", sim, body))

    fl = card["flags"]
    body = _numbers_table(_flat(fl.get("rates", {})), as_pct=True) + _numbers_table(
        _flat(fl.get("metrics", {}))
    )
    body += _img("flag rates", plots.flag_rates, fl["rates"]) if fl.get("rates") else ""
    out.append(_section("Loop / hallucination flags", fl, body))
    out.append(examples_html(ctx, card.get("examples") or {}, scores_err))

    q = card["quality"]
    out.append(_section("Quality (DNSMOS)", q, _numbers_table(_flat(q.get("metrics", {})))))
    out.append(_watermark(card["watermark"]))
    out.append(_detection(ctx, card["detection"]))
    out.append(_asv(ctx, card["asv"]))
    if card["other"].get("metrics"):
        out.append(_section("Other metrics", card["other"], _numbers_table(_flat(card["other"]["metrics"]))))
    out.append(_failures(card.get("failures") or {}))
    out.append(_stages(card.get("stages") or {}))
    out.append(_reproducibility(card.get("reproducibility") or {}))
    out.append("<h2>Definitions</h2>" + _table(["term", "definition"], list(card["definitions"].items())))
    return _page(card, "".join(out))


def _page(card: dict, body: str) -> str:
    # data:, as icon: the browser then asks for no favicon (a file:// page would log a failed fetch)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Scorecard {_e(card.get("run"))}'
        f'</title><link rel="icon" href="data:,"><style>{CSS}</style></head><body>{body}</body></html>\n'
    )


def render_html_error(card: dict, error: str) -> str:
    """A minimal page when rendering failed: the error and the scorecard's headline status."""
    return _page(
        card,
        f"<h1>Scorecard {_e(card.get('run'))}</h1><p class=err>HTML rendering failed:</p>"
        f"<pre>{_e(error)}</pre><p>See scorecard.json and scorecard.md.</p>",
    )


def _header(card: dict) -> str:
    rep = card.get("reproducibility") or {}
    f = card.get("failures") or {}
    verdict = f'<span class="{"ok" if f.get("ok") else "err"}">{_e(failure_summary(f))} (see Failures)</span>'
    rows = []
    for label, section, path, pct in HEADLINE:
        n = lookup(card, section, path)
        if n is not None:
            rows.append(
                [
                    label,
                    fmt(n["value"], pct),
                    fmt_ci(n, pct),
                    n["n"] if n["n"] is not None else "-",
                    n["backend"] or "-",
                ]
            )
    return (
        f"<h1>Scorecard: {_e(card.get('run'))}</h1><p>generator <b>{_e(card.get('generator'))}</b>"
        f" &middot; profile {_e(card.get('profile'))}"
        f" &middot; commit <code>{_e(rep.get('git_commit'))}</code>"
        f" &middot; schema {_e(card.get('format'))} v{_e(card.get('schema_version'))}"
        f" &middot; {_e(card.get('generated'))}</p><p>{verdict}</p><h2>Headline</h2>"
        + _table(["metric", "value", "95% CI", "n", "backend"], rows)
    )


def _watermark(wm: dict) -> str:
    body = ""
    for key, title in (
        ("scoring", "At scoring"),
        ("verify", "Verify"),
        ("robustness", "Robustness per attack"),
    ):
        part = wm.get(key) or {}
        body += f"<h3>{_e(title)}</h3>{_status(part)}"
        if key == "robustness" and part.get("attacks"):
            body += _img("watermark robustness per attack", plots.watermark_robustness, part["attacks"])
            rows = [
                [
                    a,
                    e.get("family"),
                    *(
                        fmt(e[k]["value"], True) + " " + fmt_ci(e[k], True) if e.get(k) else "n/a"
                        for k in ("tpr", "fpr")
                    ),
                    (e.get("tpr") or {}).get("n"),
                ]
                for a, e in part["attacks"].items()
            ]
            body += _table(["attack", "family", "TPR [95% CI]", "FPR [95% CI]", "n"], rows)
        else:
            body += _numbers_table(_flat({k: v for k, v in part.items() if isinstance(v, dict)}))
    return f"<h2>Watermark</h2>{_status(wm)}{body}"


def _detection(ctx: RunInputs, det: dict) -> str:
    body = _numbers_table(_flat(det.get("metrics", {})))
    if det.get("per_condition"):
        rows = [
            [
                c,
                fmt(m["eer"]["value"], True),
                fmt_ci(m["eer"], True),
                fmt(m["min_dcf"]["value"]),
                fmt(m["cllr"]["value"]),
            ]
            for c, m in det["per_condition"].items()
        ]
        rows += [
            [
                f"clean / {g}",
                fmt(m["eer"]["value"], True),
                fmt_ci(m["eer"], True),
                fmt(m["min_dcf"]["value"]),
                fmt(m["cllr"]["value"]),
            ]
            for g, m in det.get("per_generator", {}).items()
        ]
        body += _table(["condition / generator", "EER", "95% CI", "minDCF", "Cllr"], rows)
    if det.get("status") in ("ok", "partial"):
        try:
            curves = ctx.json("detect/eval.json").get("curves") or {}
            body += _img("detector DET curve", plots.det_curve, curves)
        except InputError as err:
            body += f'<p class="err">{_e(err)}</p>'
    return _section("Synthetic-speech detector", det, body)


def _asv(ctx: RunInputs, asv: dict) -> str:
    body = _numbers_table(_flat(asv.get("metrics", {})))
    ops = asv.get("operating_points") or {}
    body += _numbers_table(_flat(ops)) if ops else ""
    body += _numbers_table(_flat(asv["cm"])) if isinstance(asv.get("cm"), dict) else ""
    if isinstance(asv.get("cm"), dict):
        body += f'<p class="note">CM threshold source: {_e(asv["cm"].get("threshold_source"))}</p>'
    if asv.get("status") in ("ok", "partial"):
        far = (asv.get("far_target") or {}).get("value")
        thr = {
            "EER": (ops.get("eer", {}).get("threshold") or {}).get("value"),
            f"FAR {100 * far:g}%" if far else "FAR": (ops.get("far", {}).get("threshold") or {}).get("value"),
        }
        trials, err = _optional_table(ctx, "tables/asv_trials.parquet")
        body += (
            _img("ASV score distributions", plots.asv_scores, trials, thr)
            if trials is not None
            else (f'<p class="err">{_e(err)}</p>')
        )
    return _section("Voice-authentication bypass (ASV)", asv, body)


def _failures(f: dict) -> str:
    out = "<h2>Failures</h2>"
    if f.get("error"):
        return out + f'<p class="err">{_e(f["error"])}</p>'
    out += _table([label for label, _ in FAILURE_COUNTS], [[f.get(key, "?") for _, key in FAILURE_COUNTS]])
    if f.get("stages"):
        out += _table(
            ["stage", "status", "n failed", "error"],
            [[k, v["status"], v.get("n_failed"), v.get("error")] for k, v in f["stages"].items()],
        )
    if f.get("sections"):
        out += _table(
            ["section", "status", "error"],
            [[k, v["status"], v.get("error")] for k, v in f["sections"].items()],
        )
    if f.get("counts"):
        out += _table(["count", "value"], list(f["counts"].items()))
    if f.get("invalid_item_reasons"):
        out += _table(["invalid item reason", "items"], list(f["invalid_item_reasons"].items()))
    if f.get("items"):
        out += _table(
            ["stage", "item", "problem"], [[r["stage"], r["item"], r["problem"]] for r in f["items"]]
        )
    if f.get("failed_rows"):
        out += _table(
            ["row", "status", "error"], [[r["key"], r["status"], r.get("error")] for r in f["failed_rows"]]
        )
    for key in ("counts_error", "rows_error"):
        if f.get(key):
            out += f'<p class="err">{_e(f[key])}</p>'
    return out


def _stages(stages: dict) -> str:
    rows = [
        [
            k,
            v.get("status"),
            v.get("seconds"),
            v.get("n"),
            v.get("n_failed"),
            v.get("error") or v.get("note"),
            v.get("source"),
        ]
        for k, v in stages.items()
    ]
    return "<h2>Stages</h2>" + _table(
        ["stage", "status", "seconds", "n", "failed", "error / note", "source"], rows
    )


def _hashes(rep: dict) -> list[list[object]]:
    rows = []
    gen = rep.get("generator") if isinstance(rep.get("generator"), dict) else {}
    rows.append(["generator weights", gen.get("weights_sha256")])
    for key in ("codec", "watermark"):
        card = gen.get(key) if isinstance(gen.get(key), dict) else {}
        if card:
            rows.append([f"{key} ({card.get('name')})", card.get("weights_sha256") or card.get("sha256")])
    seen = set()
    for group, cards in (("scorer", rep.get("scorers")), ("backend", rep.get("backends"))):
        for name, card in (cards or {}).items():
            sha = card.get("sha256") or card.get("weights_sha256") if isinstance(card, dict) else None
            if sha and (name, str(sha)) not in seen:  # audit backends repeat the scorer cards
                seen.add((name, str(sha)))
                rows.append([f"{group} {name} ({card.get('backend') or card.get('name')})", sha])
    return rows


def _reproducibility(rep: dict) -> str:
    out = "<h2>Reproducibility</h2>"
    if rep.get("error"):
        out += f'<p class="err">{_e(rep["error"])}</p>'
    for p in rep.get("problems") or []:
        out += f'<p class="err">{_e(p)}</p>'
    keys = (
        "git_commit",
        "profile",
        "generator_spec",
        "seeds",
        "audit_seeds",
        "torch_threads",
        "device",
        "chunk_size",
        "n_items",
        "testset_sha256",
        "testset_source",
        "started",
        "finished",
    )
    out += _table(["field", "value"], [[k, rep.get(k)] for k in keys])
    backends = [
        [role, backend_label(card), json.dumps(card, sort_keys=True) if isinstance(card, dict) else ""]
        for role, card in (rep.get("backends") or {}).items()
    ]
    out += "<h3>Backends</h3>" + _table(["role", "backend", "card"], backends)
    out += "<h3>Model hashes (sha256)</h3>" + _table(["model", "sha256"], _hashes(rep))
    out += "<h3>Versions</h3>" + _table(["package", "version"], sorted((rep.get("versions") or {}).items()))
    out += "<h3>Scorecard rendered with</h3>" + _table(
        ["package", "version"], sorted((rep.get("scorecard_versions") or {}).items())
    )
    if rep.get("audit_options"):
        out += "<h3>Audit options</h3>" + _table(["option", "value"], list(rep["audit_options"].items()))
    if rep.get("thresholds"):
        out += "<h3>Flag thresholds</h3>" + _table(["threshold", "value"], list(rep["thresholds"].items()))
    return out
