from __future__ import annotations

import pytest

from evaluation.cli.main import build_parser, main

COMMANDS = [
    ["smoke"],
    ["corpus"],
    ["codec"],
    ["codec", "fit"],
    ["codec", "roundtrip"],
    ["codec", "info"],
    ["train"],
    ["synth"],
    ["export"],
    ["testset"],
    ["score"],
    ["merge"],
    ["verify"],
    ["keys"],
    ["keys", "new"],
    ["watermark-bench"],
    ["detect"],
    ["detect", "train"],
    ["detect", "score"],
    ["detect", "eval"],
    ["asv"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: valle" in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for command in {c[0] for c in COMMANDS}:
        assert command in out


def test_bad_input_is_one_line_on_stderr_with_exit_code_2(tmp_path, capsys):
    code = main(["synth", "--checkpoint", str(tmp_path), "--prompt-audio", "x.wav", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("valle synth: error:") and "--text" in err


def test_score_with_a_missing_manifest_names_it(tmp_path, capsys):
    code = main(["score", "--generator", f"folder:{tmp_path}", "--manifest", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("valle score: error:") and "nope.jsonl" in err and "not found" in err


@pytest.mark.parametrize(
    "command",
    [
        ["audit"],
        ["synth", "--checkpoint", "c", "--prompt-audio", "p.wav", "--out", "o"],
        ["score", "--generator", "valle:c", "--manifest", "m.jsonl", "--out", "o"],
    ],
    ids=lambda c: c[0],
)
def test_ar_decoding_is_the_checkpoints_choice_unless_asked(command):
    parse = build_parser().parse_args
    assert parse(command).greedy is None  # None: what the checkpoint recommends (valle.sampling.calibrated)
    assert parse([*command, "--greedy"]).greedy is True
    assert parse([*command, "--no-greedy"]).greedy is False
    assert parse(command).repeat_penalty is None
    assert parse([*command, "--repeat-penalty", "0"]).repeat_penalty == 0.0
