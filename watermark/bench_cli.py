"""`valle watermark-bench`: run the attack bank against a watermark backend on a folder of audio.

Writes ``per_clip.parquet`` (one row per clip x attack), ``per_attack.parquet`` (TPR at fixed
clean-speech FPRs, AUC, bit accuracy per attack) and ``summary.json`` (thresholds, clean FPR,
quality, speed), and prints the per-attack table. Definitions: :mod:`watermark.robustness`.
Audio is read with soundfile (mixed to mono, float32, at its own rate) so this module stays a leaf.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from secrets import token_bytes

import numpy as np
import soundfile as sf

from watermark import load_watermarker
from watermark.attacks import attack_bank, select, skipped_attacks
from watermark.base import MIN_MARK_SECONDS, SILENCE_PEAK
from watermark.keys import WatermarkKey, load_key
from watermark.robustness import markdown_table, run_battery

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "watermark-bench",
        help="attack a watermark backend with noise, codecs, filters, speed and edits; report TPR/AUC",
        description="Mark every clip, apply each attack to the marked clip and to its unmarked original, "
        "and detect both. Detection thresholds are fixed once on the clean originals (FPR 1%% and 0.1%%) "
        "and used unchanged under every attack; AUC compares attacked marked vs attacked unmarked audio.",
        epilog="examples:\n"
        "  valle watermark-bench --audio ../shared/data/real_speech/manifest.jsonl --out runs/wm_bench\n"
        "  valle watermark-bench --audio clips/ --max-clips 5 --attacks mp3_32k,echo --out /tmp/wm_bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--audio", type=Path, required=True, help="folder of audio files, or a JSONL manifest")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; files overwritten)")
    p.add_argument("--watermark", default="perth", help="backend: perth (default) | keyed | audioseal")
    p.add_argument(
        "--watermark-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, repeatable (e.g. generator=audioseal_wm_16bits.pth threshold=0.7)",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="keyed backend: key to mark with (default: a fresh random key, kept in memory only)",
    )
    p.add_argument("--max-clips", type=int, default=None, help="use at most this many clips (in order)")
    p.add_argument("--attacks", default=None, help="comma-separated attack names (default: the whole bank)")
    p.add_argument(
        "--encodec-weights", type=Path, default=None, help="EnCodec 24 kHz state dict (enables it)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for noise attacks and random payloads")
    p.add_argument("--no-quality", action="store_true", help="skip PESQ/STOI/SNR of marked vs original")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_clips is not None and args.max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1, got {args.max_clips}")
    attacks = select(attack_bank(args.encodec_weights, seed=args.seed), args.attacks)
    clips = load_clips(args.audio, args.max_clips)
    options = parse_options(args.watermark_arg)
    if args.watermark == "keyed":  # any key measures the same robustness; the secret is never written
        options["key"] = load_key(args.key_file) if args.key_file else WatermarkKey("bench", token_bytes(32))
    wm = load_watermarker(args.watermark, device=args.device, **options)
    per_clip, per_attack, thresholds = run_battery(
        wm, clips, attacks, with_quality=not args.no_quality, seed=args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    per_clip.to_parquet(args.out / "per_clip.parquet", index=False)
    per_attack.to_parquet(args.out / "per_attack.parquet", index=False)
    summary = summarize_run(wm, per_clip, per_attack, thresholds)
    summary["audio"] = str(args.audio)
    summary["skipped_attacks"] = skipped_attacks(args.encodec_weights)
    (args.out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    print(markdown_table(per_attack))
    print(_clean_line(thresholds))
    if q := summary["quality"]:
        print(
            f"quality (marked vs original, mean): SNR {q['snr_db']:.1f} dB, PESQ-WB {q['pesq_wb']:.2f}, "
            f"STOI {q['stoi']:.3f}"
        )
    print(f"wrote {args.out}/per_clip.parquet, per_attack.parquet, summary.json")
    return 0


def summarize_run(wm, per_clip, per_attack, thresholds: dict) -> dict:
    """The run's headline figures: card, sizes, thresholds, clean FPR, quality and speed."""
    base = per_clip[per_clip["attack"] == "none"]
    seconds = float(base["seconds"].sum())
    qcols = [c for c in ("snr_db", "pesq_wb", "stoi") if c in base]
    return {
        "watermarker": wm.card(),
        "payload_bits": int(wm.payload_bits),
        "n_clips": len(base),
        "audio_seconds": seconds,
        "attacks": [a for a in per_attack["attack"] if a != "none"],
        "thresholds": thresholds,
        "quality": {c: float(np.nanmean(base[c])) for c in qcols},  # empty with --no-quality
        "embed_seconds_per_audio_second": float(base["embed_s"].sum()) / seconds,
        "detect_seconds_per_audio_second": float(base["detect_s"].sum()) / seconds,
        "per_attack": per_attack.to_dict(orient="records"),
    }


