"""The auditor's check of an audio file: signed manifest, exact hash, watermark, keyed payload, ledger.

For each file the auditor learns, from the operator's *public* key alone (plus, optionally, the
ledger and the watermark keys):

- ``signature_valid``: the manifest (sidecar ``<stem>.manifest.json`` or ``<stem>.json``, an explicit
  one, or the ledger entry with this file's SHA-256) carries a valid Ed25519 signature by that key;
- ``hash_match``: the file's bytes are exactly those the manifest describes (SHA-256);
- ``watermark``: what the detector says (score, decision, decoded payload bits when the backend has any);
- ``payload_matches_manifest`` / ``payload_matches_key``: the decoded payload is the manifest's, and is
  the HMAC payload its ``key_id`` derives for its utterance (``watermark.keys``);
- ``ledger_matches``: when no manifest describes these exact bytes (re-encoded, trimmed, edited copy),
  the ledger entries whose payload equals the decoded one, i.e. which generation the copy came from.

Verdicts: ``authentic`` (valid signature + exact hash + mark detected), ``altered_copy`` (mark detected
and tied by payload to a signed manifest or ledger entry, but the bytes differ), ``marked_unverified``
(mark detected, no valid manifest for these bytes), ``not_in_ledger`` (a ledger was given, it is intact,
and this file's signed manifest is not in it), ``ledger_invalid`` (a ledger was given and it is damaged:
unparseable, truncated, a line deleted or edited, a bad signature; nothing can be "in" it),
``tampered_manifest`` (the manifest's signature is invalid), ``not_marked``, ``unreadable``.
``reasons`` says why, in sentences. An auditor who passes a ledger asks "is this file in this intact
ledger", so a damaged ledger decides the verdict instead of being a footnote in the reasons.

A presence-only backend (Perth) cannot tie a changed copy to one generation: such a copy is
``marked_unverified`` with a reason saying so. Audio is read with soundfile (mono mixdown, float32);
this module imports nothing from ``valle``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from watermark.base import Watermarker, WatermarkError
from watermark.keys import KeyRing, UnknownKeyIdError
from watermark.provenance import (
    SCHEMA,
    Ledger,
    ProvenanceError,
    file_sha256,
    key_fingerprint,
    ledger_matches_for_payload,
    manifest_problem,
    payload_from_str,
    payload_to_str,
)

VERDICTS = (
    "authentic",
    "altered_copy",
    "marked_unverified",
    "not_in_ledger",
    "ledger_invalid",
    "tampered_manifest",
    "not_marked",
    "unreadable",
)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aiff", ".aif")
SILENCE_PEAK = 1e-4  # below this peak there is nothing a watermark could survive in
UNKNOWN_KEY_ID = "unknown_key_id"


MIN_SECONDS = 0.25  # the shortest clip a backend here marks (Perth's minimum)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``(wav [N] float32 mono, sample rate)``; channels are averaged. Raises ValueError when unreadable."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
        raise ValueError(f"cannot read audio {path}: {err}") from None
    if data.shape[0] < MIN_SECONDS * sr:  # a header with a few samples is not audio a mark could be in
        raise ValueError(
            f"audio {path} has {data.shape[0]} samples ({data.shape[0] / sr:.4f} s), under the "
            f"{MIN_SECONDS:g} s any watermark needs"
        )
    wav = data.mean(axis=1).astype(np.float32)
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"audio {path} holds NaN or infinite samples")
    return wav, int(sr)


def find_manifest(audio_path: str | Path, manifest: dict | str | Path | None = None) -> tuple:
    """``(manifest dict | None, source | None, note | None)`` for ``audio_path``.

    ``manifest`` may be a dict, a path (must exist and be JSON: else FileNotFoundError/ValueError), or
    None: then ``<stem>.manifest.json`` and ``<stem>.json`` beside the audio are tried. A sidecar that
    is not JSON is returned as ``{}`` with a note (it cannot be trusted, so it counts as tampered); a
    JSON sidecar without ``schema``/``signature`` (e.g. ``valle synth``'s generation record) is skipped
    unless it holds a signed manifest under ``"provenance"``.
    """
    if isinstance(manifest, dict):
        return manifest, "given", None
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"manifest {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"manifest {path} must hold a JSON object")
        return _unwrap(data), str(path), None
    audio_path = Path(audio_path)
    notes = []
    for path in (audio_path.with_suffix(".manifest.json"), audio_path.with_suffix(".json")):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}, str(path), f"sidecar manifest {path.name} is not valid JSON (damaged or edited)"
        if isinstance(data, dict):
            data = _unwrap(data)
            if "schema" in data or "signature" in data:
                return data, str(path), None
        notes.append(f"{path.name} is not a provenance manifest")
    return None, None, "; ".join(notes) or None


def _unwrap(data: dict) -> dict:
    inner = data.get("provenance")
    return inner if isinstance(inner, dict) and "schema" not in data else data


def key_check(
    manifest: dict | None, keyring: KeyRing | None, decoded: tuple[int, ...] | None
) -> tuple[bool | str | None, str | None]:
    """Is the payload (the manifest's, and the decoded one if any) the HMAC payload of the manifest's key?

    ``(True | False | "unknown_key_id" | None, reason | None)``; None when nothing can be checked
    (no key ring, no manifest, no payload on either side, no key_id).
    """
    if keyring is None or not manifest:
        return None, None
    try:
        claimed = payload_from_str(manifest.get("payload"))
    except ProvenanceError as err:
        return False, f"manifest payload is malformed: {err}"
    observed = [p for p in (claimed, decoded) if p is not None]
    if not observed:
        return None, "no payload to check against the watermark key (presence-only backend)"
    key_id = manifest.get("key_id")
    if not key_id:
        return None, "manifest names no key_id, so its payload cannot be checked against a key"
    try:
        key = keyring.get(key_id)
    except UnknownKeyIdError as err:
        return UNKNOWN_KEY_ID, str(err)
    uid, model = manifest.get("utterance_id"), manifest.get("model_sha256")
    if not isinstance(uid, str) or not uid or not isinstance(model, str):
        return False, "manifest lacks utterance_id/model_sha256, so no keyed payload can be derived"
    if any(p != key.payload(uid, model, len(p)) for p in observed):
        return False, f"payload is not the one watermark key {key_id!r} derives for utterance {uid!r}"
    return True, None


def decide_verdict(v: dict) -> tuple[str, str]:
    """The verdict and its one-sentence reason, from the facts gathered in a verdict dict."""
    mark = v.get("watermark") or {}
    if v.get("unreadable"):
        return "unreadable", "the audio cannot be read"
    if v.get("ledger_problems"):
        return "ledger_invalid", "the given ledger is damaged, so no file can be shown to be in it"
    if v.get("signature_valid") is False:
        return (
            "tampered_manifest",
            "the manifest's signature is invalid: it was altered or not signed by this key",
        )
    if not mark.get("detected"):
        return "not_marked", "no watermark detected"
    key_bad = v.get("payload_matches_key") is False
    if v.get("signature_valid") and v.get("hash_match"):
        if v.get("payload_matches_manifest") is False or key_bad:
            return "marked_unverified", "the file matches a signed manifest but its payload does not"
        if v.get("in_ledger") is False:
            return "not_in_ledger", "signed and marked, but its manifest is not in the given ledger"
        return "authentic", "signed manifest, exact file hash and watermark all check out"
    ledger = [m for m in v.get("ledger_matches") or [] if m.get("signature_valid", True)]
    if not key_bad and (
        (v.get("signature_valid") and v.get("payload_matches_manifest"))
        or (ledger and not v.get("hash_match"))
    ):
        return "altered_copy", "marked and tied by payload to a signed generation, but the bytes differ"
    return "marked_unverified", "marked, but no valid manifest describes these exact bytes"


def verify_file(
    audio_path: str | Path,
    *,
    public_key: Ed25519PublicKey,
    manifest: dict | str | Path | None = None,
    ledger: str | Path | Ledger | None = None,
    watermarker: Watermarker,
    keyring: KeyRing | None = None,
) -> dict:
    """Check one file; returns the verdict dict described in the module docstring (JSON-serialisable)."""
    path = Path(audio_path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found")
    reasons: list[str] = []
    sha = file_sha256(path)
    v: dict = {
        "file": str(path),
        "audio_sha256": sha,
        "manifest_found": False,
        "manifest_source": None,
        "signature_valid": None,
        "signer": None,
        "hash_match": None,
        "in_ledger": None,
        "watermark": None,
        "payload_matches_manifest": None,
        "payload_matches_key": None,
        "ledger_matches": None,
        "ledger_problems": None,
    }
    man, source, note = find_manifest(path, manifest)
    if note:
        reasons.append(note)
    book = Ledger(ledger) if isinstance(ledger, str | Path) else ledger
    if book is not None:
        try:  # signatures too: the hash chain alone cannot see an edited last line
            v["ledger_problems"] = book.check(public_key)
        except OSError as err:
            v["ledger_problems"] = [f"cannot be read: {err}"]
        if v["ledger_problems"]:
            reasons.append(f"ledger {book.path} is damaged: {'; '.join(v['ledger_problems'])}")
        if man is None and not v["ledger_problems"]:  # the ledger holds signed manifests too
            hits = book.find_by_sha256(sha)
            if hits:
                man, source = hits[-1].manifest, f"{book.path} line {hits[-1].line}"
    if man is not None:
        v.update(manifest_found=True, manifest_source=source, signer=man.get("signer"))
        problem = manifest_problem(man, public_key)
        v["signature_valid"] = problem is None
        if problem:
            reasons.append(problem)
        v["hash_match"] = man.get("audio_sha256") == sha if man else None
        if v["hash_match"] is False:
            described = man.get("audio_file")
            reasons.append(
                "the file's sha256 differs from the manifest's: the manifest describes another file"
                + (f" ({described})" if described and described != path.name else "")
                + " or this one was changed (re-encoded, trimmed, edited) after signing"
            )
        if book is not None and not v["ledger_problems"] and man.get("signature"):
            v["in_ledger"] = any(e.manifest.get("signature") == man["signature"] for e in book.entries())
            if not v["in_ledger"]:
                reasons.append("the manifest is not in the given ledger")
    else:
        reasons.append("no provenance manifest found for this file")

    try:
        wav, sr = read_audio(path)
    except ValueError as err:
        v["unreadable"] = True
        return _finish(v, [*reasons, str(err)])
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        v["watermark"] = {"backend": watermarker.name, "score": None, "detected": False, "payload": None}
        return _finish(v, [*reasons, "the audio is silent: there is nothing a mark could be in"])
    try:
        det = watermarker.detect(wav, sr)
    except (WatermarkError, ValueError, RuntimeError) as err:
        v["unreadable"] = True
        return _finish(v, [*reasons, f"the {watermarker.name} detector could not process the audio: {err}"])
    decoded = tuple(int(b) for b in det.payload) if det.payload is not None else None
    v["watermark"] = {
        "backend": watermarker.name,
        "score": round(float(det.score), 4),
        "detected": bool(det.detected),
        "threshold": float(watermarker.threshold),
        "payload": payload_to_str(decoded),
    }
    if man:
        claimed_backend = (
            (man.get("watermark") or {}).get("name") if isinstance(man.get("watermark"), dict) else None
        )
        if claimed_backend and claimed_backend != watermarker.name:
            reasons.append(
                f"the manifest says the {claimed_backend} backend marked it; checked with {watermarker.name}"
            )
        if decoded is not None and man.get("payload") is not None:
            v["payload_matches_manifest"] = man.get("payload") == payload_to_str(decoded)
            if not v["payload_matches_manifest"]:
                reasons.append(
                    "the decoded payload differs from the manifest's: the manifest describes another file"
                )
    v["payload_matches_key"], why = key_check(man, keyring, decoded)
    if why:
        reasons.append(why)
    if book is not None and not v["ledger_problems"] and not v["hash_match"]:
        v["ledger_matches"] = ledger_matches_for_payload(book.entries(), decoded, public_key)
        if decoded is None:
            reasons.append(
                "the backend carries no payload, so the ledger cannot say which generation this is"
            )
        elif v["ledger_matches"]:
            ids = ", ".join(str(m["utterance_id"]) for m in v["ledger_matches"])
            reasons.append(f"the decoded payload matches ledger entries: {ids}")
    return _finish(v, reasons)


def _finish(v: dict, reasons: list[str]) -> dict:
    verdict, why = decide_verdict(v)
    v.pop("unreadable", None)
    v["verdict"] = verdict
    v["reasons"] = [why, *reasons]
    return v


# ---------------------------------------------------------------- CLI


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
        "altered_copy,\nmarked_unverified, not_in_ledger, tampered_manifest, not_marked or unreadable, with "
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
        help="detector backend (perth|audioseal; default: the manifest's, else perth)",
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
    from watermark import DEFAULT_WATERMARKER, WATERMARKERS
    from watermark.provenance import load_public_key

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
            name = claimed if claimed in WATERMARKERS else DEFAULT_WATERMARKER
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
            score = (v["watermark"] or {}).get("score")
            print(
                f"{v['verdict']:<18} {v['file']}"
                + (f"  (mark score {score:.3f})" if score is not None else "")
            )
            for r in v["reasons"]:
                print(f"    - {r}")
        counts = {k: sum(v["verdict"] == k for v in verdicts) for k in VERDICTS}
        print(", ".join(f"{n} {k}" for k, n in counts.items() if n), file=sys.stderr)
    return 0 if all(v["verdict"] == "authentic" for v in verdicts) else 1


@functools.cache
def _load_detector(name: str) -> Watermarker:
    """One detector per backend per process (Perth takes seconds to load; batch audits reuse it)."""
    from watermark import load_watermarker

    # perth prints "loaded PerthNet ..." to stdout, which would corrupt `--json` output for scripts
    with contextlib.redirect_stdout(sys.stderr):
        return load_watermarker(name)


def run_keys_new(args) -> int:
    """``valle keys new``: prints file paths and the public key fingerprint, never a secret."""
    from watermark.keys import check_key_id, generate_key
    from watermark.provenance import generate_signing_key

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


__all__ = [
    "SCHEMA",
    "VERDICTS",
    "add_parser",
    "collect_audio",
    "decide_verdict",
    "find_manifest",
    "key_check",
    "read_audio",
    "run",
    "run_keys_new",
    "verify_file",
]
