"""The scoring pipeline end to end on real (eSpeak) speech with the real offline scorers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
import torch

from evaluation.runs.generators import CommandGenerator, GenRequest, load_generator
from evaluation.runs.run import RunOptions, score
from evaluation.runs.rundir import RunLockedError, exclusive, records
from evaluation.runs.summary import compare_runs, merge, summarize
from evaluation.scorers.asr import compat_options
from evaluation.scorers.registry import metric_specs
from evaluation.scorers.scoring import Scorers, ScoringConfig
from evaluation.scorers.wer import normalize
from evaluation.testsets.testset import TestSet, TestSetOptions, build_test_set, cut_prompt
from valle.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 2


@pytest.fixture(scope="module")
def setup(espeak_corpus, tmp_path_factory):
    """A 6-item test set and a folder 'generator' that returns each item's own recording, except one
    missing file and one unreadable file."""
    tmp = tmp_path_factory.mktemp("score")
    ts = build_test_set(
        read_manifest(espeak_corpus / "manifest.jsonl"), TestSetOptions(min_seconds=1.0, max_items=6)
    )
    ts_path = ts.save(tmp / "testset.jsonl")
    outputs = tmp / "outputs"
    outputs.mkdir()
    for it in ts.items[:4]:
        shutil.copy(it.target_audio, outputs / f"{it.id}.wav")
    (outputs / f"{ts.items[4].id}.wav").write_bytes(b"RIFF not really a wav")  # unreadable
    return tmp, ts, ts_path, outputs  # item 5 has no file at all


@pytest.fixture(scope="module")
def scorers():
    return Scorers()  # the offline stack, loaded once for every run in this module


@pytest.fixture(scope="module")
def sharded_run(setup, scorers):
    """Two torchrun-style ranks run one after the other, then merged."""
    tmp, ts, _, outputs = setup
    out = tmp / "sharded"
    options = RunOptions(generator=f"folder:{outputs}", chunk_size=CHUNK)
    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE")}
    try:
        for rank in (0, 1):
            os.environ.update(RANK=str(rank), WORLD_SIZE="2")
            score(out, ts, options, progress=False, scorers=scorers)
            assert not (out / "summary.json").exists()  # no rank merges on its own
    finally:
        for k, v in env.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
    assert (out / "tables" / "scores.rank1-of-2.parquet").is_file()
    merge(out)
    return out


def test_run_directory_tables_and_failure_rows(sharded_run, setup):
    _, ts, _, _ = setup
    scores = pd.read_parquet(sharded_run / "tables" / "scores.parquet")
    assert list(scores["id"]) == sorted(it.id for it in ts.items)
    status = dict(zip(scores["id"], scores["status"], strict=True))
    assert [status[it.id] for it in ts.items] == ["ok"] * 4 + ["generation_failed"] * 2
    failed = scores[scores["status"] == "generation_failed"]
    assert failed["error"].str.contains("unreadable|not found").all()
    assert (failed["wer"] == 1.0).all()  # charged to the generator as all deletions
    ok = scores[scores["status"] == "ok"]
    # each output is the target recording itself: what the ASR ceiling and same-voice similarity look like
    refs = pd.read_parquet(sharded_run / "tables" / "references.parquet").set_index("id")
    assert (ok.set_index("id")["wer"] == refs.loc[ok["id"], "wer"]).all()
    assert (ok["sim_target"] > 0.99).all() and (ok["sim_prompt"] > 0.6).all()
    assert ok["dnsmos_ovrl"].between(1, 5).all() and (ok["speech_ratio"] > 0.5).all()
    assert ok["flag_code_loop"].isna().all()  # a folder of wavs has no codes: not measurable, not "clean"


def test_summary_counts_and_intervals(sharded_run):
    import json

    s = json.loads((sharded_run / "summary.json").read_text())
    assert s["counts"]["generation_failed"] == 2 and s["counts"]["scored_rows"] == 4
    m = s["metrics"]
    assert m["generation_failure_rate"]["value"] == pytest.approx(2 / 6, abs=1e-4)
    assert m["wer"]["low"] <= m["wer"]["value"] <= m["wer"]["high"] and m["wer"]["n"] == 6
    assert m["wer_generated_only"]["value"] < m["wer"]["value"]
    assert m["sim_target"]["n"] == 4 and "ceiling_wer" in m


def test_asr_unreliable_items_are_listed_with_reasons_and_left_out_of_reliable_wer():
    """Item b: the ASR gets its real recording 75% wrong; item c: the ASR's fallback is exhausted on
    the real recording; item d, seed 1: exhausted on the output. Plain WER keeps everything."""
    rows = [
        {
            "id": i,
            "seed": seed,
            "status": "ok",
            "error": None,
            "substitutions": e,
            "deletions": 0,
            "insertions": 0,
            "n_ref_words": 4,
            "wer": e / 4,
            "watermark_verified": None,
            "any_flag": False,
            "asr_fallback_exhausted": (i, seed) == ("d", 1),
        }
        for i, e in (("a", 0), ("b", 1), ("c", 4), ("d", 2))
        for seed in (0, 1)
    ]
    refs = pd.DataFrame(
        {
            "id": i,
            "substitutions": 3 * (i == "b"),
            "deletions": 0,
            "insertions": 0,
            "n_ref_words": 4,
            "wer": 0.75 * (i == "b"),
            "gt_asr_fallback_exhausted": i == "c",
        }
        for i in "abcd"
    )
    s = summarize(pd.DataFrame(rows), refs, {"seeds": [0, 1]})
    assert s["asr_unreliable"] == [
        {"id": "b", "seed": None, "reason": "reference_wer_over_50pct"},
        {"id": "c", "seed": None, "reason": "reference_fallback_exhausted"},
        {"id": "d", "seed": 1, "reason": "output_fallback_exhausted"},
    ]
    assert s["counts"]["asr_unreliable_items"] == 3
    assert s["metrics"]["wer"]["value"] == pytest.approx(14 / 32, abs=1e-4)
    # left: item a (0 errors, both seeds) and item d seed 0 (2 errors) = 2 / 12 words
    assert s["metrics"]["wer_asr_reliable_items"]["value"] == pytest.approx(2 / 12, abs=1e-4)


def test_every_summary_metric_is_described_by_the_scorer_registry(sharded_run):
    metrics = set(json.loads((sharded_run / "summary.json").read_text())["metrics"])
    listed = set(metric_specs())
    assert metrics <= listed, sorted(metrics - listed)
    # what a folder generator cannot give: AR codes and its own watermark read-back
    assert listed - metrics == {"repetition_ratio", "watermark_verified_rate"}


def test_merge_is_idempotent(sharded_run):
    before = [(sharded_run / p).read_bytes() for p in ("tables/scores.parquet", "summary.json")]
    merge(sharded_run)
    assert [(sharded_run / p).read_bytes() for p in ("tables/scores.parquet", "summary.json")] == before


def test_kill_9_then_resume_equals_the_uninterrupted_run(sharded_run, setup):
    tmp, _, ts_path, outputs = setup
    out = tmp / "killed"
    cmd = [sys.executable, "-m", "evaluation.cli.main", "score", "--generator", f"folder:{outputs}",
           "--testset", str(ts_path), "--out", str(out), "--chunk-size", str(CHUNK), "--quiet"]  # fmt: skip
    # same thread count as this process: int8 beam search and GE2E change in the last bits with it
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "tables" / "parts" / "scores" / "c00000.parquet"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "tables" / "parts" / "scores" / "c00002.parquet").exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wer" in done.stdout
    a = pd.read_parquet(out / "tables" / "scores.parquet")
    b = pd.read_parquet(sharded_run / "tables" / "scores.parquet")
    pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)])
    diff = compare_runs(out, sharded_run)
    assert diff["n_items"] == 6 and diff["diff"]["wer"]["value"] == 0.0


def test_a_different_setting_in_the_same_directory_is_refused(sharded_run, setup):
    _, ts, _, outputs = setup
    with pytest.raises(ValueError, match=r"different settings.*seeds"):
        score(
            sharded_run,
            ts,
            RunOptions(generator=f"folder:{outputs}", chunk_size=CHUNK, seeds=(0, 1)),
            ("generate",),
        )


def test_stages_run_separately_in_one_directory(setup, scorers, sharded_run, tmp_path):
    _, ts, _, outputs = setup
    options = RunOptions(generator=f"folder:{outputs}", chunk_size=CHUNK)
    small = TestSet(ts.items[:2])
    score(tmp_path, small, options, ("generate",), progress=False)
    assert not (tmp_path / "tables" / "scores.parquet").exists()
    score(tmp_path, small, options, ("score",), progress=False, scorers=scorers)
    a = pd.read_parquet(tmp_path / "tables" / "scores.parquet")
    b = pd.read_parquet(sharded_run / "tables" / "scores.parquet").iloc[:2]
    # same values; an all-empty text column of a 2-row table is stored with a looser dtype
    a, b = (t[sorted(t.columns)].astype(object) for t in (a, b))
    pd.testing.assert_frame_equal(a.where(a.notna(), None), b.where(b.notna(), None))


def test_folder_chunk_mixing_an_invalid_item_with_good_ones_scores(espeak_corpus, scorers, tmp_path):
    """A speaker with one utterance makes an invalid item (no cross-sentence prompt); in a chunk with
    good items its generation row lacks columns, which parquet returns as NaN (it once crashed here)."""
    utts = read_manifest(espeak_corpus / "manifest.jsonl")
    lone = replace(utts[0], id="lone_0", speaker="lone")
    ts = build_test_set([lone, *utts[3:6]], TestSetOptions(min_seconds=1.0))
    assert [it.problem is not None for it in ts.items].count(True) == 1
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    for it in ts.items:
        shutil.copy(it.target_audio, outputs / f"{it.id}.wav")
    options = RunOptions(generator=f"folder:{outputs}", chunk_size=4)
    score(tmp_path / "run", ts, options, progress=False, scorers=scorers)
    rows = pd.read_parquet(tmp_path / "run" / "tables" / "scores.parquet").set_index("id")
    assert rows.loc["lone_0", "status"] == "invalid_item"
    assert (rows.drop(index="lone_0")["status"] == "ok").all()
    assert rows.drop(index="lone_0")["flag_max_length"].isna().all()  # a folder reports no stop reason
    assert len(rows) == 4


def test_seed_tts_eval_convention_end_to_end(setup, sharded_run, tmp_path):
    """`--asr-compat seed-tts-eval`: the card says so, WER text is run_wer.py's (punctuation gone, case
    folded, no spelling normalisation), and reference rows carry the ASR's fallback flag."""
    _, ts, _, outputs = setup
    config = ScoringConfig(asr_options=compat_options("seed-tts-eval"), quality=False, vad=False)
    options = RunOptions(generator=f"folder:{outputs}", chunk_size=CHUNK, scoring=config)
    score(tmp_path / "run", ts, options, progress=False, scorers=Scorers(config))
    card = json.loads((tmp_path / "run" / "config.json").read_text())["scorers"]["asr"]
    assert card["compat"] == "seed-tts-eval" and card["text_normalizer"] == "seed-tts-eval"
    assert card["beam_size"] == 1 and card["temperatures"] == [0.0]
    rows = pd.read_parquet(tmp_path / "run" / "tables" / "scores.parquet")
    ok = rows[rows["status"] == "ok"]
    assert len(ok) == 4
    for hyp, hyp_norm in zip(ok["hyp"], ok["hyp_norm"], strict=True):
        assert hyp_norm == normalize(hyp, "seed-tts-eval") and hyp_norm == hyp_norm.lower()
    refs = pd.read_parquet(tmp_path / "run" / "tables" / "references.parquet")
    assert refs["gt_asr_fallback_exhausted"].notna().all()
    # the same model under another convention makes other numbers: never compared
    with pytest.raises(ValueError, match=r"asr scorers differ .*compat"):
        compare_runs(tmp_path / "run", sharded_run)


