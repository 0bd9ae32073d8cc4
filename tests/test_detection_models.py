"""Detectors on real (eSpeak NG) speech: validity (separable ~0 % EER, identical ~50 %), shortcut controls,
safe persistence (round trip, tampering, unknown versions, atomic writes), front ends and bad input.

Data: 64 eSpeak NG utterances (16 sentences x 4 voices, ~1.5 s each, 22.05 kHz), synthesised once per
module. Sentences 0-7 train, sentences 8-15 are held out, so test clips are unseen utterances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt
from scipy.special import expit

from detection.cnn import LcnnDetector, LcnnNet
from detection.features import Controls, LfccConfig, lfcc, logmel, preprocess
from detection.io import VERSION, DetectorFileError, read_meta
from detection.metrics import compute_eer
from detection.models import LfccGmm, LfccLogReg, load_detector

SENTENCES = (
    "The cat sat on the warm mat.", "Bring me the red book, please.", "We walked home along the river.",
    "It will rain again tomorrow.", "Open the window before you leave.", "My brother plays the piano.",
    "Nobody answered the phone today.", "The train arrives at seven.", "She painted the fence bright blue.",
    "Turn left at the next corner.", "Dinner is ready in ten minutes.", "The children laughed at the clown.",
    "He forgot his keys at work.", "Please write your name here.", "The garden is full of roses.",
    "Our team won the final game.",
)  # fmt: skip
VOICES = ("en-us+m1", "en-us+f3", "en+m3", "en-us+f2")
N_TRAIN_SENTENCES = 8

DETECTORS = {
    "lfcc-gmm": lambda **kw: LfccGmm(n_components=16, seed=0, **kw),
    "lfcc-logreg": lambda **kw: LfccLogReg(**kw),
    "lcnn": lambda **kw: LcnnDetector(size="small", epochs=8, crop_seconds=1.0, device="cpu", seed=0, **kw),
}


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    # interpolated: a control can leave a constant score, which is chance (0.5) on the DET curve but
    # 1.0 under the ASVspoof reference rule (it rejects tied bona fide trials first)
    return compute_eer(scores[labels == 1], scores[labels == 0], method="interpolate")[0]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """sklearn's EM and k-means++ on a few thousand frames only lose time to a second BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def speech() -> tuple[list[tuple[np.ndarray, int]], np.ndarray]:
    """64 clips and their sentence index."""
    from valle.corpus.espeak import EspeakSynth

    with EspeakSynth() as synth:
        clips = [synth.synthesize(s, voice=v) for s in SENTENCES for v in VOICES]
    sentence = np.repeat(np.arange(len(SENTENCES)), len(VOICES))
    return clips, sentence


def paired(bona: list, spoof: list, idx: np.ndarray) -> tuple[list, np.ndarray]:
    """Clips ``idx`` of both classes and labels (1 = bona fide, 0 = spoof)."""
    return [bona[i] for i in idx] + [spoof[i] for i in idx], np.repeat([1, 0], len(idx))


@pytest.fixture(scope="module")
def separable(speech):
    """Bona fide = the clips; spoof = the same clips low-passed at 1 kHz (in the 0-4 kHz LFCC band)."""
    clips, sentence = speech
    sos = butter(6, 1000, fs=clips[0][1], output="sos")
    spoof = [(sosfiltfilt(sos, w).astype(np.float32), sr) for w, sr in clips]
    train = np.flatnonzero(sentence < N_TRAIN_SENTENCES)
    test = np.flatnonzero(sentence >= N_TRAIN_SENTENCES)
    return paired(clips, spoof, train), paired(clips, spoof, test)


