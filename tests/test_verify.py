"""The auditor's verification with the real Perth watermarker on real (eSpeak NG) speech."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from watermark import load_watermarker
from watermark.keys import KeyRing, WatermarkKey, generate_key, load_key
from watermark.ledger import Ledger
from watermark.provenance import (
    build_manifest,
    generate_signing_key,
    key_fingerprint,
    load_public_key,
    sign_manifest,
)
from watermark.verify import decide_verdict, key_check, read_audio, verify_file
from watermark.verify_cli import add_parser

MODEL = "c" * 64
TEXTS = {
    "utt-a": "The quick brown fox jumps over the lazy dog.",
    "utt-b": "She sells sea shells by the sea shore.",
}


@pytest.fixture(scope="module")
def perth(one_torch_thread):
    return load_watermarker("perth")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, perth):
    """A generation run as the operator leaves it: marked wavs, signed sidecars, a ledger, and keys."""
    from valle.corpus.espeak import EspeakSynth

    root = tmp_path_factory.mktemp("verify")
    keys, out = root / "keys", root / "run"
    out.mkdir()
    priv = generate_signing_key(keys / "lab.signing.pem", keys / "lab.public.pem")
    wm_key = generate_key(keys / "lab.key.json", "lab-1")
    ledger = Ledger(out / "ledger.jsonl")
    with EspeakSynth() as synth:
        speech = {uid: synth.synthesize(text, voice="en-us+m1") for uid, text in TEXTS.items()}
        clean, sr = synth.synthesize("Nobody marked this sentence.", voice="en-us+f3")
    for uid, (wav, sr) in speech.items():
        sf.write(out / f"{uid}.wav", perth.embed(wav, sr), sr)
        manifest = build_manifest(
            out / f"{uid}.wav",
            utterance_id=uid,
            payload=None,  # Perth marks presence only
            key_id=wm_key.key_id,
            model_sha256=MODEL,
            generator={"name": "valle", "text": TEXTS[uid]},
            sampling={"top_p": 0.8, "seed": 0},
            watermark=perth.card(),
        )
        signed = sign_manifest(manifest, priv)
        (out / f"{uid}.json").write_text(json.dumps(signed, indent=2))
        ledger.append(signed)
    (root / "clean").mkdir()
    sf.write(root / "clean" / "clean.wav", clean, sr)
    pub = load_public_key(keys / "lab.public.pem")
    return {
        "root": root,
        "out": out,
        "keys": keys,
        "priv": priv,
        "pub": pub,
        "wm_key": wm_key,
        "ledger": ledger,
    }


def transcoded(src, dst):
    """Resample 22.05 kHz -> 16 kHz -> 22.05 kHz and re-quantise to 16-bit: same sound, other bytes."""
    import torch
    import torchaudio.functional as F

    wav, sr = read_audio(src)
    x = F.resample(F.resample(torch.from_numpy(wav), sr, 16000), 16000, sr).numpy()
    sf.write(dst, x, sr, subtype="PCM_16")
    return dst


def test_authentic_file(run_dir, perth):
    v = verify_file(run_dir["out"] / "utt-a.wav", public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "authentic", v["reasons"]
    assert v["manifest_found"] and v["signature_valid"] and v["hash_match"]
    assert v["signer"] == key_fingerprint(run_dir["pub"])
    assert v["manifest_source"].endswith("utt-a.json")
    assert (
        v["watermark"]["backend"] == "perth" and v["watermark"]["detected"] and v["watermark"]["score"] > 0.9
    )
    assert v["watermark"]["payload"] is None and v["payload_matches_manifest"] is None
    json.dumps(v)  # scriptable


def test_tampered_manifest_and_wrong_public_key(run_dir, perth, tmp_path):
    wav = shutil.copy(run_dir["out"] / "utt-a.wav", tmp_path / "utt-a.wav")
    manifest = json.loads((run_dir["out"] / "utt-a.json").read_text())
    manifest["sampling"]["seed"] = 7
    (tmp_path / "utt-a.json").write_text(json.dumps(manifest))
    v = verify_file(wav, public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "tampered_manifest" and v["signature_valid"] is False
    assert v["hash_match"] and v["watermark"]["detected"]
    assert any("changed after signing" in r for r in v["reasons"])

    other = generate_signing_key(tmp_path / "x.pem", tmp_path / "x.pub.pem").public_key()
    v = verify_file(run_dir["out"] / "utt-a.wav", public_key=other, watermarker=perth)
    assert v["verdict"] == "tampered_manifest" and v["signature_valid"] is False
    assert any("not by the given key" in r for r in v["reasons"])

    (tmp_path / "utt-a.json").write_text('{"schema": "valle-provenance/1", "audio_sha')  # damaged sidecar
    v = verify_file(wav, public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "tampered_manifest" and any("not valid JSON" in r for r in v["reasons"])


def test_manifest_of_another_file_is_not_authentic(run_dir, perth):
    v = verify_file(
        run_dir["out"] / "utt-a.wav",
        public_key=run_dir["pub"],
        manifest=run_dir["out"] / "utt-b.json",
        watermarker=perth,
    )
    assert v["signature_valid"] and v["hash_match"] is False and v["watermark"]["detected"]
    # Perth states no false-alarm rate, so its detection alone never makes a file "marked"
    assert v["verdict"] == "inconclusive" and "p_value" not in v["watermark"]
    assert any("the manifest describes another file (utt-b.wav)" in r for r in v["reasons"])


def test_transcoded_copy_keeps_the_mark_but_not_the_hash(run_dir, perth, tmp_path):
    copy = transcoded(run_dir["out"] / "utt-a.wav", tmp_path / "utt-a.wav")
    shutil.copy(run_dir["out"] / "utt-a.json", tmp_path / "utt-a.json")
    v = verify_file(copy, public_key=run_dir["pub"], ledger=run_dir["ledger"], watermarker=perth)
    assert v["signature_valid"] and v["hash_match"] is False
    assert v["watermark"]["detected"] and v["watermark"]["score"] > 0.9
    # Perth carries no payload: the copy cannot be tied to one generation, so it stays unverified
    assert v["verdict"] == "inconclusive" and v["ledger_matches"] == [] and v["in_ledger"] is True
    assert any("re-encoded" in r for r in v["reasons"])
    assert any("carries no payload" in r for r in v["reasons"])


def test_ledger_alone_vouches_for_an_exact_file_and_reports_damage(run_dir, perth, tmp_path):
    wav = shutil.copy(run_dir["out"] / "utt-b.wav", tmp_path / "utt-b.wav")  # no sidecar beside it
    v = verify_file(wav, public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "inconclusive" and not v["manifest_found"]
    assert any("states no false-alarm rate" in r for r in v["reasons"])
    v = verify_file(wav, public_key=run_dir["pub"], ledger=run_dir["ledger"].path, watermarker=perth)
    assert v["verdict"] == "authentic" and v["manifest_source"].endswith("ledger.jsonl line 2")


def damaged_ledgers(run_dir: dict, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """The ledgers an attacker or an accident leaves, made from the run's (plus a third entry, so that
    deleting the middle one leaves a gap): {name: (path, the problem ``check`` must name)}."""
    import pickle

    three = tmp_path / "three.jsonl"
    three.write_bytes(run_dir["ledger"].path.read_bytes())
    Ledger(three).append(json.loads((run_dir["out"] / "utt-a.json").read_text()))
    lines = three.read_bytes().splitlines(keepends=True)
    made = {
        "pickle": (pickle.dumps({"seq": 1, "manifest": {}}), "line 1: not valid JSON"),
        "truncated": (b"".join(lines)[:-25], f"line {len(lines)}: truncated last line"),
        "middle_deleted": (lines[0] + b"".join(lines[2:]), "line 2: seq 3 follows seq 1"),
    }
    out = {}
    for name, (data, problem) in made.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
        out[name] = (tmp_path / f"{name}.jsonl", problem)
    return out


def test_damaged_ledger_decides_the_verdict(run_dir, perth, tmp_path):
    """An auditor passing a ledger asks 'is this file in this intact ledger': damage is never authentic."""
    wav = run_dir["out"] / "utt-a.wav"  # sidecar beside it: authentic without a ledger
    for name, (path, problem) in damaged_ledgers(run_dir, tmp_path).items():
        v = verify_file(wav, public_key=run_dir["pub"], ledger=path, watermarker=perth)
        assert v["verdict"] == "ledger_invalid", name
        assert any(p.startswith(problem) for p in v["ledger_problems"]), (name, v["ledger_problems"])


def test_file_missing_from_an_intact_ledger_is_not_authentic(run_dir, perth, tmp_path):
    only_b = tmp_path / "only_b.jsonl"
    Ledger(only_b).append(json.loads((run_dir["out"] / "utt-b.json").read_text()))
    v = verify_file(run_dir["out"] / "utt-a.wav", public_key=run_dir["pub"], ledger=only_b, watermarker=perth)
    assert v["signature_valid"] and v["hash_match"] and v["in_ledger"] is False
    assert v["verdict"] == "not_in_ledger"
    v = verify_file(run_dir["out"] / "utt-b.wav", public_key=run_dir["pub"], ledger=only_b, watermarker=perth)
    assert v["verdict"] == "authentic" and v["in_ledger"] is True


def test_unmarked_silent_and_unreadable_files(run_dir, perth, tmp_path):
    v = verify_file(run_dir["root"] / "clean" / "clean.wav", public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "not_marked" and not v["watermark"]["detected"] and v["watermark"]["score"] < 0.5
    sf.write(tmp_path / "silent.wav", np.zeros(22050, np.float32), 22050)
    v = verify_file(tmp_path / "silent.wav", public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "not_marked" and any("silent" in r for r in v["reasons"])
    (tmp_path / "junk.wav").write_text("this is not audio")
    v = verify_file(tmp_path / "junk.wav", public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "unreadable" and any("cannot read audio" in r for r in v["reasons"])
    assert v["audio_sha256"] and v["watermark"] is None
    sf.write(tmp_path / "header.wav", np.full(8, 0.5, np.float32), 16000, subtype="PCM_16")
    assert (tmp_path / "header.wav").stat().st_size == 60  # a header and 8 samples
    v = verify_file(tmp_path / "header.wav", public_key=run_dir["pub"], watermarker=perth)
    assert v["verdict"] == "unreadable" and any("has 8 samples" in r for r in v["reasons"])
    with pytest.raises(FileNotFoundError, match=r"gone\.wav"):
        verify_file(tmp_path / "gone.wav", public_key=run_dir["pub"], watermarker=perth)


def test_keyed_payload_check_with_the_right_wrong_and_unknown_key(run_dir, perth):
    """The manifest claims a keyed payload; the auditor's key ring recomputes it (HMAC of utterance+model)."""
    key = run_dir["wm_key"]
    wav = run_dir["out"] / "utt-a.wav"
    m = json.loads((run_dir["out"] / "utt-a.json").read_text())
    m["payload"] = "".join(map(str, key.payload("utt-a", MODEL, 16)))
    signed = sign_manifest(m, run_dir["priv"])
    common = {"public_key": run_dir["pub"], "manifest": signed, "watermarker": perth}

    v = verify_file(wav, keyring=KeyRing.load([run_dir["keys"] / "lab.key.json"]), **common)
    assert v["payload_matches_key"] is True and v["verdict"] == "authentic"
    wrong = KeyRing([WatermarkKey("lab-1", bytes(32))])
    v = verify_file(wav, keyring=wrong, **common)
    assert v["payload_matches_key"] is False and v["verdict"] == "marked_unverified"
    v = verify_file(wav, keyring=KeyRing([WatermarkKey("lab-0", bytes(32))]), **common)
    assert v["payload_matches_key"] == "unknown_key_id" and v["verdict"] == "authentic"
    assert any("unknown watermark key id 'lab-1'" in r for r in v["reasons"])
    assert key.secret.hex() not in json.dumps(v)


