"""`valle codec`: fit the offline codec's codebooks, round-trip audio, show a codec's card."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from valle.audio import SILENCE_PEAK, load_audio, save_audio
from valle.codec import CODECS, DEFAULT_CODEC, load_codec
from valle.codec.contentvq import ContentVQCodec, fit_contentvq
from valle.codec.melvq import MelVQCodec, fit_melvq
from valle.codec.vqvae import VQVAECodec, VQVAEConfig, fit_vqvae, read_stage1
from valle.manifest import read_manifest
from watermark import DEFAULT_WATERMARKER, load_watermarker


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "codec",
        help="fit the offline codec, round-trip audio through a codec, show a codec card",
        description="Codec tools. The offline codecs (contentvq_24khz, vqvae_24khz, melvq_24khz) keep "
        "EnCodec's shape: 24 kHz, 75 Hz, 8 codebooks x 1024.",
        epilog="examples:\n"
        "  valle codec fit --manifest data/corpus/manifest.jsonl --out my_codebooks.safetensors\n"
        "  valle codec roundtrip in.wav out.wav --codec contentvq_24khz\n"
        "  valle codec info --codec encodec_24khz_6kbps --weights encodec_24khz-d7cc33bc.th",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="codec_command", required=True)

    fit = sub.add_parser("fit", help="fit an offline codec's tables by k-means on a manifest's audio")
    fit.add_argument(
        "--codec", choices=("contentvq_24khz", "vqvae_24khz", "melvq_24khz"), default="contentvq_24khz"
    )
    fit.add_argument(
        "--stage1",
        type=Path,
        help="vqvae_24khz: the trained stage 1 (benchmarks/codec_stage1_phones.py --save); "
        "the fit adds stages 2..8 around it",
    )
    fit.add_argument("--manifest", type=Path, required=True, help="JSONL manifest of training audio")
    fit.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    fit.add_argument("--max-frames", type=int, default=80_000, help="frames sampled for k-means")
    fit.add_argument("--iters", type=int, default=20, help="k-means iterations per codebook")
    fit.add_argument("--max-utterances", type=int, default=None, help="use at most this many rows")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--no-augment", action="store_true", help="fit on the audio as is (no gain/noise)")
    fit.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    fit.set_defaults(func=run_fit)

    rt = sub.add_parser(
        "roundtrip",
        help="encode a file to codes and decode it back (the decoded audio is watermarked)",
        description="Encode a file to codes and decode it back. The decoded waveform is codec-made "
        f"audio, so it is marked with the {DEFAULT_WATERMARKER} watermark like every waveform this "
        "package writes from codes.",
    )
    rt.add_argument("input", type=Path)
    rt.add_argument("output", type=Path, help="decoded WAV (codes are saved beside it as .codes.npy)")
    _codec_args(rt)
    rt.set_defaults(func=run_roundtrip)

    info = sub.add_parser("info", help="print a codec's card (name, shape, weights sha256) as JSON")
    _codec_args(info)
    info.set_defaults(func=run_info)


def _codec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: packaged/cache)")
    p.add_argument("--device", default="cpu")


def run_fit(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
    utts = [u for u in read_manifest(args.manifest) if u.audio is not None][: args.max_utterances]
    fit, cls = (fit_melvq, MelVQCodec) if args.codec == "melvq_24khz" else (fit_contentvq, ContentVQCodec)
    if args.codec == "vqvae_24khz":
        if args.stage1 is None:
            raise SystemExit(
                "vqvae_24khz needs --stage1 FILE (a stage 1 trained by benchmarks/codec_stage1_phones.py)"
            )
        cfg = VQVAEConfig()
        network, mean_frame = read_stage1(args.stage1, cfg)
        fit, cls = partial(fit_vqvae, network=network, mean_frame=mean_frame, cfg=cfg), VQVAECodec
    wavs = (load_audio(u.audio, 24_000)[0] for u in utts)
    t0 = time.time()
    codec = fit(
        wavs,
        max_frames=args.max_frames,
        kmeans_iters=args.iters,
        seed=args.seed,
        augment=not args.no_augment,
    )
    codec.save(args.out)
    saved = cls.load(args.out)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "utterances": len(utts),
                "seconds": round(time.time() - t0, 1),
                "card": saved.card.to_json(),
            },
            indent=2,
        )
    )
    return 0


def run_roundtrip(args: argparse.Namespace) -> int:
    codec = load_codec(args.codec, weights=args.weights, device=args.device)
    wav, sr = load_audio(args.input)
    codes = codec.encode(wav, sr, name=str(args.input))
    out, out_sr = codec.decode(codes)
    if float(np.abs(out).max()) >= SILENCE_PEAK:  # silence has nothing to mark, and nothing to misuse
        with contextlib.redirect_stdout(sys.stderr):  # perth announces itself on stdout
            wm = load_watermarker(DEFAULT_WATERMARKER)
        out = wm.embed(out, out_sr)
    save_audio(args.output, out, out_sr)
    np.save(args.output.with_suffix(".codes.npy"), codes.numpy().astype(np.int16))
    print(f"{args.input} -> {tuple(codes.shape)} codes -> {args.output} ({len(out) / out_sr:.2f} s)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    codec = load_codec(args.codec, weights=args.weights, device=args.device)
    print(json.dumps(codec.card.to_json(), indent=2))
    return 0
