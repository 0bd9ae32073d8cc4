"""``valle compare`` on real scored runs: eSpeak speech scored by the offline ASR and speaker models."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest

from evaluation.cli import compare as compare_cli
from evaluation.runs.run import RunOptions, score
from evaluation.scorers.asr import ASROptions
from evaluation.scorers.scoring import Scorers, ScoringConfig
from evaluation.testsets.testset import TestSetOptions, build_test_set
from valle.manifest import read_manifest

# DNSMOS and VAD add nothing to what is tested here; greedy decoding keeps the ASR fast
CONFIG = ScoringConfig(asr_options=ASROptions(beam_size=1), quality=False, vad=False)


@pytest.fixture(scope="module")
def runs(espeak_corpus, tmp_path_factory, one_torch_thread):
    """Three real runs: ``good`` returns each item's own recording, ``wrong`` the next item's (other
    words), both on one 3-item test set; ``other`` is scored on a different (1-item) test set."""
    tmp = tmp_path_factory.mktemp("compare")
    rows = read_manifest(espeak_corpus / "manifest.jsonl")
    ts = build_test_set(rows, TestSetOptions(min_seconds=1.0, max_items=3))
    small = build_test_set(rows, TestSetOptions(min_seconds=1.0, max_items=1))
    good, wrong = tmp / "out_good", tmp / "out_wrong"
    good.mkdir(), wrong.mkdir()
    for i, it in enumerate(ts.items):
        shutil.copy(it.target_audio, good / f"{it.id}.wav")
        shutil.copy(ts.items[(i + 1) % len(ts.items)].target_audio, wrong / f"{it.id}.wav")
    scorers = Scorers(CONFIG)  # loaded once for every run
    out = {}
    for name, testset, folder in (("good", ts, good), ("wrong", ts, wrong), ("other", small, good)):
        options = RunOptions(generator=f"folder:{folder}", scoring=CONFIG)
        score(tmp / name, testset, options, progress=False, scorers=scorers)
        out[name] = tmp / name
    return out


def _cli(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="valle")
    compare_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser, parser.parse_args(["compare", *argv])


def test_table_has_every_run_and_a_run_against_itself_differs_by_exactly_zero(runs):
    result = compare_cli.compare([runs["good"], runs["wrong"], runs["good"]])
    assert [r["label"] for r in result["runs"]] == ["good", "wrong", "good (2)"]
    assert result["n_items"] == [None, 3, 3]
    summary = json.loads((runs["good"] / "summary.json").read_text())
    assert result["metrics"]["wer"]["values"][0] == summary["metrics"]["wer"]
    self_diffs = [m["diff"][2] for m in result["metrics"].values() if m["diff"][2] and m["diff"][2]["n"]]
    assert {"wer", "mean_utt_wer", "sim_target", "rate_any_flag"} <= {
        k for k, m in result["metrics"].items() if m["diff"][2] and m["diff"][2]["n"]
    }
    for d in self_diffs:
        assert (d["value"], d["low"], d["high"], d["excludes_zero"]) == (0.0, 0.0, 0.0, False)
    table = compare_cli.format_markdown(result)
    header = next(line for line in table.splitlines() if line.startswith("| metric"))
    assert header == "| metric | good | wrong | good (2) | wrong − good | good (2) − good |"
    wer_row = next(line for line in table.splitlines() if line.startswith("| wer |"))
    assert wer_row.endswith("+0.0000 [+0.0000, +0.0000] |")
    # DNSMOS was off and a folder of wavs has no codes: such rows are named once, not tabled as n/a
    assert "| dnsmos_ovrl |" not in table and "dnsmos_ovrl" in table.split("Not measured in any run:")[1]


def test_paired_difference_of_wrong_outputs_excludes_zero_and_is_marked(runs):
    result = compare_cli.compare([runs["good"], runs["wrong"]])
    d = result["metrics"]["wer"]["diff"][1]
    good, wrong = (result["metrics"]["wer"]["values"][i]["value"] for i in (0, 1))
    # the paired difference over the same items equals the difference of the corpus WERs
    assert d["value"] == pytest.approx(wrong - good, abs=1e-3) and d["value"] > 0.3
    assert d["low"] > 0 and d["excludes_zero"]
    wer_row = next(
        line for line in compare_cli.format_markdown(result).splitlines() if line.startswith("| wer |")
    )
    assert wer_row.endswith(" * |")
    # rows without a paired difference (e.g. the ASR ceiling) are shown per run, diff n/a
    assert result["metrics"]["ceiling_wer"]["diff"] == [None, None]


def test_different_test_sets_are_refused_naming_both_runs(runs):
    with pytest.raises(ValueError, match="different test sets") as err:
        compare_cli.compare([runs["good"], runs["other"]])
    assert str(runs["good"]) in str(err.value) and str(runs["other"]) in str(err.value)


def test_missing_run_or_unfinished_run_is_named(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"run {tmp_path / 'nope'}: no such directory"):
        compare_cli.compare([runs["good"], tmp_path / "nope"])
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=f"run {unfinished}: summary.json not found"):
        compare_cli.compare([unfinished, runs["good"]])
    with pytest.raises(ValueError, match="at least two runs"):
        compare_cli.compare([runs["good"]])


def test_cli_writes_json_and_markdown_and_prints_json(runs, tmp_path, capsys):
    parser, args = _cli([str(runs["good"]), str(runs["wrong"]), "--out", str(tmp_path / "cmp")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| metric | good | wrong | wrong − good |" in printed
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["baseline"] == "good" and saved["metrics"]["wer"]["diff"][1]["excludes_zero"]
    assert (tmp_path / "cmp" / "compare.md").read_text() in printed
    _, args = _cli([str(runs["good"]), str(runs["wrong"]), "--json"])
    args.func(args)
    assert json.loads(capsys.readouterr().out) == saved
    help_text = parser._subparsers._group_actions[0].choices["compare"].format_help()
    assert "valle compare runs/ckpt_a runs/ckpt_b" in help_text and "--out" in help_text
