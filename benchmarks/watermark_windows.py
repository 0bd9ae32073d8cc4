"""Does every short window of a marked clip carry the keyed mark and its 32-bit payload?

The keyed mark (``watermark.keyed``) repeats its pattern every 0.992 s, so any window of about 1 s
holds every cell once; this measures what a cut-out piece of a marked file still proves. For every
clip of ``../shared/data/real_speech`` (or ``--data``), with a fresh random key that is never written
anywhere and a random payload per clip, ``--windows`` random windows of each length in ``LENGTHS``
are cut from the marked clip and from the unmarked original, and checked with the same key:

- **detected**: p <= 1e-6 (the backend's analytic threshold, with its speed and alignment search);
- **payload exact**: the Viterbi-decoded payload equals the embedded one (all 32 bits);
- **bit accuracy** of the decoded payload, the ``payload_z`` of the true payload, and how often the
  window is detected *and* its true payload reaches the ledger's link threshold
  (``watermark.ledger.LINK_Z``): then ``verify --ledger`` names the entry from this window alone;
- **false alarms**: the same windows of the unmarked original read as marked.

The mark follows the speech's own energy (none in silence), so a window that is mostly pause carries
little of it: the figures are over random windows, pauses included. No timing figures.

    python benchmarks/watermark_windows.py [--data DIR] [--windows 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import secrets
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from results_io import write_result

from watermark.bench_cli import read_mono
from watermark.keyed import P_THRESHOLD, KeyedWatermarker, viterbi
from watermark.keys import WatermarkKey
from watermark.ledger import LINK_Z

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech"
LENGTHS = (1.0, 1.5, 2.0, 3.0)  # seconds


def clip_windows(job: tuple) -> list[dict]:
    """Every window trial of one clip (run in a worker process)."""
    torch.set_num_threads(1)
    wav, sr, clip_id, secret, n_windows, seed = job
    wm = KeyedWatermarker(key=WatermarkKey("bench-windows", secret))
    rng = np.random.default_rng(seed)
    bits_in = tuple(int(b) for b in rng.integers(0, 2, wm.payload_bits))
    payload = np.array(bits_in)
    marked = wm.embed(wav, sr, bits_in)
    rows = []
    for seconds in LENGTHS:
        n = int(seconds * sr)
        if n > len(wav):
            continue
        for w in range(n_windows):
            start = int(rng.integers(0, len(wav) - n + 1))
            ev_m = wm.evidence(marked[start : start + n], sr)
            ev_u = wm.evidence(wav[start : start + n], sr)
            bits = viterbi(ev_m.soft_bits)
            rows.append(
                {
                    "clip_id": clip_id,
                    "window_seconds": seconds,
                    "window": w,
                    "p_marked": ev_m.p_value,
                    "payload_exact": bool(np.array_equal(bits, payload)),
                    "bit_acc": float(np.mean(bits == payload)),
                    "payload_z": wm.payload_z(ev_m.soft_bits, bits_in),
                    "p_unmarked": ev_u.p_value,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--windows", type=int, default=4, help="random windows per clip and length")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl") if line.strip()]
    secret = secrets.token_bytes(32)  # fresh, never stored
    jobs = [
        (*read_mono(args.data / r["audio"]), r["id"], secret, args.windows, i) for i, r in enumerate(rows)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        trials = pd.DataFrame([row for rs in pool.map(clip_windows, jobs) for row in rs])

    figures: dict = {
        "watermarker": "keyed (watermark.keyed), fresh random key, random 32-bit payload per clip",
        "decision": f"p_value <= {P_THRESHOLD:g}",
        "n_clips": len(rows),
        "windows_per_clip_and_length": args.windows,
    }
    for seconds, g in trials.groupby("window_seconds"):
        tag = f"{seconds:g}s"
        figures[f"n_windows_{tag}"] = len(g)
        figures[f"n_clips_{tag}"] = int(g["clip_id"].nunique())
        figures[f"detected_{tag}"] = float(np.mean(g["p_marked"] <= P_THRESHOLD))
        figures[f"payload_exact_{tag}"] = float(g["payload_exact"].mean())
        figures[f"bit_acc_mean_{tag}"] = float(g["bit_acc"].mean())
        figures[f"payload_z_median_{tag}"] = float(g["payload_z"].median())
        # verify scores payloads only of detected audio
        linked = (g["p_marked"] <= P_THRESHOLD) & (g["payload_z"] >= LINK_Z)
        figures[f"ledger_link_{tag}"] = float(np.mean(linked))
        figures[f"false_alarms_{tag}"] = int(np.sum(g["p_unmarked"] <= P_THRESHOLD))
    path = write_result(
        "watermark_windows",
        figures,
        data=f"{args.data}/manifest.jsonl ({len(rows)} real clips); random windows of "
        f"{', '.join(f'{s:g}' for s in LENGTHS)} s of each marked clip and of its unmarked original",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
