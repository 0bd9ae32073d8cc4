"""A learned, phone-supervised codebook 1: does a code that keeps the phone decode to words?

`benchmarks/codec_stage1.py` showed that one k-means code per frame, chosen to minimise spectral
error, loses the words (~70% WER) although the envelope it quantises is intelligible (~23%). Here
stage 1 is learned end to end on the corpus, with the synthesisers' own phoneme timing
(``valle corpus`` writes it beside each wav) as a second target:

    x_t      = logmel_t - mean_utt(logmel)                  [T, 100]  level/timbre removed
    z_t      = Enc(x)_t                                     [T, 64]   dilated convs, +-18 frames
    c_t      = argmin_k ||z_t - E[k]||,  q_t = E[c_t]       1024 codes (EMA k-means updates)
    x^_t     = Dec(q)_t                                     [T, 100]  dilated convs, +-36 frames
    loss     = |x - x^|_1 + a * CE(phone_t | W q_t) + b * CE(phone_t | W' z_t) + beta ||z - sg(q)||^2

so every code must name a phone (a linear read-out of its vector alone predicts the phone), and
the decoder restores each phone's spectrum from the code sequence in context. ``--voice-cond`` also
gives the decoder the utterance's mean frame (what a voice prompt tells VALL-E's NAR);
``--phone-weight 0`` is a plain VQ-VAE. ``--whisper-weight w`` adds ``w`` times the L1 distance
between Whisper tiny.en's encoder states (every block; ``whisper_encoder.py``, the bundled weights
in torch) of the decode and of the input, so the decoder is trained on what the recogniser hears
rather than on spectral error alone. Evaluation as in ``codec_stage1.py`` (20 held-out Piper and
20 real utterances, the codec's Griffin-Lim, Whisper tiny.en; STOI against the original too, which
owes nothing to Whisper), plus 20 Piper training utterances, where the codes are as right as they
get: what the decoder path loses by itself.

    valle corpus --out data/corpus_phones          # a corpus with phoneme timing
    python benchmarks/codec_stage1_phones.py --steps 3000 --save stage1.safetensors
    python benchmarks/codec_stage1_phones.py --steps 2000 --voice-cond --name codec_stage1_phones_voice
    python benchmarks/codec_stage1_phones.py --phone-weight 0 --whisper-weight 1 --steps 1500 \
        --name codec_stage1_whisper_loss                 # the best stage 1 so far
    python benchmarks/codec_stage1_phones.py --phone-weight 0 --steps 1500 --name codec_stage1_l1_1500
    python benchmarks/codec_stage1_phones.py --load stage1.safetensors   # evaluate a saved one again
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pystoi import stoi
from results_io import write_result

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio
from valle.codec import load_codec
from valle.codec.vqvae import ContentAutoencoder, VQVAEConfig
from valle.corpus.phones import SILENCE, frame_labels, read_phones
from valle.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_speech" / "manifest.jsonl"


class Stage1(ContentAutoencoder):
    """The codec's stage 1 (``vqvae_24khz``'s network) plus the training-only heads: linear phone
    read-outs of the code and of the unquantised vector, and an optional voice bias for the decoder."""

    def __init__(self, n_phones: int, cfg: VQVAEConfig, cond: bool = False):
        # made before the network, as this script always did, so seeded runs draw the same weights
        voice = nn.Linear(cfg.mel.n_mels, cfg.dim) if cond else None
        super().__init__(cfg)
        # the utterance's mean frame (what the voice prompt tells the NAR), as a decoder bias
        self.cond = voice
        self.phone_q = nn.Linear(cfg.dim, n_phones)  # a code alone must name its phone
        self.phone_z = nn.Linear(cfg.dim, n_phones)

    def forward(self, x: torch.Tensor, voice: torch.Tensor | None = None):
        """``x [B, T, n_mels]`` mean-normalised; ``voice [B, n_mels]`` the mean frame minus the corpus's."""
        z = self.enc(x)
        c, q = self.vq(z)
        h = q if self.cond is None else q + self.cond(voice)[:, None]
        return z, c, q, self.dec(h)


