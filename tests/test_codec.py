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
from valle.codec.contentvq import DEFAULT_ASSET as CONTENTVQ_ASSET
from valle.codec.contentvq import ContentVQCodec, ContentVQConfig, fit_contentvq
from valle.codec.encodec import EncodecCodec, build_encodec_24khz
from valle.codec.melvq import DEFAULT_ASSET, MelVQCodec, MelVQConfig, fit_melvq, rvq_decode, rvq_encode
from valle.codec.vqvae import DEFAULT_ASSET as VQVAE_ASSET
from valle.codec.vqvae import (
    ContentAutoencoder,
    VQVAECodec,
    VQVAEConfig,
    fit_vqvae,
    read_stage1,
)


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
    neutral = codec.neutral_codes()
    assert neutral.shape == (8,) and int(neutral.max()) < 1024
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
    from evaluation.cli.main import main
    from valle.audio import save_audio

    src = save_audio(tmp_path / "in.wav", tone(0.6, sr=22050), 22050)
    assert main(["codec", "roundtrip", str(src), str(tmp_path / "out.wav")]) == 0
    out, sr = load_audio(tmp_path / "out.wav")
    assert sr == 24000 and abs(len(out) / sr - 0.6) < 0.02
    assert np.load(tmp_path / "out.codes.npy").shape == (45, 8)
    capsys.readouterr()
    assert main(["codec", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "vqvae_24khz"
    assert main(["codec", "roundtrip", str(tmp_path / "nope.wav"), str(tmp_path / "x.wav")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_codec_cli_roundtrip_output_is_watermarked(tmp_path):
    """A waveform decoded from codes is codec-made audio: the CLI marks it like every generated file."""
    from evaluation.cli.main import main
    from valle.audio import save_audio
    from valle.corpus.espeak import EspeakSynth
    from watermark import load_watermarker

    with EspeakSynth() as synth:
        wav, sr = synth.synthesize("The codec writes marked audio only.", voice="en-us+m3")
    src = save_audio(tmp_path / "speech.wav", wav, sr)
    perth = load_watermarker("perth")
    assert not perth.detect(*load_audio(src)).detected
    assert main(["codec", "roundtrip", str(src), str(tmp_path / "out.wav")]) == 0
    assert perth.detect(*load_audio(tmp_path / "out.wav")).detected


@pytest.mark.parametrize("n_frames", [1, 2, 4])
def test_melvq_decodes_very_short_code_sequences(melvq, n_frames):
    # a generator may stop after a frame or two; decoding must still give T * hop samples
    out, _ = melvq.decode(torch.zeros(n_frames, 8, dtype=torch.long))
    assert out.shape == (n_frames * 320,) and np.isfinite(out).all()


# --- contentvq_24khz: the offline codec built for VALL-E --------------------------------------------

DEMO_AUDIO = Path(__file__).resolve().parents[1] / "evaluation" / "testsets" / "demo" / "audio"


@pytest.fixture(scope="module")
def contentvq() -> ContentVQCodec:
    return load_codec("contentvq_24khz")


@pytest.fixture(scope="module")
def piper_clip() -> tuple[np.ndarray, int]:
    """A committed held-out utterance of a corpus Piper voice (speech, not a tone)."""
    return load_audio(next(DEMO_AUDIO.glob("piper-*.flac")), 24000)


def prefix_errors(codec, wav: np.ndarray, codes: torch.Tensor) -> list[float]:
    """Log-mel MSE of decoding the first q ground-truth codebooks (rest neutral), q = 1, 2, 4, 8."""
    x = codec.frontend.analyse(torch.from_numpy(wav))
    neutral = codec.neutral_codes()
    errs = []
    for q in (1, 2, 4, 8):
        partial = codes.clone()
        partial[:, q:] = neutral[q:]
        errs.append((x - codec.reconstruct(partial)).pow(2).mean().item())
    return errs


def test_contentvq_has_encodec_shape(contentvq):
    card = contentvq.card
    assert card.name == "contentvq_24khz" and card.weights_sha256 == sha256_file(CONTENTVQ_ASSET)
    assert (card.sample_rate, card.frame_rate, card.n_codebooks, card.codebook_size) == (24000, 75.0, 8, 1024)


def test_contentvq_round_trip_is_deterministic_and_all_codebooks_refine(contentvq, piper_clip):
    wav, sr = piper_clip
    codes = contentvq.encode(wav, sr)
    assert codes.shape == (-(-len(wav) // 320), 8)
    out, _ = contentvq.decode(codes)
    np.testing.assert_array_equal(out, contentvq.decode(codes)[0])
    errs = prefix_errors(contentvq, wav, codes)
    assert errs[0] > errs[1] > errs[2] > errs[3]


def test_codebook_1_ignores_level_unlike_melvq(contentvq, melvq, piper_clip):
    # VALL-E's AR writes codebook 1 from the phonemes alone: it must carry what is said, not how loud.
    # A -12 dB copy of the same utterance keeps almost every contentvq codebook-1 code; the plain
    # residual k-means of melvq spends codebook 1 on level, so most of its codes change.
    wav, sr = piper_clip
    quiet = wav * 10 ** (-12 / 20)
    same = {
        name: (codec.encode(wav, sr)[:, 0] == codec.encode(quiet, sr)[:, 0]).float().mean().item()
        for name, codec in (("contentvq", contentvq), ("melvq", melvq))
    }
    assert same["contentvq"] > 0.9 and same["melvq"] < 0.5, same


@pytest.mark.parametrize("codec_name", ["contentvq", "vqvae"])
def test_codebook_1_of_two_voices_agrees_more_on_the_same_sentence(codec_name, request):
    # Two corpus voices reading the same words share more codebook-1 codes (after aligning by
    # dynamic programming on the code sequences) than one voice reading two different sentences.
    from valle.corpus.piper import PiperSynth

    codec = request.getfixturevalue(codec_name)
    synth = PiperSynth(seed=0)
    a = "the boat drifted slowly toward the quiet harbour"
    b = "seven green apples fell from the tall tree"
    codes = {
        (text, vtl): codec.encode(*synth.synthesize(text, vtl=vtl, out_sr=24000))[:, 0]
        for text in (a, b)
        for vtl in (0.9, 1.1)
    }

    def overlap(x: torch.Tensor, y: torch.Tensor) -> float:
        # longest common subsequence of the two code strings, as a share of the shorter one
        prev = [0] * (len(y) + 1)
        for xi in x.tolist():
            cur = [0]
            for j, yj in enumerate(y.tolist()):
                cur.append(prev[j] + 1 if xi == yj else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1] / min(len(x), len(y))

    same_text = overlap(codes[(a, 0.9)], codes[(a, 1.1)])
    other_text = overlap(codes[(a, 0.9)], codes[(b, 1.1)])
    # measured 0.18 vs 0.10 (contentvq), 0.15 vs 0.08 (vqvae): exact code matches across two
    # vocal-tract lengths are a strict test
    assert same_text > 1.4 * other_text, (same_text, other_text)


def test_contentvq_fit_save_load_and_refusals(tmp_path):
    cfg = ContentVQConfig(mel=MelVQConfig(codebook_size=32))
    wavs = [tone(2.0, freq=f) * np.linspace(0.2, 1.0, 48000, dtype=np.float32) for f in (120.0, 200.0, 310.0)]
    codec = fit_contentvq(wavs, cfg, kmeans_iters=3, progress=False)
    path = codec.save(tmp_path / "cvq.safetensors")
    loaded = ContentVQCodec.load(path)
    assert loaded.card.weights_sha256 == sha256_file(path) and loaded.cfg == cfg
    np.testing.assert_array_equal(loaded.encode(wavs[0], 24000), loaded.encode(wavs[0], 24000))
    save_file({"codebooks": torch.zeros(8, 1024, 100)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CodecError, match="expected format valle-contentvq"):
        ContentVQCodec.load(tmp_path / "other.safetensors")
    with pytest.raises(CodecError, match="not found"):
        ContentVQCodec.load(tmp_path / "missing.safetensors")
    with pytest.raises(CodecError, match="too little data"):
        fit_contentvq([tone(0.5)], progress=False)


def test_melvq_checkpoints_refuse_contentvq(contentvq, melvq):
    # codes from one offline codec mean nothing to the other: a checkpoint's card pins its codec
    with pytest.raises(CodecError, match="made with codec 'melvq_24khz'"):
        contentvq.card.check_compatible(melvq.card)


# --- vqvae_24khz: a learned codebook 1, one voice code per utterance --------------------------------


@pytest.fixture(scope="module")
def vqvae() -> VQVAECodec:
    return load_codec("vqvae_24khz")


def test_vqvae_is_the_default_with_encodec_shape_and_a_pinned_card(vqvae, contentvq):
    assert load_codec().card == vqvae.card
    card = vqvae.card
    assert card.name == "vqvae_24khz" and card.weights_sha256 == sha256_file(VQVAE_ASSET)
    assert (card.sample_rate, card.frame_rate, card.n_codebooks, card.codebook_size) == (24000, 75.0, 8, 1024)
    with pytest.raises(CodecError, match="made with codec 'contentvq_24khz'"):
        vqvae.card.check_compatible(contentvq.card)


def test_vqvae_round_trip_is_deterministic_and_every_stage_refines(vqvae, piper_clip):
    wav, sr = piper_clip
    codes = vqvae.encode(wav, sr)
    assert codes.shape == (-(-len(wav) // 320), 8)
    np.testing.assert_array_equal(codes, vqvae.encode(wav, sr))
    out, _ = vqvae.decode(codes)
    np.testing.assert_array_equal(out, vqvae.decode(codes)[0])
    # codebook 2 is one voice code for the whole utterance: a NAR reads it off the prompt
    assert codes[:, 1].unique().numel() == 1
    errs = prefix_errors(vqvae, wav, codes)
    assert errs[0] > errs[1] > errs[2] > errs[3], errs


def test_vqvae_codebook_1_ignores_level_and_codebook_2_follows_it(vqvae, piper_clip):
    wav, sr = piper_clip
    loud, quiet = vqvae.encode(wav, sr), vqvae.encode(wav * 10 ** (-12 / 20), sr)
    assert (loud[:, 0] == quiet[:, 0]).float().mean().item() > 0.9
    # the level lives in codebook 2: the two voice entries differ by about the gain in log-mel
    # (-12 dB = -1.38 natural-log units in every band)
    shift = (vqvae.voice_codebook[quiet[0, 1]] - vqvae.voice_codebook[loud[0, 1]]).mean().item()
    assert -1.9 < shift < -0.9, shift


def test_vqvae_fit_save_load_and_refusals(tmp_path):
    # a randomly initialised stage 1 tests the fitting and file paths only (no figure is measured)
    cfg = VQVAEConfig(mel=MelVQConfig(codebook_size=16), dim=8, width=16)
    torch.manual_seed(0)
    network = {
        k: v for k, v in ContentAutoencoder(cfg).state_dict().items() if k not in ("vq.count", "vq.total")
    }
    # 8 tones of 4.5 s: each gives its own offset and 3 crops of 1-4 s, 32 offsets for 16 entries
    wavs = [tone(4.5, freq=90.0 + 25 * i) * np.linspace(0.2, 1.0, 108000, dtype=np.float32) for i in range(8)]
    codec = fit_vqvae(wavs, network, torch.zeros(100), cfg, kmeans_iters=3, progress=False)
    path = codec.save(tmp_path / "vqvae.safetensors")
    loaded = VQVAECodec.load(path)
    assert loaded.card.weights_sha256 == sha256_file(path) and loaded.cfg == cfg
    codes = loaded.encode(wavs[0], 24000)
    assert codes.shape[1] == 8 and int(codes.max()) < 16
    with pytest.raises(CodecError, match="expected format valle-vqvae"):
        VQVAECodec.load(CONTENTVQ_ASSET)
    with pytest.raises(CodecError, match="too little data"):
        fit_vqvae(wavs[:2], network, torch.zeros(100), cfg, progress=False)
    # a stage 1 saved by the training script: heads are dropped, voice conditioning refused
    save_file(
        {**network, "mean_frame": torch.zeros(100), "phone_q.weight": torch.zeros(3, 8)}, str(tmp_path / "s1")
    )
    got, mean = read_stage1(tmp_path / "s1", cfg)
    assert set(got) == set(network) and mean.shape == (100,)
    save_file({**network, "cond.weight": torch.zeros(8, 100)}, str(tmp_path / "s1c"))
    with pytest.raises(CodecError, match="--voice-cond"):
        read_stage1(tmp_path / "s1c", cfg)
    save_file(network, str(tmp_path / "s1m"))
    with pytest.raises(CodecError, match="no mean_frame"):
        read_stage1(tmp_path / "s1m", cfg)
