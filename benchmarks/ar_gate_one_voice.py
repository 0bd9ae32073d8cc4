"""Gate (ii) of making the generator speak: does an AR trained on one voice read the text?

Trains VALL-E's AR alone (``valle train --parts ar``, preset ``tiny``) on every corpus utterance of
one Piper voice (40 sentences for the default voice), then runs ``valle diagnose --no-asr`` on those
training utterances and on the voice's held-out sentences (``data/heldout_piper``). The figure is
the AR's teacher-forced cross-entropy with the right text minus with another utterance's text of
similar length (nats per token; ``evaluation.diagnose.ar_text_dependence``). The gate asks for more
than 0.5 nats; 0 means the AR ignores the text. The gate's second half (output length within
+-20% of the truth) needs sampled generations and is not measured here.

    python benchmarks/ar_gate_one_voice.py [--voice piper-joe-vtl0.92] [--steps 700]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from results_io import write_result

from evaluation.cli.main import main as valle

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus" / "manifest.jsonl")
    ap.add_argument("--heldout", type=Path, default=REPO / "data" / "heldout_piper" / "manifest.jsonl")
    ap.add_argument("--voice", default="piper-joe-vtl0.92")
    ap.add_argument("--codec", default="vqvae_24khz")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ar_gate_one_voice")
    args = ap.parse_args()

    # manifests of one voice, beside the originals so their relative audio paths still resolve
    subsets = {}
    for name, src in (("train", args.corpus), ("heldout", args.heldout)):
        rows = [line for line in src.read_text().splitlines() if json.loads(line)["speaker"] == args.voice]
        if not rows:
            raise SystemExit(f"{src}: no utterance of voice {args.voice!r}")
        subsets[name] = src.parent / f"{args.voice}.{name}.jsonl"
        subsets[name].write_text("\n".join(rows) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)  # a fresh run: the figure is for exactly --steps steps
    started = time.monotonic()
    train = [
        "train", "--manifest", str(subsets["train"]), "--out", str(args.out), "--preset", "tiny",
        "--parts", "ar", "--max-steps", str(args.steps), "--ckpt-every", str(args.steps),
        "--codec", args.codec, "--no-progress",
    ]  # fmt: skip
    if valle(train) != 0:
        raise SystemExit("training failed")
    minutes = (time.monotonic() - started) / 60
    report = args.out / "diagnose.json"
    cmd = ["diagnose", "--checkpoint", str(args.out / "last"), "--no-asr", "--out", str(report)]
    for path in subsets.values():
        cmd += ["--manifest", str(path)]
    if valle(cmd) != 0:
        raise SystemExit("diagnose failed")
    sets = json.loads(report.read_text())["sets"]
    figures: dict = {"voice": args.voice, "codec": args.codec, "steps": args.steps}
    figures["train_minutes"] = round(minutes, 1)
    for name, path in subsets.items():
        ar = sets[path.stem]["ar"]
        figures[f"{name}_n"] = ar["n"]
        for k in ("ce_right_text", "ce_wrong_text", "text_gap_nats", "top1_accuracy"):
            figures[f"{name}_{k}"] = ar[k]
        figures[f"{name}_copy_previous_accuracy"] = ar["copy_previous_accuracy"]
    figures["gate_text_gap_nats_min"] = 0.5
    figures["meets_gate_on_heldout"] = figures["heldout_text_gap_nats"] > 0.5
    path = write_result(
        "ar_gate_one_voice",
        figures,
        data=f"every utterance of {args.voice} in {args.corpus} (training) and in {args.heldout} (held-out "
        "sentences); AR only, preset tiny; teacher-forced cross-entropy",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
