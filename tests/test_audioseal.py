"""AudioSeal backend: loading path, load safety and the audio contract, on randomly initialised networks.

The official weights cannot be downloaded here, so the networks are built from audioseal's own model
cards with random weights and saved in the official file layout (``{"xp.cfg": ..., "model": ...}``,
audiocraft layer names, weight-norm pairs). A random model only exercises loading, shapes and
plumbing: nothing here asserts detection quality.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from audioseal.builder import AudioSealDetectorConfig, AudioSealWMConfig, create_detector, create_generator
from audioseal.libs.moshi.utils.compile import no_compile
from audioseal.loader import AudioSeal

from tests.conftest import tone
from watermark import Watermarker, WatermarkError, load_watermarker
from watermark.audioseal_backend import DETECTOR_CARD, GENERATOR_CARD, card_config
from watermark.provenance import file_sha256 as sha256_file

PAYLOAD = (1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1)


def at(path: Path) -> str:
    """A path as a literal regex fragment (for ``pytest.raises(match=...)``)."""
    return re.escape(str(path))


def random_network(card: str) -> torch.nn.Module:
    """The card's network from audioseal's builder, randomly initialised (seeded)."""
    config = card_config(card)
    config.pop("checkpoint")
    torch.manual_seed(0 if card == GENERATOR_CARD else 1)
    if card == GENERATOR_CARD:
        return create_generator(AudioSeal.parse_config(config, AudioSealWMConfig, nbits=16))
    return create_detector(AudioSeal.parse_config(config, AudioSealDetectorConfig, nbits=16))


def official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """audioseal 0.2 names -> the released files' names: audiocraft layers trained with weight norm
    (``...conv.conv.weight_g`` / ``weight_v``; ``v`` scaled so that folding it back is exercised)."""
    out = {}
    for key, value in state.items():
        key = key.replace(".inner_conv.", ".")
        if key.endswith(".weight") and (".conv.conv." in key or ".convtr.convtr." in key):
            out[key[: -len(".weight")] + ".weight_g"] = torch.norm_except_dim(value, 2, 0)
            out[key[: -len(".weight")] + ".weight_v"] = 3.0 * value
        else:
            out[key] = value
    return out


def xp_cfg(card: str) -> dict:
    """The inference config the official conversion script stores next to the weights (audiocraft's
    layout: the decoder/detector sections sit inside ``seanet``)."""
    config = card_config(card)
    seanet = {**config["seanet"], **{k: config[k] for k in ("decoder", "detector") if k in config}}
    return {"seanet": seanet, "channels": 1, "dtype": "float32", "sample_rate": 16000}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audioseal_weights")
    paths = {}
    for role, card in (("generator", GENERATOR_CARD), ("detector", DETECTOR_CARD)):
        paths[role] = root / f"{role}_base.pth"
        state = official_layout(random_network(card).state_dict())
        torch.save({"xp.cfg": xp_cfg(card), "model": state}, paths[role])
    return paths


@pytest.fixture(scope="module")
def audioseal(weights) -> Watermarker:
    return load_watermarker("audioseal", generator=weights["generator"], detector=weights["detector"])


def test_marked_audio_keeps_length_dtype_and_band(audioseal):
    assert isinstance(audioseal, Watermarker) and audioseal.payload_bits == 16
    for sr in (24000, 16000):
        wav = tone(0.5, sr=sr)
        marked = audioseal.embed(wav, sr, PAYLOAD)
        assert marked.shape == wav.shape and marked.dtype == np.float32
        assert not np.array_equal(marked, wav)
    odd = tone(0.3013)  # a length that does not resample to a whole number of 16 kHz samples
    assert audioseal.embed(odd, 24000, PAYLOAD).shape == odd.shape
    short = tone(0.03)  # two codec frames: what a generator that stops at once produces
    assert audioseal.embed(short, 24000, PAYLOAD).shape == short.shape
    assert len(audioseal.detect(short, 24000).frame_probs) == 480
    wide = tone(0.5).astype(np.float64)
    assert audioseal.embed(wide, 24000, PAYLOAD).dtype == np.float64
    # at 24 kHz only the 16 kHz residual is added, so a 10 kHz partial (above AudioSeal's band) survives
    t = np.arange(24000) / 24000
    wav = (tone(1.0) + 0.2 * np.sin(2 * np.pi * 10000 * t)).astype(np.float32)
    marked = audioseal.embed(wav, 24000, PAYLOAD)
    assert abs(np.fft.rfft(marked)[10000]) == pytest.approx(abs(np.fft.rfft(wav)[10000]), rel=1e-3)
    residual = (marked - wav) - (marked - wav).mean()
    power = np.abs(np.fft.rfft(residual * np.hanning(len(residual)))) ** 2
    assert power[10000:].sum() < 1e-4 * power.sum()  # rfft bin k is k Hz for 1 s


def test_detect_returns_score_bits_and_sample_probabilities(audioseal):
    det = audioseal.detect(audioseal.embed(tone(0.5), 24000, PAYLOAD), 24000)
    assert 0.0 <= det.score <= 1.0 and det.detected == (det.score >= audioseal.threshold)
    assert len(det.payload) == 16 and set(det.payload) <= {0, 1}
    assert det.frame_probs.shape == (8000,)  # one presence probability per 16 kHz sample
    assert np.all((det.frame_probs >= 0) & (det.frame_probs <= 1))


def test_payload_must_be_explicit_16_bits(audioseal):
    wav = tone(0.2)
    for bad in (None, PAYLOAD[:15], (*PAYLOAD, 0), (2,) * 16):
        with pytest.raises(WatermarkError, match="exactly 16 bits"):
            audioseal.embed(wav, 24000, bad)
    with pytest.raises(WatermarkError, match=r"audio to watermark: .*NaN"):
        audioseal.embed(np.full(100, np.nan, np.float32), 24000, PAYLOAD)
    with pytest.raises(WatermarkError, match=r"audio to check: sample rate 1000 Hz"):
        audioseal.detect(wav, 1000)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_same_networks_as_audioseals_own_loader(audioseal, weights):
    """audioseal's loader reads our own freshly written files (weights_only=False is harmless on
    them): the residual, the score (its ``detect_watermark``) and the bits must agree exactly.
    (no_compile: its SEANet otherwise spends minutes in torch.compile on the first CPU call.)"""
    generator = AudioSeal.load_generator(str(weights["generator"]), nbits=16).eval()
    detector = AudioSeal.load_detector(str(weights["detector"]), nbits=16).eval()
    wav = tone(0.5, sr=16000)
    x = torch.from_numpy(wav).view(1, 1, -1)
    with no_compile(), torch.inference_mode():
        ref_residual = generator.get_watermark(x, message=torch.tensor([PAYLOAD]))[0, 0].numpy()
        marked = audioseal.embed(wav, 16000, PAYLOAD)
        ref_score, ref_bits = detector.detect_watermark(torch.from_numpy(marked).view(1, 1, -1))
    np.testing.assert_allclose(marked - wav, ref_residual, atol=1e-5)
    det = audioseal.detect(marked, 16000)
    assert det.score == pytest.approx(float(ref_score[0]), abs=1e-6)
    assert det.payload == tuple(ref_bits[0].tolist())


def test_card_records_paths_and_file_sha256(audioseal, weights):
    card = audioseal.card()
    assert card["name"] == "audioseal" and card["payload_bits"] == 16 and card["sample_rate"] == 16000
    assert card["threshold"] == 0.5
    for role in ("generator", "detector"):
        assert card[role] == str(weights[role].resolve())
        assert card[f"{role}_sha256"] == sha256_file(weights[role])


def test_expected_sha256_is_checked(weights):
    good = sha256_file(weights["detector"])
    wm = load_watermarker("audioseal", **weights, detector_sha256=good.upper(), threshold=0.7)
    assert wm.card()["detector_sha256"] == good and wm.threshold == 0.7
    with pytest.raises(WatermarkError, match=rf"{at(weights['generator'])}: sha256 \w+ does not match"):
        load_watermarker("audioseal", **weights, generator_sha256="0" * 64)


def test_other_layouts_load_to_the_same_network(audioseal, weights, tmp_path):
    """audioseal 0.2 layer names, a bare state dict, and an OmegaConf ``xp.cfg`` (as the released
    files carry) all load; the OmegaConf classes are allowlisted for weights_only loading."""
    from omegaconf import OmegaConf

    generator = tmp_path / "generator_new_names.pth"
    state = random_network(GENERATOR_CARD).state_dict()  # audioseal 0.2 names (...inner_conv.weight)
    torch.save({"xp.cfg": OmegaConf.create(xp_cfg(GENERATOR_CARD)), "model": state}, generator)
    detector = tmp_path / "detector_bare.pth"
    torch.save(random_network(DETECTOR_CARD).state_dict(), detector)
    other = load_watermarker("audioseal", generator=generator, detector=detector)
    wav = tone(0.3)
    expected = audioseal.embed(wav, 24000, PAYLOAD)
    np.testing.assert_allclose(other.embed(wav, 24000, PAYLOAD), expected, atol=1e-5)
    assert other.detect(wav, 24000).payload == audioseal.detect(wav, 24000).payload


class RunsShellOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused(weights, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "generator_evil.pth"
    state = torch.load(weights["generator"], weights_only=True)
    torch.save({**state, "hook": RunsShellOnLoad(marker)}, evil)
    with pytest.raises(WatermarkError, match=rf"{at(evil)} was refused.*posix\.system"):
        load_watermarker("audioseal", generator=evil, detector=weights["detector"])
    assert not marker.exists()


def test_wrong_or_broken_checkpoints_name_the_file(weights, tmp_path):
    with pytest.raises(WatermarkError, match=f"{at(weights['detector'])} does not fit the {GENERATOR_CARD}"):
        load_watermarker("audioseal", generator=weights["detector"], detector=weights["detector"])
    junk = tmp_path / "detector_junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WatermarkError, match=f"{at(junk)} is not a readable torch checkpoint"):
        load_watermarker("audioseal", generator=weights["generator"], detector=junk)
    with pytest.raises(WatermarkError, match="has no option generatr"):
        load_watermarker("audioseal", generatr=weights["generator"])


def test_missing_weights_say_where_they_go_and_where_to_get_them(weights, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "generator_base.pth"
    with pytest.raises(
        WatermarkError, match=rf"{at(missing)} does not exist; download https://\S+/generator_base\.pth"
    ):
        load_watermarker("audioseal", generator=missing, detector=weights["detector"])
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUDIOSEAL_CACHE_DIR", str(cache))
    with pytest.raises(
        WatermarkError, match=rf"download https://\S+/generator_base\.pth to {at(cache)}/audioseal/"
    ):
        load_watermarker("audioseal")
    # the cache audioseal's loader uses is where a plain load_watermarker("audioseal") finds them
    (cache / "audioseal").mkdir(parents=True)
    for role in ("generator", "detector"):
        shutil.copy(weights[role], cache / "audioseal" / f"{role}_base.pth")
    card = load_watermarker("audioseal").card()
    assert card["detector"] == str((cache / "audioseal" / "detector_base.pth").resolve())
    assert card["generator_sha256"] == sha256_file(weights["generator"])
