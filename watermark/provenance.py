"""Signed provenance: a manifest per generated file, signed with Ed25519, and an append-only ledger.

A watermark says "some marked generator made this"; a manifest says *which* generation produced
*exactly these bytes*: the file's SHA-256, the utterance id, the keyed payload (``watermark.keys``), the
model's weights hash, generator and sampling settings and the watermark backend's card. The operator
signs it with an Ed25519 key (RFC 8032, via ``cryptography``); an auditor checks it with the public key.

Signature: Ed25519 over the canonical JSON of the manifest without its ``signature`` field (the
``signer`` field, the SHA-256 of the raw 32-byte public key, is included and so also protected).
Canonical JSON = ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`` encoded as UTF-8 (the same shape as RFC 8785 for the strings, integers and
shortest-round-trip floats that manifests hold).

Ledger: one JSON object per line, ``{"seq": n, "prev": sha256(previous line), "manifest": {...}}``
(``seq`` counts from 1; ``prev`` is the SHA-256 hex of the previous line's bytes without its newline,
``"0" * 64`` for the first line). Editing a line breaks the next line's ``prev``; deleting or
reordering lines breaks ``seq`` and ``prev``; an interrupted write leaves a last line without newline.
Editing the *last* line is caught only by its manifest signature (``check(public_key)``), and dropping
whole last lines only by comparing ``head()`` with a copy kept elsewhere: that is what a hash chain
without an external anchor can promise.

Concurrency: one writer per ledger file (one ledger per run directory or per rank). ``append`` holds an
exclusive ``flock`` while it reads the tail and writes, so accidental concurrent writers on one local
file stay consistent, but network filesystems do not honour ``flock`` reliably.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from watermark.base import WatermarkError

SCHEMA = "valle-provenance/1"
GENESIS = "0" * 64
# soft payload score that links a copy to a ledger entry: exp(-z^2 / 2) = 3.7e-6 per unrelated entry.
# (Entries marked with the same key score up to ~0.35 z of the true one: the strongest match is first.)
LINK_Z = 5.0
_UNSIGNED = ("signature",)


class ProvenanceError(WatermarkError):
    """A signing key, manifest or ledger that cannot be used as asked."""


class LedgerError(ProvenanceError):
    """A ledger whose chain is broken (``append`` refuses to extend it)."""


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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# ---------------------------------------------------------------- ledger


@dataclass(frozen=True)
class LedgerEntry:
    line: int  # 1-based line number in the file
    seq: int
    prev: str
    manifest: dict
    line_sha256: str  # sha256 of this line's bytes (without newline): the next line's ``prev``


class Ledger:
    """Append-only JSONL of signed manifests with a SHA-256 hash chain (single writer per file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: tuple[tuple[int, int], list[LedgerEntry], list[str]] | None = None
        self._signatures: tuple[tuple, list[str]] | None = None  # (file stamp + key, bad signatures)
        # (size, mtime_ns, seq, line sha256) right after this object's last append: while the file is
        # unchanged since then, the next append need not re-read the whole ledger (O(1), not O(n))
        self._tail: tuple[int, int, int, str] | None = None

    def append(self, signed_manifest: dict) -> LedgerEntry:
        """Add one signed manifest; fsync'd before returning. Refuses a ledger whose chain is broken."""
        if not isinstance(signed_manifest, dict) or not signed_manifest.get("signature"):
            raise ProvenanceError("the ledger holds signed manifests only (sign_manifest first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "ab+") as f:
            _lock(f)
            try:
                st = os.fstat(f.fileno())
                if self._tail is not None and self._tail[:2] == (st.st_size, st.st_mtime_ns):
                    seq, prev = self._tail[2] + 1, self._tail[3]
                else:  # first append by this object, or someone else wrote: check the whole chain
                    entries, problems = self._parse(self._read(f))
                    if problems:
                        raise LedgerError(
                            f"refusing to append to ledger {self.path}: {'; '.join(problems)}. "
                            "Keep the damaged file for audit and start a new ledger."
                        )
                    seq = entries[-1].seq + 1 if entries else 1
                    prev = entries[-1].line_sha256 if entries else GENESIS
                record = {"seq": seq, "prev": prev, "manifest": signed_manifest}
                line = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                data = line.encode("utf-8")
                f.seek(0, os.SEEK_END)
                f.write(data + b"\n")
                f.flush()
                os.fsync(f.fileno())
                digest = hashlib.sha256(data).hexdigest()
                st = os.fstat(f.fileno())
                self._tail = (st.st_size, st.st_mtime_ns, seq, digest)
            finally:
                _unlock(f)
        if created:
            _fsync_dir(self.path.parent)  # the new file's directory entry must survive a crash too
        self._cache = None
        return LedgerEntry(seq, seq, prev, signed_manifest, digest)

    def entries(self) -> list[LedgerEntry]:
        """Every line that parses as a ledger record (damaged lines are skipped; ``check`` names them)."""
        return self._load()[0]

    def check(self, public_key: Ed25519PublicKey | None = None) -> list[str]:
        """Problems found, one sentence each naming the line; [] for an intact ledger.

        With ``public_key``, every manifest's signature is checked as well (this also catches an edited
        last line, which the hash chain alone cannot).
        """
        entries, problems = self._load()
        problems = list(problems)
        if public_key is not None:
            # one pass per (file state, key): verifying many files against one ledger checks each
            # signature once, not once per file
            raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            key = (self._cache[0], raw) if self._cache else None
            if key is None or self._signatures is None or self._signatures[0] != key:
                bad = [
                    f"line {e.line}: {why}"
                    for e in entries
                    if (why := manifest_problem(e.manifest, public_key))
                ]
                self._signatures = (key, bad)
            problems += self._signatures[1]
        return problems

    def head(self) -> str:
        """SHA-256 of the last intact line (``"0" * 64`` when empty): record it elsewhere as an anchor."""
        entries = self.entries()
        return entries[-1].line_sha256 if entries else GENESIS

    def find_by_sha256(self, audio_sha256: str) -> list[LedgerEntry]:
        return [e for e in self.entries() if e.manifest.get("audio_sha256") == audio_sha256]

    def _load(self) -> tuple[list[LedgerEntry], list[str]]:
        if not self.path.is_file():
            raise FileNotFoundError(f"ledger {self.path} not found")
        st = self.path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if self._cache is None or self._cache[0] != stamp:
            entries, problems = self._parse(self.path.read_bytes())
            self._cache = (stamp, entries, problems)
        return self._cache[1], self._cache[2]

    @staticmethod
    def _read(f) -> bytes:
        f.seek(0)
        return f.read()

    def _parse(self, data: bytes) -> tuple[list[LedgerEntry], list[str]]:
        entries: list[LedgerEntry] = []
        problems: list[str] = []
        if not data:
            return entries, problems
        lines = data.split(b"\n")
        truncated = lines[-1] != b""  # a complete ledger ends with a newline
        if not truncated:
            lines = lines[:-1]
        prev_hash, prev_seq = GENESIS, 0
        for i, raw in enumerate(lines, start=1):
            last = i == len(lines)
            digest = hashlib.sha256(raw).hexdigest()
            record = _parse_record(raw)
            if isinstance(record, str):
                if last and truncated and raw.startswith(b"{"):  # a record cut short, not foreign bytes
                    problems.append(
                        f"line {i}: truncated last line ({len(raw)} bytes, no newline): an interrupted write"
                    )
                else:
                    problems.append(f"line {i}: {record} (edited or corrupted)")
                prev_hash, prev_seq = digest, prev_seq + 1
                continue
            if last and truncated:
                problems.append(f"line {i}: last line has no newline: an interrupted write")
            seq, prev = record["seq"], record["prev"]
            if seq != prev_seq + 1:
                problems.append(f"line {i}: seq {seq} follows seq {prev_seq} (lines deleted or reordered)")
            if prev != prev_hash:
                problems.append(
                    f"line {i}: hash chain broken: its prev does not match "
                    + ("the ledger start" if i == 1 else f"line {i - 1}")
                    + " (that line was edited, or lines were deleted or reordered)"
                )
            entries.append(LedgerEntry(i, seq, prev, record["manifest"], digest))
            prev_hash, prev_seq = digest, seq
        return entries, problems


def _parse_record(raw: bytes) -> dict | str:
    """The record on one line, or a short reason it is not one."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not valid JSON"
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("seq"), int) or isinstance(record.get("seq"), bool):
        return "no integer seq"
    if not isinstance(record.get("prev"), str):
        return "no prev hash"
    if not isinstance(record.get("manifest"), dict):
        return "no manifest object"
    return record


def ledger_matches_for_payload(
    entries: list[LedgerEntry],
    payload: tuple[int, ...] | str | None,
    public_key: Ed25519PublicKey | None = None,
    max_bit_errors: int = 0,
    score: Callable[[tuple[int, ...]], float] | None = None,
    min_z: float = LINK_Z,
) -> list[dict]:
    """Ledger entries whose manifest payload is within ``max_bit_errors`` bits of ``payload`` (a decoded
    mark): who this copy came from. Closest first.

    With ``score`` (a backend's soft payload score, e.g. ``KeyedWatermarker.payload_z``: a z-score,
    sub-Gaussian for payloads not in the audio) every entry's payload is scored against the audio
    instead, and entries with ``z >= min_z`` match, strongest first: this uses all of the mark's
    payload energy and survives bit errors that hard decoding makes.

    Each match: line, utterance_id, audio_sha256, created, key_id, bit_errors (hard) or payload_z
    (soft), chance (a bound on a false link: the probability that an unrelated payload lies this close,
    times the number of entries) and, with ``public_key``, signature_valid. [] for a None payload:
    presence-only marks identify no entry.
    """
    from math import comb, exp

    bits = payload if isinstance(payload, str) or payload is None else payload_to_str(payload)
    if not bits:
        return []
    out = []
    for e in entries:
        theirs = e.manifest.get("payload")
        if not isinstance(theirs, str) or len(theirs) != len(bits):
            continue
        if score is not None:
            z = score(payload_from_str(theirs))
            if z < min_z:
                continue
            link = {"payload_z": round(z, 2), "chance": min(1.0, exp(-(z**2) / 2) * len(entries))}
        else:
            errors = sum(a != b for a, b in zip(theirs, bits, strict=True))
            if errors > max_bit_errors:
                continue
            chance = sum(comb(len(bits), k) for k in range(errors + 1)) / 2 ** len(bits) * len(entries)
            link = {"bit_errors": errors, "chance": min(1.0, chance)}
        match = {
            "line": e.line,
            "utterance_id": e.manifest.get("utterance_id"),
            "audio_sha256": e.manifest.get("audio_sha256"),
            "created": e.manifest.get("created"),
            "key_id": e.manifest.get("key_id"),
            **link,
        }
        if public_key is not None:
            match["signature_valid"] = verify_manifest(e.manifest, public_key)
        out.append(match)
    return sorted(out, key=lambda m: (m.get("bit_errors", 0), -m.get("payload_z", 0.0)))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _lock(f) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: single writer is then the caller's promise alone
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _unlock(f) -> None:
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)
