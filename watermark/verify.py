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
  the ledger entries whose payload equals the decoded one, i.e. which generation the copy came from
  (for the keyed mark, every entry's payload is scored against the audio's soft payload bits, so a
  copy with a few wrong decoded bits is still traced; each match gives the chance of a false link).
- ``watermark.p_value`` (keyed backend): the analytic bound on the probability that audio *not*
  marked with this key looks this marked; other backends state no false-alarm rate, and ``reasons``
  says so.

Verdicts: ``authentic`` (valid signature + exact hash + mark detected), ``altered_copy`` (mark detected
and tied by payload to a signed manifest or ledger entry, but the bytes differ), ``marked_unverified``
(mark detected with a stated false-alarm rate, no valid manifest for these bytes), ``inconclusive``
(the same, but the detector states no false-alarm rate: Perth's or AudioSeal's threshold fires on
some real speech under attack, so its "detected" alone never makes a file "marked"),
``not_in_ledger`` (a ledger was given, it is intact,
and this file's signed manifest is not in it), ``ledger_invalid`` (a ledger was given and it is damaged:
unparseable, truncated, a line deleted or edited, a bad signature; nothing can be "in" it),
``tampered_manifest`` (the manifest's signature is invalid), ``not_marked``, ``unreadable``.
``reasons`` says why, in sentences. An auditor who passes a ledger asks "is this file in this intact
ledger", so a damaged ledger decides the verdict instead of being a footnote in the reasons.

A presence-only backend (Perth) cannot tie a changed copy to one generation: such a copy is
``inconclusive`` with a reason saying so. Audio is read with soundfile (mono mixdown, float32);
this module imports nothing from ``valle``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from watermark.base import MIN_MARK_SECONDS, SILENCE_PEAK, Watermarker, WatermarkError, carries_payload
from watermark.keys import KeyRing, UnknownKeyIdError
from watermark.ledger import Ledger, ledger_matches_for_payload
from watermark.provenance import (
    SCHEMA,
    ProvenanceError,
    file_sha256,
    manifest_problem,
    payload_from_str,
    payload_to_str,
)

VERDICTS = (
    "authentic",
    "altered_copy",
    "marked_unverified",
    "inconclusive",
    "not_in_ledger",
    "ledger_invalid",
    "tampered_manifest",
    "not_marked",
    "unreadable",
)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aiff", ".aif")
UNKNOWN_KEY_ID = "unknown_key_id"


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``(wav [N] float32 mono, sample rate)``; channels are averaged. Raises ValueError when unreadable."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as err:
        raise ValueError(f"cannot read audio {path}: {err}") from None
    if data.shape[0] < MIN_MARK_SECONDS * sr:  # a header with a few samples is not audio a mark could be in
        raise ValueError(
            f"audio {path} has {data.shape[0]} samples ({data.shape[0] / sr:.4f} s), under the "
            f"{MIN_MARK_SECONDS:g} s any watermark needs"
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
    if mark.get("p_value") is None:  # "marked" only on evidence with a stated false-alarm rate
        return (
            "inconclusive",
            f"the {mark.get('backend', 'watermark')} detector fired, but it states no false-alarm rate and "
            "no valid manifest describes these exact bytes: a lead, not evidence of a mark",
        )
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
    if det.p_value is not None:  # the keyed mark states its false-alarm probability
        v["watermark"]["p_value"] = float(f"{det.p_value:.3g}")
    else:
        reasons.append(
            f"the {watermarker.name} decision threshold has no stated false-alarm rate under attack: "
            "treat its 'detected' as a lead, not as proof (the keyed backend reports a p-value)"
        )
    if man:
        claimed_backend = (
            (man.get("watermark") or {}).get("name") if isinstance(man.get("watermark"), dict) else None
        )
        if claimed_backend and claimed_backend != watermarker.name:
            reasons.append(
                f"the manifest says the {claimed_backend} backend marked it; checked with {watermarker.name}"
            )
        if decoded is not None and man.get("payload") is not None:
            try:
                claimed = payload_from_str(man.get("payload"))
            except ProvenanceError:
                claimed = None  # key_check below says the manifest payload is malformed
            v["payload_matches_manifest"] = carries_payload(watermarker, det, claimed)
            if not v["payload_matches_manifest"]:
                reasons.append(
                    "the decoded payload differs from the manifest's: the manifest describes another file"
                )
    # with soft payload scores the claimed payload was tested on the audio above; the hard-decoded bits
    # of a short or attacked clip may differ from it without meaning anything
    observed = None if det.payload_soft is not None else decoded
    v["payload_matches_key"], why = key_check(man, keyring, observed)
    if why:
        reasons.append(why)
    if book is not None and not v["ledger_problems"] and not v["hash_match"]:
        # a backend with soft payload scores (keyed) scores every entry's payload against the audio:
        # an attacked copy with a few wrong hard bits is still tied to its entry
        soft = det.payload_soft if det.detected and hasattr(watermarker, "payload_z") else None
        score = None if soft is None else (lambda bits: watermarker.payload_z(soft, bits))
        v["ledger_matches"] = ledger_matches_for_payload(book.entries(), decoded, public_key, score=score)
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


__all__ = [
    "SCHEMA",
    "VERDICTS",
    "decide_verdict",
    "find_manifest",
    "key_check",
    "read_audio",
    "verify_file",
]
