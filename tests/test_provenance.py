from __future__ import annotations

import base64
import hashlib
import json
import re
import stat

import pytest
from cryptography.hazmat.primitives import serialization

from watermark.ledger import GENESIS, Ledger, LedgerError, ledger_matches_for_payload
from watermark.provenance import (
    SCHEMA,
    ProvenanceError,
    build_manifest,
    canonical_json,
    generate_signing_key,
    key_fingerprint,
    load_public_key,
    load_signing_key,
    manifest_problem,
    payload_from_str,
    payload_to_str,
    sign_manifest,
    verify_manifest,
)

CARD = {"name": "perth", "weights_sha256": "f" * 64, "threshold": 0.5}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("signing")
    priv = generate_signing_key(d / "a.pem", d / "a.pub.pem")
    generate_signing_key(d / "b.pem", d / "b.pub.pem")
    return {
        "dir": d,
        "priv": priv,
        "pub": load_public_key(d / "a.pub.pem"),
        "other": load_public_key(d / "b.pub.pem"),
    }


def manifest_for(tmp_path, name="utt-1", payload=(1, 0, 1, 1), content=b"RIFF fake audio bytes"):
    audio = tmp_path / f"{name}.wav"
    audio.write_bytes(content + name.encode())
    return build_manifest(
        audio,
        utterance_id=name,
        payload=payload,
        key_id="lab-1" if payload is not None else None,
        model_sha256="a" * 64,
        generator={"name": "valle", "checkpoint": "demo"},
        sampling={"temperature": 1.0, "top_p": 0.8, "seed": 3},
        watermark=CARD,
    )


