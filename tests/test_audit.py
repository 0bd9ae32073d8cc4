"""`valle audit` end to end on four committed demo items with the demo checkpoint (offline profile).

One real audit is run per module (about a minute on two cores); the tests read what it wrote and
re-run single stages on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from evaluation.audit.stages import run_audit
from evaluation.audit.state import STAGES, AuditOptions, stage_plan
from evaluation.testsets.demo_set import DEMO_DIR, demo_testset
from evaluation.testsets.testset import TestSet

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
OPTIONS = AuditOptions(
    generator=f"valle:{CHECKPOINT}",
    chunk_size=2,
    quality=False,
    watermark_clips=2,
    watermark_attacks=("mp3_32k", "speed_1.1"),
    detect_degradations=("white_noise_20db",),
    bootstrap=50,
)


@pytest.fixture(scope="module")
def valle_home(tmp_path_factory):
    """Keys are created on first use in $VALLE_HOME: keep this module's keys out of the user's. The
    watermark key is written here with a fixed secret, so the marks (and their margins) do not depend
    on a random draw; the signing key is still created on first use."""
    home = tmp_path_factory.mktemp("valle_home")
    (home / "keys").mkdir(mode=0o700)
    key_file = home / "keys" / "watermark.key.json"
    key_file.write_text(json.dumps({"key_id": "default", "secret": bytes(range(100, 132)).hex()}))
    key_file.chmod(0o600)
    before = os.environ.get("VALLE_HOME")
    os.environ["VALLE_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("VALLE_HOME")
    else:
        os.environ["VALLE_HOME"] = before


@pytest.fixture(scope="module")
def small_testset() -> TestSet:
    ts = demo_testset(real_manifest=None)
    items = ts.items[:4]  # two eSpeak NG speakers, two held-out sentences each
    assert len({it.speaker for it in items}) == 2
    return TestSet(items, {}, ts.source)


@pytest.fixture(scope="module")
def audited(tmp_path_factory, valle_home, small_testset, one_torch_thread):
    out = tmp_path_factory.mktemp("audit") / "run"
    audit = run_audit(out, small_testset, OPTIONS, progress=False, log=lambda s: None)
    return out, audit


def test_the_default_test_set_reads_nothing_outside_the_repository(real_speech_dir, tmp_path):
    inside = str(DEMO_DIR.resolve())
    default = demo_testset()
    assert all(it.target_audio.startswith(inside) for it in default.items)
    with pytest.raises(FileNotFoundError, match=r"gone\.jsonl not found"):
        demo_testset(tmp_path / "gone.jsonl")
    extra = demo_testset(real_speech_dir / "manifest.jsonl")  # only when asked for
    real = [it for it in extra.items if not it.target_audio.startswith(inside)]
    assert len(extra.items) == len(default.items) + len(real) and real
    assert all(it.target_audio.startswith(str(real_speech_dir.resolve())) for it in real)


def test_demo_testset_is_committed_and_valid():
    from valle.manifest import read_manifest

    utts = read_manifest(DEMO_DIR / "manifest.jsonl")  # checks every file exists
    assert len(utts) == 12 and len({u.speaker for u in utts}) == 6
    ts = demo_testset(real_manifest=None)
    assert len(ts.items) == 12 and not ts.problems
    assert all(it.prompt_source != it.id for it in ts.items)  # cross-sentence prompts


def test_every_stage_runs_and_writes_its_tables(audited):
    out, audit = audited
    assert {k: v.status for k, v in audit.stages.items()} == dict.fromkeys(STAGES, "done")
    for table in ("generations", "scores", "verify", "detector", "asv_trials", "watermark"):
        assert len(pd.read_parquet(out / "tables" / f"{table}.parquet")) > 0, table
    saved = json.loads((out / "audit.json").read_text())
    assert saved["format"] == "valle-audit" and saved["profile"] == "offline"
    assert all(saved["stages"][s]["seconds"] is not None for s in STAGES)
    for name in ("scorecard.json", "scorecard.md", "scorecard.html"):
        assert (out / name).stat().st_size > 0


def test_outputs_are_marked_signed_and_verified(audited):
    out, _ = audited
    verify = pd.read_parquet(out / "tables" / "verify.parquet")
    assert len(verify) == 4
    assert (verify["verdict"] == "authentic").all(), verify[["key", "verdict", "reasons"]]
    assert sorted(verify["key"]) == sorted(
        f"{it}.s0" for it in pd.read_parquet(out / "tables" / "scores.parquet")["id"]
    )


def test_no_secret_is_written_into_the_run_directory(audited, valle_home):
    out, _ = audited
    secret = json.loads((valle_home / "keys" / "watermark.key.json").read_text())["secret"]
    private_pem = (valle_home / "keys" / "signing.pem").read_bytes()
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and b"PRIVATE KEY" not in data, path
            assert private_pem not in data, path
    assert (out / "keys" / "signing.public.pem").is_file()


def test_watermark_stage_attacks_generated_and_real_files(audited):
    out, _ = audited
    wm = pd.read_parquet(out / "tables" / "watermark.parquet").set_index("attack")
    assert list(wm.index) == ["none", "mp3_32k", "speed_1.1"]
    assert wm.loc["none", "n"] == 2 and wm.loc["none", "n_unmarked"] == 2
    assert wm.loc["none", "tpr"] == 1.0  # every output is marked as written
    assert 0 <= wm.loc["none", "tpr_low"] <= wm.loc["none", "tpr"] <= wm.loc["none", "tpr_high"] <= 1


def test_a_stage_can_be_rerun_alone(audited, small_testset):
    out, _ = audited
    before = json.loads((out / "audit.json").read_text())["stages"]
    again = run_audit(out, small_testset, OPTIONS, only=("watermark",), progress=False, log=lambda s: None)
    after = json.loads((out / "audit.json").read_text())["stages"]
    assert after["generate"] == before["generate"]  # not redone
    assert after["watermark"]["status"] == "done" and again.stages["report"].status == "done"


def test_different_options_in_the_same_directory_are_refused(audited, small_testset):
    out, _ = audited
    other = AuditOptions(**{**OPTIONS.__dict__, "watermark_clips": 3})
    with pytest.raises(ValueError, match="watermark_clips"):
        run_audit(out, small_testset, other, progress=False, log=lambda s: None)


def test_another_test_set_in_the_same_directory_is_refused(audited, small_testset):
    out, _ = audited
    other = TestSet(small_testset.items[:3], {}, small_testset.source)
    with pytest.raises(ValueError, match="holds a different test set"):
        run_audit(out, other, OPTIONS, progress=False, log=lambda s: None)


def test_a_failed_stage_is_recorded_and_the_scorecard_still_written(tmp_path, valle_home, small_testset):
    out = tmp_path / "run"
    audit = run_audit(out, small_testset, OPTIONS, only=("detect",), progress=False, log=lambda s: None)
    assert audit.stages["detect"].status == "failed"
    assert "generate stage has not finished" in audit.stages["detect"].error
    assert audit.stages["generate"].status == "skipped"
    assert audit.stages["report"].status == "done"
    card = json.loads((out / "scorecard.json").read_text())
    assert "detect" in json.dumps(card["failures"])


def test_stage_plan():
    assert stage_plan() == STAGES
    assert stage_plan(("score",)) == ("score", "report")
    assert "watermark" not in stage_plan(skip=("watermark",))
    with pytest.raises(ValueError, match="unknown stage 'scoring'"):
        stage_plan(("scoring",))


def test_cli_help_has_examples(capsys):
    from evaluation.cli.main import main

    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--profile" in text and "valle compare" in text


def test_a_killed_audit_resumes(tmp_path, valle_home, small_testset):
    """SIGKILL after the first generated chunk; the same command then finishes without redoing it."""
    import signal
    import subprocess
    import sys
    import time

    ts_path = small_testset.save(tmp_path / "testset.jsonl")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evaluation.cli.main", "audit", "--generator", f"valle:{CHECKPOINT}",
           "--testset", str(ts_path), "--out", str(out), "--no-quality", "--chunk-size", "2",
           "--watermark-clips", "1", "--bootstrap", "20", "--quiet"]  # fmt: skip
    first_chunk = out / "tables" / "parts" / "generations" / "c00000.parquet"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not first_chunk.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first_chunk.is_file(), "the audit never finished its first chunk"
    stamp = first_chunk.stat().st_mtime_ns
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first_chunk.stat().st_mtime_ns == stamp  # the finished chunk was not generated again
    stages = json.loads((out / "audit.json").read_text())["stages"]
    assert all(st["status"] == "done" for st in stages.values()), stages
    assert len(pd.read_parquet(out / "tables" / "generations.parquet")) == 4
    assert "scorecard:" in done.stdout and (out / "scorecard.html").is_file()


def test_paper_profile_with_the_demo_checkpoint_is_refused_before_any_work(tmp_path, small_testset):
    from evaluation.audit.profiles import ProfileError

    out = tmp_path / "run"
    options = AuditOptions(**{**OPTIONS.__dict__, "profile": "paper"})
    with pytest.raises(ProfileError) as err:
        run_audit(out, small_testset, options, progress=False, log=lambda s: None)
    text = str(err.value)
    assert "vqvae_24khz" in text and "encodec_24khz_6kbps" in text  # the checkpoint/profile mismatch
    assert "large-v3" in text and "sha256" in text  # and every missing paper model, with its hash
    assert not out.exists()
