"""An offline codec with EnCodec's shape: log-mel frames quantised by residual k-means.

EnCodec's weights cannot be downloaded everywhere, and training a neural codec on two CPU cores
is not practical, so this codec keeps the paper's contract (24 kHz, 75 Hz, 8 codebooks x 1024)
with parts that need no pretrained network:

    analysis   x -> |STFT| (n_fft 1280, hop 320) -> 100-band mel -> log        m_t in R^100
    quantise   r_0 = m_t;  c_q = argmin_k ||r_{q-1} - C_q[k]||;  r_q = r_{q-1} - C_q[c_q]   q = 1..8
    synthesis  m_t ~= sum_q C_q[c_q] -> exp -> inverse mel (least squares) -> Griffin-Lim

The codebooks C_q (8 x 1024 x 100) are fitted by k-means (Lloyd, k-means++ seeding) on the residual of the
previous stage, which is what residual VQ in EnCodec/SoundStream does with a learned encoder.
As in EnCodec, codebook 1 carries most of the information and later ones refine it, which is the
property VALL-E's AR/NAR split relies on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T
from tqdm import tqdm

from valle.codec.base import Codec, CodecCard, CodecError, read_tables, sha256_file, write_tables

FORMAT = "valle-melvq"
FORMAT_VERSION = 1
DEFAULT_ASSET = Path(__file__).parent / "assets" / "melvq_24khz.safetensors"


@dataclass(frozen=True)
class MelVQConfig:
    sample_rate: int = 24_000
    n_fft: int = 1280
    hop_length: int = 320  # 24000 / 320 = 75 frames per second, as EnCodec 24 kHz
    n_mels: int = 100
    f_min: float = 0.0
    f_max: float = 12_000.0
    log_floor: float = 1e-5
    n_codebooks: int = 8
    codebook_size: int = 1024
    griffin_lim_iters: int = 48


class MelFrontend(torch.nn.Module):
    """Waveform <-> log-mel with the codec's framing (exactly ``len(wav) // hop`` frames)."""

    def __init__(self, cfg: MelVQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = T.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            power=1.0,
        )
        self.inverse_mel = T.InverseMelScale(
            n_stft=cfg.n_fft // 2 + 1,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
        )
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)

    def analyse(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav [N]`` -> ``logmel [ceil(N / hop), n_mels]``."""
        hop = self.cfg.hop_length
        n_frames = -(-wav.shape[-1] // hop)
        wav = torch.nn.functional.pad(wav, (0, n_frames * hop - wav.shape[-1]))
        mel = self.mel(wav)[..., :n_frames]  # centred STFT gives one extra frame; drop it
        return torch.log(mel.clamp_min(self.cfg.log_floor)).T

    def synthesise(self, logmel: torch.Tensor) -> torch.Tensor:
        """``logmel [T, n_mels]`` -> ``wav [T * hop]`` by least-squares inverse mel + Griffin-Lim."""
        cfg = self.cfg
        n_frames = logmel.shape[0]
        mel = torch.exp(logmel.T)
        # one extra frame so the centred inverse STFT covers T * hop samples exactly, and silent
        # frames up to the STFT's minimum length (its reflect padding needs > n_fft / 2 samples)
        min_frames = cfg.n_fft // cfg.hop_length + 1
        pad = max(1, min_frames - n_frames)
        mel = torch.cat([mel, torch.full((mel.shape[0], pad), cfg.log_floor)], dim=1)
        mel[:, n_frames] = mel[:, n_frames - 1]
        spec = self.inverse_mel(mel)
        # zero initial phase instead of random: decoding must be deterministic
        return AF.griffinlim(
            spec,
            self.window,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.n_fft,
            power=1.0,
            n_iter=cfg.griffin_lim_iters,
            momentum=0.99,
            length=(mel.shape[1] - 1) * cfg.hop_length,
            rand_init=False,
        )[: n_frames * cfg.hop_length]


def rvq_encode(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Residual VQ: ``x [T, D]``, ``codebooks [Q, K, D]`` -> ``codes [T, Q]``."""
    residual = x.clone()
    codes = []
    for cb in codebooks:
        # ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2; the first term does not change the argmin
        dist = (cb * cb).sum(-1)[None, :] - 2 * residual @ cb.T
        idx = dist.argmin(-1)
        residual -= cb[idx]
        codes.append(idx)
    return torch.stack(codes, dim=1)


def rvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``codes [T, Q]`` -> reconstruction ``[T, D]`` = sum over q of ``codebooks[q, codes[:, q]]``."""
    return sum(codebooks[q][codes[:, q]] for q in range(codes.shape[1]))


def mel_card(name: str, cfg: MelVQConfig, weights_sha256: str) -> CodecCard:
    """The card of a codec built on this log-mel framing (every offline codec here)."""
    return CodecCard(
        name=name,
        sample_rate=cfg.sample_rate,
        frame_rate=cfg.sample_rate / cfg.hop_length,
        n_codebooks=cfg.n_codebooks,
        codebook_size=cfg.codebook_size,
        weights_sha256=weights_sha256,
    )


class MelVQCodec(Codec):
    """The offline codec; weights are the fitted codebooks (a small safetensors file)."""

    def __init__(self, codebooks: torch.Tensor, cfg: MelVQConfig, weights_sha256: str) -> None:
        expected = (cfg.n_codebooks, cfg.codebook_size, cfg.n_mels)
        if tuple(codebooks.shape) != expected:
            raise CodecError(f"codebooks have shape {tuple(codebooks.shape)}, config says {expected}")
        self.cfg = cfg
        self.codebooks = codebooks.float()
        self.frontend = MelFrontend(cfg)
        self.card = mel_card("melvq_24khz", cfg, weights_sha256)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_ASSET) -> MelVQCodec:
        """Load fitted codebooks; the file's format tag and version are checked (never unpickled)."""
        path = Path(path)
        hint = f"fit them with `valle codec fit --codec melvq_24khz` or use the default {DEFAULT_ASSET}"
        config, tensors = read_tables(path, FORMAT, FORMAT_VERSION, ("codebooks",), hint)
        return cls(tensors["codebooks"], MelVQConfig(**config), sha256_file(path))

    def save(self, path: str | Path) -> Path:
        return write_tables(path, {"codebooks": self.codebooks}, FORMAT, FORMAT_VERSION, asdict(self.cfg))

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        return rvq_encode(self.frontend.analyse(wav), self.codebooks)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.frontend.synthesise(rvq_decode(codes, self.codebooks))

    def neutral_codes(self) -> torch.Tensor:
        return (self.codebooks**2).sum(-1).argmin(-1)


def kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator, chunk: int = 16384
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: ``x [N, D]`` -> (centres ``[k, D]``, labels ``[N]``).

    Written with batched matrix products rather than calling scikit-learn's KMeans: at N = 80k,
    D = 100, k = 1024 scikit-learn took ~240 s per codebook on 2 cores, this took ~20 s, and the
    fitted codebooks are what ship with the package. Empty clusters are re-seeded from the points
    worst served by their centre.
    """
    n = x.shape[0]
    sq = (x * x).sum(1)

    def assign(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, dists = [], []
        c_sq = (c * c).sum(1)
        for i in range(0, n, chunk):
            d = sq[i : i + chunk, None] - 2 * x[i : i + chunk] @ c.T + c_sq[None]
            m = d.min(1)
            labels.append(m.indices)
            dists.append(m.values.clamp_min(0))
        return torch.cat(labels), torch.cat(dists)

    # k-means++ seeding (Arthur & Vassilvitskii, 2007), next centre drawn with p ~ D(x)^2, on a
    # random subsample of 8 points per centre: seeding needs coverage, not every point
    seed_pool = x[torch.randperm(n, generator=generator)[: min(n, 8 * k)]]
    pool_sq = (seed_pool * seed_pool).sum(1)
    centres = torch.empty(k, x.shape[1])
    centres[0] = seed_pool[0]
    d2 = (pool_sq - 2 * seed_pool @ centres[0] + centres[0] @ centres[0]).clamp_min(0)
    uniforms = torch.rand(k, generator=generator, dtype=torch.float64)
    for j in range(1, k):
        cdf = d2.double().cumsum(0)  # inverse-CDF draw; torch.multinomial is far slower here
        centres[j] = seed_pool[torch.searchsorted(cdf, uniforms[j] * cdf[-1]).clamp_max(len(seed_pool) - 1)]
        d2 = torch.minimum(d2, (pool_sq - 2 * seed_pool @ centres[j] + centres[j] @ centres[j]).clamp_min(0))
    for _ in range(iters):
        labels, dists = assign(centres)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = sums / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            centres[empty] = x[dists.topk(len(empty)).indices]
    labels, _ = assign(centres)
    return centres, labels


def augment_level_and_noise(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gain in [-24, 0] dB and, half of the time, white noise at 20-50 dB SNR.

    A log-mel codebook is not level-invariant: a gain shifts every log-mel bin by a constant. The
    offline corpus is peak-normalised and noiseless, real recordings are neither, so without this
    the codebooks fitted on the corpus spend their entries on one level and one (digital) silence.
    """
    out = wav * 10 ** (rng.uniform(-24.0, 0.0) / 20)
    if rng.random() < 0.5:
        power = float(np.mean(out**2))
        snr_db = rng.uniform(20.0, 50.0)
        out = out + rng.standard_normal(len(out)).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return out.astype(np.float32)


def fit_melvq(
    wavs: Iterable[np.ndarray],
    cfg: MelVQConfig = MelVQConfig(),
    max_frames: int = 80_000,
    kmeans_iters: int = 20,
    seed: int = 0,
    augment: bool = True,
    progress: bool = True,
) -> MelVQCodec:
    """Fit the residual codebooks by k-means, stage by stage, on log-mel frames of ``wavs``.

    ``wavs`` are mono float32 arrays already at ``cfg.sample_rate``; with ``augment`` each gets
    :func:`augment_level_and_noise`. At most ``max_frames`` frames (chosen uniformly at random) are
    used, which keeps fitting within minutes on 2 cores.
    """
    frontend = MelFrontend(cfg)
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        frames = torch.cat(
            [
                frontend.analyse(torch.from_numpy(augment_level_and_noise(w, rng) if augment else w))
                for w in wavs
            ]
        )
    if len(frames) < cfg.codebook_size * 4:
        raise CodecError(
            f"{len(frames)} frames is too little data to fit {cfg.codebook_size} centroids "
            f"(need at least {cfg.codebook_size * 4}, about {cfg.codebook_size * 4 / 75:.0f} s of audio)"
        )
    gen = torch.Generator().manual_seed(seed)
    if len(frames) > max_frames:
        frames = frames[torch.randperm(len(frames), generator=gen)[:max_frames]]
    residual = frames.float().clone()
    codebooks = []
    for _ in tqdm(range(cfg.n_codebooks), desc="fit codebooks", disable=not progress):
        centres, labels = kmeans(residual, cfg.codebook_size, kmeans_iters, gen)
        residual -= centres[labels]
        codebooks.append(centres)
    # sha256 of an in-memory fit is not a file hash; callers that save re-load to get the real one
    return MelVQCodec(torch.stack(codebooks), cfg, weights_sha256="unsaved")
