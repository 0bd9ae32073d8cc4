"""Write a benchmark's figures as ``benchmarks/results/<name>.json`` (flat figures + provenance)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    py = platform.python_version()
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {py}"


def write_result(name: str, figures: dict, data: str) -> Path:
    out = {
        **figures,
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path
