"""Scorecard plots: matplotlib with the Agg canvas (no display, no pyplot global state) -> PNG bytes.

The DET plot follows the ASVspoof / NIST convention (Martin et al. 1997, "The DET curve in assessment of
detection task performance"): both error rates on normal-deviate (probit) axes, so that normally
distributed scores give straight lines; tick positions are ``scipy.stats.norm.ppf`` of round rates.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm

DPI = 90
SIZE = (7.0, 3.4)
DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6)
DET_RANGE = (0.0005, 0.75)  # error rates shown on the DET axes
KIND_COLORS = {"target": "tab:green", "nontarget": "tab:blue", "spoof": "tab:red"}


def _figure(size: tuple[float, float] = SIZE) -> tuple[Figure, object]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _finite(values) -> np.ndarray:
    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    return x[np.isfinite(x)]


def wer_distribution(scores: pd.DataFrame, references: pd.DataFrame | None = None) -> bytes:
    """Histogram of per-utterance WER of the scored rows ``[n]``, with the real targets' WER (the ASR
    ceiling) overlaid when ``references`` has a ``wer`` column."""
    ok = scores[scores["status"] == "ok"] if "status" in scores else scores
    gen = _finite(ok["wer"]) if "wer" in ok else np.zeros(0)
    ref = _finite(references["wer"]) if references is not None and "wer" in references else np.zeros(0)
    if gen.size == 0 and ref.size == 0:
        raise ValueError("no per-utterance WER to plot")
    top = max(1.0, float(np.max(np.r_[gen, ref])))
    bins = np.linspace(0.0, top, 21)
    fig, ax = _figure()
    if gen.size:
        ax.hist(gen, bins=bins, alpha=0.7, label=f"generated (n={gen.size}, mean {gen.mean():.2f})")
    if ref.size:
        ax.hist(
            ref, bins=bins, alpha=0.5, label=f"real targets / ceiling (n={ref.size}, mean {ref.mean():.2f})"
        )
    ax.set_xlabel("per-utterance WER")
    ax.set_ylabel("utterances")
    ax.legend(fontsize=8)
    return _png(fig)


def similarity_distribution(scores: pd.DataFrame, references: pd.DataFrame | None = None) -> bytes:
    """Histograms of speaker similarity: generated vs prompt and vs target, and the real target vs
    prompt ceiling (``references.sim_target_prompt``) when present."""
    series = {f"{c} (generated)": _finite(scores[c]) for c in ("sim_prompt", "sim_target") if c in scores}
    if references is not None and "sim_target_prompt" in references:
        series["target vs prompt (ceiling)"] = _finite(references["sim_target_prompt"])
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        raise ValueError("no similarity values to plot")
    allv = np.concatenate(list(series.values()))
    bins = np.linspace(min(0.0, allv.min()), 1.0, 26)
    fig, ax = _figure()
    for name, v in series.items():
        ax.hist(v, bins=bins, alpha=0.55, label=f"{name}, n={v.size}, mean {v.mean():.3f}")
    ax.set_xlabel("cosine similarity of speaker embeddings")
    ax.set_ylabel("utterances")
    ax.legend(fontsize=8)
    return _png(fig)


def _err(nums: list[Mapping]) -> np.ndarray:
    """``[2, n]`` asymmetric error bars from number objects (0 where no interval)."""
    out = np.zeros((2, len(nums)))
    for i, n in enumerate(nums):
        if n.get("value") is not None and n.get("low") is not None and n.get("high") is not None:
            out[:, i] = (max(n["value"] - n["low"], 0.0), max(n["high"] - n["value"], 0.0))
    return out


def flag_rates(rates: Mapping[str, Mapping]) -> bytes:
    """Horizontal bars of flag rates (number objects) with their 95% intervals."""
    items = sorted(
        ((k, v) for k, v in rates.items() if v.get("value") is not None), key=lambda kv: kv[1]["value"]
    )
    if not items:
        raise ValueError("no flag rates to plot")
    names, nums = [k for k, _ in items], [v for _, v in items]
    fig, ax = _figure((7.0, 0.6 + 0.32 * len(items)))
    y = np.arange(len(items))
    ax.barh(y, [n["value"] for n in nums], xerr=_err(nums), color="tab:orange", capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of rows flagged (95% CI)")
    return _png(fig)


def det_curve(curves: Mapping[str, Mapping], max_curves: int = 8) -> bytes:
    """DET curves from eval.json ``curves`` (``{"<condition>/<generator>": {miss, fa, miss_probit,
    fa_probit}}``): every ``*/all`` curve (one per condition), then per-generator clean curves."""
    keys = [k for k in curves if k.endswith("/all")] + [k for k in curves if not k.endswith("/all")]
    keys = keys[:max_curves]
    if not keys:
        raise ValueError("eval.json has no DET curves")
    lo, hi = norm.ppf(DET_RANGE[0]), norm.ppf(DET_RANGE[1])
    fig, ax = _figure((5.6, 5.0))
    for key in keys:
        c = curves[key]
        fa = np.asarray(c.get("fa_probit") or norm.ppf(np.clip(c["fa"], 1e-6, 1 - 1e-6)), dtype=float)
        miss = np.asarray(c.get("miss_probit") or norm.ppf(np.clip(c["miss"], 1e-6, 1 - 1e-6)), dtype=float)
        if fa.shape != miss.shape or fa.size == 0:
            raise ValueError(f"DET curve {key!r}: fa and miss differ in length or are empty")
        style = "-" if key.endswith("/all") else ":"
        ax.plot(np.clip(fa, lo, hi), np.clip(miss, lo, hi), style, label=key, linewidth=1.4)
    ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=0.8, label="EER line (miss = fa)")
    ticks = norm.ppf(DET_TICKS)
    labels = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("false acceptance of spoofs (%)")
    ax.set_ylabel("miss: bona fide rejected (%)")
    ax.grid(True, linewidth=0.4)
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def asv_scores(trials: pd.DataFrame, thresholds: Mapping[str, float | None]) -> bytes:
    """Histograms of ASV trial cosines per kind (target / nontarget / spoof) with vertical lines at
    the calibrated thresholds (``{"EER": t_eer, "FAR 1%": t_far}``)."""
    if "kind" not in trials or "cosine" not in trials:
        raise ValueError("asv trials table needs columns kind and cosine")
    by_kind = {k: _finite(trials.loc[trials["kind"] == k, "cosine"]) for k in KIND_COLORS}
    by_kind = {k: v for k, v in by_kind.items() if v.size}
    if not by_kind:
        raise ValueError("no ASV trial scores to plot")
    allv = np.concatenate(list(by_kind.values()))
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 31)
    fig, ax = _figure()
    for k, v in by_kind.items():
        ax.hist(v, bins=bins, alpha=0.5, density=True, color=KIND_COLORS[k], label=f"{k} (n={v.size})")
    for (name, t), style in zip(thresholds.items(), ("--", ":", "-."), strict=False):
        if t is not None and np.isfinite(t):
            ax.axvline(t, color="k", linestyle=style, linewidth=1.2, label=f"threshold {name} = {t:.3f}")
    ax.set_xlabel("cosine(enrolment, trial)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _png(fig)


def watermark_robustness(attacks: Mapping[str, Mapping]) -> bytes:
    """Per attack: TPR on attacked generated clips and FPR on attacked real clips (number objects)
    with their 95% intervals."""
    names = [a for a, e in attacks.items() if e.get("tpr") or e.get("fpr")]
    if not names:
        raise ValueError("no watermark attacks to plot")
    none = {"value": None}
    tpr = [attacks[a].get("tpr") or none for a in names]
    fpr = [attacks[a].get("fpr") or none for a in names]
    x = np.arange(len(names))
    fig, ax = _figure((max(7.0, 0.45 * len(names) + 2), 3.8))
    vals = lambda nums: [n["value"] if n["value"] is not None else 0.0 for n in nums]  # noqa: E731
    ax.bar(x - 0.2, vals(tpr), 0.4, yerr=_err(tpr), capsize=2, label="TPR (marked, attacked)")
    ax.bar(
        x + 0.2, vals(fpr), 0.4, yerr=_err(fpr), capsize=2, color="tab:red", label="FPR (unmarked, attacked)"
    )
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("detection rate (95% CI)")
    ax.legend(fontsize=8)
    return _png(fig)