@pytest.fixture(scope="module")
def identical(speech):
    """Two classes from one distribution.

    Training: the training clips split into two halves at random. Test: every held-out clip once as
    bona fide and once as spoof, in shuffled order, so the two test classes are the same audio and a
    detector that scores each clip on its own (whatever it learned) must give EER = 0.5 exactly; a
    detector whose score depends on batch position, dropout or leftover state would not.
    """
    clips, sentence = speech
    rng = np.random.default_rng(7)
    train = np.flatnonzero(sentence < N_TRAIN_SENTENCES)
    y_train = rng.permutation(np.repeat([1, 0], len(train) // 2))
    test = np.flatnonzero(sentence >= N_TRAIN_SENTENCES)
    order = rng.permutation(2 * len(test))
    x_test, y_test = paired(clips, clips, test)
    return ([clips[i] for i in train], y_train), ([x_test[i] for i in order], y_test[order])


@pytest.fixture(scope="module", params=list(DETECTORS))
def fitted(request, separable, one_torch_thread):
    (x_train, y_train), (x_test, y_test) = separable
    det = DETECTORS[request.param]().fit(x_train, y_train)
    return det, det.score(x_test), x_test, y_test


# -- validity ------------------------------------------------------------------------------------------


def test_separable_classes_give_near_zero_eer(fitted):
    det, scores, x_test, y_test = fitted
    assert scores.shape == (len(x_test),) and np.isfinite(scores).all()
    assert eer(scores, y_test) <= 0.05
    p = det.p_spoof(x_test)
    np.testing.assert_allclose(p, expit(-scores))
    assert p[y_test == 0].mean() > 0.5 > p[y_test == 1].mean()
    assert det.training["n_bonafide"] == det.training["n_spoof"] == N_TRAIN_SENTENCES * len(VOICES)


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_identical_classes_give_chance_eer(kind, identical, one_torch_thread):
    (x_train, y_train), (x_test, y_test) = identical
    scores = DETECTORS[kind]().fit(x_train, y_train).score(x_test)
    assert eer(scores, y_test) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "shortcut, control",
    [
        ("silence", Controls(trim_silence=True, loudness=False)),
        ("loudness", Controls(trim_silence=False, loudness=True)),
        ("sample rate", Controls.none()),  # Controls.none() still resamples to 16 kHz
    ],
)
def test_shortcut_is_learned_without_control_and_removed_with_it(shortcut, control, speech):
    """Spoof = bona fide + one nuisance: LR finds it without the control (low EER), not with it (~50 %)."""
    import torch
    import torchaudio.functional as AF

    clips, sentence = speech
    rng = np.random.default_rng(3)
    # A -60 dBFS noise floor on everything, so "silence" is a recording's silence, not digital zeros.
    bona = [((w + 1e-3 * rng.standard_normal(len(w))).astype(np.float32), sr) for w, sr in clips]
    if shortcut == "silence":  # 1 s of leading silence, as in ASVspoof 2019 LA's silence shortcut
        spoof = [
            (np.concatenate([(1e-3 * rng.standard_normal(sr)).astype(np.float32), w]), sr) for w, sr in bona
        ]
    elif shortcut == "loudness":  # 12 dB quieter
        spoof = [(w * np.float32(0.25), sr) for w, sr in bona]
    else:  # the same audio delivered at 44.1 kHz instead of 22.05 kHz
        spoof = [(AF.resample(torch.from_numpy(w), sr, 2 * sr).numpy(), 2 * sr) for w, sr in bona]
    train, test = np.flatnonzero(sentence < N_TRAIN_SENTENCES), np.flatnonzero(sentence >= N_TRAIN_SENTENCES)
    (x_train, y_train), (x_test, y_test) = paired(bona, spoof, train), paired(bona, spoof, test)
    raw = Controls(sample_rate=None, trim_silence=False, loudness=False)
    without = LfccLogReg(controls=raw).fit(x_train, y_train).score(x_test)
    with_control = LfccLogReg(controls=control).fit(x_train, y_train).score(x_test)
    assert eer(without, y_test) <= 0.1, f"{shortcut} shortcut not learned without its control"
    assert 0.3 <= eer(with_control, y_test) <= 0.7, f"{shortcut} control did not remove the shortcut"


# -- persistence ---------------------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    det, scores, x_test, _ = fitted
    det.save(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()} - {"detector.json"}
    assert files and all(f.endswith(".safetensors") for f in files)  # JSON + safetensors, nothing else
    meta = read_meta(tmp_path / "model")
    assert (meta["format"], meta["version"], meta["kind"]) == ("valle-detector", VERSION, det.kind)
    assert set(meta["files"]) == files and meta["controls"] == Controls().to_dict()
    loaded = load_detector(tmp_path / "model")
    assert type(loaded) is type(det) and loaded.controls == det.controls
    np.testing.assert_allclose(loaded.score(x_test), scores, rtol=0, atol=1e-9)
    assert type(det).load(tmp_path / "model").name == det.name
    other = LfccLogReg if not isinstance(det, LfccLogReg) else LfccGmm
    with pytest.raises(DetectorFileError, match="not 'lfcc-"):
        other.load(tmp_path / "model")
    # Saving again replaces the model whole and leaves no temporary directories behind.
    det.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_tampered_array_file_is_refused_by_name(fitted, tmp_path):
    det = fitted[0]
    det.save(tmp_path / "model")
    (array_file,) = (tmp_path / "model").glob("*.safetensors")
    data = bytearray(array_file.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    array_file.write_bytes(bytes(data))
    with pytest.raises(DetectorFileError, match=array_file.name):
        load_detector(tmp_path / "model")
    array_file.unlink()
    with pytest.raises(DetectorFileError, match=f"{array_file.name}.*missing"):
        load_detector(tmp_path / "model")


@pytest.fixture(scope="module")
def saved_logreg(separable, tmp_path_factory) -> Path:
    (x_train, y_train), _ = separable
    path = tmp_path_factory.mktemp("saved") / "logreg"
    LfccLogReg().fit(x_train, y_train).save(path)
    return path


def _edit_meta(src: Path, dst: Path, **changes) -> Path:
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "detector.json").read_text())
    meta.update(changes)
    (dst / "detector.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"version": 99}, "model written by format version 99; this build reads 1"),
        ({"version": "1"}, "non-integer format version"),
        ({"format": "pickle"}, "format 'pickle' is not 'valle-detector'"),
        ({"kind": "rawnet9"}, "unknown detector kind 'rawnet9'"),
        ({"files": {"../../etc/passwd.safetensors": "0" * 64}}, "invalid array file name"),
    ],
)
def test_bad_model_directories_are_refused(saved_logreg, tmp_path, changes, message):
    path = _edit_meta(saved_logreg, tmp_path / "edited", **changes)
    with pytest.raises(DetectorFileError, match=message):
        load_detector(path)


