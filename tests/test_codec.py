from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import tone
from valle.audio import AudioError, load_audio
from valle.codec import CodecError, load_codec, load_codec_for
from valle.codec.base import CodecCard, sha256_file
from valle.codec.encodec import EncodecCodec, build_encodec_24khz
from valle.codec.melvq import DEFAULT_ASSET, MelVQCodec, MelVQConfig, fit_melvq, rvq_decode, rvq_encode


@pytest.fixture(scope="module")
def melvq() -> MelVQCodec:
    return load_codec("melvq_24khz")


def test_default_melvq_has_encodec_shape(melvq):
    card = melvq.card
    assert (card.sample_rate, card.frame_rate, card.n_codebooks, card.codebook_size) == (24000, 75.0, 8, 1024)
    assert card.weights_sha256 == sha256_file(DEFAULT_ASSET)


def test_melvq_encode_decode_shapes_and_determinism(melvq):
    wav = tone(1.01, sr=16000)  # any input rate; 1.01 s at 24 kHz is 24240 samples -> 76 frames
    codes = melvq.encode(wav, 16000)
    assert codes.dtype == torch.long and codes.shape == (76, 8)
    assert 0 <= int(codes.min()) and int(codes.max()) < 1024
    out, sr = melvq.decode(codes)
    assert sr == 24000 and out.shape == (76 * 320,) and np.isfinite(out).all()
    again, _ = melvq.decode(codes)
    np.testing.assert_array_equal(out, again)  # Griffin-Lim starts from zero phase, not random


def test_melvq_round_trip_keeps_the_spectrum(melvq, real_speech_dir, real_speech_rows):
    row = next(r for r in real_speech_rows if r["id"] == "vctk_p225_002")
    wav, sr = load_audio(real_speech_dir / row["audio"], 24000)
    codes = melvq.encode(wav, sr)
    out, _ = melvq.decode(codes)
    mel_in = melvq.frontend.analyse(torch.from_numpy(wav))
    mel_out = melvq.frontend.analyse(torch.from_numpy(out[: len(wav)]))
    n = min(len(mel_in), len(mel_out))
    # log-mel distance after round trip vs. distance to an unrelated signal of the same length
    err = (mel_in[:n] - mel_out[:n]).abs().mean()
    other = melvq.frontend.analyse(torch.from_numpy(tone(len(wav) / sr)))[:n]
    assert err < 0.5 * (mel_in[:n] - other).abs().mean()


def test_more_codebooks_reconstruct_better(melvq):
    x = melvq.frontend.analyse(torch.from_numpy(tone(1.0, freq=180.0)))
    codes = rvq_encode(x, melvq.codebooks)
    errs = [(x - rvq_decode(codes[:, :q], melvq.codebooks[:q])).pow(2).mean().item() for q in (1, 4, 8)]
    assert errs[0] > errs[1] > errs[2]


def test_decode_rejects_bad_codes(melvq):
    with pytest.raises(CodecError, match="out of range"):
        melvq.decode(torch.full((10, 8), 1024))
    with pytest.raises(CodecError, match="shape"):
        melvq.decode(torch.zeros(10, 7, dtype=torch.long))
    with pytest.raises(CodecError, match="integers"):
        melvq.decode(torch.zeros(10, 8))


def test_encode_rejects_bad_audio(melvq):
    with pytest.raises(AudioError, match="NaN"):
        melvq.encode(np.full(24000, np.nan, dtype=np.float32), 24000)
    with pytest.raises(AudioError, match="sample rate"):
        melvq.encode(tone(1.0), 10)
    with pytest.raises(AudioError, match="shorter than one codec frame"):
        melvq.encode(tone(0.005), 24000)


def test_fit_save_load_round_trip(tmp_path):
    cfg = MelVQConfig(codebook_size=16, n_codebooks=8)
    codec = fit_melvq([tone(2.0, freq=f) for f in (120.0, 200.0, 310.0)], cfg, kmeans_iters=5, progress=False)
    path = codec.save(tmp_path / "cb.safetensors")
    loaded = MelVQCodec.load(path)
    assert loaded.card.weights_sha256 == sha256_file(path) and loaded.codebook_size == 16
    torch.testing.assert_close(loaded.codebooks, codec.codebooks, atol=1e-2, rtol=1e-3)  # stored fp16
    assert loaded.encode(tone(0.5), 24000).shape == (38, 8)


