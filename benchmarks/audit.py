"""The README's main command from a fresh clone: ``git clone`` -> ``make demo`` (venv + install + audit).

Clones the current commit of this repository into a temporary folder, runs ``make install`` and then
``make demo`` there, and records the wall time of each, the audit's per-stage seconds (its
``audit.json``) and the size of the test set. The target is <= 15 minutes in all on 2 CPU cores.

pip's download cache is whatever this machine has (state it when quoting the figure): the packages
come from PyPI either way, but a cold cache adds the download time of torch and friends.

Usage: ``.venv/bin/python benchmarks/audit.py [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_io import write_result

REPO = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 15 * 60


def _timed(cmd: list[str], cwd: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def headline(card: dict) -> dict:
    """The scorecard's headline numbers, flat: ``<name>``, ``<name>_low``, ``<name>_high``, ``<name>_n``."""
    asv = card["asv"]["operating_points"]
    picks = {
        "wer": card["intelligibility"]["metrics"]["wer"],
        "ceiling_wer": card["intelligibility"]["metrics"]["ceiling_wer"],
        "sim_prompt": card["similarity"]["metrics"]["sim_prompt"],
        "ceiling_sim_target_prompt": card["similarity"]["metrics"]["ceiling_sim_target_prompt"],
        "dnsmos_ovrl": card["quality"]["metrics"]["dnsmos_ovrl"],
        "watermark_verified_rate": card["watermark"]["verify"]["verified_rate"],
        "detector_eer": card["detection"]["metrics"]["eer"],
        "asv_spoof_acceptance_eer": asv["eer"]["spoof_acceptance"],
        "asv_gated_spoof_acceptance_eer": asv["eer"]["gated_spoof_acceptance"],
        "asv_spoof_acceptance_far": asv["far"]["spoof_acceptance"],
        "asv_gated_spoof_acceptance_far": asv["far"]["gated_spoof_acceptance"],
    }
    out = {}
    for name, e in picks.items():
        out.update({name: e["value"], f"{name}_n": e["n"]})
        out.update({f"{name}_low": e["low"], f"{name}_high": e["high"]})
    out["scorecard_ok"] = card["failures"].get("ok")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, default=None, help="clone here and keep it (default: a temp dir)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="valle-audit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    clone = work / "clone"  # `make demo` reads nothing outside its clone (no ../shared)
    log = work / "bench.log"
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    t_clone = _timed(["git", "clone", "--quiet", str(REPO), str(clone)], work, log)
    t_install = _timed(["make", "install"], clone, log)
    t_demo = _timed(["make", "demo"], clone, log)
    audit = json.loads((clone / "runs" / "audit" / "audit.json").read_text())
    config = json.loads((clone / "runs" / "audit" / "config.json").read_text())
    card = json.loads((clone / "runs" / "audit" / "scorecard.json").read_text())
    n_items = config["n_items"]
    total = t_clone + t_install + t_demo
    figures = {
        "commit": commit,
        "wall_seconds_total": round(total, 1),
        "wall_seconds_clone": round(t_clone, 1),
        "wall_seconds_venv_install": round(t_install, 1),
        "wall_seconds_audit": round(t_demo, 1),
        "budget_seconds": BUDGET_SECONDS,
        "within_budget": total <= BUDGET_SECONDS,
        "n_items": n_items,
        "real_speech_included": "real_speech" in config["testset_source"],
        **{f"stage_seconds_{k}": v["seconds"] for k, v in audit["stages"].items()},
        **{f"stage_status_{k}": v["status"] for k, v in audit["stages"].items()},
        "pip_cache": "warm (this machine's pip cache)",
        **headline(card),
    }
    data = (
        "`make demo` on a fresh clone: demo checkpoint, committed demo test set "
        f"({n_items} items, offline profile, 1 seed)"
    )
    print(json.dumps(figures, indent=2))
    print(write_result("audit", figures, data))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
