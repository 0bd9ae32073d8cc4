"""The scorecard's number object and the intervals computed here.

Every measured number on the scorecard is ``{"value", "low", "high", "n", "backend"}`` plus an optional
``"note"``: ``low``/``high`` bound the 95% interval (null when none exists, and the note says why), ``n``
is the number of units behind the value (items, trials, clips) and ``backend`` the model that produced it.

Rates that arrive as counts without an interval (verify verdicts, a watermark TPR without bounds, rates
at a detector's stored threshold) get a Wilson score interval, ``scipy.stats.binomtest(k, n)
.proportion_ci(method="wilson")`` (Wilson 1927, "Probable inference, the law of succession, and
statistical inference", JASA 22; recommended over the Wald interval by Brown, Cai & DasGupta 2001,
"Interval estimation for a binomial proportion", Statistical Science 16).
"""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import binomtest

NUMBER_KEYS = ("value", "low", "high", "n", "backend")
WILSON_NOTE = "Wilson 95% score interval computed by the scorecard from the count"


def _finite(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(x: Any) -> int | None:
    f = _finite(x)
    return None if f is None else round(f)


def number(
    value: Any,
    low: Any = None,
    high: Any = None,
    n: Any = None,
    backend: str | None = None,
    note: str | None = None,
    count: bool = False,
) -> dict:
    """One scorecard number; non-finite inputs become null with a note saying so; ``count=True`` keeps
    the value an integer (a count of files, trials or clips)."""
    v, lo, hi = _finite(value), _finite(low), _finite(high)
    notes = [note] if note else []
    if value is not None and v is None:
        notes.append(f"not defined (input value {value!r})")
    if (lo is None) != (hi is None):  # half an interval is no interval
        lo = hi = None
        notes.append("interval incomplete in the input")
    if v is not None and lo is None and not notes:
        notes.append("no interval in the input")
    if count and v is not None:
        v = round(v)  # a count is shown and stored as an integer
    out = {"value": v, "low": lo, "high": hi, "n": _int(n), "backend": backend}
    if notes:
        out["note"] = "; ".join(notes)
    return out


def from_metric(metric: Any, backend: str | None, note: str | None = None) -> dict:
    """A ``{value, low, high, n}`` dict of summary.json as a scorecard number."""
    if not isinstance(metric, dict):
        return number(None, backend=backend, note=f"malformed metric {metric!r}")
    return number(metric.get("value"), metric.get("low"), metric.get("high"), metric.get("n"), backend, note)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of ``k`` successes in ``n`` trials; None when ``n == 0``."""
    if n <= 0:
        return None
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate(k: int, n: int, backend: str | None, note: str | None = None) -> dict:
    """``k / n`` with its Wilson interval."""
    if n <= 0:
        return number(None, n=0, backend=backend, note=note or "no trials")
    lo, hi = wilson(k, n)  # type: ignore[misc]
    return number(k / n, lo, hi, n, backend, "; ".join(x for x in (note, WILSON_NOTE) if x))


def is_number(obj: Any) -> bool:
    return isinstance(obj, dict) and all(k in obj for k in NUMBER_KEYS)


def fmt(x: float | None, pct: bool = False, digits: int = 3) -> str:
    """``0.1234`` -> ``0.123`` (or ``12.3%``); None -> ``n/a``."""
    if x is None:
        return "n/a"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)  # a count
    return f"{100 * x:.1f}%" if pct else f"{x:.{digits}g}" if abs(x) >= 100 else f"{x:.{digits}f}"


def fmt_ci(num: dict, pct: bool = False) -> str:
    if num.get("low") is None or num.get("high") is None:
        return "-"
    return f"[{fmt(num['low'], pct)}, {fmt(num['high'], pct)}]"
