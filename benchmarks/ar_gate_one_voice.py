"""Gate (ii) of making the generator speak: does an AR trained on one voice read the text?

Trains VALL-E's AR alone (``valle train --parts ar``, preset ``tiny``) on every corpus utterance of
one Piper voice (40 sentences for the default voice), then runs ``valle diagnose --no-asr`` on those
training utterances and on the voice's held-out sentences (``data/heldout_piper``). The figure is
the AR's teacher-forced cross-entropy with the right text minus with another utterance's text of
similar length (nats per token; ``evaluation.diagnose.ar_text_dependence``). The gate asks for more
than 0.5 nats; 0 means the AR ignores the text.

Then it listens (``evaluation.diagnose.ar_generation``): codebook 1 sampled in cross-sentence mode
(prompt = another training utterance of the voice), decoded with codebooks 2..8 neutral, scored by
Whisper tiny.en, for the first 8 training sentences (the sanity check: an AR that has seen a
sentence must be able to say it) and the held-out sentences; the gate's second half asks for the
generated length within +-20% of the truth.

``--ar-pointer`` trains the AR with the phone pointer (``valle.model``; not in the paper) on the
same utterances, taken from a corpus that has phone timing (``--corpus data/corpus_phones/...``).
``--cross-sentence P`` trains a share P of the items after another utterance of the voice, the layout
that generation uses (not in the paper either).

    python benchmarks/ar_gate_one_voice.py [--voice piper-joe-vtl0.92] [--steps 700]
    python benchmarks/ar_gate_one_voice.py --ar-pointer --corpus data/corpus_phones/manifest.jsonl \
        --out runs/ar_gate_one_voice_pointer --name ar_gate_one_voice_pointer
    python benchmarks/ar_gate_one_voice.py --ar-pointer --cross-sentence 0.5 \
        --corpus data/corpus_phones/manifest.jsonl \
        --out runs/ar_gate_one_voice_pointer_cs --name ar_gate_one_voice_pointer_cs
    python benchmarks/ar_gate_one_voice.py --skip-train ...    # score an existing run again
    python benchmarks/ar_gate_one_voice.py --skip-train --heldout-sentences 55 ...    # all 55 held-out
    python benchmarks/ar_gate_one_voice.py --skip-train --greedy ...    # listen to argmax codebook 1
    python benchmarks/ar_gate_one_voice.py --skip-train --greedy --repeat-penalty 3 ...    # no repeats
    python benchmarks/ar_gate_one_voice.py --resume --steps 1500 ...    # train an existing run further
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from generator_diagnostics import build_heldout_piper
from results_io import write_result

from evaluation import diagnose as dg
from evaluation.cli.main import main as valle
from valle.checkpoint import load_checkpoint, read_config
from valle.codec import load_codec_for
from valle.generate import GenerationOptions
from valle.manifest import read_manifest
from valle.sampling import SamplingOptions
from valle.train_checkpoint import resume_dir

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus" / "manifest.jsonl")
    ap.add_argument("--heldout", type=Path, default=REPO / "data" / "heldout_piper" / "manifest.jsonl")
    ap.add_argument(
        "--heldout-sentences",
        type=int,
        default=None,
        help="instead of --heldout, have the voice read N held-out sentences (synthesised once into "
        "data/heldout_piper_<voice>_<N>)",
    )
    ap.add_argument("--voice", default="piper-joe-vtl0.92")
    ap.add_argument("--codec", default="vqvae_24khz")
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ar_gate_one_voice")
    ap.add_argument("--ar-pointer", action="store_true", help="train the AR with the phone pointer")
    ap.add_argument(
        "--cross-sentence", type=float, default=0.0, help="share of items trained after another utterance"
    )
    ap.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval (default: --steps)")
    ap.add_argument("--skip-train", action="store_true", help="score the checkpoint already in --out")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out to --steps (its cosine schedule stretches to the new --steps)",
    )
    ap.add_argument("--greedy", action="store_true", help="listen to argmax codebook 1 instead of sampling")
    ap.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (default sampling: 1)"
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="sampled listening repeated with this many seeds (item i of seed s uses 1000 s + i); "
        "the figures of seed 0 keep their names, the mean WER is added",
    )
    ap.add_argument(
        "--repeat-penalty",
        type=float,
        default=0.0,
        help="subtract this from the logit of the previous frame's code when listening (not in the paper)",
    )
    ap.add_argument("--name", default="ar_gate_one_voice", help="results file name")
    args = ap.parse_args()
    if args.heldout_sentences:
        out = REPO / "data" / f"heldout_piper_{args.voice}_{args.heldout_sentences}"
        args.heldout = build_heldout_piper(out, voices=[args.voice], per_voice=args.heldout_sentences)

    # manifests of one voice, beside the originals so their relative audio paths still resolve
    subsets = {}
    for name, src in (("train", args.corpus), ("heldout", args.heldout)):
        rows = [line for line in src.read_text().splitlines() if json.loads(line)["speaker"] == args.voice]
        if not rows:
            raise SystemExit(f"{src}: no utterance of voice {args.voice!r}")
        subsets[name] = src.parent / f"{args.voice}.{name}.jsonl"
        subsets[name].write_text("\n".join(rows) + "\n")
    minutes, started_at = None, 0
    if not args.skip_train:
        if args.out.exists() and not args.resume:
            shutil.rmtree(args.out)  # a fresh run: the figure is for exactly --steps steps
        ckpt_dir = resume_dir(args.out)  # what `valle train` will resume from, if anything
        started_at = read_config(ckpt_dir)["step"] if ckpt_dir is not None else 0
        started = time.monotonic()
        train = [
            "train", "--manifest", str(subsets["train"]), "--out", str(args.out), "--preset", "tiny",
            "--parts", "ar", "--max-steps", str(args.steps),
            "--ckpt-every", str(args.ckpt_every or args.steps),
            "--codec", args.codec, "--no-progress", *(["--ar-pointer"] if args.ar_pointer else []),
            "--cross-sentence", str(args.cross_sentence),
        ]  # fmt: skip
        if valle(train) != 0:
            raise SystemExit("training failed")
        # no figure for a resumed run: the steps of its earlier calls were not timed here
        minutes = round((time.monotonic() - started) / 60, 1) if started_at == 0 else None
    report = args.out / "diagnose.json"
    cmd = ["diagnose", "--checkpoint", str(args.out / "last"), "--no-asr", "--out", str(report)]
    for path in subsets.values():
        cmd += ["--manifest", str(path)]
    if valle(cmd) != 0:
        raise SystemExit("diagnose failed")
    sets = json.loads(report.read_text())["sets"]
    ckpt = load_checkpoint(args.out / "last")
    figures: dict = {
        "voice": args.voice,
        "codec": args.codec,
        "steps": ckpt.step,
        "ar_pointer": ckpt.config.ar_pointer,
        "cross_sentence": ckpt.extra["train_config"]["cross_sentence"],
    }
    if minutes is not None:
        figures["train_minutes"] = minutes
    if 0 < started_at < ckpt.step:  # resumed here: the cosine schedule was stretched at this step
        figures["resumed_from_step"] = started_at
    for name, path in subsets.items():
        ar = sets[path.stem]["ar"]
        figures[f"{name}_n"] = ar["n"]
        # a pointer AR is teacher-forced only where the corpus has phone timing (not held-out audio)
        for k in (
            "ce_right_text",
            "ce_wrong_text",
            "text_gap_nats",
            "top1_accuracy",
            "copy_previous_accuracy",
        ):
            if k in ar:
                figures[f"{name}_{k}"] = ar[k]
    # listening: sampled codebook 1, codebooks 2..8 neutral, Whisper tiny.en
    codec = load_codec_for(ckpt.codec)
    asr = dg.FasterWhisperASR()
    train_ex = dg.encode_examples(read_manifest(subsets["train"]), codec, ckpt)
    heldout_ex = dg.encode_examples(read_manifest(subsets["heldout"]), codec, ckpt)
    sanity = train_ex[:8]
    listen = {
        "train": (sanity, [train_ex[(i + 1) % len(train_ex)] for i in range(len(sanity))]),
        "heldout": (heldout_ex, [train_ex[i % len(train_ex)] for i in range(len(heldout_ex))]),
    }
    seeds = 1 if args.greedy else args.seeds
    sampling = SamplingOptions(
        greedy=args.greedy, temperature=args.temperature, repeat_penalty=args.repeat_penalty
    )
    decode = (
        "greedy"
        if args.greedy
        else f"sampled (top-p {sampling.top_p}, RAS, temperature {sampling.temperature}, seed 1000 s + i)"
    )
    if args.repeat_penalty:
        decode += f", repeat penalty {args.repeat_penalty:g}"
    figures["decode"] = decode if args.greedy else f"{decode}, {seeds} seed(s)"
    for name, (targets, prompts) in listen.items():
        wers = []
        for s in range(seeds):
            options = GenerationOptions(sampling=sampling, seed=1000 * s)
            result = dg.ar_generation(ckpt, codec, targets, prompts, asr, options)
            wers.append(result["wer"])
            if s == 0:
                figures.update({f"{name}_generated_{k}": v for k, v in result.items()})
            else:
                figures[f"{name}_generated_wer_seed{1000 * s}"] = result["wer"]
        if seeds > 1:
            figures[f"{name}_generated_wer_mean"] = round(float(np.mean(wers)), 2)
    # gate (ii): the AR reads the text of its 20-50 sentences (gap > 0.5 nats) and says new ones at the
    # right length (every held-out output within +-20% of the truth)
    figures["gate_text_gap_nats_min"] = 0.5
    figures["meets_gate"] = (
        figures["train_text_gap_nats"] > 0.5 and figures["heldout_generated_length_within_20pct"] == 1
    )
    path = write_result(
        args.name,
        figures,
        data=f"every utterance of {args.voice} in {args.corpus} (training) and in {args.heldout} (held-out "
        f"sentences); AR only, preset tiny; teacher-forced cross-entropy; codebook 1 {decode} decoded "
        "with codebooks 2..8 neutral, Whisper tiny.en",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
