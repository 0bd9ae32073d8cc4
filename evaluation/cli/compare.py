"""``valle compare``: two or more scored runs side by side, each against the first (the baseline).

For every metric of the runs' ``summary.json`` the table shows each run's value with its 95% interval
(items resampled; :mod:`evaluation.scorers.stats`), then, for each run after the first, the paired difference
``run - baseline`` from :func:`evaluation.runs.summary.compare_runs`: the same test items in both runs,
resampled jointly, which is what makes the interval narrow enough to tell two checkpoints apart
(Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation", paired bootstrap).
A ``*`` marks a difference whose interval excludes 0. Differences exist for the per-utterance metrics
``compare_runs`` pairs (WER, mean utterance WER, similarities, DNSMOS, durations, flag rates); the
rest (counts of failures, ASR-ceiling rows) are shown per run only.

Runs on different test sets, or scored by different ASR / speaker models, are refused (their numbers
are not comparable), with the two runs named.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from evaluation.runs.summary import compare_runs

SCHEMA = 1


def _load_summary(run: Path) -> dict:
    """A run's summary.json, after checking the run has what a comparison reads."""
    if not run.is_dir():
        raise FileNotFoundError(f"run {run}: no such directory")
    for rel, how in (
        ("summary.json", f"finish the run (or `valle merge {run}`)"),
        ("config.json", "not a `valle score` run directory"),
        ("tables/scores.parquet", f"finish the run (or `valle merge {run}`)"),
    ):
        if not (run / rel).is_file():
            raise FileNotFoundError(f"run {run}: {rel} not found ({how})")
    try:
        return json.loads((run / "summary.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"run {run}: summary.json is not valid JSON ({err})") from None


def _labels(runs: list[Path]) -> list[str]:
    """Short unique column names: the folder name, else the path as given, else numbered."""
    names = [r.name or str(r) for r in runs]
    paths_of = {n: {r.resolve() for r, m in zip(runs, names, strict=True) if m == n} for n in names}
    names = [str(r) if len(paths_of[n]) > 1 else n for r, n in zip(runs, names, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def _finite_or_none(obj):
    """NaN (an estimate over no items) -> None, so compare.json is standard JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def _excludes_zero(e: dict | None) -> bool:
    return bool(e) and bool(e.get("n")) and (e["low"] > 0 or e["high"] < 0)


def compare(runs: list[str | Path]) -> dict:
    """Side-by-side values and paired differences vs ``runs[0]``; see the module docstring.

    Returns ``{"schema", "baseline", "runs": [{label, path, generator, backends, counts}],
    "n_items": [None, n paired vs baseline, ...], "metrics": {name: {"values": [estimate | None per
    run], "diff": [None, estimate + "excludes_zero" | None, ...]}}}``, an estimate being
    ``{value, low, high, n}``.
    """

    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise ValueError("valle compare needs at least two runs")
    summaries = [_load_summary(p) for p in paths]
    diffs: list[dict | None] = [None]
    for p in paths[1:]:
        try:
            d = compare_runs(p, paths[0])  # run - baseline
        except ValueError as err:
            msg = str(err)
            if str(p) not in msg or str(paths[0]) not in msg:
                msg = f"cannot compare {p} with the baseline {paths[0]}: {msg}"
            raise ValueError(msg) from None
        diffs.append(d)
    names: list[str] = []  # reading order of the baseline's summary, then anything the others add
    for s in summaries:
        names += [m for m in s.get("metrics", {}) if m not in names]
    for d in diffs[1:]:
        names += [m for m in d["diff"] if m not in names]
    metrics = {}
    for m in names:
        values = [s.get("metrics", {}).get(m) for s in summaries]
        diff = [None] + [
            {**d["diff"][m], "excludes_zero": _excludes_zero(d["diff"][m])} if m in d["diff"] else None
            for d in diffs[1:]
        ]
        metrics[m] = {"values": values, "diff": diff}
    labels = _labels(paths)
    return _finite_or_none(
        {
            "schema": SCHEMA,
            "baseline": labels[0],
            "runs": [
                {
                    "label": label,
                    "path": str(p),
                    "generator": s.get("generator"),
                    "backends": s.get("backends"),
                    "counts": s.get("counts"),
                }
                for label, p, s in zip(labels, paths, summaries, strict=True)
            ],
            "n_items": [None] + [d["n_items"] for d in diffs[1:]],
            "metrics": metrics,
        }
    )


def _fmt(e: dict | None, signed: bool = False) -> str:
    if not e or not e.get("n") or e.get("value") is None:
        return "n/a"
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(e['value'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def format_markdown(result: dict) -> str:
    """The comparison as a Markdown table (also readable in a terminal)."""
    runs = result["runs"]
    base = result["baseline"]
    head = ["metric", *(r["label"] for r in runs), *(f"{r['label']} − {base}" for r in runs[1:])]
    lines = [
        f"Baseline: {base}. Values: estimate [95% interval]. Differences are paired over the test items "
        "both runs scored; * = the interval excludes 0.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    unmeasured = []
    for name, m in result["metrics"].items():
        if all(_fmt(e) == "n/a" for e in m["values"] + m["diff"]):
            unmeasured.append(name)  # e.g. code flags for a folder of wavs, DNSMOS when it was off
            continue
        cells = [name, *(_fmt(v) for v in m["values"])]
        for d in m["diff"][1:]:
            cells.append(_fmt(d, signed=True) + (" *" if d and d.get("excludes_zero") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if unmeasured:
        lines += [f"Not measured in any run: {', '.join(unmeasured)}.", ""]
    for r, n in zip(runs, result["n_items"], strict=True):
        c = r.get("counts") or {}
        paired = f", {n} items paired with {base}" if n is not None else ""
        lines.append(
            f"- {r['label']}: {r['path']}; generator {r.get('generator')}; items {c.get('items')}, "
            f"seeds {c.get('seeds')}{paired}; backends {r.get('backends')}"
        )
    return "\n".join(lines) + "\n"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="compare scored runs side by side: values and paired differences with 95%% intervals",
        description="Each run's metrics with their 95% bootstrap intervals, and for every run after the\n"
        "first the paired difference (run - first run) over the same test items, with its interval;\n"
        "* marks an interval that excludes 0. The runs must share the test set and ASR / speaker models.",
        epilog="examples:\n"
        "  valle compare runs/ckpt_a runs/ckpt_b\n"
        "  valle compare runs/base runs/ft1 runs/ft2 --out runs/compare_ft\n"
        "  valle compare runs/ckpt_a runs/ckpt_b --json > diff.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "runs", type=Path, nargs="+", metavar="RUN", help="run directories; the first is the baseline"
    )
    p.add_argument("--out", type=Path, default=None, help="also write compare.json and compare.md here")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args) -> int:
    result = compare(args.runs)
    text = format_markdown(result)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "compare.md").write_text(text)
    print(json.dumps(result, indent=2) if args.json else text, end="" if not args.json else "\n")
    if args.out is not None and not args.json:
        print(f"written: {args.out / 'compare.json'}, {args.out / 'compare.md'}")
    return 0
