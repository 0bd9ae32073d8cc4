"""How fast is VALL-E inference and training? AR decoding with and without the KV cache, the 7 NAR
stages, a training step, and (on CUDA) the real-time factor of end-to-end generation.

Models are randomly initialised: these are speed figures only (no quality is measured). The AR is
forced to decode exactly ``--frames`` steps (``<eos>`` masked through ``min_frames``) from a 3 s
prompt, so both decoders do the same work; their greedy outputs must be identical.

    python benchmarks/generation.py                       # CPU, tiny preset, 750 frames
    python benchmarks/generation.py --device cuda --preset paper --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
from results_io import write_result

from valle.generate import GenerationOptions, ar_generate, generate, nar_generate
from valle.model import IGNORE, VALLE, lengths_to_mask, make_config, masked_cross_entropy
from valle.phonemes import SymbolTable
from valle.sampling import SamplingOptions

FRAME_RATE = 75.0
PROMPT_FRAMES = 225  # 3 s
TEXT_PER_SECOND = 15  # phonemes (with stress marks and boundaries) per second of read speech


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _inputs(cfg, batch: int, frames: int, seed: int = 0):
    """Random requests: text for prompt + target at read-speech rate, a 3 s prompt of 8 codebooks."""
    g = torch.Generator().manual_seed(seed)
    n_text = round((PROMPT_FRAMES + frames) / FRAME_RATE * TEXT_PER_SECOND)
    text = torch.randint(1, cfg.n_phonemes, (batch, n_text), generator=g)
    prompt = torch.randint(0, cfg.codebook_size, (batch, PROMPT_FRAMES, cfg.n_codebooks), generator=g)
    return text, torch.full((batch,), n_text), prompt, torch.full((batch,), PROMPT_FRAMES)


def bench_decoding(model: VALLE, frames: int, bf16: bool, full_recompute: bool) -> dict:
    device = next(model.parameters()).device
    text, tl, prompt, pl = _inputs(model.cfg, 1, frames)
    greedy = SamplingOptions(greedy=True)
    max_new = torch.tensor([frames])

    def ar(cached: bool, n: int):
        opts = GenerationOptions(
            sampling=greedy, min_frames=n, use_kv_cache=cached, bf16=bf16, max_seconds=60
        )
        return ar_generate(model.ar, text, tl, prompt[..., 0], pl, max_new.clamp(max=n), opts, FRAME_RATE)[0]

    ar(True, 8), ar(False, 8)  # warm-up (allocator, kernels)
    kv, t_kv = _timed(lambda: ar(True, frames), device)
    assert len(kv.codes1) == frames and kv.stop_reason == "max_length"
    out = {
        "ar_frames": frames,
        "ar_kv_seconds": round(t_kv, 3),
        "ar_kv_tokens_per_s": round(frames / t_kv, 1),
    }
    if full_recompute:
        full, t_full = _timed(lambda: ar(False, frames), device)
        out |= {
            "ar_full_seconds": round(t_full, 3),
            "ar_full_tokens_per_s": round(frames / t_full, 1),
            "ar_kv_speedup": round(t_full / t_kv, 1),
            "ar_kv_greedy_identical": bool(torch.equal(kv.codes1, full.codes1)),
        }
    nar_args = (model.nar, text, tl, prompt, pl, [kv.codes1])
    nar_generate(*nar_args, bf16=bf16)  # warm-up
    codes, t_nar = _timed(lambda: nar_generate(*nar_args, bf16=bf16), device)
    assert codes[0].shape == (frames, model.cfg.n_codebooks)
    out |= {"nar_7_stages_seconds": round(t_nar, 3)}
    return out


def bench_training(model: VALLE, batch: int, frames: int, bf16: bool, steps: int = 3) -> dict:
    """Forward + backward of AR + NAR (one NAR stage per step, as in training) with masked CE."""
    device = next(model.parameters()).device
    cfg = model.cfg
    text, tl, _, _ = _inputs(cfg, batch, frames)
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, cfg.codebook_size, (batch, frames, cfg.n_codebooks), generator=g)
    al = torch.full((batch,), frames)
    text, tl, codes, al = text.to(device), tl.to(device), codes.to(device), al.to(device)
    prompt_lens = al // 3
    in_target = lengths_to_mask(al, frames) & ~lengths_to_mask(prompt_lens, frames)
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(stage: int) -> int:
        with autocast:
            ar_logits, ar_targets = model.ar(text, tl, codes[..., 0], al)
            nar_logits = model.nar(text, tl, codes, al, prompt_lens, stage)
        nar_targets = codes[..., stage].masked_fill(~in_target, IGNORE)
        loss = (
            masked_cross_entropy(ar_logits, ar_targets)[0] + masked_cross_entropy(nar_logits, nar_targets)[0]
        )
        loss.backward()
        model.zero_grad(set_to_none=True)
        return int((ar_targets != IGNORE).sum() + (nar_targets != IGNORE).sum())

    step(1)  # warm-up
    tokens, seconds = 0, 0.0
    for i in range(steps):
        n, dt = _timed(lambda i=i: step(1 + i % (cfg.n_codebooks - 1)), device)
        tokens, seconds = tokens + n, seconds + dt
    model.eval()
    return {
        "train_batch": batch,
        "train_frames": frames,
        "train_step_seconds": round(seconds / steps, 3),
        "train_tokens_per_s": round(tokens / seconds, 1),  # AR + NAR target tokens, as valle.train counts
    }


def bench_rtf(model: VALLE, batch: int, frames: int, bf16: bool) -> dict:
    """End-to-end codes generation (AR with KV cache + NAR) for ``batch`` requests of ``frames``:
    real-time factor and utterances per minute (codes only: no codec decode, no watermark)."""
    device = next(model.parameters()).device
    text, _, prompt, _ = _inputs(model.cfg, batch, frames, seed=2)
    n_prompt = round(PROMPT_FRAMES / FRAME_RATE * TEXT_PER_SECOND)
    opts = GenerationOptions(
        min_frames=frames, max_seconds=frames / FRAME_RATE, max_length_ratio=10.0, bf16=bf16
    )
    args = ([t.tolist() for t in text], list(prompt), [n_prompt] * batch, opts, FRAME_RATE)
    generate(model, *args)  # warm-up
    outs, seconds = _timed(lambda: generate(model, *args), device)
    assert all(o.n_frames == frames for o in outs)
    audio_seconds = batch * frames / FRAME_RATE
    return {
        f"rtf_batch{batch}": round(seconds / audio_seconds, 4),
        f"rtf_batch{batch}_seconds": round(seconds, 2),
        f"utterances_per_minute_batch{batch}": round(batch / seconds * 60, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    ap.add_argument("--frames", type=int, default=750, help="frames to decode (75 Hz)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-frames", type=int, default=450)
    ap.add_argument("--no-full", action="store_true", help="skip the (slow) full-recompute decoder")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 16], help="end-to-end batch sizes")
    ap.add_argument("--utterance-frames", type=int, default=300, help="end-to-end: frames per utterance")
    ap.add_argument("--name", default="generation", help="results file name")
    ap.add_argument(
        "--bf16-ratio",
        action="store_true",
        help="also time AR decoding and a training step under bf16 autocast in the same run (fp32 / bf16)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    bf16 = args.dtype == "bf16"

    torch.manual_seed(0)
    model = VALLE(make_config(args.preset, len(SymbolTable.default()))).to(device).eval()
    figures: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset,
        "dtype": args.dtype,
        "threads": args.threads,
        "parameters": model.num_parameters(),
        # timings also depend on OpenMP's spin-waiting (the machine's load is recorded by results_io)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    figures |= bench_decoding(model, args.frames, bf16, full_recompute=not args.no_full)
    print({k: v for k, v in figures.items() if k.startswith(("ar_", "nar_"))}, flush=True)
    figures |= bench_training(model, args.train_batch, args.train_frames, bf16)
    print({k: v for k, v in figures.items() if k.startswith("train_")}, flush=True)
    figures["utterance_frames"] = args.utterance_frames
    for batch in args.batches:
        figures |= bench_rtf(model, batch, args.utterance_frames, bf16)
        print({k: v for k, v in figures.items() if k.endswith(f"batch{batch}")}, flush=True)
    if args.bf16_ratio and not bf16:
        from valle.hardware import bf16_autocast_ok

        fast = bench_decoding(model, args.frames, True, full_recompute=False)
        fast |= bench_training(model, args.train_batch, args.train_frames, True)
        figures["bf16_autocast_allowed_here"] = bf16_autocast_ok(device)
        figures["bf16_ar_kv_speedup"] = round(figures["ar_kv_seconds"] / fast["ar_kv_seconds"], 3)
        figures["bf16_nar_speedup"] = round(figures["nar_7_stages_seconds"] / fast["nar_7_stages_seconds"], 3)
        figures["bf16_train_step_speedup"] = round(
            figures["train_step_seconds"] / fast["train_step_seconds"], 3
        )
        print({k: v for k, v in figures.items() if k.startswith("bf16")}, flush=True)
    if not args.no_full:
        required = figures.get("ar_kv_speedup", 0) >= 10 and figures.get("ar_kv_greedy_identical", False)
        figures["kv_speedup_requirement_met"] = bool(required)
    path = write_result(
        args.name,
        figures,
        data=(
            f"randomly initialised VALL-E '{args.preset}' ({args.dtype}); text {TEXT_PER_SECOND} phonemes/s, "
            f"3 s prompt, {args.frames} frames forced (greedy AR, <eos> masked); end to end: "
            f"{args.utterance_frames} frames per utterance, sampled; speed only"
        ),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
