"""`valle detect train | score | eval`, its data layer and detection/train.py + evaluate.py through them.

Data: eSpeak NG speech, 4 voices x 4 sentences (the "bona fide" class, 22.05 kHz) and two spoof
generators made from the same utterances, so they imitate the same four speakers as clones do:
``lowpass`` (2.5 kHz low-pass) and ``melvq`` (resynthesised through the offline mel-VQ codec).
Everything runs through the CLI functions on real files; split rules are checked on constructed clips.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from detection.evaluate import EVAL_FILE, SCORES_FILE
from detection.split import recorded_test
from detection.train import SPLIT_FILE
from evaluation.cli.detect import add_parser
from evaluation.testsets.detector_data import DEFAULT_DEGRADATIONS, clips_from_run, collect_clips

SENTENCES = (
    "The cat sat on the warm mat.",
    "Bring me the red book, please.",
    "We walked home along the river.",
    "Open the window before you leave.",
)
VOICES = {"spk-a": "en-us+m1", "spk-b": "en-us+f3", "spk-c": "en+m3", "spk-d": "en-us+f2"}


def _detect_registered() -> bool:
    from evaluation.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "detect" in sub.choices


def cli(argv: list[str]) -> int:
    """`valle ...` through evaluation.cli.main.main once `detect` is registered there; until then a parser
    with this module's add_parser and main's error handling (one line on stderr, exit 2)."""
    if _detect_registered():
        from evaluation.cli.main import main

        return main(argv)
    parser = argparse.ArgumentParser(prog="valle")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"valle {args.command}: error: {err}", file=sys.stderr)
        return 2


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """real.jsonl (16 eSpeak clips), lowpass.jsonl and melvq.jsonl (16 each, same speakers)."""
    import soundfile as sf
    from scipy.signal import butter, sosfiltfilt

    from valle.codec import load_codec
    from valle.corpus.espeak import EspeakSynth

    root = tmp_path_factory.mktemp("detect")
    (root / "wavs").mkdir()
    codec = load_codec("melvq_24khz")
    rows: dict[str, list[dict]] = {"real": [], "lowpass": [], "melvq": []}
    with EspeakSynth() as synth:
        for spk, voice in VOICES.items():
            for i, text in enumerate(SENTENCES):
                wav, sr = synth.synthesize(text, voice=voice)
                low = sosfiltfilt(butter(8, 2500, fs=sr, output="sos"), wav).astype(np.float32)
                vq, vq_sr = codec.decode(codec.encode(wav, sr))
                for kind, (w, r) in {"real": (wav, sr), "lowpass": (low, sr), "melvq": (vq, vq_sr)}.items():
                    uid = f"{kind}_{spk}_{i}"
                    sf.write(root / "wavs" / f"{uid}.wav", w, r)
                    rows[kind].append({"id": uid, "audio": f"wavs/{uid}.wav", "speaker": spk, "text": text})
    for kind, rs in rows.items():
        (root / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return root


def _data_flags(d: Path) -> list[str]:
    return ["--bonafide", str(d / "real.jsonl"), "--spoof", str(d / "lowpass.jsonl"),
            "--spoof", f"melvq={d / 'melvq.jsonl'}"]  # fmt: skip


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    """lfcc-lr trained with the melvq generator held out."""
    out = tmp_path_factory.mktemp("models") / "lr"
    argv = ["detect", "train", *_data_flags(data), "--model", "lfcc-lr", "--holdout-generator", "melvq",
            "--seed", "1", "--test-fraction", "0.5", "--calibration-folds", "0",
            "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    return out


# ----------------------------------------------------------------------------- data sources


def test_manifest_problems_are_listed(data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"id": "x1", "audio": "../etc/passwd", "speaker": "a"}) + "\n"
        + json.dumps({"id": "x2", "audio": "missing.wav", "speaker": "a"}) + "\n"
        + json.dumps({"id": "x3", "audio": "missing.wav"}) + "\n"
    )  # fmt: skip
    with pytest.raises(ValueError, match="3 spoof manifest problem") as err:
        collect_clips([data / "real.jsonl"], [f"evil={bad}"])
    msg = str(err.value)
    assert "escapes the manifest folder" in msg and "file not found: missing.wav" in msg and "speaker" in msg
    with pytest.raises(ValueError, match="spoof class has no files"):
        collect_clips([data / "real.jsonl"])
    with pytest.raises(ValueError, match="duplicate id 'real_spk-a_0'"):
        collect_clips([data / "real.jsonl"], [f"again={data / 'real.jsonl'}"])
    clips, sources = collect_clips([data / "real.jsonl"], [f"lp={data / 'lowpass.jsonl'}"])
    assert {c.generator for c in clips} == {"bonafide", "lp"} and sources[1]["generator"] == "lp"
    assert all(Path(c.path).is_absolute() for c in clips)


def test_clips_from_a_score_run(data, tmp_path):
    from evaluation.testsets.testset import TestItem, TestSet

    run = tmp_path / "run"
    (run / "tables").mkdir(parents=True)
    items, gens = [], []
    for spk in VOICES:
        iid = f"{spk}_t0"
        target = str(data / "wavs" / f"real_{spk}_0.wav")
        items.append(TestItem(iid, SENTENCES[0], spk, "cross_sentence", target, 1.5, None, None))
        gens.append({"key": f"{iid}.s0", "id": iid, "status": "ok",
                     "audio": str(data / "wavs" / f"melvq_{spk}_0.wav")})  # fmt: skip
    gens.append({"key": "x.s0", "id": "spk-a_t0", "status": "failed", "audio": None})
    TestSet(items).save(run / "testset.jsonl")
    pd.DataFrame(gens).to_parquet(run / "tables" / "generations.parquet")
    (run / "config.json").write_text(json.dumps({"generator": {"generator": "valle"}}))
    clips, source = clips_from_run(run)
    assert sorted(c.generator for c in clips) == ["bonafide"] * 4 + ["valle"] * 4
    assert {c.id for c in clips if c.label == 0} == {f"valle:{s}_t0.s0" for s in VOICES}
    assert {c.speaker for c in clips if c.label == 0} == set(VOICES)  # the cloned targets
    assert source["generations_not_ok"] == {"failed": 1}
    assert {c.generator for c in clips_from_run(run, "mine")[0]} == {"bonafide", "mine"}


# ----------------------------------------------------------------------------- train / score / eval


def test_train_writes_model_threshold_and_split(model, data):
    from detection.models import load_detector
    from evaluation.bypass.asv import stored_cm_threshold

    meta = json.loads((model / "detector.json").read_text())
    thr = meta["training"]["eer_threshold"]
    assert meta["kind"] == "lfcc-logreg" and np.isfinite(thr)
    assert meta["training"]["calibration"]["on"].startswith("train split, in-sample")
    # the ASV gate finds the stored threshold (valle asv --detector)
    assert stored_cm_threshold(load_detector(model), model) == thr
    desc = json.loads((model / SPLIT_FILE).read_text())
    train_ids = set(desc["train_ids"])
    test = {row[0]: row for row in desc["test"]}
    assert not any(i.startswith("melvq") for i in train_ids)  # held out
    assert {row[3] for row in test.values()} == {"bonafide", "melvq"}
    assert not set(desc["train_speakers"]) & set(desc["test_speakers"])
    assert not train_ids & set(test)
    assert desc["holdout_generator"] == "melvq" and desc["seed"] == 1
    assert sorted(p.name for p in model.parent.iterdir()) == ["lr"]  # no staging leftovers


def test_score_files_and_unreadable(model, data, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    import soundfile as sf

    sf.write(tmp_path / "tiny.wav", np.full(8, 0.1, np.float32), 16000)
    real, fake = data / "wavs" / "real_spk-a_0.wav", data / "wavs" / "lowpass_spk-a_0.wav"
    (tmp_path / "empty").mkdir()
    inputs = [real, fake, broken, tmp_path / "nope.wav", tmp_path / "empty", tmp_path / "tiny.wav"]
    rc = cli(["detect", "score", *map(str, inputs), "--model", str(model), "--json"])
    entries = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert [Path(e["path"]).name for e in entries] == [p.name for p in inputs]
    platt = json.loads((model / "detector.json").read_text())["training"]["calibration"]["platt"]
    thr = json.loads((model / "detector.json").read_text())["training"]["eer_threshold"]
    for e in entries[:2]:
        llr = platt["slope"] * e["score"] + platt["intercept"]
        assert 0.0 <= e["p_spoof"] <= 1.0 and np.isclose(e["p_spoof"], 1 / (1 + np.exp(llr)))
        assert e["decision"] == ("bona fide" if e["score"] >= thr else "spoof") and "error" not in e
    assert entries[0]["score"] > entries[1]["score"]  # lowpass was seen in training
    # a real and a spoof clip land on their own sides, and the probability agrees with the decision
    assert entries[0]["decision"] == "bona fide" and entries[0]["p_spoof"] < 0.5
    assert entries[1]["decision"] == "spoof" and entries[1]["p_spoof"] > 0.5
    assert "unreadable" in entries[2]["error"] and "file not found" in entries[3]["error"]
    assert "no audio files" in entries[4]["error"]
    assert "8 samples (0.001 s) is too short to score" in entries[5]["error"] and "score" not in entries[5]
    # a folder is expanded to its audio files; all readable -> exit 0
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.wav").write_bytes(real.read_bytes())
    assert cli(["detect", "score", str(folder), "--model", str(model)]) == 0
    assert "a.wav" in capsys.readouterr().out


def test_gmm_with_default_calibration_calls_real_speech_bona_fide(data, tmp_path, capsys):
    """The issue's case: an LFCC-GMM with the default cross-fitted calibration called every file spoof,
    a real one with p_spoof 1e-6 included. Decisions follow the stored threshold on the right side."""
    out = tmp_path / "gmm"
    argv = ["detect", "train", "--bonafide", str(data / "real.jsonl"), "--spoof", str(data / "lowpass.jsonl"),
            "--model", "lfcc-gmm", "--seed", "1", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    capsys.readouterr()
    real = [data / "wavs" / f"real_spk-{s}_0.wav" for s in "abcd"]
    fake = [data / "wavs" / f"lowpass_spk-{s}_0.wav" for s in "abcd"]
    assert cli(["detect", "score", *map(str, real + fake), "--model", str(out), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    thr = json.loads((out / "detector.json").read_text())["training"]["eer_threshold"]
    for e in entries:
        assert e["decision"] == ("bona fide" if e["score"] >= thr else "spoof")
    # measured margins: every real clip >= 9.9 above the threshold, every low-passed one >= 33 below
    assert [e["decision"] for e in entries] == ["bona fide"] * 4 + ["spoof"] * 4
    assert all(e["p_spoof"] < 0.5 for e in entries[:4]) and all(e["p_spoof"] > 0.5 for e in entries[4:])


def test_eval_per_generator_and_condition(model, data, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "detect",
        "eval",
        "--model",
        str(model),
        *_data_flags(data),
        "--bootstrap",
        "50",
        "--out",
        str(out),
    ]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert "EER%" in printed and "mp3_32k" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([EVAL_FILE, SCORES_FILE])
    report = json.loads((out / EVAL_FILE).read_text())
    scores = pd.read_parquet(out / SCORES_FILE)
    conditions = ["clean", *DEFAULT_DEGRADATIONS]
    assert report["conditions"] == conditions and set(report["per_condition"]) == set(conditions)
    assert report["generators"] == ["melvq"] and set(report["per_generator"]) == {"melvq"}
    desc = json.loads((model / SPLIT_FILE).read_text())
    assert len(scores) == len(desc["test"]) * len(conditions)
    assert set(scores.columns) >= {"id", "speaker", "generator", "label", "condition", "score", "p_spoof"}
    assert set(scores["id"]) == {row[0] for row in desc["test"]}
    for m in [*report["per_condition"].values(), *report["per_generator"].values()]:
        assert 0.0 <= m["eer"] <= 1.0 and m["min_dcf"] >= 0.0 and m["cllr"] >= 0.0
        assert m["eer_ci"][0] <= m["eer"] + 1e-9 and m["eer_ci"][1] >= m["eer"] - 1e-9
        assert m["ci_unit"] in ("speaker", "trial") and "at_stored_threshold" in m
    curve = report["curves"]["clean/melvq"]
    assert curve["miss"][0] == 0.0 and curve["fa"][-1] == 0.0
    # the data must still hold the recorded test clips
    clips, _ = collect_clips([data / "real.jsonl"], [str(data / "lowpass.jsonl")])
    with pytest.raises(ValueError, match="recorded test clip not found"):
        recorded_test(clips, desc)


def test_gmm_standard_split_and_bad_input(data, tmp_path, capsys):
    out = tmp_path / "gmm"
    argv = ["detect", "train", *_data_flags(data), "--model", "lfcc-gmm", "--no-controls",
            "--calibration-folds", "2", "--out", str(out)]  # fmt: skip
    assert cli(argv) == 0
    meta = json.loads((out / "detector.json").read_text())
    assert meta["controls"]["trim_silence"] is False and meta["hyperparameters"]["n_components"] == 64
    cal = meta["training"]["calibration"]
    assert (
        cal["folds"] == 2
        and "out-of-fold" in cal["on"]
        and meta["training"]["eer_threshold"] == cal["eer_threshold"]
    )
    desc = json.loads((out / SPLIT_FILE).read_text())
    assert {row[3] for row in desc["test"]} == {"bonafide", "lowpass", "melvq"}
    capsys.readouterr()

    # an edited split.json (e.g. test ids moved into training) is refused too
    split_path = out / SPLIT_FILE
    original = split_path.read_text()
    desc = json.loads(original)
    desc["train_ids"].append(desc["test"][0][0])
    split_path.write_text(json.dumps(desc, indent=1) + "\n")
    assert cli(["detect", "eval", "--model", str(out), *_data_flags(data), "--out", str(tmp_path / "e")]) == 2
    assert "split.json: sha256 does not match" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    split_path.write_text(original)

    # tampered weights: a clear error naming the file, exit 2
    st = next(out.glob("*.safetensors"))
    raw = bytearray(st.read_bytes())
    raw[-1] ^= 0x01
    st.write_bytes(bytes(raw))
    assert cli(["detect", "score", str(data / "wavs" / "real_spk-a_0.wav"), "--model", str(out)]) == 2
    err = capsys.readouterr().err
    assert st.name in err and "sha256" in err

    # a class with no files; one speaker only; a target folder that is not a model
    (tmp_path / "wavs").mkdir()
    one, lp_one = tmp_path / "one.jsonl", tmp_path / "lp_one.jsonl"
    for name, manifest in (("real", one), ("lowpass", lp_one)):
        rows = [json.loads(line) for line in (data / f"{name}.jsonl").read_text().splitlines()[:4]]
        assert {r["speaker"] for r in rows} == {"spk-a"}
        for r in rows:
            (tmp_path / r["audio"]).write_bytes((data / r["audio"]).read_bytes())
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    broken = tmp_path / "broken.jsonl"
    for i in range(2):
        (tmp_path / "wavs" / f"broken{i}.wav").write_bytes(b"RIFF junk")
    broken.write_text("".join(json.dumps({"id": f"b{i}", "audio": f"wavs/broken{i}.wav", "speaker": f"x{i}"})
                              + "\n" for i in range(2)))  # fmt: skip
    cases = [
        (["--bonafide", str(data / "real.jsonl")], "spoof class has no files"),
        ([*_data_flags(data), "--spoof", str(broken)], "2 unreadable audio file(s)"),
        # held out at test fraction 0.5, 2 training speakers: too few for the default 3 folds
        (
            [*_data_flags(data), "--holdout-generator", "melvq", "--seed", "1", "--test-fraction", "0.5"],
            "3 speaker-disjoint folds need at least 3 speakers",
        ),
        (["--bonafide", str(one), "--spoof", str(lp_one)], "at least two speakers"),
    ]
    for flags, message in cases:
        assert cli(["detect", "train", *flags, "--model", "lfcc-lr", "--out", str(tmp_path / "m")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "m").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert cli(["detect", "train", *_data_flags(data), "--model", "lfcc-lr", "--out", str(busy)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
