"""LCNN-style countermeasure: a light CNN with Max-Feature-Map activations on LFCC or log-mel frames.

Max-Feature-Map (MFM; Wu et al., "A Light CNN for Deep Face Representation with Noisy Labels", 2018)
splits a convolution's channels in two halves and keeps their element-wise maximum; Lavrentyeva et al.
("STC Antispoofing Systems for the ASVspoof2019 Challenge", Interspeech 2019) made LCNNs the standard
spoofing-countermeasure CNN, and the ASVspoof 2021 LFCC-LCNN baseline (asvspoof-challenge/2021,
``LA/Baseline-LFCC-LCNN/project/baseline_LA/model.py``, Xin Wang) is:

    Conv5x5(64)-MFM-MaxPool2 | Conv1x1(64)-MFM-BN-Conv3x3(96)-MFM-MaxPool2-BN
    | Conv1x1(96)-MFM-BN-Conv3x3(128)-MFM-MaxPool2 | Conv1x1(128)-MFM-BN-Conv3x3(64)-MFM-BN
    | Conv1x1(64)-MFM-BN-Conv3x3(64)-MFM-MaxPool2 | Dropout(0.7)
    -> two BLSTM layers (residual) -> mean over time -> Linear -> 1 logit

on 60-dim LFCCs (20 ms / 10 ms frames, 20 linear filters on 0-4 kHz, + deltas), trained with Adam
(lr 3e-4) and BCE. ``size="full"`` is that network (~270 k parameters; for a GPU). ``size="small"`` keeps the
conv-MFM-pool-BN pattern at 8/16 channels (~2 k parameters) and mean-pools over time; it trains on a
CPU in about a minute on a few hundred short clips.

Training takes random fixed-length crops (``crop_seconds``, default 4 s; shorter clips are tiled by
repetition, as ASVspoof data loaders do, rather than zero-padded, so length cannot become a cue), balances
the classes with BCE's ``pos_weight``, and normalises each feature dimension by training-set mean and
standard deviation (stored with the weights). Scoring runs on the whole utterance (clips longer than
60 s: the mean logit of 60 s chunks). Score = the logit of bona fide. ``device="auto"`` picks CUDA when
present; the device is not saved, so a loaded model runs on "auto" (set ``det.net.to(...)`` to move it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from detection.base import BaseDetector, Waveform, get_array, progress_iter
from detection.features import Controls, LfccConfig, lfcc, logmel
from detection.io import DetectorFileError

FEATURES = ("lfcc", "logmel")
SIZES = ("small", "full")
MIN_FRAMES = 32  # the full network pools time by 16
SCORE_CHUNK_S = 60.0
DEFAULTS = {  # size -> (epochs, batch_size, lr)
    "small": (20, 16, 1e-3),
    "full": (100, 64, 3e-4),  # the baseline's Adam lr and batch size
}


class MaxFeatureMap(nn.Module):
    """Element-wise max of the two halves of the channel axis: ``[B, 2C, ...] -> [B, C, ...]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.maximum(a, b)