def test_signing_keys_are_pem_private_0600_and_fingerprinted(keys):
    d = keys["dir"]
    assert stat.S_IMODE((d / "a.pem").stat().st_mode) == 0o600
    assert (d / "a.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (d / "a.pub.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    loaded = load_signing_key(d / "a.pem")
    raw = keys["pub"].public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert (
        key_fingerprint(keys["pub"])
        == hashlib.sha256(raw).hexdigest()
        == key_fingerprint(loaded.public_key())
    )
    assert key_fingerprint(keys["pub"]) != key_fingerprint(keys["other"])
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_signing_key(d / "a.pem", d / "new.pub.pem")
    with pytest.raises(ProvenanceError, match="not a PEM public key"):
        load_public_key(d / "a.pem")
    with pytest.raises(ProvenanceError, match="not a usable PEM private key"):
        load_signing_key(d / "a.pub.pem")
    with pytest.raises(FileNotFoundError, match=r"missing\.pem"):
        load_public_key(d / "missing.pem")


def test_manifest_fields(tmp_path):
    m = manifest_for(tmp_path)
    audio = tmp_path / "utt-1.wav"
    assert m["schema"] == SCHEMA and m["audio_file"] == "utt-1.wav" and m["utterance_id"] == "utt-1"
    assert m["audio_sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()
    assert m["payload"] == "1011" and m["key_id"] == "lab-1" and m["model_sha256"] == "a" * 64
    assert m["watermark"] == CARD and m["sampling"]["seed"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["created"])
    assert manifest_for(tmp_path, "utt-2", payload=None)["payload"] is None
    assert payload_from_str(payload_to_str((0, 1, 1))) == (0, 1, 1)
    with pytest.raises(ProvenanceError, match="not canonical JSON"):
        build_manifest(
            audio, utterance_id="u", payload=None, key_id=None, model_sha256="a", generator={},
            sampling={"temperature": float("nan")}, watermark=CARD,
        )  # fmt: skip
    with pytest.raises(ProvenanceError, match="no key_id"):
        build_manifest(
            audio, utterance_id="u", payload=(1,), key_id=None, model_sha256="a", generator={}, sampling={},
            watermark=CARD,
        )  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"gone\.wav"):
        build_manifest(
            tmp_path / "gone.wav", utterance_id="u", payload=None, key_id=None, model_sha256="a",
            generator={}, sampling={}, watermark=CARD,
        )  # fmt: skip


def test_sign_and_verify_round_trip_and_every_kind_of_tampering(tmp_path, keys):
    m = manifest_for(tmp_path)
    m["generator"]["note"] = "voix française ✓"  # non-ASCII survives canonical UTF-8
    signed = sign_manifest(m, keys["priv"])
    assert "signature" not in m  # the input is not modified
    assert signed["signer"] == key_fingerprint(keys["pub"])
    assert len(base64.b64decode(signed["signature"])) == 64  # an Ed25519 signature
    assert verify_manifest(signed, keys["pub"])
    # key order and a JSON round trip do not matter: the canonical form is what is signed
    reloaded = json.loads(json.dumps(dict(reversed(list(signed.items()))), indent=2))
    assert verify_manifest(reloaded, keys["pub"])
    assert canonical_json(reloaded) == canonical_json(signed)

    for field, value in [
        ("audio_sha256", "0" * 64),
        ("payload", "1111"),
        ("created", "2020-01-01T00:00:00Z"),
    ]:
        assert not verify_manifest({**signed, field: value}, keys["pub"]), field
    nested = json.loads(json.dumps(signed))
    nested["sampling"]["seed"] = 4
    assert "changed after signing" in manifest_problem(nested, keys["pub"])
    assert not verify_manifest({**signed, "extra": 1}, keys["pub"])
    assert not verify_manifest({k: v for k, v in signed.items() if k != "signature"}, keys["pub"])
    assert "signed by key" in manifest_problem(signed, keys["other"])  # wrong public key
    # pretending the other key signed it does not help: the signature is over the signer field too
    assert not verify_manifest({**signed, "signer": key_fingerprint(keys["other"])}, keys["other"])
    assert not verify_manifest({**signed, "signature": "not base64!"}, keys["pub"])
    assert not verify_manifest("not a dict", keys["pub"])


def filled_ledger(tmp_path, keys, n=4):
    ledger = Ledger(tmp_path / "run" / "ledger.jsonl")
    manifests = [
        sign_manifest(manifest_for(tmp_path, f"utt-{i}", (i % 2, 1, 0, 1)), keys["priv"]) for i in range(n)
    ]
    for m in manifests:
        ledger.append(m)
    return ledger, manifests


def test_ledger_append_chain_and_head(tmp_path, keys):
    ledger, manifests = filled_ledger(tmp_path, keys)
    assert ledger.check() == [] and ledger.check(keys["pub"]) == []
    entries = ledger.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4] and [e.line for e in entries] == [1, 2, 3, 4]
    assert [e.manifest for e in entries] == manifests
    lines = ledger.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[0])["prev"] == GENESIS
    assert json.loads(lines[2])["prev"] == hashlib.sha256(lines[1]).hexdigest()
    assert ledger.head() == hashlib.sha256(lines[3]).hexdigest()
    assert [e.line for e in ledger.find_by_sha256(manifests[2]["audio_sha256"])] == [3]
    with pytest.raises(ProvenanceError, match="signed manifests only"):
        ledger.append(manifest_for(tmp_path, "unsigned"))
    with pytest.raises(FileNotFoundError, match=r"nothing\.jsonl"):
        Ledger(tmp_path / "nothing.jsonl").check()


def test_truncated_last_line_is_named_and_blocks_appends(tmp_path, keys):
    ledger, manifests = filled_ledger(tmp_path, keys)
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[:-40])  # a crash in the middle of writing line 4
    problems = ledger.check()
    assert len(problems) == 1 and problems[0].startswith("line 4: truncated last line")
    assert [e.seq for e in ledger.entries()] == [1, 2, 3]  # the intact lines are still readable
    with pytest.raises(LedgerError, match=r"refusing to append.*line 4: truncated"):
        ledger.append(manifests[0])


def test_edited_middle_line_breaks_the_chain_at_the_next_line(tmp_path, keys):
    ledger, _ = filled_ledger(tmp_path, keys)
    lines = ledger.path.read_text().splitlines()
    record = json.loads(lines[1])
    record["manifest"]["utterance_id"] = "someone-else"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    ledger.path.write_text("\n".join(lines) + "\n")
    problems = ledger.check()
    assert problems == [problems[0]] and problems[0].startswith("line 3: hash chain broken")
    assert "line 2" in problems[0]
    # with the public key the edited manifest itself is named too
    assert any(p.startswith("line 2: manifest signature does not match") for p in ledger.check(keys["pub"]))
    with pytest.raises(LedgerError):
        ledger.append(sign_manifest(manifest_for(tmp_path, "new"), keys["priv"]))