def parse_options(items: list[str]) -> dict:
    """``["threshold=0.7", "generator=a.pth"]`` -> ``{"threshold": 0.7, "generator": "a.pth"}``: values
    that parse as JSON numbers/booleans are converted, everything else stays a string."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--watermark-arg expects KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options[key.strip()] = parsed if isinstance(parsed, int | float | bool) else value
    return options


def load_clips(source: Path, max_clips: int | None = None) -> list[tuple[np.ndarray, int, str]]:
    """``(wav [N] float32 mono, sr, id)`` from a folder of audio files (sorted by name) or a JSONL
    manifest whose rows have an ``audio`` path relative to the manifest's folder (and maybe ``id``)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {source}")
        items = [(p, p.stem) for p in files]
    elif source.is_file():
        items = _manifest_items(source)
    else:
        raise FileNotFoundError(f"audio source not found: {source}")
    clips, problems = [], []
    for path, clip_id in items[:max_clips]:
        try:
            wav, sr = read_mono(path)
        except (ValueError, FileNotFoundError) as err:  # a manifest row's missing file is listed too
            problems.append(str(err))
            continue
        if why := clip_problem(wav, sr):
            problems.append(f"{path}: {why}")
        clips.append((wav, sr, clip_id))
    if problems:  # all of them, before any work: a late failure would throw away the finished clips
        raise ValueError(f"{len(problems)} unusable clip(s) in {source}:\n  " + "\n  ".join(problems))
    return clips


MAX_CLIPPED = 0.01  # share of full-scale samples above which a clip is not natural speech


def clip_problem(wav: np.ndarray, sr: int) -> str | None:
    """Why a clip cannot be used to mark or to fix a clean-speech threshold, or None. Non-finite,
    too short or silent clips cannot be marked; a clip with many full-scale samples (a clipped tone) is
    not speech, and as a clean clip it would set the false-alarm threshold for every attack."""
    if not np.all(np.isfinite(wav)):
        return f"{int((~np.isfinite(wav)).sum())} NaN/Inf samples"
    if len(wav) < MIN_MARK_SECONDS * sr:
        return f"{len(wav)} samples ({len(wav) / sr:.3f} s), under the {MIN_MARK_SECONDS:g} s a mark needs"
    peak = float(np.abs(wav).max())
    if peak < SILENCE_PEAK:
        return "silent (peak below -80 dBFS): nothing a mark could be in"
    clipped = float(np.mean(np.abs(wav) >= 0.999))
    if clipped > MAX_CLIPPED:
        return f"{100 * clipped:.1f}% of samples at full scale: clipped, not natural speech"
    return None


def _manifest_items(manifest: Path) -> list[tuple[Path, str]]:
    root = manifest.resolve().parent
    items = []
    with open(manifest) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{manifest}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict) or not isinstance(row.get("audio"), str):
                raise ValueError(f"{manifest}:{lineno}: row has no 'audio' path")
            path = (root / row["audio"]).resolve()
            if not path.is_relative_to(root):
                raise ValueError(
                    f"{manifest}:{lineno}: audio path {row['audio']!r} escapes the manifest's folder"
                )
            items.append((path, str(row.get("id", path.stem))))
    if not items:
        raise ValueError(f"{manifest}: no rows")
    return items


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    """soundfile read, channels averaged, float32."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if wav.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    return wav.mean(axis=1).astype(np.float32), int(sr)


def _clean_line(thresholds: dict) -> str:
    parts = []
    for key, t in thresholds.items():
        if key == "backend":
            continue
        note = "" if t["resolvable"] else f", not resolvable with n={t['n_clean']}"
        parts.append(
            f"{key}: threshold {t['threshold']:.4f}, "
            f"clean FPR {t['false_positives']}/{t['n_clean']} in-sample, "
            f"{t['fpr_clean_loo']:.3f} leave-one-out, <= {t['fpr_clean_upper95']:.3f} (95% upper){note}"
        )
    return "clean real speech: " + "; ".join(parts)


def jsonable(obj):
    """NaN/inf -> None and numpy scalars -> Python, so summary.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
