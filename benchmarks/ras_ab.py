"""A/B of a decoding setting with ``valle audit`` + ``valle compare``: repetition-aware sampling on vs off.

Runs the README's main job on the default test set with the demo checkpoint (seeds 0 and 1; DNSMOS
and the detector, ASV and watermark stages off to save time) three times: sampled with RAS (the
paper's decoding, ``--no-greedy``), sampled without it (``--no-greedy --no-ras``) and greedy
(``--greedy``, the demo checkpoint's recommended decoding; argmax has no RAS), then ``valle
compare`` them; records each run's value and the paired differences (RAS off - RAS on, greedy - RAS
on) with their 95% intervals for the metrics RAS is meant to move.

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
METRICS = (
    "wer",
    "sim_prompt",
    "repetition_ratio",
    "rate_code_repetition",
    "rate_code_loop",
    "rate_max_length",
    "rate_silence",
)


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
    common += ["--skip", "detect", "--skip", "asv", "--skip", "watermark"]  # decoding moves none of them
    arms = {"ras_on": ["--no-greedy"], "ras_off": ["--no-greedy", "--no-ras"], "greedy": ["--greedy"]}
    for arm, extra in arms.items():
        subprocess.run([*valle, *common, *extra, "--out", str(args.out / arm)], cwd=REPO, check=True)
    runs = [str(args.out / arm) for arm in arms]
    subprocess.run([*valle, "compare", *runs, "--out", str(args.out)], cwd=REPO, check=True)
    result = json.loads((args.out / "compare.json").read_text())
    figures: dict = {"n_items": result["n_items"][1], "seeds": 2}
    for name in METRICS:
        m = result["metrics"][name]
        for i, arm in enumerate(arms):
            figures[f"{name}_{arm}"] = m["values"][i]["value"]
        for i, key in ((1, "diff"), (2, "greedy_diff")):  # each against the first run, RAS on
            d = m["diff"][i]
            figures.update(
                {f"{name}_{key}": d["value"], f"{name}_{key}_low": d["low"], f"{name}_{key}_high": d["high"]}
            )
    config = json.loads((args.out / "ras_on" / "config.json").read_text())
    data = (
        f"demo checkpoint, `valle audit` demo test set + --extra-real ({config['n_items']} items: "
        f"{config['testset_source']}), seeds 0 1, DNSMOS off; diff = RAS off - RAS on, greedy_diff = "
        "greedy - RAS on, paired over items"
    )
    print(json.dumps(figures, indent=2))
    print(write_result("ras_ab", figures, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
