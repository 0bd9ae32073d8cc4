"""Write a benchmark's figures as ``benchmarks/results/<name>.json`` (flat figures + provenance).

Speed figures mean nothing when other jobs share the cores (an earlier README understated the code
by up to 19x that way), so every result records the machine's load at the start (sampled when a
benchmark imports this module) and at the end (sampled by :func:`write_result`): the 1-minute load
average and the share of all CPUs that *other* processes used over a 1 s window. When either share
exceeds :data:`BUSY_SHARE`, the figures go to ``<name>.busy.json`` instead, nothing is overwritten,
and the script exits with status 3; set ``VALLE_BENCH_ALLOW_BUSY=1`` to write ``<name>.json``
anyway, which then says ``"busy": true``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BUSY_SHARE = 0.15  # other processes' share of all CPUs above which the machine counts as busy
ALLOW_BUSY_ENV = "VALLE_BENCH_ALLOW_BUSY"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    py = platform.python_version()
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {py}"


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat``; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_load(window: float = 1.0) -> dict:
    """``{"load_average_1m", "other_cpu_share"}``: the share of all CPUs busy over ``window`` seconds
    minus what this process (and its finished children) used in that window; None where unknown."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    before, own0 = _cpu_jiffies(), _own_seconds()
    time.sleep(window)
    after, own1 = _cpu_jiffies(), _own_seconds()
    share = None
    if before and after and after[1] > before[1]:
        busy = (after[0] - before[0]) / (after[1] - before[1])  # share of all CPUs
        own = (own1 - own0) / (window * (os.cpu_count() or 1))
        share = round(max(busy - own, 0.0), 3)
    return {"load_average_1m": None if load is None else round(load, 2), "other_cpu_share": share}


START_LOAD = machine_load()  # taken when a benchmark imports this module, i.e. before it works


def write_result(name: str, figures: dict, data: str) -> Path:
    end = machine_load()
    shares = [s for s in (START_LOAD["other_cpu_share"], end["other_cpu_share"]) if s is not None]
    busy = any(s > BUSY_SHARE for s in shares)
    out = {
        **figures,
        "load_average_1m_start": START_LOAD["load_average_1m"],
        "other_cpu_share_start": START_LOAD["other_cpu_share"],
        "load_average_1m_end": end["load_average_1m"],
        "other_cpu_share_end": end["other_cpu_share"],
        "busy": busy,
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    allowed = os.environ.get(ALLOW_BUSY_ENV) == "1"
    path = RESULTS / (f"{name}.busy.json" if busy and not allowed else f"{name}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    if busy and not allowed:
        print(
            f"other processes used {max(shares):.0%} of the CPUs (limit {BUSY_SHARE:.0%}): figures kept "
            f"in {path}, {name}.json left as it was; rerun on an idle machine or set {ALLOW_BUSY_ENV}=1",
            file=sys.stderr,
        )
        raise SystemExit(3)
    return path
