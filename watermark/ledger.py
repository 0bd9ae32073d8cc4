"""The append-only ledger of signed provenance manifests (:mod:`watermark.provenance`).

One JSON object per line, ``{"seq": n, "prev": sha256(previous line), "manifest": {...}}``
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

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from math import comb, exp
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from watermark.provenance import (
    ProvenanceError,
    manifest_problem,
    payload_from_str,
    payload_to_str,
    verify_manifest,
)

GENESIS = "0" * 64
# soft payload score that links a copy to a ledger entry: exp(-z^2 / 2) = 3.7e-6 per unrelated entry.
# (Entries marked with the same key score up to ~0.35 z of the true one: the strongest match is first.)
LINK_Z = 5.0


class LedgerError(ProvenanceError):
    """A ledger whose chain is broken (``append`` refuses to extend it)."""


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


def _lock(f) -> None:
    try:
        # POSIX only: the module stays importable elsewhere
        import fcntl
    except ImportError:  # not POSIX: single writer is then the caller's promise alone
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _unlock(f) -> None:
    try:
        # POSIX only: the module stays importable elsewhere
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
