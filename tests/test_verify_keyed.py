"""The auditor's check of files carrying the keyed mark: p-values, other keys, and attacked copies
traced back to their ledger entry by payload (real eSpeak NG speech, real codecs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from tests.test_verify import valle
from watermark import load_watermarker
from watermark.attacks import lossy_codec, speed
from watermark.keys import KeyRing, WatermarkKey
from watermark.ledger import Ledger
from watermark.provenance import build_manifest, generate_signing_key, load_public_key, sign_manifest
from watermark.verify import verify_file

MODEL = "d" * 64
TEXTS = {
    "utt-a": "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "utt-b": "She sells sea shells by the sea shore on a bright and windy morning.",
    "utt-c": "A large crowd gathered to watch the old ship sail into the harbour.",
}


def _key_file(path, key: WatermarkKey) -> WatermarkKey:
    path.write_text(json.dumps({"key_id": key.key_id, "secret": key.secret.hex()}))
    path.chmod(0o600)
    return key


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Keyed-marked files with signed sidecars and a ledger, as the generator leaves them."""
    from valle.corpus.espeak import EspeakSynth

    root = tmp_path_factory.mktemp("verify_keyed")
    keys, out = root / "keys", root / "run"
    out.mkdir()
    priv = generate_signing_key(keys / "lab.signing.pem", keys / "lab.public.pem")
    # fixed secrets (tests must not depend on a random draw); the files look like `valle keys new`'s
    key = _key_file(keys / "lab.key.json", WatermarkKey("lab-1", bytes(range(40, 72))))
    _key_file(keys / "other.key.json", WatermarkKey("lab-2", bytes(range(80, 112))))
    wm = load_watermarker("keyed", key=key)
    ledger = Ledger(out / "ledger.jsonl")
    with EspeakSynth() as synth:
        for uid, text in TEXTS.items():
            wav, sr = synth.synthesize(text, voice="en-us+m1")
            payload = key.payload(uid, MODEL, wm.payload_bits)
            sf.write(out / f"{uid}.wav", wm.embed(wav, sr, payload), sr, subtype="FLOAT")
            manifest = build_manifest(
                out / f"{uid}.wav",
                utterance_id=uid,
                payload=payload,
                key_id=key.key_id,
                model_sha256=MODEL,
                generator={"name": "valle", "text": text},
                sampling={"seed": 0},
                watermark=wm.card(),
            )
            signed = sign_manifest(manifest, priv)
            (out / f"{uid}.manifest.json").write_text(json.dumps(signed, indent=2))
            ledger.append(signed)
        clean, sr = synth.synthesize("Nobody marked this sentence at all, not even once.", voice="en-us+f3")
    (root / "clean").mkdir()
    sf.write(root / "clean" / "clean.wav", clean, sr)
    return {"root": root, "out": out, "keys": keys, "pub": load_public_key(keys / "lab.public.pem"),
            "key": key, "ledger": ledger, "wm": wm}  # fmt: skip


def test_marked_files_are_authentic_with_a_p_value(run_dir, capsys):
    pub, key_file = str(run_dir["keys"] / "lab.public.pem"), str(run_dir["keys"] / "lab.key.json")
    args = ["verify", str(run_dir["out"]), "--public-key", pub, "--key-file", key_file]
    assert valle([*args, "--ledger", str(run_dir["ledger"].path), "--json"]) == 0
    text = capsys.readouterr().out
    verdicts = json.loads(text)
    assert [v["verdict"] for v in verdicts] == ["authentic"] * 3
    assert all(v["watermark"]["p_value"] <= 1e-6 and v["payload_matches_key"] for v in verdicts)
    assert run_dir["key"].secret.hex() not in text
    assert valle(args) == 0
    assert "keyed mark p = " in capsys.readouterr().out


@pytest.mark.parametrize(
    "attack",
    # MP3 at 64 kbit/s: at 32 kbit/s this 3.5 s eSpeak clip still reads as marked (marked_unverified),
    # but its payload falls below the link threshold z 5.0 (it was 5.8 with the older design)
    [
        lambda w, sr: lossy_codec(w, sr, "mp3", 64_000),
        lambda w, sr: speed(w, sr, 1.1),
        lambda w, sr: (w[int(0.4 * sr) :], sr),
    ],
    ids=["mp3_64k", "speed_1.1", "crop_0.4s"],
)
def test_attacked_copy_is_traced_to_its_ledger_entry(run_dir, tmp_path, attack):
    wav, sr = sf.read(run_dir["out"] / "utt-b.wav", dtype="float32")
    y, y_sr = attack(wav, sr)
    sf.write(tmp_path / "copy.wav", np.asarray(y, np.float32), y_sr, subtype="PCM_16")
    v = verify_file(
        tmp_path / "copy.wav",
        public_key=run_dir["pub"],
        ledger=run_dir["ledger"],
        watermarker=run_dir["wm"],
        keyring=KeyRing([run_dir["key"]]),
    )
    assert v["verdict"] == "altered_copy", v["reasons"]
    assert v["watermark"]["p_value"] <= 1e-6
    best = v["ledger_matches"][0]
    assert best["utterance_id"] == "utt-b" and best["signature_valid"] and best["chance"] < 1e-4


def test_another_key_and_unmarked_audio_find_no_mark(run_dir, capsys):
    pub = str(run_dir["keys"] / "lab.public.pem")
    other = str(run_dir["keys"] / "other.key.json")
    clean = str(run_dir["root"] / "clean" / "clean.wav")
    marked = str(run_dir["out"] / "utt-a.wav")
    # the sidecar names key lab-1, which this ring lacks: every key tried, p-value scaled by their number
    assert valle(["verify", marked, clean, "--public-key", pub, "--key-file", other, "--watermark", "keyed",
                  "--json"]) == 1  # fmt: skip
    verdicts = json.loads(capsys.readouterr().out)
    assert [v["verdict"] for v in verdicts] == ["not_marked", "not_marked"]
    assert all(v["watermark"]["p_value"] > 1e-6 for v in verdicts)
    assert valle(["verify", clean, "--public-key", pub, "--watermark", "keyed"]) == 2  # no key: bad input
    assert "--key-file" in capsys.readouterr().err