def _conv_mfm(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, 2 * c_out, k, padding=k // 2), MaxFeatureMap()]


class BLSTM(nn.Module):
    """Bidirectional LSTM keeping the feature size: ``[B, T, D] -> [B, T, D]`` (D even)."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class LcnnNet(nn.Module):
    """Features ``[B, T, D]`` (raw; normalised inside by stored statistics) -> logits ``[B]``."""

    def __init__(self, size: str, in_dim: int):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        if size == "full":
            self.body = nn.Sequential(
                *_conv_mfm(1, 32, 5), nn.MaxPool2d(2, 2),
                *_conv_mfm(32, 32, 1), nn.BatchNorm2d(32, affine=False),
                *_conv_mfm(32, 48, 3), nn.MaxPool2d(2, 2), nn.BatchNorm2d(48, affine=False),
                *_conv_mfm(48, 48, 1), nn.BatchNorm2d(48, affine=False),
                *_conv_mfm(48, 64, 3), nn.MaxPool2d(2, 2),
                *_conv_mfm(64, 64, 1), nn.BatchNorm2d(64, affine=False),
                *_conv_mfm(64, 32, 3), nn.BatchNorm2d(32, affine=False),
                *_conv_mfm(32, 32, 1), nn.BatchNorm2d(32, affine=False),
                *_conv_mfm(32, 32, 3), nn.MaxPool2d(2, 2),
                nn.Dropout(0.7),
            )  # fmt: skip
            width = 32 * (in_dim // 16)
            self.pool = nn.Sequential(BLSTM(width), BLSTM(width))
        else:
            self.body = nn.Sequential(
                *_conv_mfm(1, 4, 5), nn.MaxPool2d(2, 2),
                *_conv_mfm(4, 8, 3), nn.BatchNorm2d(8, affine=False), nn.MaxPool2d(2, 2),
                *_conv_mfm(8, 8, 3), nn.BatchNorm2d(8, affine=False),
                nn.Dropout(0.2),
            )  # fmt: skip
            width = 8 * (in_dim // 4)
            self.pool = None
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.feat_mean) / self.feat_std
        h = self.body(x.unsqueeze(1))  # [B, C, T', D']
        h = h.permute(0, 2, 1, 3).flatten(2)  # [B, T', C * D']
        if self.pool is not None:
            h = h + self.pool(h)  # the baseline adds the BLSTM output to its input
        return self.out(h.mean(dim=1)).squeeze(1)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def _tile_to(feat: np.ndarray, n: int) -> np.ndarray:
    """Repeat frames ``[T, D]`` until there are at least ``n``."""
    return feat if len(feat) >= n else np.tile(feat, (int(np.ceil(n / len(feat))), 1))


class LcnnDetector(BaseDetector):
    """LCNN countermeasure (see module docstring); score = logit of bona fide."""

    kind = "lcnn"

    def __init__(
        self,
        size: str = "small",
        feature: str = "lfcc",
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        crop_seconds: float = 4.0,
        n_mels: int = 64,
        device: str = "auto",
        seed: int = 0,
        controls: Controls | None = None,
        name: str | None = None,
    ):
        super().__init__(controls, name)
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        d_epochs, d_batch, d_lr = DEFAULTS[size]
        self.size, self.feature = size, feature
        self.epochs = int(epochs if epochs is not None else d_epochs)
        self.batch_size = int(batch_size if batch_size is not None else d_batch)
        self.lr = float(lr if lr is not None else d_lr)
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or not crop_seconds > 0:
            raise ValueError("epochs, batch_size, lr and crop_seconds must be positive")
        self.crop_seconds = float(crop_seconds)
        self.n_mels = int(n_mels)
        self.device = device
        self.seed = int(seed)
        self.lfcc_config = LfccConfig.lcnn()
        self.net: LcnnNet | None = None

    # -- features -------------------------------------------------------------------------------
    @property
    def in_dim(self) -> int:
        return self.lfcc_config.dim if self.feature == "lfcc" else self.n_mels

    @property
    def hop_ms(self) -> float:
        return self.lfcc_config.hop_ms if self.feature == "lfcc" else 10.0

    def _features(self, clips: list[Waveform]) -> list[np.ndarray]:
        if self.feature == "lfcc":
            return [lfcc(w, sr, config=self.lfcc_config) for w, sr in clips]
        return [logmel(w, sr, n_mels=self.n_mels) for w, sr in clips]

    def _feature_config(self) -> dict:
        if self.feature == "lfcc":
            return {"type": "lfcc", **self.lfcc_config.to_dict()}
        return {"type": "logmel", "n_mels": self.n_mels, "win_ms": 20.0, "hop_ms": 10.0}

    # -- training -------------------------------------------------------------------------------
    def n_parameters(self) -> int:
        net = self.net or LcnnNet(self.size, self.in_dim)
        return sum(p.numel() for p in net.parameters())

    def _fit(self, feats: list[np.ndarray], labels: np.ndarray, progress: bool) -> dict:
        dev = _resolve_device(self.device)
        rng = np.random.default_rng(self.seed)
        crop = max(MIN_FRAMES, round(self.crop_seconds * 1000 / self.hop_ms))
        frames = np.concatenate(feats)
        mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-5
        n_bona, n_spoof = int((labels == 1).sum()), int((labels == 0).sum())
        losses = []
        # Seeded without disturbing the caller's global RNG streams; bit-exact on CPU (cuDNN may not be).
        cuda_ids = (
            [dev.index if dev.index is not None else torch.cuda.current_device()]
            if dev.type == "cuda"
            else []
        )
        with torch.random.fork_rng(devices=cuda_ids):
            torch.manual_seed(self.seed)
            net = LcnnNet(self.size, self.in_dim)
            net.feat_mean.copy_(torch.from_numpy(mean))
            net.feat_std.copy_(torch.from_numpy(std))
            net.to(dev).train()
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(n_spoof / n_bona, device=dev))
            for _ in progress_iter(range(self.epochs), progress, f"{self.name} epochs"):
                order = rng.permutation(len(feats))
                total = 0.0
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    batch = []
                    for i in idx:
                        f = _tile_to(feats[i], crop)
                        s = int(rng.integers(0, len(f) - crop + 1))
                        batch.append(f[s : s + crop])
                    x = torch.from_numpy(np.stack(batch)).to(dev)
                    y = torch.from_numpy(labels[idx].astype(np.float32)).to(dev)
                    loss = loss_fn(net(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / len(feats))
        self.net = net.eval()
        return {
            "device": str(dev),
            "n_parameters": self.n_parameters(),
            "crop_frames": crop,
            "loss_first_epoch": round(losses[0], 5),
            "loss_last_epoch": round(losses[-1], 5),
        }

    def _score(self, feats: list[np.ndarray]) -> np.ndarray:
        net = self.net
        dev = next(net.parameters()).device
        chunk = round(SCORE_CHUNK_S * 1000 / self.hop_ms)
        scores = []
        with torch.no_grad():
            for f in feats:
                parts = [f[s : s + chunk] for s in range(0, len(f), chunk)]
                if len(parts) > 1 and len(parts[-1]) < chunk // 2:
                    parts[-2] = np.concatenate(parts[-2:])  # no short tail chunk with a full vote
                    parts.pop()
                logits = [
                    float(net(torch.from_numpy(_tile_to(p, MIN_FRAMES)).unsqueeze(0).to(dev))) for p in parts
                ]
                scores.append(np.mean(logits))
        return np.array(scores)

    # -- persistence ----------------------------------------------------------------------------
    def _hyperparameters(self) -> dict:
        return {
            "size": self.size,
            "feature": self.feature,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "crop_seconds": self.crop_seconds,
            "n_mels": self.n_mels,
            "seed": self.seed,
        }

    def _arrays(self) -> dict[str, dict[str, np.ndarray]]:
        return {"lcnn.safetensors": {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}}

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> LcnnDetector:
        det = cls(
            **meta["hyperparameters"], controls=Controls.from_dict(meta["controls"]), name=meta.get("name")
        )
        net = LcnnNet(det.size, det.in_dim)
        expected = net.state_dict()
        state = {k: torch.from_numpy(get_array(arrays, "lcnn.safetensors", k).copy()) for k in expected}
        extra = sorted(set(arrays.get("lcnn.safetensors", {})) - set(expected))
        if extra:
            raise DetectorFileError(f"lcnn.safetensors: unexpected tensors {extra[:3]}")
        for k, v in state.items():
            if v.shape != expected[k].shape:
                raise DetectorFileError(
                    f"lcnn.safetensors: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                )
        net.load_state_dict(state)
        det.net = net.to(_resolve_device(det.device)).eval()
        det.training = meta["training"]
        det._fitted = True
        return det
