"""Robustness metrics on constructed scores, a payload battery, Perth on real speech, and the CLI."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest

from watermark.attacks import attack_bank, select
from watermark.base import Detection
from watermark.robustness import (
    auc,
    binomial_p,
    bits_correct,
    clean_fpr_stats,
    fix_threshold,
    markdown_table,
    quality,
    rate_at,
    run_battery,
)


def test_fix_threshold_allows_at_most_the_target_false_positives():
    scores = np.arange(100) / 100  # 0.00 ... 0.99
    t1 = fix_threshold(scores, 0.01)
    assert 0.98 < t1 <= 0.99 and rate_at(scores, t1) == 0.01  # exactly one of 100 (0.99) flagged
    t01 = fix_threshold(scores, 0.001)
    assert t01 > 0.99 and rate_at(scores, t01) == 0.0  # 0.1% of 100 clips: no false positive allowed
    t5 = fix_threshold(scores, 0.05)
    assert 0.94 < t5 <= 0.95 and rate_at(scores, t5) == 0.05  # 0.95 ... 0.99 flagged
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.normal(size=rng.integers(5, 400)).round(1)  # many ties
        fpr = rng.uniform(0, 0.3)
        t = fix_threshold(s, fpr)
        assert rate_at(s, t) <= fpr
        below = s[s < t]
        if below.size:  # smallest such threshold: dropping to the next score would exceed the target
            assert rate_at(s, below.max()) > fpr
    with pytest.raises(ValueError, match="finite"):
        fix_threshold([0.1, np.nan], 0.01)


def test_tpr_auc_and_binomial_p_match_hand_computed_values():
    marked, unmarked = [0.9, 0.8, 0.3, 0.6], [0.1, 0.4, 0.35, 0.2]
    assert rate_at(marked, 0.5) == 0.75 and rate_at(unmarked, 0.5) == 0.0
    # pairs (marked > unmarked): 0.9 -> 4, 0.8 -> 4, 0.3 -> 2 (0.1, 0.2), 0.6 -> 4: 14 of 16
    assert auc(marked, unmarked) == pytest.approx(14 / 16)
    assert auc([0.5, 0.5], [0.5]) == pytest.approx(0.5)  # ties count half
    assert binomial_p(16, 16) == pytest.approx(2.0**-16)
    assert binomial_p(8, 16) == pytest.approx(sum(math.comb(16, k) for k in range(8, 17)) / 2**16)
    assert binomial_p(0, 4) == pytest.approx(1.0)
    assert math.isnan(binomial_p(0, 0))
    assert bits_correct((1, 0, 1, 1), (1, 1, 1, 0)) == (2, 4)
    assert bits_correct(None, (1, 0)) == (0, 0)


def test_clean_fpr_stats_report_what_fifty_clips_can_resolve():
    s = np.linspace(0.0, 0.2, 50)
    st = clean_fpr_stats(s, 0.01)
    assert st["n_clean"] == 50 and st["false_positives"] == 0 and not st["resolvable"]
    assert st["threshold"] > 0.2
    assert st["fpr_clean_loo"] == pytest.approx(1 / 50)  # held out, the largest clip beats the others
    assert st["fpr_clean_upper95"] == pytest.approx(1 - 0.025 ** (1 / 50))  # Clopper-Pearson, 0 of 50
    assert clean_fpr_stats(np.linspace(0, 1, 200), 0.01)["resolvable"]


class ToneKeyWatermarker:
    """A small real payload watermark for exercising the battery: bit i is the sign of a faint sine at
    600 + 200 i Hz; detection correlates with each carrier. Polarity inversion flips every bit."""

    name = "tone-key"
    payload_bits = 8
    threshold = 0.5
    amp = 0.01

    def card(self) -> dict:
        return {"name": self.name, "threshold": self.threshold}

    def _carriers(self, n: int, sr: int) -> np.ndarray:
        t = np.arange(n) / sr
        return np.stack([np.sin(2 * np.pi * (600 + 200 * i) * t) for i in range(self.payload_bits)])

    def embed(self, wav, sr, payload=None):
        signs = 2 * np.asarray(payload, float) - 1
        return (wav + self.amp * signs @ self._carriers(len(wav), sr)).astype(np.float32)

    def detect(self, wav, sr):
        c = 2 / len(wav) * self._carriers(len(wav), sr) @ wav.astype(float)
        score = float(np.clip(np.mean(np.abs(c)) / self.amp, 0, 1))
        return Detection(score=score, detected=score >= self.threshold, payload=tuple(int(v > 0) for v in c))


def test_battery_with_a_payload_backend_scores_bits_and_p_values():
    rng = np.random.default_rng(3)
    clips = [((0.05 * rng.standard_normal(16000)).astype(np.float32), 16000, f"noise{i}") for i in range(4)]
    attacks = select(attack_bank(), "polarity,gain_0.1")
    per_clip, per_attack, thr = run_battery(
        ToneKeyWatermarker(), clips, attacks, with_quality=False, progress=False
    )
    assert len(per_clip) == 4 * 3 and list(per_attack["attack"]) == ["none", "gain_0.1", "polarity"]
    rows = per_attack.set_index("attack")
    assert rows.loc["none", "bit_acc"] == 1.0 and rows.loc["none", "p_value_median"] == pytest.approx(2.0**-8)
    assert rows.loc["polarity", "bit_acc"] == 0.0 and rows.loc["polarity", "p_value_median"] == pytest.approx(
        1.0
    )
    assert rows.loc["none", "auc"] == 1.0 and rows.loc["none", "tpr_1pct"] == 1.0
    # gain 0.1 shrinks the carriers (score = carrier level / amp) 10x; still above the clean scores
    assert rows.loc["gain_0.1", "score_marked_mean"] == pytest.approx(0.1, abs=0.02)
    assert rows.loc["gain_0.1", "auc"] == 1.0 and rows.loc["gain_0.1", "bit_acc"] == 1.0
    assert set(thr) == {"1pct", "0.1pct", "backend"} and thr["1pct"]["n_clean"] == 4
    with pytest.raises(ValueError, match="2 payloads for 4 clips"):
        run_battery(ToneKeyWatermarker(), clips, attacks, payloads=[(0,) * 8] * 2, progress=False)


@pytest.fixture(scope="module")
def perth():
    from watermark import load_watermarker

    return load_watermarker("perth")


@pytest.fixture(scope="module")
def two_real_clips(real_speech_dir, real_speech_rows):
    from watermark.bench_cli import read_mono

    rows = [r for r in real_speech_rows if r["sample_rate"] in (16000, 24000)][:2]
    return [(read_mono(real_speech_dir / r["audio"])[0][: 3 * r["sample_rate"]], r["sample_rate"], r["id"])
            for r in rows]  # fmt: skip


def test_perth_battery_on_real_speech(perth, two_real_clips, one_torch_thread):
    attacks = select(attack_bank(), "mp3_64k,speed_1.25,splice_clean_50")
    per_clip, per_attack, thr = run_battery(perth, two_real_clips, attacks, progress=False)
    assert len(per_clip) == 2 * 4 and per_clip["bit_acc"].isna().all()  # Perth marks presence only
    none = per_attack.set_index("attack").loc["none"]
    assert none["tpr_1pct"] == 1.0 and none["auc"] == 1.0 and none["fpr_attacked_1pct"] == 0.0
    assert math.isnan(none["bit_acc"]) and not thr["1pct"]["resolvable"]
    base = per_clip[per_clip["attack"] == "none"]
    assert (
        (base["snr_db"] > 15).all() and (base["stoi"] > 0.9).all() and base["pesq_wb"].between(3, 4.7).all()
    )
    table = markdown_table(per_attack)
    assert table.splitlines()[2].startswith("| none | 1.000 | 0.000 | 1.000 | 1.000 |") and "n/a" in table
    # the decision columns are the scorecard's computation: Wilson intervals on the same counts
    assert none["tpr"] == 1.0 and none["n"] == 2 and none["tpr_low"] == pytest.approx(0.342, abs=1e-3)


def test_quality_of_identical_and_noisy_audio(two_real_clips):
    wav, sr, _ = two_real_clips[0]
    q = quality(wav, wav, sr)
    assert q["snr_db"] == math.inf and q["stoi"] == pytest.approx(1.0, abs=1e-6) and q["pesq_wb"] > 4.5
    noise = np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32)
    noise *= np.sqrt(np.mean(wav**2) / np.mean(noise**2) / 10)  # 10 dB SNR
    q = quality(wav + noise, wav, sr)
    assert q["snr_db"] == pytest.approx(10, abs=0.01) and q["pesq_wb"] < 2.0
    with pytest.raises(ValueError, match="equal lengths"):
        quality(wav[:-1], wav, sr)


def test_bench_cli_writes_tables_and_refuses_escaping_paths(tmp_path, real_speech_dir, real_speech_rows):
    from watermark import bench_cli

    rows = [r for r in real_speech_rows if r["sample_rate"] == 16000][:2]
    clips = bench_cli.load_clips(real_speech_dir / "manifest.jsonl", max_clips=2)
    assert [c[2] for c in clips] == [r["id"] for r in real_speech_rows[:2]] and clips[0][
        0
    ].dtype == np.float32
    escaping = tmp_path / "escape.jsonl"
    escaping.write_text(json.dumps({"audio": "../outside.wav"}) + "\n")
    with pytest.raises(ValueError, match="escapes the manifest's folder"):
        bench_cli.load_clips(escaping)
    with pytest.raises(FileNotFoundError, match="no audio files"):
        bench_cli.load_clips(tmp_path)

    import soundfile as sf

    audio = tmp_path / "audio"
    audio.mkdir()
    for r in rows:  # a folder of wavs (cut to 2 s to keep the test fast)
        wav, sr = bench_cli.read_mono(real_speech_dir / r["audio"])
        sf.write(audio / f"{r['id']}.wav", wav[: 2 * sr], sr)
    parser = argparse.ArgumentParser()
    bench_cli.add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(
        ["watermark-bench", "--audio", str(audio), "--attacks", "polarity", "--out", str(out)]
    )
    assert args.func(args) == 0
    per_attack = pd.read_parquet(out / "per_attack.parquet")
    assert list(per_attack["attack"]) == ["none", "polarity"]
    assert len(pd.read_parquet(out / "per_clip.parquet")) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_clips"] == 2 and summary["watermarker"]["name"] == "perth"
    assert "no EnCodec weights" in summary["skipped_attacks"]["encodec_6kbps"]
    assert summary["detect_seconds_per_audio_second"] > 0 and 3 < summary["quality"]["pesq_wb"] <= 4.7
    # the keyed backend: the same table and the same decision figures
    key_file = tmp_path / "bench.key.json"  # a fixed key: tests do not depend on a random draw
    key_file.write_text(json.dumps({"key_id": "bench", "secret": bytes(range(32)).hex()}))
    key_file.chmod(0o600)
    keyed = parser.parse_args(
        ["watermark-bench", "--audio", str(audio), "--attacks", "polarity", "--watermark", "keyed",
         "--key-file", str(key_file), "--no-quality", "--out", str(tmp_path / "keyed")]
    )  # fmt: skip
    assert keyed.func(keyed) == 0
    rows = pd.read_parquet(tmp_path / "keyed" / "per_attack.parquet").set_index("attack")
    assert rows.loc["none", "tpr"] == 1.0 and rows.loc["polarity", "tpr"] == 1.0
    assert rows.loc["none", "fpr"] == 0.0 and rows.loc["none", "bit_acc"] > 0.5
    text = (tmp_path / "keyed" / "summary.json").read_text()
    assert json.loads(text)["watermarker"]["name"] == "keyed" and bytes(range(32)).hex() not in text
    options = bench_cli.parse_options(["threshold=0.7", "generator=a.pth"])
    assert options == {"threshold": 0.7, "generator": "a.pth"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_cli.parse_options(["threshold"])
    bad = parser.parse_args(
        ["watermark-bench", "--audio", str(audio), "--attacks", "nope", "--out", str(out)]
    )
    with pytest.raises(ValueError, match="unknown attack"):
        bad.func(bad)


def test_bench_refuses_every_unusable_clip_by_name_before_any_work(tmp_path):
    import soundfile as sf

    from watermark import bench_cli

    sr = 16000
    t = np.arange(sr, dtype=np.float32) / sr
    clips = {
        "good": 0.3 * np.sin(2 * np.pi * 220 * t),
        "silent": np.zeros(sr, np.float32),
        "one": np.array([0.5], np.float32),
        "nan": np.where(t < 0.5, 0.1, np.nan).astype(np.float32),
        "clipped": np.clip(3 * np.sin(2 * np.pi * 220 * t), -1, 1),  # a full-scale clipped tone
    }
    for name, wav in clips.items():
        sf.write(tmp_path / f"{name}.wav", wav.astype(np.float32), sr, subtype="FLOAT")
    with pytest.raises(ValueError) as err:
        bench_cli.load_clips(tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"4 unusable clip(s) in {tmp_path}:"
    named = {line.strip().split(": ", 1)[0].rsplit("/", 1)[1]: line for line in lines[1:]}
    assert sorted(named) == ["clipped.wav", "nan.wav", "one.wav", "silent.wav"]
    assert "full scale" in named["clipped.wav"] and "NaN/Inf" in named["nan.wav"]
    assert "1 samples" in named["one.wav"] and "silent" in named["silent.wav"]
    # a manifest: an Inf clip and a row whose file is missing are listed with the rest
    sf.write(tmp_path / "inf.wav", np.where(t < 0.5, 0.1, np.inf).astype(np.float32), sr, subtype="FLOAT")
    rows = [{"id": n, "audio": f"{n}.wav"} for n in ("good", "inf", "gone", "silent")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as err:
        bench_cli.load_clips(tmp_path / "m.jsonl")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("3 unusable clip(s)")
    assert "inf.wav: 8000 NaN/Inf" in lines[1] and "not found" in lines[2] and "gone.wav" in lines[2]
