"""``valle verify`` and ``valle keys``: the auditor's commands around :mod:`watermark.verify`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

from watermark import DEFAULT_WATERMARKER, WATERMARKERS, load_watermarker
from watermark.base import Watermarker
from watermark.keys import KeyRing, check_key_id, generate_key
from watermark.ledger import Ledger
from watermark.provenance import generate_signing_key, key_fingerprint, load_public_key
from watermark.verify import AUDIO_SUFFIXES, VERDICTS, decide_verdict, find_manifest, verify_file


def collect_audio(paths: list[str | Path]) -> list[Path]:
    """Files as given, and audio files (by suffix) under directories, sorted; errors name the path."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} not found")
    return files


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="audit audio files: signed manifest, exact hash, watermark, keyed payload, ledger",
        description="Verify generated audio with the operator's public key. Per file: verdict authentic, "
        "altered_copy,\nmarked_unverified, inconclusive, not_in_ledger, ledger_invalid, tampered_manifest, "
        "not_marked or unreadable, with "
        "reasons.\nExit status: 0 all authentic, 1 some file not authentic, 2 bad input (a damaged --ledger "
        "included).",
        epilog="examples:\n  valle verify runs/synth --public-key keys/lab.public.pem \\\n"
        "      --ledger runs/synth/ledger.jsonl\n"
        "  valle verify suspect.mp3 --public-key lab.public.pem --ledger ledger.jsonl --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="FILES_OR_DIRS", help="audio files and/or folders of them")
    p.add_argument(
        "--public-key",
        type=Path,
        required=True,
        metavar="PEM",
        help="the operator's Ed25519 public key (PEM)",
    )
    p.add_argument(
        "--ledger",
        type=Path,
        default=None,
        metavar="LEDGER",
        help="the run's ledger (JSONL of signed manifests)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="manifest for a single file (default: <stem>.manifest.json or <stem>.json beside it)",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        action="append",
        default=[],
        metavar="KEY_FILE",
        help="watermark key file to check keyed payloads (repeatable: rotated keys)",
    )
    p.add_argument(
        "--watermark",
        default=None,
        metavar="NAME",
        help="detector backend (keyed|perth|audioseal; default: the manifest's, else keyed when "
        "--key-file is given, else perth)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of verdicts")
    p.set_defaults(func=run)

    k = subparsers.add_parser(
        "keys",
        help="create watermark keys and Ed25519 signing keys",
        description="Key management. Secrets are written to files (mode 0600) and never printed.",
        epilog="example:\n  valle keys new --out keys --key-id lab-2026-01",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    n = ksub.add_parser(
        "new",
        help="write a watermark key file and an Ed25519 key pair",
        description="Writes DIR/ID.key.json (watermark HMAC key), DIR/ID.signing.pem (private, 0600) and\n"
        "DIR/ID.public.pem (give this to auditors). Prints the paths and the public key fingerprint.",
        epilog="example:\n  valle keys new --out keys --key-id lab-2026-01",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    n.add_argument("--out", type=Path, required=True, help="folder for the key files")
    n.add_argument("--key-id", required=True, help="name of the key (letters, digits, . _ -)")
    n.set_defaults(func=run_keys_new)


def run(args) -> int:
    """``valle verify``: 0 when every file is authentic, 1 otherwise; bad input raises ValueError."""
    public_key = load_public_key(args.public_key)
    files = collect_audio(args.paths)
    if args.manifest is not None and len(files) != 1:
        raise ValueError(f"--manifest describes one file, but {len(files)} files were given")
    if args.ledger is not None and not args.ledger.is_file():
        raise FileNotFoundError(f"ledger {args.ledger} not found")
    keyring = KeyRing.load(args.key_file) if args.key_file else None
    ledger = Ledger(args.ledger) if args.ledger is not None else None
    if ledger is not None:
        problems = ledger.check(public_key)
        if problems:  # every verdict would be ledger_invalid: say so once, as bad input
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(
                f"ledger {args.ledger} is damaged, so no file can be verified against it: {shown}"
            )
    loaded: dict[str, Watermarker] = {}
    verdicts = []
    for f in files:
        name = args.watermark
        if name is None:
            try:
                man = find_manifest(f, args.manifest)[0] or {}
            except ValueError:
                man = {}
            claimed = man.get("watermark", {}).get("name") if isinstance(man.get("watermark"), dict) else None
            name = claimed if claimed in WATERMARKERS else ("keyed" if keyring else DEFAULT_WATERMARKER)
        if name == "keyed":
            verdicts.append(_verify_keyed(f, args, public_key, ledger, keyring))
            continue
        if name not in loaded:
            loaded[name] = _load_detector(name)
        verdicts.append(
            verify_file(
                f,
                public_key=public_key,
                manifest=args.manifest,
                ledger=ledger,
                watermarker=loaded[name],
                keyring=keyring,
            )
        )
    if args.json:
        print(json.dumps(verdicts, indent=2))
    else:
        for v in verdicts:
            mark = v["watermark"] or {}
            evidence = (
                f"  (keyed mark p = {mark['p_value']:.2g})"
                if mark.get("p_value") is not None
                else (f"  (mark score {mark['score']:.3f})" if mark.get("score") is not None else "")
            )
            print(f"{v['verdict']:<18} {v['file']}{evidence}")
            for r in v["reasons"]:
                print(f"    - {r}")
        counts = {k: sum(v["verdict"] == k for v in verdicts) for k in VERDICTS}
        print(", ".join(f"{n} {k}" for k, n in counts.items() if n), file=sys.stderr)
    return 0 if all(v["verdict"] == "authentic" for v in verdicts) else 1


def _verify_keyed(path: Path, args, public_key, ledger, keyring: KeyRing | None) -> dict:
    """The keyed mark can only be read with its key: the manifest's key id when it names one in the
    ring, else every key of the ring, keeping the strongest evidence. Trying ``n`` keys is ``n`` tests,
    so that p-value is multiplied by ``n`` (union bound) before the decision."""
    if not keyring:
        raise ValueError("the keyed watermark can only be checked with its key: pass --key-file")
    try:
        man = find_manifest(path, args.manifest)[0] or {}
    except ValueError:
        man = {}
    named = man.get("key_id")
    ids = [named] if named in keyring else keyring.key_ids
    best = None
    for key_id in ids:
        v = verify_file(
            path,
            public_key=public_key,
            manifest=args.manifest,
            ledger=ledger,
            watermarker=_keyed_detector(keyring, key_id),
            keyring=keyring,
        )
        p = (v["watermark"] or {}).get("p_value")
        if best is None or (p is not None and p < best[0]):
            best = (p if p is not None else 1.0, v)
    p, v = best
    if len(ids) > 1 and v["watermark"]:
        v["watermark"]["p_value"] = float(f"{min(1.0, p * len(ids)):.3g}")
        v["watermark"]["keys_tried"] = len(ids)
        if v["watermark"]["detected"] and v["watermark"]["p_value"] > v["watermark"]["threshold"]:
            v["watermark"]["detected"] = False
            v = _redecide(v, f"the strongest of {len(ids)} keys is not significant once all are counted")
    return v


def _redecide(v: dict, why: str) -> dict:
    verdict, sentence = decide_verdict(v)
    v["verdict"] = verdict
    v["reasons"] = [sentence, *v["reasons"][1:], why]
    return v


@functools.cache
def _keyed_detector(keyring: KeyRing, key_id: str) -> Watermarker:
    """One detector per key per run (the ring is hashed by identity), not one per file."""
    return load_watermarker("keyed", key=keyring.get(key_id))


@functools.cache
def _load_detector(name: str) -> Watermarker:
    """One detector per backend per process (Perth takes seconds to load; batch audits reuse it)."""
    # perth prints "loaded PerthNet ..." to stdout, which would corrupt `--json` output for scripts
    with contextlib.redirect_stdout(sys.stderr):
        return load_watermarker(name)


def run_keys_new(args) -> int:
    """``valle keys new``: prints file paths and the public key fingerprint, never a secret."""
    check_key_id(args.key_id, "--key-id")
    out = Path(args.out)
    paths = (
        out / f"{args.key_id}.key.json",
        out / f"{args.key_id}.signing.pem",
        out / f"{args.key_id}.public.pem",
    )
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite existing key files: {', '.join(existing)}")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    generate_key(paths[0], args.key_id)
    signing = generate_signing_key(paths[1], paths[2])
    print(f"watermark key   {paths[0]}  (key id {args.key_id}; secret: keep private, mode 0600)")
    print(f"signing key     {paths[1]}  (Ed25519 private key: keep private, mode 0600)")
    print(f"public key      {paths[2]}  (give to auditors: valle verify --public-key)")
    print(f"fingerprint     {key_fingerprint(signing.public_key())}")
    return 0