def test_missing_or_broken_metadata(saved_logreg, tmp_path):
    with pytest.raises(DetectorFileError, match="not a model directory"):
        load_detector(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetectorFileError, match=r"no detector\.json"):
        load_detector(tmp_path / "empty")
    path = _edit_meta(saved_logreg, tmp_path / "broken")
    (path / "detector.json").write_text("{not json")
    with pytest.raises(DetectorFileError, match="not valid JSON"):
        load_detector(path)


def test_writing_is_atomic(saved_logreg, separable, tmp_path, monkeypatch):
    import detection.io

    det = load_detector(saved_logreg)
    # A directory that is not a model is never overwritten.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        det.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"

    # A write that fails midway leaves neither a model nor temporary files.
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(detection.io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        det.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    # ... and a failed overwrite keeps the previous model intact.
    monkeypatch.undo()
    det.save(tmp_path / "model")
    before = (tmp_path / "model" / "detector.json").read_text()
    monkeypatch.setattr(detection.io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        det.save(tmp_path / "model")
    assert (tmp_path / "model" / "detector.json").read_text() == before
    assert load_detector(tmp_path / "model").kind == "lfcc-logreg"


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_training_input_is_named(speech):
    clips, _ = speech
    four = clips[:4]
    with pytest.raises(ValueError, match="class 'spoof' \\(label 0\\) has no clips"):
        LfccLogReg().fit(four, np.ones(4))
    with pytest.raises(ValueError, match="class 'bona fide' \\(label 1\\) has no clips"):
        LfccLogReg().fit(four, np.zeros(4))
    with pytest.raises(ValueError, match="4 clips but 3 labels"):
        LfccLogReg().fit(four, np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="found 2"):
        LfccLogReg().fit(four, np.array([1, 0, 2, 1]))
    nan = clips[2][0].copy()
    nan[10:13] = np.nan
    with pytest.raises(ValueError, match="clip 2: audio has 3 NaN/Inf samples"):
        LfccLogReg().fit([*clips[:2], (nan, clips[2][1]), clips[3]], np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="clip 1: empty audio"):
        LfccLogReg().fit([clips[0], (np.zeros(0, np.float32), 16000)], np.array([1, 0]))
    with pytest.raises(ValueError, match="fewer than n_components=512"):
        LfccGmm.paper().fit(four, np.array([1, 0, 1, 0]))
    with pytest.raises(RuntimeError, match="not fitted"):
        LfccGmm().score(four)
    with pytest.raises(ValueError, match="no clips given"):
        LfccLogReg().fit([], np.zeros(0))
    with pytest.raises(ValueError, match="clip 0: expected a \\(waveform, sample_rate\\) pair"):
        LfccLogReg().fit([clips[0][0], clips[1]], np.array([1, 0]))


# -- front ends and controls ---------------------------------------------------------------------------


def test_lfcc_follows_the_baseline_framing_and_deltas(speech):
    wav, sr = preprocess(*speech[0][0], Controls.none())
    feats = lfcc(wav, sr)
    win, hop = round(0.030 * sr), round(0.015 * sr)  # 30 ms / 15 ms, no centre padding
    assert feats.shape == (1 + (len(wav) - win) // hop, 60) and feats.dtype == np.float32
    # HTK deltas over +-1 frame: d_t = (c_{t+1} - c_{t-1}) / 2, and the same again for double deltas.
    np.testing.assert_allclose(feats[1:-1, 20:40], (feats[2:, :20] - feats[:-2, :20]) / 2, atol=1e-4)
    np.testing.assert_allclose(feats[1:-1, 40:], (feats[2:, 20:40] - feats[:-2, 20:40]) / 2, atol=1e-4)
    assert lfcc(wav, sr, n_lfcc=19, deltas=False).shape == (feats.shape[0], 19)
    lcnn = lfcc(wav, sr, config=LfccConfig.lcnn())
    assert lcnn.shape == (1 + (len(wav) - round(0.02 * sr)) // round(0.01 * sr), 60)
    assert lfcc(wav[:50], sr).shape == (1, 60)  # shorter than a window: one zero-padded frame
    mel = logmel(wav, sr)
    assert mel.shape == (1 + (len(wav) - 320) // 160, 64) and np.isfinite(mel).all()


def test_preprocess_controls(speech):
    wav, sr = speech[0][0]
    padded = np.concatenate([np.zeros(sr // 2, np.float32), wav * np.float32(0.1), np.zeros(sr, np.float32)])
    out, out_sr = preprocess(padded, sr, Controls())
    assert out_sr == 16000
    rms_db = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    assert abs(rms_db - Controls().target_dbfs) < 0.01
    resampled_len = len(wav) * 16000 / sr
    assert resampled_len * 0.85 < len(out) <= resampled_len * 1.01  # the 1.5 s of added silence is gone
    raw, raw_sr = preprocess(padded, sr, Controls.none())
    assert raw_sr == 16000 and abs(len(raw) - len(padded) * 16000 / sr) <= 1
    np.testing.assert_allclose(np.abs(raw).max(), np.abs(wav * 0.1).max(), rtol=0.05)  # level untouched
    native, native_sr = preprocess(padded, sr, Controls(sample_rate=None, trim_silence=False, loudness=False))
    assert native_sr == sr and np.array_equal(native, padded)
    assert Controls().match_rate and not Controls(sample_rate=None).match_rate
    assert Controls.from_dict(Controls.none().to_dict()) == Controls.none()
    with pytest.raises(ValueError, match="sample_rate"):
        Controls(sample_rate=100)
    with pytest.raises(ValueError, match="mono audio"):
        preprocess(np.zeros((2, 100), np.float32), sr, Controls())


def test_lcnn_sizes_and_logmel_variant(separable, one_torch_thread, tmp_path):
    """The full model is the ASVspoof 2021 LFCC-LCNN baseline size; the log-mel variant trains and reloads."""
    import torch

    assert 250_000 < sum(p.numel() for p in LcnnNet("full", 60).parameters()) < 300_000
    assert sum(p.numel() for p in LcnnNet("small", 60).parameters()) < 5_000
    assert LcnnNet("full", 60).eval()(torch.zeros(1, 40, 60)).shape == (1,)
    (x_train, y_train), (x_test, _) = separable
    full = LcnnDetector(size="full", epochs=1, batch_size=4, crop_seconds=0.5, device="cpu")
    assert full.fit(x_train[::16], y_train[::16]).score(x_test[:2]).shape == (2,)
    assert full.training["n_parameters"] == sum(p.numel() for p in LcnnNet("full", 60).parameters())
    det = LcnnDetector(feature="logmel", epochs=2, crop_seconds=1.0, device="cpu")
    det.fit(x_train[::4], y_train[::4])
    det.save(tmp_path / "mel")
    loaded = load_detector(tmp_path / "mel")
    assert loaded.feature == "logmel" and read_meta(tmp_path / "mel")["features"]["type"] == "logmel"
    np.testing.assert_allclose(loaded.score(x_test[:6]), det.score(x_test[:6]), rtol=0, atol=1e-6)
