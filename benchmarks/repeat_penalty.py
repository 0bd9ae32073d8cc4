"""Which repeat penalty (``SamplingOptions.repeat_penalty``, not in the paper) for a pointer AR?

Fed its own codes, the one-voice pointer AR holds one code for much of a phoneme (52% of its greedy
frames repeat the previous code where the recording repeats 19%; ``codebook1_tolerance.py``). The
penalty lowers the logit of the previous frame's code by a constant before decoding. This sweeps
it on the AR's own *training* sentences (a development set: the held-out sentences and the demo
test set are not looked at while choosing), in the layout of ``codebook1_tolerance.py``: the first
``--n`` utterances of the manifest, each after the next one as a cross-sentence prompt, codebook 1
generated, codebooks 2..8 neutral, Whisper tiny.en. Greedy at every penalty; sampled (the
checkpoint's sampling defaults, ``--seeds`` seeds, their mean) at 0 and at ``--sampled-penalty``.

    python benchmarks/repeat_penalty.py --checkpoint checkpoints/one_voice_ar \\
        --manifest data/corpus_onevoice/manifest.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from results_io import write_result

from evaluation import diagnose as dg
from valle.checkpoint import load_checkpoint
from valle.codec import load_codec_for
from valle.generate import GenerationOptions
from valle.manifest import read_manifest
from valle.sampling import SamplingOptions

REPO = Path(__file__).resolve().parents[1]
PENALTIES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0)  # 100: the previous code is never chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "one_voice_ar")
    ap.add_argument("--manifest", type=Path, default=REPO / "data" / "corpus_onevoice" / "manifest.jsonl")
    ap.add_argument("--n", type=int, default=20, help="utterances decoded and scored (the first n)")
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds (0, 100, ...)")
    ap.add_argument("--sampled-penalty", type=float, default=3.0)
    ap.add_argument("--name", default="repeat_penalty")
    args = ap.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    codec = load_codec_for(ckpt.codec)
    rows = read_manifest(args.manifest)[: args.n + 1]
    examples = [e for e in dg.encode_examples(rows, codec, ckpt) if e.durations]
    if len(examples) < args.n + 1:
        raise SystemExit(f"{args.manifest}: {len(examples)} of the first {args.n + 1} have phone timing")
    scored = examples[: args.n]
    prompts = [examples[i + 1] for i in range(args.n)]
    asr = dg.FasterWhisperASR()

    def listen(penalty: float, greedy: bool, seed: int = 0) -> dict:
        sampling = SamplingOptions(greedy=greedy, repeat_penalty=penalty)
        return dg.ar_generation(
            ckpt, codec, scored, prompts, asr, GenerationOptions(sampling=sampling, seed=seed)
        )

    figures: dict = {"checkpoint_step": ckpt.step, "n": len(scored)}
    for p in PENALTIES:
        result = listen(p, greedy=True)
        figures[f"greedy_wer_p{p:g}"] = result["wer"]
        figures[f"greedy_length_ratio_p{p:g}"] = result["length_ratio_mean"]
        figures[f"greedy_within_20pct_p{p:g}"] = result["length_within_20pct"]
        print(p, json.dumps(result), flush=True)
    for p in (0.0, args.sampled_penalty):
        wers = [listen(p, greedy=False, seed=100 * k)["wer"] for k in range(args.seeds)]
        figures[f"sampled_wer_p{p:g}_mean"] = round(float(np.mean(wers)), 2)
        figures[f"sampled_wer_p{p:g}_min"], figures[f"sampled_wer_p{p:g}_max"] = min(wers), max(wers)
        print(p, "sampled", wers, flush=True)
    path = write_result(
        args.name,
        figures,
        data=f"the first {len(scored)} utterances of {args.manifest} (training sentences of the checkpoint), "
        f"each after the next as a cross-sentence prompt; codebook 1 generated, codebooks 2..8 neutral, "
        f"{ckpt.codec.name}, Whisper tiny.en; checkpoint {args.checkpoint} at step {ckpt.step}",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
