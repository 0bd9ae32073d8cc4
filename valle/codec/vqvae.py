"""An offline codec whose codebook 1 is learned: a VQ-VAE stage 1, a voice stage, residual k-means.

:mod:`valle.codec.contentvq` showed that one k-means code per frame loses the words (codebook 1
alone decodes to ~70% WER): a frame-by-frame centroid is each sound's average spectrum, with no
context. Here stage 1 is a small VQ-VAE trained end to end on the corpus, its decoder reading
+-36 frames of codes and trained on L1 plus what Whisper tiny.en's encoder hears
(``benchmarks/codec_stage1_phones.py --whisper-weight 1``; README "Codecs"):

    analysis     x -> log-mel m_t in R^100 (n_fft 1280, hop 320: 75 Hz), as ``melvq_24khz``
    stage 1      z = Enc(m - mean_utt(m))                    [T, 64]   dilated convs, +-18 frames
                 c_{t,1} = argmin_k ||z_t - E[k]||            1024 learned entries E
                 d = Dec(E[c_1]) + mu                         [T, 100]  mu: the corpus's mean frame
    stage 2      c_{t,2} = argmin_k ||mean_t(m - d) - V[k]||  one code for the whole utterance: its
                                                              level and voice (V: k-means of the
                                                              offsets of corpus utterances and crops)
    stages 3..8  residual k-means on r = m - d - V[c_2], as ``melvq_24khz``
    synthesis    m_t ~= d_t + V[c_{t,2}] + sum_{q>=3} C_q[c_{t,q}] -> inverse mel -> Griffin-Lim

So codebook 1 alone decodes (with the neutral fill) to a speaker-neutral voice saying the words;
codebook 2 is constant over an utterance, so a NAR can read it off the voice prompt (the codec
designed for what VALL-E's NAR can infer); stages 3..8 add the frame's remaining detail. Decoding
takes codebook 2 frame by frame, so any [T, 8] grid decodes. Weights: the stage-1 network (fp16),
mu, V and C_3..C_8 in one safetensors file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from tqdm import tqdm

from valle.codec.base import Codec, CodecError, check_shapes, read_tables, sha256_file, write_tables
from valle.codec.contentvq import nearest
from valle.codec.melvq import (
    MelFrontend,
    MelVQConfig,
    augment_level_and_noise,
    kmeans,
    mel_card,
    rvq_decode,
    rvq_encode,
)

NAME = "vqvae_24khz"
FORMAT = "valle-vqvae"
FORMAT_VERSION = 1
DEFAULT_ASSET = Path(__file__).parent / "assets" / "vqvae_24khz.safetensors"
TABLES = ("mean_frame", "voice_codebook", "residual_codebooks")


@dataclass(frozen=True)
class VQVAEConfig:
    mel: MelVQConfig = field(default_factory=MelVQConfig)
    dim: int = 64  # stage-1 code vectors
    width: int = 256  # conv channels
    kernel: int = 5
    enc_dilations: tuple[int, ...] = (1, 2, 4, 1)  # receptive field +-18 frames
    dec_dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 1)  # +-36 frames

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> VQVAEConfig:
        return cls(
            **{
                **d,
                "mel": MelVQConfig(**d["mel"]),
                "enc_dilations": tuple(d["enc_dilations"]),
                "dec_dilations": tuple(d["dec_dilations"]),
            }
        )


class ConvStack(nn.Module):
    """``[B, T, d_in] -> [B, T, d_out]``: a 1-D conv in, residual dilated conv blocks, a 1x1 out."""

    def __init__(self, d_in: int, d_out: int, width: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.inp = nn.Conv1d(d_in, width, kernel, padding=kernel // 2)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv1d(width, width, kernel, padding=d * (kernel // 2), dilation=d))
            for d in dilations
        )
        self.norm = nn.GroupNorm(1, width)
        self.out = nn.Conv1d(width, d_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.transpose(1, 2))
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.gelu(self.norm(h))).transpose(1, 2)


class EMAQuantiser(nn.Module):
    """Nearest-entry VQ whose entries follow the mean of their assigned vectors (van den Oord et
    al., 2017, appendix), with unused entries restarted on random encoder outputs."""

    def __init__(self, k: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("embed", torch.randn(k, dim) * 0.1)
        self.register_buffer("count", torch.ones(k))
        self.register_buffer("total", self.embed.clone())

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """``z [..., dim]`` -> index of the nearest entry ``[...]``."""
        flat = z.reshape(-1, z.shape[-1])
        return nearest(flat, self.embed).reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.codes(z)
        if self.training:
            with torch.no_grad():
                flat = z.reshape(-1, z.shape[-1])
                onehot = F.one_hot(c.reshape(-1), self.embed.shape[0]).type(flat.dtype)
                self.count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.total.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
                self.embed.copy_(self.total / self.count.clamp_min(1e-5)[:, None])
                dead = self.count < 1e-3
                if dead.any():
                    pick = flat[torch.randint(len(flat), (int(dead.sum()),))]
                    self.embed[dead], self.total[dead], self.count[dead] = pick, pick, 1.0
        q = self.embed[c]
        return c, z + (q - z).detach()  # straight-through gradient to the encoder


class ContentAutoencoder(nn.Module):
    """Stage 1: ``x [B, T, n_mels]`` (mean-normalised log-mel) -> codes ``[B, T]`` -> ``x^``."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        m = cfg.mel
        self.enc = ConvStack(m.n_mels, cfg.dim, cfg.width, cfg.kernel, cfg.enc_dilations)
        self.vq = EMAQuantiser(m.codebook_size, cfg.dim)
        self.dec = ConvStack(cfg.dim, m.n_mels, cfg.width, cfg.kernel, cfg.dec_dilations)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(z [B, T, dim], codes [B, T], q [B, T, dim] (straight-through), x^ [B, T, n_mels])``."""
        z = self.enc(x)
        c, q = self.vq(z)
        return z, c, q, self.dec(q)

    def decode_codes(self, c: torch.Tensor) -> torch.Tensor:
        """``codes [B, T]`` -> ``x^ [B, T, n_mels]``."""
        return self.dec(self.vq.embed[c])


def network_state(net: ContentAutoencoder) -> dict[str, torch.Tensor]:
    """The stage-1 tensors a codec file keeps (the VQ's EMA statistics are training state)."""
    return {k: v for k, v in net.state_dict().items() if k not in ("vq.count", "vq.total")}


class VQVAECodec(Codec):
    """Learned-stage-1 offline codec (see the module docstring)."""

    def __init__(
        self,
        network: dict[str, torch.Tensor],
        mean_frame: torch.Tensor,
        voice_codebook: torch.Tensor,
        residual_codebooks: torch.Tensor,
        cfg: VQVAEConfig,
        weights_sha256: str,
    ) -> None:
        m = cfg.mel
        shapes = {
            "mean_frame": (tuple(mean_frame.shape), (m.n_mels,)),
            "voice_codebook": (tuple(voice_codebook.shape), (m.codebook_size, m.n_mels)),
            "residual_codebooks": (
                tuple(residual_codebooks.shape),
                (m.n_codebooks - 2, m.codebook_size, m.n_mels),
            ),
        }
        check_shapes(shapes)
        self.cfg = cfg
        self.net = ContentAutoencoder(cfg).eval()
        wanted = network_state(self.net)
        missing, unexpected = set(wanted) - set(network), set(network) - set(wanted)
        if missing or unexpected:
            raise CodecError(
                f"stage-1 network tensors do not match the config: missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        for k, v in network.items():
            if v.shape != wanted[k].shape:
                want = tuple(wanted[k].shape)
                raise CodecError(f"stage-1 tensor {k} has shape {tuple(v.shape)}, config says {want}")
        self.net.load_state_dict({k: v.float() for k, v in network.items()}, strict=False)
        self.mean_frame = mean_frame.float()
        self.voice_codebook = voice_codebook.float()
        self.residual_codebooks = residual_codebooks.float()
        self.frontend = MelFrontend(m)
        self.card = mel_card(NAME, m, weights_sha256)

    # --- files ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path = DEFAULT_ASSET) -> VQVAECodec:
        """Load the weights; the file's format tag and version are checked (never unpickled)."""
        path = Path(path)
        hint = f"fit them with `valle codec fit --codec {NAME} --stage1 FILE` or use {DEFAULT_ASSET}"
        config, t = read_tables(path, FORMAT, FORMAT_VERSION, TABLES, hint)
        network = {k[len("net.") :]: v for k, v in t.items() if k.startswith("net.")}
        return cls(network, *(t[name] for name in TABLES), VQVAEConfig.from_json(config), sha256_file(path))

    def save(self, path: str | Path) -> Path:
        tables = {f"net.{k}": v for k, v in network_state(self.net).items()}
        tables.update(mean_frame=self.mean_frame, voice_codebook=self.voice_codebook)
        tables["residual_codebooks"] = self.residual_codebooks
        return write_tables(path, tables, FORMAT, FORMAT_VERSION, self.cfg.to_json())

    # --- the transform ----------------------------------------------------------------------

    def content_codes(self, logmel: torch.Tensor) -> torch.Tensor:
        """Stage 1: ``logmel [T, n_mels]`` -> codebook-1 codes ``[T]``."""
        return self.net.vq.codes(self.net.enc((logmel - logmel.mean(0))[None]))[0]

    def stage1_frames(self, c1: torch.Tensor) -> torch.Tensor:
        """Codebook 1 ``[T]`` -> its decoded log-mel ``[T, n_mels]`` (with the corpus's mean frame)."""
        return self.net.decode_codes(c1[None])[0] + self.mean_frame

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        logmel = self.frontend.analyse(wav)
        c1 = self.content_codes(logmel)
        rest = logmel - self.stage1_frames(c1)
        c2 = nearest(rest.mean(0, keepdim=True), self.voice_codebook).expand(len(logmel))
        rest = rvq_encode(rest - self.voice_codebook[c2], self.residual_codebooks)
        return torch.cat([c1[:, None], c2[:, None], rest], dim=1)

    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[T, 8]`` -> log-mel ``[T, n_mels]`` (what the synthesis inverts)."""
        return (
            self.stage1_frames(codes[:, 0])
            + self.voice_codebook[codes[:, 1]]
            + rvq_decode(codes[:, 2:], self.residual_codebooks)
        )

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.frontend.synthesise(self.reconstruct(codes))

    def neutral_codes(self) -> torch.Tensor:
        """Stage 1: the entry nearest the mean of the entries; stages 2..8: the entry nearest zero
        (codebook 1 decoded with the corpus's mean voice). ``LongTensor[8]``."""
        e = self.net.vq.embed
        first = ((e - e.mean(0)) ** 2).sum(-1).argmin()
        voice = (self.voice_codebook**2).sum(-1).argmin()
        rest = (self.residual_codebooks**2).sum(-1).argmin(-1)
        return torch.cat([first[None], voice[None], rest])


def read_stage1(path: Path, cfg: VQVAEConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A stage 1 saved by ``benchmarks/codec_stage1_phones.py --save``: (network tensors, mean frame).
    Training-only heads (phone read-outs, voice conditioning) are left out; a stage 1 trained with
    voice conditioning is refused (this codec's decoder does not take the voice)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CodecError(f"{path}: not a readable safetensors stage 1 ({err})") from err
    if any(k.startswith("cond.") for k in tensors):
        raise CodecError(f"{path}: stage 1 was trained with --voice-cond, which this codec does not use")
    if "mean_frame" not in tensors:
        raise CodecError(f"{path}: no mean_frame; save the stage 1 with codec_stage1_phones.py --save")
    wanted = network_state(ContentAutoencoder(cfg))
    return {k: v for k, v in tensors.items() if k in wanted}, tensors["mean_frame"]


def fit_vqvae(
    wavs: Iterable[np.ndarray],
    network: dict[str, torch.Tensor],
    mean_frame: torch.Tensor,
    cfg: VQVAEConfig = VQVAEConfig(),
    max_frames: int = 80_000,
    kmeans_iters: int = 20,
    crops_per_utterance: int = 3,
    seed: int = 0,
    augment: bool = True,
    progress: bool = True,
) -> VQVAECodec:
    """Fit stages 2..8 around a trained stage 1 on ``wavs`` (mono float32 at 24 kHz).

    Stage 2 is k-means on the mean offset ``mean_t(m - d)`` of each utterance and of
    ``crops_per_utterance`` random crops of 1-4 s (a crop is what a voice prompt is); stages 3..8
    residual k-means on what stages 1 and 2 leave, frame by frame. With ``augment`` each waveform
    gets a random gain and noise (:func:`augment_level_and_noise`) first.
    """
    m = cfg.mel
    placeholder = torch.zeros(m.codebook_size, m.n_mels)
    codec = VQVAECodec(
        network, mean_frame, placeholder, placeholder.expand(m.n_codebooks - 2, -1, -1), cfg, "unsaved"
    )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    offsets, residuals = [], []
    with torch.inference_mode():
        for w in tqdm(wavs, desc="stage 1", disable=not progress):
            w = augment_level_and_noise(w, rng) if augment else w
            logmel = codec.frontend.analyse(torch.from_numpy(w))
            rest = logmel - codec.stage1_frames(codec.content_codes(logmel))
            offsets.append(rest.mean(0))
            residuals.append(rest)
            for _ in range(crops_per_utterance):
                n = int(rng.integers(75, 301))  # 1-4 s; an utterance shorter than that gives none
                if len(logmel) > n:
                    s = int(rng.integers(len(logmel) - n))
                    crop = logmel[s : s + n]
                    offsets.append((crop - codec.stage1_frames(codec.content_codes(crop))).mean(0))
    offsets = torch.stack(offsets)
    if len(offsets) < m.codebook_size * 2:
        raise CodecError(
            f"{len(offsets)} utterances and crops is too little data to fit {m.codebook_size} voice "
            f"entries (need at least {m.codebook_size * 2})"
        )
    voice, _ = kmeans(offsets, m.codebook_size, kmeans_iters, gen)
    # what the *quantised* offset leaves, so stages 3..8 also absorb stage 2's error
    residual = torch.cat([r - voice[nearest(r.mean(0, keepdim=True), voice)] for r in residuals])
    residual = residual[torch.randperm(len(residual), generator=gen)[:max_frames]]
    codebooks = []
    for _ in tqdm(range(m.n_codebooks - 2), desc="fit residual codebooks", disable=not progress):
        centres, labels = kmeans(residual, m.codebook_size, kmeans_iters, gen)
        residual -= centres[labels]
        codebooks.append(centres)
    return VQVAECodec(network, mean_frame, voice, torch.stack(codebooks), cfg, weights_sha256="unsaved")