def test_a_second_writer_is_refused_and_a_killed_writers_lock_does_not_block(setup, tmp_path):
    _, ts, _, outputs = setup
    options = RunOptions(generator=f"folder:{outputs}", chunk_size=CHUNK)
    with exclusive(tmp_path, "score.rank0-of-1"):
        with pytest.raises(RunLockedError, match=rf"{tmp_path} is in use by pid {os.getpid()}"):
            score(tmp_path, ts, options, ("generate",), progress=False)
    # a process that took the lock and died by SIGKILL: the kernel released it
    hold = (
        "import time; from pathlib import Path; from evaluation.runs.rundir import exclusive\n"
        f"with exclusive(Path({str(tmp_path)!r}), 'audit'):\n    print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"pid {holder.pid}"), exclusive(tmp_path, "audit"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with exclusive(tmp_path, "audit"):
        pass
    score(tmp_path, TestSet(ts.items[:2]), options, ("generate",), progress=False)
    assert (tmp_path / "tables" / "generations.rank0-of-1.parquet").is_file()


def test_records_turn_missing_cells_into_none(tmp_path):
    pd.DataFrame([{"a": [1, 2], "b": "x"}, {"b": "y"}]).to_parquet(tmp_path / "t.parquet")
    first, second = records(pd.read_parquet(tmp_path / "t.parquet"))
    assert list(first["a"]) == [1, 2] and second == {"a": None, "b": "y"}


def test_command_generator_passes_values_as_arguments_and_records_failures(setup, tmp_path):
    _, ts, _, _ = setup
    it = ts.items[0]
    prompt = cut_prompt(it, tmp_path)
    req = GenRequest(it, 0, 1, prompt, tmp_path / "out" / "x.s0.wav")
    req.out_wav.parent.mkdir()
    py = sys.executable
    copy = f"{py} -c 'import shutil,sys; shutil.copy(sys.argv[1], sys.argv[2])' {{prompt_wav}} {{out_wav}}"
    (ok,) = CommandGenerator(copy).generate([req])
    assert ok.status == "ok" and ok.seconds == pytest.approx(sf.info(prompt).duration, abs=0.01)
    fail = f"{py} -c 'import sys; sys.exit(\"no voice for: \" + sys.argv[1])' {{text}} {{out_wav}}"
    (bad,) = CommandGenerator(fail).generate([req])
    assert bad.status == "failed" and "exited 1" in bad.error and it.text[:20] in bad.error
    with pytest.raises(ValueError, match="out_wav"):
        CommandGenerator("tts {text}")
    with pytest.raises(ValueError, match="unknown generator kind"):
        load_generator("magic:x")


def test_valle_checkpoint_generates_watermarked_rows_with_codes(setup, tmp_path, one_torch_thread):
    _, ts, _, _ = setup
    small = TestSet(ts.items[:2])
    score(
        tmp_path / "run",
        small,
        RunOptions(generator=f"valle:{ROOT / 'checkpoints' / 'demo'}", chunk_size=2),
        ("generate",),
        progress=False,
    )
    gen = pd.read_parquet(tmp_path / "run" / "tables" / "generations.parquet")
    assert (gen["status"] == "ok").all() and gen["stop_reason"].isin(["eos", "max_length"]).all()
    assert gen["watermark_verified"].all() and (gen["ar_codes"].map(len) > 10).all()
    assert (tmp_path / "run" / "generated" / f"{small.items[0].id}.s0.json").is_file()