def load_set(utts, segs: dict, frontend, inventory: dict[str, int], noisy: bool, rng):
    """``[(log-mel [T, n_mels], phone index per frame [T])]`` of ``utts`` (``segs``: id -> phone
    segments), each waveform given a random gain and noise first when ``noisy``."""
    from valle.codec.melvq import augment_level_and_noise

    hop_s = frontend.cfg.hop_length / frontend.cfg.sample_rate
    out = []
    for u in utts:
        wav, _ = load_audio(u.audio, 24000)
        if noisy:
            wav = augment_level_and_noise(wav, rng)
        with torch.inference_mode():
            m = frontend.analyse(torch.from_numpy(wav))
        out.append((m, torch.from_numpy(frame_labels(segs[u.id], len(m), hop_s, inventory))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus_phones")
    ap.add_argument("--heldout", type=Path, default=REPO / "data" / "heldout_piper" / "manifest.jsonl")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--phone-weight", type=float, default=1.0, help="a (0 = plain VQ-VAE)")
    ap.add_argument(
        "--whisper-weight",
        type=float,
        default=0.0,
        help="weight of a loss on Whisper tiny.en's encoder states (every block, L1) of the decode",
    )
    ap.add_argument("--voice-cond", action="store_true", help="decoder also sees the utterance's mean frame")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=150, help="crop length (75 Hz frames)")
    ap.add_argument("--n", type=int, default=20, help="evaluation utterances per set")
    ap.add_argument("--name", default="codec_stage1_phones")
    ap.add_argument("--save", type=Path, help="write the trained stage 1 (safetensors) here")
    ap.add_argument("--load", type=Path, help="evaluate a stage 1 saved by --save instead of training")
    ap.add_argument("--trained-minutes", type=float, help="with --load: the training time to report")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    codec = load_codec("contentvq_24khz")
    frontend = codec.frontend
    utts = [u for u in read_manifest(args.corpus / "manifest.jsonl") if u.extra.get("split") == "train"]
    segs = {u.id: read_phones(u.audio) for u in utts}
    labels = sorted({lab for s in segs.values() for lab, _, _ in s} | {SILENCE})
    inventory = {lab: i for i, lab in enumerate(labels)}
    started = time.monotonic()
    data = [
        *load_set(utts, segs, frontend, inventory, False, rng),
        *load_set(utts, segs, frontend, inventory, True, rng),
    ]
    mean_frame = torch.cat([m for m, _ in data[: len(utts)]]).mean(0)  # corpus-wide, clean copies
    print(
        f"{len(utts)} utterances x2, {len(labels)} phone labels, loaded in {time.monotonic() - started:.0f} s"
    )

    state = None
    if args.load:
        from safetensors.torch import load_file

        state = load_file(str(args.load))
        mean_frame = state.pop("mean_frame")
    n_heads = len(labels) if state is None else state["phone_q.weight"].shape[0]
    model = Stage1(n_heads, VQVAEConfig(mel=frontend.cfg), cond=args.voice_cond)
    if state is not None:
        model.load_state_dict(state)
    checks: dict = {}
    if args.whisper_weight > 0:  # checked on --load too, so every results file carries the check
        from whisper_encoder import fit_mel_map, load_tiny_en, max_diff_vs_ctranslate2, whisper_features

        encoder = load_tiny_en()
        diff = max_diff_vs_ctranslate2(encoder, load_audio(utts[0].audio, 16000)[0])
        checks["whisper_encoder_max_abs_diff_vs_ctranslate2"] = diff
        if diff > 1e-2:  # states are O(1); float32 kernels differ in the last bits
            raise SystemExit(f"the torch Whisper encoder differs from CTranslate2's by {diff}")
        if not args.load:
            mel_map = fit_mel_map(frontend, [u.audio for u in utts[::17]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    warmup = min(100, args.steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, cosine decay
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)),
    )
    long_enough = [d for d in data if len(d[0]) > args.frames]
    started = time.monotonic()
    for step in range(1, 0 if args.load else args.steps + 1):
        xs, ys, vs, mus = [], [], [], []
        for i in rng.integers(len(long_enough), size=args.batch):
            m, lab = long_enough[i]
            s = rng.integers(len(m) - args.frames)
            xs.append(m[s : s + args.frames] - m.mean(0))
            mus.append(m.mean(0))
            ys.append(lab[s : s + args.frames])
            vs.append(m.mean(0) - mean_frame)
        x, y = torch.stack(xs), torch.stack(ys)
        z, _, q, xh = model(x, torch.stack(vs))
        recon = F.l1_loss(xh, x)
        ce_q = F.cross_entropy(model.phone_q(q).reshape(-1, len(labels)), y.reshape(-1))
        ce_z = F.cross_entropy(model.phone_z(z).reshape(-1, len(labels)), y.reshape(-1))
        commit = F.mse_loss(z, q.detach())
        loss = recon + args.phone_weight * (ce_q + 0.5 * ce_z) + 0.25 * commit
        if args.whisper_weight > 0:  # what the recogniser hears in the decode vs in the input
            mu = torch.stack(mus)[:, None]
            with torch.no_grad():
                heard = encoder(whisper_features(x + mu, mel_map))
            got = encoder(whisper_features(xh + mu, mel_map))
            loss = loss + args.whisper_weight * sum(map(F.l1_loss, got, heard)) / len(got)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps:
            acc = (model.phone_q(q).argmax(-1) == y).float().mean()
            used = int((model.vq.count > 0.01).sum())
            print(
                f"step {step} l1 {recon.item():.4f} ce_q {ce_q.item():.3f} ce_z {ce_z.item():.3f} "
                f"acc_q {acc.item():.3f} codes {used} {time.monotonic() - started:.0f} s",
                flush=True,
            )
    train_s = time.monotonic() - started
    if args.load:  # keep the training time the run that saved the model reported
        old = REPO / "benchmarks" / "results" / f"{args.name}.json"
        train_s = json.loads(old.read_text())["train_minutes"] * 60 if old.is_file() else None
        train_s = train_s if args.trained_minutes is None else args.trained_minutes * 60
    model.eval()
    if args.save:
        from safetensors.torch import save_file

        save_file({**model.state_dict(), "mean_frame": mean_frame}, str(args.save))

    def decode(m: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            _, _, _, xh = model((m - m.mean(0))[None], (m.mean(0) - mean_frame)[None])
        return xh[0] + (m.mean(0) if args.voice_cond else mean_frame)

    piper_train = [u for u in utts if u.extra.get("engine") == "piper"]
    sets = {
        "piper": read_manifest(args.heldout)[::2][: args.n],
        "real": read_manifest(REAL)[: args.n],
        # training utterances: how far the decoder path falls short where the codes are right
        "piper_train": piper_train[:: max(1, len(piper_train) // args.n)][: args.n],
    }
    asr = FasterWhisperASR()
    figures: dict = {
        "steps": args.steps,
        "phone_weight": args.phone_weight,
        "whisper_weight": args.whisper_weight,
        "train_minutes": None if train_s is None else round(train_s / 60, 1),
        **checks,
    }
    for name, test in sets.items():
        # training utterances also go through Griffin-Lim of their true log-mel: the path's ceiling
        ways = {"stage1": decode, "griffin_lim": lambda m: m} if name == "piper_train" else {"stage1": decode}
        refs, hyps, stois = [], {w: [] for w in ways}, {w: [] for w in ways}
        for u in test:
            wav, sr = load_audio(u.audio, 24000)
            m = frontend.analyse(torch.from_numpy(wav))
            refs.append(u.text)
            for way, f in ways.items():
                out = frontend.synthesise(f(m)).numpy()
                hyps[way].append(asr.transcribe(out, sr).text)
                n = min(len(wav), len(out))
                stois[way].append(stoi(wav[:n], out[:n], sr, extended=False))
        figures[f"{name}_n"] = len(refs)
        for way in ways:
            figures[f"{name}_wer_{way}"] = round(100 * word_error_rate(refs, hyps[way]).wer, 2)
            # STOI owes nothing to Whisper (whose encoder the --whisper-weight loss uses)
            figures[f"{name}_stoi_{way}"] = round(float(np.mean(stois[way])), 4)
        print(name, figures[f"{name}_wer_stage1"], flush=True)
    path = write_result(
        args.name,
        figures,
        data=f"trained on the train split of {args.corpus} (clean + one noisy copy); evaluated on "
        f"{args.n} of {args.heldout} (every other row), the first {args.n} of {REAL} and {args.n} Piper "
        "training utterances; Whisper tiny.en (faster-whisper int8); decoded with "
        + ("the utterance's true mean frame" if args.voice_cond else "the corpus-wide mean frame"),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