def test_key_check_compares_decoded_and_claimed_payloads():
    key = WatermarkKey("k1", bytes(range(32)))
    ring = KeyRing([key])
    good = key.payload("u1", MODEL, 16)
    m = {"utterance_id": "u1", "model_sha256": MODEL, "key_id": "k1", "payload": "".join(map(str, good))}
    assert key_check(m, ring, good) == (True, None)
    assert key_check(m, ring, None) == (True, None)
    flipped = (1 - good[0], *good[1:])
    assert key_check(m, ring, flipped)[0] is False  # the mark in the audio is not this utterance's
    assert key_check({**m, "payload": None}, ring, None)[0] is None  # presence only: nothing to check
    assert key_check({**m, "payload": "10"}, ring, None)[0] is False
    assert key_check(m, None, good) == (None, None)


def test_verdict_rules_for_payload_carrying_backends():
    # the keyed mark: a payload and a stated false-alarm rate
    mark = {"detected": True, "payload": "1011", "p_value": 1e-9}
    base = {"signature_valid": True, "hash_match": False, "watermark": mark}
    assert decide_verdict({**base, "payload_matches_manifest": True})[0] == "altered_copy"
    assert decide_verdict({**base, "payload_matches_manifest": False})[0] == "marked_unverified"
    # AudioSeal: a payload but no stated false-alarm rate
    unstated = {**base, "payload_matches_manifest": False, "watermark": {"detected": True, "payload": "1011"}}
    assert decide_verdict(unstated)[0] == "inconclusive"
    no_manifest = {"signature_valid": None, "hash_match": None, "watermark": mark}
    ledger_hit = [{"utterance_id": "u1", "signature_valid": True}]
    assert decide_verdict({**no_manifest, "ledger_matches": ledger_hit})[0] == "altered_copy"
    forged = [{"utterance_id": "u1", "signature_valid": False}]
    assert decide_verdict({**no_manifest, "ledger_matches": forged})[0] == "marked_unverified"
    exact = {**base, "hash_match": True, "payload_matches_manifest": True}
    assert decide_verdict(exact)[0] == "authentic"
    assert decide_verdict({**exact, "payload_matches_key": False})[0] == "marked_unverified"
    assert decide_verdict({**exact, "watermark": {"detected": False}})[0] == "not_marked"


