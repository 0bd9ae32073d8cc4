"""Where codebook 1 loses the words: Whisper WER of stage-1 decodes of ``contentvq_24khz``.

The codec oracle (``benchmarks/generator_diagnostics.py``) shows that ground-truth codebook 1 with a
neutral fill decodes to ~70% WER. This benchmark separates the causes on the same held-out audio,
every condition decoded by the codec's own Griffin-Lim:

- ``gl_logmel``: the true log-mel (the vocoder alone);
- ``envelope``: the unquantised content view (20 cepstra of the mean-normalised frame) plus the
  utterance's true mean frame: what stage 1 quantises, before quantising (no pitch harmonics);
- ``cb1``: the shipped codebook 1 decoded as the codec decodes it (cluster-mean log-mel, smoothed);
- ``cb1_content_space``: the same codes decoded in the content space (centroid cepstrum + the true
  utterance mean): the quantiser's loss without the decoder's;
- ``k4096``: a 4096-entry stage 1 (12 bits instead of 10) fitted here on the corpus the same way,
  decoded as the codec decodes: what four times as many codes buy.

    python benchmarks/codec_stage1.py   # needs data/corpus, data/heldout_piper (generator_diagnostics.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from results_io import write_result

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio
from valle.codec import load_codec
from valle.codec.contentvq import content_view, dct_matrix, fit_content_stage, nearest, smooth_time
from valle.codec.melvq import augment_level_and_noise
from valle.manifest import read_manifest

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_speech" / "manifest.jsonl"


def fit_stage1(codec, manifest: Path, k: int, n_utts: int = 700, seed: int = 0):
    """A ``k``-entry stage 1 fitted like the codec's (augmented corpus audio, k-means on content
    views, decoder centres = mean log-mel per cluster); returns ``logmel [T, n_mels] -> decoded``."""
    utts = read_manifest(manifest)
    utts = utts[:: max(1, len(utts) // n_utts)]
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        wavs = (augment_level_and_noise(load_audio(u.audio, 24000)[0], rng) for u in utts)
        mels = [codec.frontend.analyse(torch.from_numpy(w)) for w in wavs]
    gen = torch.Generator().manual_seed(seed)
    centres, decoder, _ = fit_content_stage(mels, codec.cfg.n_cep, k, 20, gen, max(80_000, 40 * k))

    def decode(logmel: torch.Tensor) -> torch.Tensor:
        c = nearest(content_view(logmel, codec.cfg.n_cep), centres)
        return smooth_time(decoder[c], codec.cfg.smoothing)

    return decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", type=Path, default=REPO / "data" / "heldout_piper" / "manifest.jsonl")
    ap.add_argument("--train-manifest", type=Path, default=REPO / "data" / "corpus" / "manifest.jsonl")
    ap.add_argument("--n", type=int, default=20, help="utterances per set")
    args = ap.parse_args()
    torch.set_num_threads(2)

    codec = load_codec("contentvq_24khz")
    basis = dct_matrix(codec.cfg.mel.n_mels, codec.cfg.n_cep)

    def envelope(m: torch.Tensor) -> torch.Tensor:
        return m.mean(0) + content_view(m, codec.cfg.n_cep) @ basis.T

    def cb1(m: torch.Tensor) -> torch.Tensor:
        return codec.stage1_frames(codec.content_codes(m))

    def cb1_content_space(m: torch.Tensor) -> torch.Tensor:
        cep = codec.content_centres[codec.content_codes(m)]
        return m.mean(0) + smooth_time(cep @ basis.T, codec.cfg.smoothing)

    conditions = {
        "gl_logmel": lambda m: m,
        "envelope": envelope,
        "cb1": cb1,
        "cb1_content_space": cb1_content_space,
        "k4096": fit_stage1(codec, args.train_manifest, 4096),
    }
    sets = {
        "piper": read_manifest(args.heldout)[::2][: args.n],  # every other: all 8 voices
        "real": read_manifest(REAL)[: args.n],
    }
    asr = FasterWhisperASR()
    figures: dict = {}
    for name, utts in sets.items():
        refs, hyps = [], {k: [] for k in ["raw", *conditions]}
        for u in utts:
            wav, sr = load_audio(u.audio, 24000)
            logmel = codec.frontend.analyse(torch.from_numpy(wav))
            refs.append(u.text)
            hyps["raw"].append(asr.transcribe(wav, sr).text)
            for key, fn in conditions.items():
                hyps[key].append(asr.transcribe(codec.frontend.synthesise(fn(logmel)).numpy(), sr).text)
        figures[f"{name}_n"] = len(refs)
        for key, h in hyps.items():
            figures[f"{name}_wer_{key}"] = round(100 * word_error_rate(refs, h).wer, 2)
        print(name, {k: v for k, v in figures.items() if k.startswith(name)}, flush=True)
    path = write_result(
        "codec_stage1",
        figures,
        data=f"{args.n} of {args.heldout} (every other row: 8 Piper voices, held-out sentences) and the "
        f"first {args.n} of {REAL}; Whisper tiny.en (faster-whisper int8); k4096 fitted on ~700 "
        f"utterances of {args.train_manifest}",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
