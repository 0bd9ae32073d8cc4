"""Signed provenance: a manifest per generated file, signed with Ed25519 (ledger: `watermark.ledger`).

A watermark says "some marked generator made this"; a manifest says *which* generation produced
*exactly these bytes*: the file's SHA-256, the utterance id, the keyed payload (``watermark.keys``), the
model's weights hash, generator and sampling settings and the watermark backend's card. The operator
signs it with an Ed25519 key (RFC 8032, via ``cryptography``); an auditor checks it with the public key.

Signature: Ed25519 over the canonical JSON of the manifest without its ``signature`` field (the
``signer`` field, the SHA-256 of the raw 32-byte public key, is included and so also protected).
Canonical JSON = ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8 (the same shape as RFC 8785 for the strings, integers and
shortest-round-trip floats that manifests hold).

The append-only ledger of signed manifests is :mod:`watermark.ledger`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from watermark.base import WatermarkError

SCHEMA = "valle-provenance/1"
_UNSIGNED = ("signature",)


class ProvenanceError(WatermarkError):
    """A signing key, manifest or ledger that cannot be used as asked."""


# ---------------------------------------------------------------- keys


def generate_signing_key(private_path: str | Path, public_path: str | Path) -> Ed25519PrivateKey:
    """Write a new Ed25519 key pair: PKCS#8 PEM private key (mode 0600), SubjectPublicKeyInfo PEM public.

    Refuses to overwrite either file (a replaced signing key would orphan every earlier manifest).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return key


def load_signing_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"signing key {path} not found")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    except (ValueError, TypeError) as err:
        # cryptography's messages describe the format problem (or a missing password), not key bytes
        raise ProvenanceError(f"signing key {path} is not a usable PEM private key: {err}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvenanceError(f"signing key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"public key {path} not found")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (ValueError, TypeError) as err:
        raise ProvenanceError(f"public key {path} is not a PEM public key: {err}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProvenanceError(f"public key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw 32-byte Ed25519 public key."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------- manifests


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def payload_to_str(payload: tuple[int, ...] | list[int] | None) -> str | None:
    """(0, 1, 1) -> "011"; None stays None (presence-only backends)."""
    if payload is None:
        return None
    if not all(b in (0, 1) for b in payload):
        raise ProvenanceError(f"payload must hold only 0/1 bits, got {tuple(payload)!r}")
    return "".join(str(int(b)) for b in payload)


def payload_from_str(bits: str | None) -> tuple[int, ...] | None:
    """ "011" -> (0, 1, 1); None stays None."""
    if bits is None:
        return None
    if not isinstance(bits, str) or not bits or set(bits) - {"0", "1"}:
        raise ProvenanceError(f"payload must be a string of 0/1 characters, got {bits!r}")
    return tuple(int(c) for c in bits)


def build_manifest(
    audio_path: str | Path,
    *,
    utterance_id: str,
    payload: tuple[int, ...] | None,
    key_id: str | None,
    model_sha256: str,
    generator: dict,
    sampling: dict,
    watermark: dict,
    created: str | None = None,
) -> dict:
    """The unsigned provenance record of one written audio file (hashes the file's bytes as they are).

    ``created`` defaults to now (UTC, ISO 8601, seconds); pass one to make manifests reproducible.
    """
    audio_path = Path(audio_path)
    if not audio_path.is_file():
        raise FileNotFoundError(f"audio file {audio_path} not found")
    if not isinstance(utterance_id, str) or not utterance_id:
        raise ProvenanceError("manifest needs a non-empty utterance_id")
    if payload is not None and key_id is None:
        raise ProvenanceError(
            f"manifest for {utterance_id!r} has a payload but no key_id it was derived with"
        )
    for name, value in (("generator", generator), ("sampling", sampling), ("watermark", watermark)):
        if not isinstance(value, dict):
            raise ProvenanceError(f"manifest field {name!r} must be a dict, got {type(value).__name__}")
    manifest = {
        "schema": SCHEMA,
        "utterance_id": utterance_id,
        "audio_file": audio_path.name,
        "audio_sha256": file_sha256(audio_path),
        "payload": payload_to_str(payload),
        "key_id": key_id,
        "model_sha256": model_sha256,
        "generator": generator,
        "sampling": sampling,
        "watermark": watermark,
        "created": created or datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    canonical_json(manifest)  # fail here, at build time, on values JSON cannot carry (NaN, objects)
    return manifest


def canonical_json(manifest: dict) -> bytes:
    """The exact bytes that are signed: the manifest without ``signature``, canonically serialised."""
    body = {k: v for k, v in manifest.items() if k not in _UNSIGNED}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ProvenanceError(f"manifest is not canonical JSON: {err}") from None
    return text.encode("utf-8")


def sign_manifest(manifest: dict, private_key: Ed25519PrivateKey) -> dict:
    """A copy of ``manifest`` with ``signer`` (public key fingerprint) and ``signature`` (base64 Ed25519)."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ProvenanceError(f"signing needs an Ed25519 private key, got {type(private_key).__name__}")
    signed = {k: v for k, v in manifest.items() if k not in _UNSIGNED}
    signed["signer"] = key_fingerprint(private_key.public_key())
    signed["signature"] = base64.b64encode(private_key.sign(canonical_json(signed))).decode("ascii")
    return signed


def manifest_problem(manifest: object, public_key: Ed25519PublicKey) -> str | None:
    """None when ``manifest`` carries a valid signature by ``public_key``; else why not (never raises)."""
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    signature = manifest.get("signature")
    if not isinstance(signature, str) or not signature:
        return "manifest is not signed (no signature field)"
    expected = key_fingerprint(public_key)
    signer = manifest.get("signer")
    if signer != expected:
        return f"manifest was signed by key {str(signer)[:16]}..., not by the given key {expected[:16]}..."
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return "manifest signature is not valid base64"
    try:
        body = canonical_json(manifest)
    except ProvenanceError as err:
        return str(err)
    try:
        public_key.verify(raw, body)
    except InvalidSignature:
        return "manifest signature does not match its content (a field was changed after signing)"
    return None


def verify_manifest(manifest: dict, public_key: Ed25519PublicKey) -> bool:
    """True only for an unmodified manifest signed by ``public_key``; False otherwise (never raises)."""
    return manifest_problem(manifest, public_key) is None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
