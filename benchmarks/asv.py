"""Voice-authentication bypass by the demo checkpoint's clones, with the offline ASV (CAM++ by default).

Real: the 50 clips of ``../shared/data/real_speech`` (speakers with >= 4 clips can be targets: 3 for
enrolment, the rest as target trials; every speaker's clips are non-target trials). Spoofs: the
demo-checkpoint clones cached by ``benchmarks/detection_eval.py`` (``runs/bench_detection/valle``),
each prompted by a real clip of its target speaker. Thresholds are calibrated on the real trials
only (EER point and FAR = 1%); no detector gates here (see ``valle asv --detector``).

    python benchmarks/asv.py [--real ../shared/data/real_speech/manifest.jsonl] [--clones DIR] \
        [--encoder NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_io import write_result

from evaluation.bypass.asv import run_asv
from evaluation.bypass.trials import AsvConfig
from evaluation.cli.asv import read_real_rows

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--real", type=Path, default=ROOT.parent / "shared" / "data" / "real_speech" / "manifest.jsonl"
    )
    ap.add_argument("--clones", type=Path, default=ROOT / "runs" / "bench_detection" / "valle")
    ap.add_argument(
        "--encoder", default=AsvConfig.encoder, help="speaker backend: campplus | resemblyzer | ecapa"
    )
    args = ap.parse_args()
    if not args.real.is_file() or not (args.clones / "clips.jsonl").is_file():
        raise SystemExit(
            f"need {args.real} and {args.clones}/clips.jsonl (run benchmarks/detection_eval.py first)"
        )
    real = read_real_rows(args.real)
    clips = [
        json.loads(line) for line in (args.clones / "clips.jsonl").read_text().splitlines() if line.strip()
    ]
    spoofs = [{"id": c["id"], "speaker": c["speaker"], "audio": c["path"]} for c in clips]
    config = AsvConfig(encoder=args.encoder)
    report, _ = run_asv(real, spoofs, config)
    flat = {k: v for k, v in report.items() if isinstance(v, (int, float, str)) or v is None}
    for op, entry in report["operating_points"].items():
        flat.update({f"at_{op}_{k}": v for k, v in entry.items() if not isinstance(v, dict)})
    flat.update({f"counts_{k}": v for k, v in report["counts"].items()})
    path = write_result(
        "asv",
        flat,
        data=f"{args.real} ({len(real)} real clips) vs {len(spoofs)} demo-checkpoint clones ({args.clones}); "
        f"{config.encoder}, {config.enrol_per_speaker} enrolment clips per target",
    )
    print(json.dumps(flat, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
