"""A/B of a decoding setting with ``valle audit`` + ``valle compare``: repetition-aware sampling on vs off.

Runs the README's main job twice on the default test set with the demo checkpoint (seeds 0 and 1,
DNSMOS off to save time), once as is (RAS on, the default) and once with ``--no-ras``, then
``valle compare`` them; records each run's value and the paired difference (off - on) with its 95%
interval for the metrics RAS is meant to move.

Usage: ``.venv/bin/python benchmarks/ras_ab.py [--out runs/ras_ab]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results_io import write_result

REPO = Path(__file__).resolve().parents[1]
METRICS = ("wer", "sim_prompt", "repetition_ratio", "rate_code_repetition", "rate_code_loop", "rate_silence")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ras_ab")
    ap.add_argument(
        "--extra-real",
        type=Path,
        default=REPO.parent / "shared" / "data" / "real_speech" / "manifest.jsonl",
        help="real recordings added to the demo test set (as the recorded figures were made)",
    )
    args = ap.parse_args()
    valle = [sys.executable, "-m", "evaluation.cli.main"]
    common = ["audit", "--seeds", "0", "1", "--no-quality", "--quiet", "--extra-real", str(args.extra_real)]
    on, off = args.out / "ras_on", args.out / "ras_off"
    for out, extra in ((on, []), (off, ["--no-ras"])):
        subprocess.run([*valle, *common, *extra, "--out", str(out)], cwd=REPO, check=True)
    subprocess.run([*valle, "compare", str(on), str(off), "--out", str(args.out)], cwd=REPO, check=True)
    result = json.loads((args.out / "compare.json").read_text())
    figures: dict = {"n_items": result["n_items"][1], "seeds": 2}
    for name in METRICS:
        m = result["metrics"][name]
        figures[f"{name}_ras_on"] = m["values"][0]["value"]
        figures[f"{name}_ras_off"] = m["values"][1]["value"]
        d = m["diff"][1]
        figures[f"{name}_diff"] = d["value"]
        figures.update({f"{name}_diff_low": d["low"], f"{name}_diff_high": d["high"]})
    config = json.loads((on / "config.json").read_text())
    data = (
        f"demo checkpoint, `valle audit` demo test set + --extra-real ({config['n_items']} items: "
        f"{config['testset_source']}), seeds 0 1, DNSMOS off; diff = RAS off - RAS on, paired over items"
    )
    print(json.dumps(figures, indent=2))
    print(write_result("ras_ab", figures, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