def test_fit_refuses_too_little_audio():
    with pytest.raises(CodecError, match="too little data"):
        fit_melvq([tone(0.5)], progress=False)


def test_tampered_or_foreign_codebook_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CodecError, match="not a readable safetensors"):
        MelVQCodec.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"codebooks": torch.zeros(8, 1024, 100)}, str(foreign), metadata={"format": "other"})
    with pytest.raises(CodecError, match="expected format valle-melvq"):
        MelVQCodec.load(foreign)
    with pytest.raises(CodecError, match="not found"):
        MelVQCodec.load(tmp_path / "missing.safetensors")
    with pytest.raises(CodecError, match="expected deadbeef"):
        load_codec("melvq_24khz", sha256="deadbeef")


def test_checkpoint_made_with_another_codec_is_refused(melvq):
    other = CodecCard("encodec_24khz_6kbps", 24000, 75.0, 8, 1024, "d7cc33bc")
    with pytest.raises(CodecError, match="encodec_24khz_6kbps"):
        melvq.card.check_compatible(other)
    assert load_codec_for(melvq.card).card == melvq.card
    with pytest.raises(CodecError, match="unknown codec"):
        load_codec("soundstream")


@pytest.fixture(scope="module")
def encodec_weights(tmp_path_factory) -> Path:
    """A randomly initialised EnCodec 24 kHz state dict: exercises the real loading path only."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encodec") / "encodec_24khz-random.th"
    torch.save(build_encodec_24khz().state_dict(), path)
    return path


def test_encodec_loads_checked_weights_and_has_paper_shape(encodec_weights):
    codec = load_codec("encodec_24khz_6kbps", weights=encodec_weights, sha256=sha256_file(encodec_weights))
    assert isinstance(codec, EncodecCodec)
    codes = codec.encode(tone(1.0), 24000)
    assert codes.shape == (75, 8) and int(codes.max()) < 1024
    out, sr = codec.decode(codes)
    assert sr == 24000 and out.shape == (75 * 320,)


def test_encodec_missing_or_wrong_weights_say_what_to_do(tmp_path, encodec_weights):
    with pytest.raises(CodecError) as err:
        EncodecCodec(tmp_path / "encodec_24khz-d7cc33bc.th")
    msg = str(err.value)
    assert "d7cc33bcf1aad7f2dad9836f36431530744abeace3ca033005e3290ed4fa47bf" in msg
    assert "dl.fbaipublicfiles.com" in msg and "encodec_24khz-d7cc33bc.th" in msg
    with pytest.raises(CodecError, match="has sha256"):
        EncodecCodec(encodec_weights)  # random weights never pass for the official checkpoint
    not_encodec = tmp_path / "other.th"
    torch.save({"weight": torch.zeros(3)}, not_encodec)
    with pytest.raises(CodecError, match="not an EnCodec"):
        EncodecCodec(not_encodec, sha256=sha256_file(not_encodec))


def test_codec_cli_roundtrip_and_info(tmp_path, capsys):
    from evaluation.cli import main
    from valle.audio import save_audio

    src = save_audio(tmp_path / "in.wav", tone(0.6, sr=22050), 22050)
    assert main(["codec", "roundtrip", str(src), str(tmp_path / "out.wav")]) == 0
    out, sr = load_audio(tmp_path / "out.wav")
    assert sr == 24000 and abs(len(out) / sr - 0.6) < 0.02
    assert np.load(tmp_path / "out.codes.npy").shape == (45, 8)
    capsys.readouterr()
    assert main(["codec", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "melvq_24khz"
    assert main(["codec", "roundtrip", str(tmp_path / "nope.wav"), str(tmp_path / "x.wav")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize("n_frames", [1, 2, 4])
def test_melvq_decodes_very_short_code_sequences(melvq, n_frames):
    # a generator may stop after a frame or two; decoding must still give T * hop samples
    out, _ = melvq.decode(torch.zeros(n_frames, 8, dtype=torch.long))
    assert out.shape == (n_frames * 320,) and np.isfinite(out).all()
