"""Generator diagnostics: each measure separates the case it is meant to detect from its opposite."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from evaluation.diagnose import (
    Example,
    ar_text_dependence,
    codec_oracle,
    conditional_entropy,
    embedding_rms,
    mismatched_example,
    stretch_durations,
)
from valle.model import VALLE, make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


def test_conditional_entropy_sees_what_earlier_codebooks_determine():
    # codebook 2 is a function of codebook 1, codebook 3 is independent noise (K = 16, ln 16 = 2.77)
    g = torch.Generator().manual_seed(0)

    def utterance(T: int) -> torch.Tensor:
        c1 = torch.randint(0, 16, (T,), generator=g)
        return torch.stack([c1, (3 * c1 + 1) % 16, torch.randint(0, 16, (T,), generator=g)], 1)

    train, heldout = [utterance(200) for _ in range(40)], [utterance(200) for _ in range(5)]
    h = conditional_entropy(train, heldout, codebook_size=16, epochs=15, batch=512)
    assert h[2] < 0.3 and h[3] > 0.9 * math.log(16), h


def _examples(n: int = 6, seed: int = 0) -> list[Example]:
    """Utterances whose codebook 1 spells their phonemes (3 frames per phoneme): text fully decides it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ph = torch.randint(1, 40, (8,), generator=g).tolist()
        c1 = torch.tensor(ph).repeat_interleave(3) * 7
        codes = torch.stack([c1] * 8, 1)
        out.append(Example(f"u{i}", f"s{i % 3}", f"text {i}", None, 24000, ph, codes))
    return out


def test_ar_text_dependence_is_zero_for_a_fresh_model_and_positive_once_it_reads():
    torch.manual_seed(0)
    model = VALLE(make_config("debug", 64))
    examples = _examples()
    fresh = ar_text_dependence(model, examples)
    assert abs(fresh["text_gap_nats"]) < 0.05 and fresh["n"] == 6
    opt = torch.optim.AdamW(model.ar.parameters(), lr=3e-3)
    model.train()
    for step in range(150):
        ex = examples[step % len(examples)]
        logits, targets = model.ar(
            torch.tensor([ex.phonemes]), torch.tensor([8]), ex.codes[None, :, 0], torch.tensor([24])
        )
        loss = torch.nn.functional.cross_entropy(logits[0], targets[0], ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = ar_text_dependence(model, examples)
    # measured 0.32 nats: 2 of 3 frames repeat the previous code, which the audio history alone predicts
    assert trained["text_gap_nats"] > 0.2, trained
    assert trained["ce_wrong_text"] > trained["ce_right_text"]


def test_mismatched_text_has_another_text_of_the_closest_length():
    ex = _examples(3)
    ex[1].phonemes, ex[2].phonemes = ex[1].phonemes[:7], ex[2].phonemes[:4]
    assert mismatched_example(ex, 0) is ex[1]
    with pytest.raises(ValueError, match="two different texts"):
        mismatched_example(ex[:1], 0)


def test_stretched_durations_keep_every_phoneme_and_fill_the_frames():
    assert stretch_durations([2, 4, 2], 16) == [4, 8, 4]
    squeezed = stretch_durations([10, 1, 1, 10], 5)
    assert sum(squeezed) == 5 and min(squeezed) == 1


def test_nar_fill_needs_a_second_utterance_of_the_speaker():
    from valle.checkpoint import load_checkpoint
    from valle.codec import load_codec_for

    ckpt = load_checkpoint(REPO / "checkpoints" / "demo")
    lone = _examples(3)  # three speakers, one utterance each
    with pytest.raises(ValueError, match="two utterances per speaker"):
        codec_oracle(load_codec_for(ckpt.codec), lone, asr=None, ckpt=ckpt)


def test_embedding_rms_flags_drowned_phonemes():
    model = VALLE(make_config("debug", 64))
    assert embedding_rms(model)["ar_text_to_position_rms"] > 1.0  # N(0, 1) embeddings vs PE ~0.71
    with torch.no_grad():
        model.ar.text_emb.weight.mul_(0.02)
    assert embedding_rms(model)["ar_text_to_position_rms"] < 0.05


def test_diagnose_cli_on_the_demo_checkpoint(tmp_path, capsys):
    from evaluation.cli.main import main

    out = tmp_path / "diag.json"
    manifest = REPO / "evaluation" / "testsets" / "demo" / "manifest.jsonl"
    args = ["diagnose", "--checkpoint", str(REPO / "checkpoints" / "demo"), "--manifest", str(manifest)]
    assert main([*args, "--limit", "4", "--no-asr", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["codec"]["name"] == "vqvae_24khz"
    figures = report["sets"]["demo"]
    assert set(figures["nar"]) == {str(j) for j in range(2, 9)}
    # the demo's AR has the phone pointer, and the demo set carries no phone timing: said, not faked
    assert figures["ar"]["n"] == 0 and "phone timing" in figures["ar"]["note"]
    # trained from N(0, 1) embeddings: phoneme identity stays above the positions (0.035 in the old demo)
    assert report["embedding_rms"]["ar_text_to_position_rms"] > 1.0
    assert main([*args, "--codec", "contentvq_24khz"]) == 2  # a checkpoint pins its codec
    assert "trained with codec vqvae_24khz" in capsys.readouterr().err


def test_diagnose_keeps_sets_whose_manifests_share_a_name(tmp_path):
    import shutil

    from evaluation.cli.main import main

    demo = REPO / "evaluation" / "testsets" / "demo"
    rows = (demo / "manifest.jsonl").read_text().splitlines()[:2]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for row in rows:  # same file name, own folder: the audio resolves beside each copy
            audio = json.loads(row)["audio"]
            (tmp_path / folder / audio).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(demo / audio, tmp_path / folder / audio)
        (tmp_path / folder / "voice.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "diag.json"
    argv = ["diagnose", "--codec", "melvq_24khz", "--no-asr", "--out", str(out)]
    for folder in ("a", "b"):
        argv += ["--manifest", str(tmp_path / folder / "voice.jsonl")]
    assert main(argv) == 0
    assert sorted(json.loads(out.read_text())["sets"]) == ["a/voice", "b/voice"]