def valle(argv: list[str]) -> int:
    """Through the root CLI when `verify` is registered there; else through this module's own parser."""
    from evaluation.cli import main as cli

    root = cli.build_parser()
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "verify" in commands:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="valle")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except cli.EXPECTED_ERRORS as err:  # what the root CLI does with bad input
        print(f"valle {args.command}: error: {err}", file=sys.stderr)
        return 2


def test_cli_keys_new_prints_paths_and_fingerprint_never_secrets(tmp_path, capsys):
    assert valle(["keys", "new", "--out", str(tmp_path / "k"), "--key-id", "lab-cli"]) == 0
    out = capsys.readouterr()
    key = load_key(tmp_path / "k" / "lab-cli.key.json")
    pub = load_public_key(tmp_path / "k" / "lab-cli.public.pem")
    private_pem = (tmp_path / "k" / "lab-cli.signing.pem").read_text().splitlines()[1]
    assert key_fingerprint(pub) in out.out and "lab-cli.key.json" in out.out
    for secret in (key.secret.hex(), private_pem):
        assert secret not in out.out + out.err
    assert valle(["keys", "new", "--out", str(tmp_path / "k"), "--key-id", "lab-cli"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert valle(["keys", "new", "--out", str(tmp_path / "k"), "--key-id", "../evil"]) == 2


def test_cli_verify_exit_codes_and_json(run_dir, tmp_path, capsys):
    pub = str(run_dir["keys"] / "lab.public.pem")
    key_file = str(run_dir["keys"] / "lab.key.json")
    out = str(run_dir["out"])
    ledger = str(run_dir["ledger"].path)
    assert (
        valle(["verify", out, "--public-key", pub, "--ledger", ledger, "--key-file", key_file, "--json"]) == 0
    )
    text = capsys.readouterr().out
    verdicts = json.loads(text)
    assert [v["verdict"] for v in verdicts] == ["authentic", "authentic"]
    assert [v["file"].rsplit("/", 1)[1] for v in verdicts] == ["utt-a.wav", "utt-b.wav"]
    assert run_dir["wm_key"].secret.hex() not in text

    copy = transcoded(run_dir["out"] / "utt-b.wav", tmp_path / "utt-b-copy.wav")
    assert valle(["verify", out, str(copy), str(run_dir["root"] / "clean"), "--public-key", pub]) == 1
    lines = capsys.readouterr().out.splitlines()
    verdict_lines = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert verdict_lines == ["authentic", "authentic", "inconclusive", "not_marked"]

    (tmp_path / "empty").mkdir()
    for bad, message in [
        (["verify", out, "--public-key", str(tmp_path / "none.pem")], "none.pem not found"),
        (["verify", out, "--public-key", pub, "--manifest", str(run_dir["out"] / "utt-a.json")], "one file"),
        (["verify", str(tmp_path / "empty"), "--public-key", pub], "no audio files"),
        (["verify", out, "--public-key", key_file], "not a PEM public key"),
        (["verify", out, "--public-key", pub, "--ledger", str(tmp_path / "l.jsonl")], "l.jsonl not found"),
        *(
            (["verify", out, "--public-key", pub, "--ledger", str(path)], f"{path} is damaged")
            for path, _ in damaged_ledgers(run_dir, tmp_path).values()
        ),
    ]:
        assert valle(bad) == 2, bad
        assert message in capsys.readouterr().err
