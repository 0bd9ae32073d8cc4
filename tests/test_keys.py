from __future__ import annotations

import hashlib
import hmac
import json
import stat
import warnings

import pytest

from watermark.keys import (
    ENV_VAR,
    KeyFileError,
    KeyRing,
    UnknownKeyIdError,
    WatermarkKey,
    generate_key,
    load_key,
)

SECRET = bytes(range(32, 64))
SECRET_HEX = SECRET.hex()


def write_key(path, key_id="lab-1", secret_hex=SECRET_HEX, mode=0o600):
    path.write_text(json.dumps({"key_id": key_id, "secret": secret_hex}))
    path.chmod(mode)
    return path


def test_generated_key_is_private_loads_back_and_is_never_shown(tmp_path):
    path = tmp_path / "keys" / "lab.key.json"
    key = generate_key(path, "lab-2026-01")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key.secret) == 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0600 file must load without the permission warning
        again = load_key(path)
    assert again == key and again.key_id == "lab-2026-01"
    hex_secret = key.secret.hex()
    for text in (repr(key), str(key), repr(KeyRing([key])), f"{key}"):
        assert hex_secret not in text and "lab-2026-01" in text
    assert key.secret != generate_key(tmp_path / "other.json", "lab-2026-01").secret
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_key(path, "lab-2026-01")


def test_payload_is_the_msb_first_hmac_of_utterance_and_model():
    key = WatermarkKey("lab-1", SECRET)
    mac = hmac.new(SECRET, b"utt-7|abc123", hashlib.sha256).digest()
    expected = tuple(int(b) for b in f"{int.from_bytes(mac, 'big'):0256b}"[:16])
    assert key.payload("utt-7", "abc123", 16) == expected
    assert key.payload("utt-7", "abc123", 32)[:16] == expected  # longer payloads extend, MSB first
    assert key.payload("utt-8", "abc123", 16) != expected  # utterances get different payloads
    assert key.payload("utt-7", "abc124", 16) != expected  # and so do models
    assert WatermarkKey("lab-1", bytes(32)).payload("utt-7", "abc123", 16) != expected  # and keys
    for bad in (0, 257):
        with pytest.raises(ValueError, match="payload bits"):
            key.payload("utt-7", "abc123", bad)


def test_key_from_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, f"ci-key:{SECRET_HEX}")
    key = load_key()
    assert key == WatermarkKey("ci-key", SECRET)
    monkeypatch.setenv(ENV_VAR, SECRET_HEX)
    with pytest.raises(KeyFileError, match="key_id>:<hex secret") as err:
        load_key()
    assert SECRET_HEX not in str(err.value)
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(KeyFileError, match=f"set \\${ENV_VAR}"):
        load_key()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json " + SECRET_HEX, "not valid JSON"),
        (json.dumps({"key_id": "lab-1", "secret": SECRET_HEX[:40]}), "20 bytes; at least 32"),
        (json.dumps({"key_id": "lab-1", "secret": SECRET_HEX[:-2] + "zz"}), "not valid hex"),
        (json.dumps({"key_id": "  ", "secret": SECRET_HEX}), "empty key id"),
        (json.dumps({"key_id": SECRET_HEX + "/x", "secret": SECRET_HEX}), "key id must be"),
        (json.dumps({"secret": SECRET_HEX}), "lacks key_id"),
        (json.dumps([SECRET_HEX]), "JSON object"),
    ],
)
def test_bad_key_files_get_clear_errors_without_the_secret(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=match) as err:
        load_key(path)
    assert str(path) in str(err.value)
    assert SECRET_HEX[:40] not in str(err.value) and err.value.__cause__ is None


def test_missing_file_and_readable_by_others(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_key(tmp_path / "nope.json")
    path = write_key(tmp_path / "k.json", mode=0o644)
    with pytest.warns(UserWarning, match="readable by group/others") as rec:
        key = load_key(path)
    assert key.key_id == "lab-1" and all(SECRET_HEX not in str(w.message) for w in rec)


def test_key_ring_rotation_and_unknown_ids(tmp_path):
    old = write_key(tmp_path / "old.json", "lab-2025", SECRET_HEX)
    new = generate_key(tmp_path / "new.json", "lab-2026")
    ring = KeyRing.load([old, tmp_path / "new.json"])
    assert ring.key_ids == ["lab-2025", "lab-2026"] and len(ring) == 2 and "lab-2025" in ring
    assert ring.get("lab-2026") == new and ring.get("lab-2025").secret == SECRET
    with pytest.raises(UnknownKeyIdError, match=r"'lab-2024'.*lab-2025, lab-2026") as err:
        ring.get("lab-2024")
    assert err.value.key_id == "lab-2024"
    assert SECRET_HEX not in str(err.value) and new.secret.hex() not in str(err.value)
    with pytest.raises(KeyFileError, match="two different secrets share the key id 'lab-2025'") as err:
        ring.add(WatermarkKey("lab-2025", bytes(32)))
    assert SECRET_HEX not in str(err.value)
    ring.add(WatermarkKey("lab-2025", SECRET))  # the same key twice is harmless
    assert len(ring) == 2