def test_edited_last_line_is_caught_by_its_signature(tmp_path, keys):
    ledger, _ = filled_ledger(tmp_path, keys)
    text = ledger.path.read_text()
    ledger.path.write_text(text.replace('"utterance_id":"utt-3"', '"utterance_id":"utt-9"'))
    assert ledger.check() == []  # the chain alone cannot see an edit of the last line
    assert ledger.check(keys["pub"])[0].startswith("line 4: manifest signature does not match")


def test_deleted_and_reordered_lines(tmp_path, keys):
    ledger, _ = filled_ledger(tmp_path, keys)
    lines = ledger.path.read_text().splitlines(keepends=True)
    ledger.path.write_text("".join([lines[0], lines[2], lines[3]]))
    problems = ledger.check()
    assert problems[0] == "line 2: seq 3 follows seq 1 (lines deleted or reordered)"
    assert problems[1].startswith("line 2: hash chain broken") and len(problems) == 2
    ledger.path.write_text("".join([lines[0], lines[2], lines[1], lines[3]]))
    problems = ledger.check()
    assert any(p.startswith("line 2: seq 3 follows seq 1") for p in problems)
    assert any(p.startswith("line 3: hash chain broken") for p in problems)
    ledger.path.write_text("".join(lines[1:]))  # first line deleted
    assert ledger.check()[0] == "line 1: seq 2 follows seq 0 (lines deleted or reordered)"


def test_garbage_line_in_the_middle_is_named(tmp_path, keys):
    ledger, _ = filled_ledger(tmp_path, keys)
    lines = ledger.path.read_text().splitlines(keepends=True)
    lines[1] = "{garbage\n"
    ledger.path.write_text("".join(lines))
    problems = ledger.check()
    assert problems[0] == "line 2: not valid JSON (edited or corrupted)"
    assert problems[1].startswith("line 3: hash chain broken")


def test_ledger_lookup_by_decoded_payload(tmp_path, keys):
    ledger, manifests = filled_ledger(tmp_path, keys)
    matches = ledger_matches_for_payload(ledger.entries(), (1, 1, 0, 1), keys["pub"])
    assert [m["utterance_id"] for m in matches] == ["utt-1", "utt-3"]
    assert matches[0] == {
        "line": 2,
        "utterance_id": "utt-1",
        "audio_sha256": manifests[1]["audio_sha256"],
        "created": manifests[1]["created"],
        "key_id": "lab-1",
        "bit_errors": 0,
        "chance": 4 / 16,  # 4 entries, each hit by a random 4-bit payload with probability 1/16
        "signature_valid": True,
    }
    # an attacked copy decodes a bit wrong: with a budget the entries one bit away are found, closest first
    assert ledger_matches_for_payload(ledger.entries(), (1, 1, 0, 0)) == []
    near = ledger_matches_for_payload(ledger.entries(), (1, 1, 0, 0), max_bit_errors=1)
    assert {m["utterance_id"] for m in near} >= {"utt-1", "utt-3"}
    assert all(m["bit_errors"] == 1 for m in near) and near[0]["chance"] == min(1.0, 4 * 5 / 16)
    assert ledger_matches_for_payload(ledger.entries(), "0101", keys["pub"])[0]["utterance_id"] == "utt-0"
    assert ledger_matches_for_payload(ledger.entries(), (0, 0, 0, 0)) == []
    assert ledger_matches_for_payload(ledger.entries(), None) == []  # presence-only marks name nobody
    assert not ledger_matches_for_payload(ledger.entries(), "1101", keys["other"])[0]["signature_valid"]


def test_a_second_writer_is_noticed_and_the_chain_stays_intact(tmp_path, keys):
    ledger, manifests = filled_ledger(tmp_path, keys, n=2)
    other = Ledger(ledger.path)  # e.g. a restarted process appending to the same run's ledger
    other.append(manifests[0])
    ledger.append(manifests[1])  # the first writer's cached tail is stale: it must re-read
    assert [e.seq for e in ledger.entries()] == [1, 2, 3, 4] and ledger.check(keys["pub"]) == []
