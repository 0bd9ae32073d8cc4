"""The ``valle asv`` command and its inputs: real-speech and spoof rows from manifests or a
``valle score`` run, the plain-text summary, and atomic writing of the report and trial table.

The protocol (:mod:`evaluation.bypass.trials`), the metrics (:mod:`evaluation.bypass.report`) and
:func:`evaluation.bypass.asv.run_asv` (audio files -> report) live in :mod:`evaluation.bypass`; see
their docstrings for every definition.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from evaluation.bypass.asv import run_asv, write_outputs
from evaluation.bypass.trials import AsvConfig
from evaluation.scorers.speaker import DEFAULT_SPEAKER
from evaluation.testsets.detector_data import jsonl_objects
from evaluation.testsets.testset import TestSet
from valle.manifest import read_manifest


def read_real_rows(path: str | Path) -> list[dict]:
    """Rows ``{id, speaker, audio}`` of a real-speech manifest (``valle.manifest``; files must exist)."""
    return [{"id": u.id, "speaker": u.speaker, "audio": str(u.audio)} for u in read_manifest(path)]


def _spoofs_from_manifest(path: Path) -> tuple[list[dict], dict]:
    """JSONL rows with ``audio`` (relative to the file's folder) and ``speaker`` (the cloned target);
    ``id`` defaults to the audio file's stem. Every problem is reported at once."""
    rows, problems, seen = [], [], {}
    for where, row in jsonl_objects(path, "spoof", problems):
        bad = [k for k in ("audio", "speaker") if not isinstance(row.get(k), str) or not row.get(k)]
        if bad:
            problems.append(f"{where}: missing or empty {', '.join(bad)}")
            continue
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        uid = str(row.get("id") or audio.stem)
        if uid in seen:
            problems.append(f"{where}: id {uid!r} duplicates line {seen[uid]}")
            continue
        seen[uid] = where.rsplit(":", 1)[1]  # the line number
        rows.append({"id": uid, "speaker": row["speaker"], "audio": str(audio)})
    if not rows and not problems:
        problems.append(f"{path}: spoof manifest is empty")
    if problems:
        raise ValueError(f"{len(problems)} spoof manifest problem(s):\n  " + "\n  ".join(problems[:20]))
    return rows, {"kind": "manifest", "path": str(path), "rows": len(rows)}


def _spoofs_from_run(run_dir: Path) -> tuple[list[dict], dict]:
    """The ``status == ok`` generations of a ``valle score`` run; the cloned target is the test
    item's ``speaker``. Each (item, seed) output is one spoof, id = the generation ``key``."""

    table = run_dir / "tables" / "generations.parquet"
    if not table.is_file():
        raise FileNotFoundError(
            f"{table}: not found (is {run_dir} a finished `valle score` run? try `valle merge`)"
        )
    gens = pd.read_parquet(table)
    missing = [c for c in ("id", "status", "audio") if c not in gens.columns]
    if missing:
        raise ValueError(f"{table}: missing column(s) {', '.join(missing)}")
    items = {it.id: it for it in TestSet.load(run_dir / "testset.jsonl").items}
    ok = gens[gens["status"] == "ok"]
    excluded = {str(k): int(v) for k, v in gens.loc[gens["status"] != "ok", "status"].value_counts().items()}
    rows = []
    for g in ok.to_dict("records"):
        if g["id"] not in items:
            raise ValueError(f"{table}: generation {g['id']!r} is not an item of {run_dir / 'testset.jsonl'}")
        audio = Path(str(g["audio"]))
        # the table records the path as the run saw it (maybe relative to its working directory)
        if not audio.is_file() and (run_dir / "generated" / audio.name).is_file():
            audio = run_dir / "generated" / audio.name
        uid = str(g.get("key") or g["id"])
        rows.append({"id": uid, "speaker": items[g["id"]].speaker, "audio": str(audio)})
    if not rows:
        raise ValueError(f"{table}: no generation with status ok (statuses: {excluded or 'none'})")
    return rows, {"kind": "run", "path": str(run_dir), "rows": len(rows), "not_ok": excluded}


def read_spoof_rows(path: str | Path) -> tuple[list[dict], dict]:
    """Spoof rows ``{id, speaker (cloned target), audio}`` from a JSONL manifest or a ``valle score``
    run directory, plus a description of the source for the report."""
    path = Path(path)
    if path.is_dir():
        return _spoofs_from_run(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: spoof manifest or run directory not found")
    return _spoofs_from_manifest(path)


def _dcf(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:5.1f}%"


def format_report(report: dict) -> str:
    """A short plain-text table of the report."""
    c = report["counts"]
    ci = (report.get("ci") or {}).get("intervals", {})

    def with_ci(key: str, value: float | None) -> str:
        iv = ci.get(key)
        return _pct(value) + (f" [{_pct(iv[0]).strip()}, {_pct(iv[1]).strip()}]" if iv else "")

    enc = (report.get("encoder") or {}).get("backend", "?")
    lines = [
        f"ASV ({enc}, cosine): {c['target_speakers']} target speakers of {c['speakers']}; trials: "
        f"{c['target']} target, {c['nontarget']} non-target, {c['spoof']} spoof; skipped "
        f"{c['skipped_speakers']} speaker(s), {c['skipped_spoofs']} spoof(s)",
        f"SV-EER {with_ci('sv_eer', report['sv_eer'])}   SPF-EER {with_ci('spf_eer', report['spf_eer'])}   "
        f"SASV-EER {with_ci('sasv_eer', report['sasv_eer'])}   min a-DCF {_dcf(report.get('min_adcf'))}",
    ]
    gated = report.get("gated") is not None
    head = f"{'threshold':<12}{'cosine':>8}{'FRR':>8}{'FAR':>8}{'spoof acc.':>12}"
    lines.append(head + (f"{'gated spoof':>13}{'gated FRR':>11}" if gated else ""))
    for name, label in (("eer", "EER"), ("far", f"FAR={100 * report['far_target']:g}%")):
        o = report["operating_points"][name]
        line = (
            f"{label:<12}{o['threshold']:8.4f}{_pct(o['frr']):>8}{_pct(o['far']):>8}"
            f"{_pct(o['spoof_acceptance']):>12}"
        )
        if gated:
            line += f"{_pct(o['gated']['spoof_acceptance']):>13}{_pct(o['gated']['frr']):>11}"
        lines.append(line)
    if report.get("cm"):
        cm = report["cm"]
        lines.append(
            f"CM threshold {cm['threshold']:.4f} ({cm['threshold_source'].split(':')[0]}); CM EER here "
            f"{_pct(cm['eer_on_this_run']).strip()}; gated SASV-EER "
            f"{_pct(report['gated']['sasv_eer']).strip()}; gated min a-DCF "
            f"{_dcf(report['gated'].get('min_adcf'))}"
        )
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "asv",
        help="voice-authentication bypass: do clones pass a voice-print check; does a detector stop them?",
        description="Enrols every speaker of --real with >= enrol-per-speaker + 1 utterances, scores target, "
        "non-target and\nspoof trials by cosine, calibrates thresholds on bona fide trials only (EER and "
        "FAR=1%%),\nand reports spoof acceptance, SV-/SPF-/SASV-EER (SASV 2022) with and without the "
        "detector gate.",
        epilog="examples:\n"
        "  valle asv --real data/real/manifest.jsonl --spoof runs/demo_score --out runs/asv\n"
        "  valle asv --real real.jsonl --spoof clones.jsonl --detector models/lfcc_gmm --out runs/asv_cm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--real", type=Path, required=True, help="manifest of real speech (id/audio/text/speaker)")
    p.add_argument(
        "--spoof",
        type=Path,
        required=True,
        help="JSONL of clones (audio, speaker = cloned target[, id]) or a `valle score` run directory",
    )
    p.add_argument("--detector", type=Path, default=None, help="detector directory (valle detect train)")
    p.add_argument(
        "--cm-threshold",
        type=float,
        default=None,
        help="the detector's decision threshold (default: its stored EER threshold, else this run's CM EER)",
    )
    p.add_argument("--encoder", default=DEFAULT_SPEAKER, choices=("campplus", "resemblyzer", "ecapa"))
    p.add_argument("--encoder-model", default=None, help="ecapa: local SpeechBrain model dir")
    p.add_argument("--enrol-per-speaker", type=int, default=3)
    p.add_argument(
        "--far", type=float, default=0.01, help="FAR on non-target trials for the second threshold"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0 = no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = AsvConfig(
        encoder=args.encoder,
        encoder_model=args.encoder_model,
        enrol_per_speaker=args.enrol_per_speaker,
        far=args.far,
        seed=args.seed,
        bootstrap=args.bootstrap,
        batch_size=args.batch_size,
        device=args.device,
    )
    real_rows = read_real_rows(args.real)
    spoof_rows, spoof_source = read_spoof_rows(args.spoof)
    if args.cm_threshold is not None and args.detector is None:
        raise ValueError("--cm-threshold needs --detector")
    report, table = run_asv(real_rows, spoof_rows, config, cm=args.detector, cm_threshold=args.cm_threshold)
    report["inputs"] = {"real": str(args.real), "spoof": spoof_source}
    report_path, table_path = write_outputs(args.out, report, table)
    print(format_report(report))
    print(f"report: {report_path}\ntrials: {table_path}")
    return 0
