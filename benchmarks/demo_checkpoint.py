"""How good is the committed demo checkpoint? Intelligibility and voice match on held-out sentences.

For a spread of training speakers, the prompt is one of that speaker's training utterances (about
3 s, with its transcript; cross-sentence mode) and the targets are held-out ARCTIC sentences that
no training corpus contains. Outputs go through the public API, so they carry the keyed mark, under
a *public benchmark key* derived from ``--key-seed`` (never a product key: anyone can rebuild it),
so that a rerun repeats its transcripts: on these half-intelligible clones the mark alone moves
Whisper's transcript of most outputs, so a fresh random key per run would move the WER by several
points. Each output is also decoded without the mark (its codes through the codec, outside the
product's promise, for this measurement only) and transcribed: ``wer_unmarked``. Decoding is the
checkpoint's default (``--greedy`` / ``--no-greedy`` and ``--repeat-penalty`` override it).

- WER: Whisper tiny.en (bundled) on the generated audio vs the target text; the same ASR on the
  speaker's real corpus audio is the ceiling for that voice.
- Speaker similarity (``--speaker``, default CAM++ as in scoring): cosine of each output to the mean
  embedding of its own speaker's corpus utterances vs to every other chosen speaker's; "clearly
  above" means own > others.

    python benchmarks/demo_checkpoint.py [--checkpoint checkpoints/demo] [--corpus data/corpus]
    python benchmarks/demo_checkpoint.py --engine piper --speakers 8 --per-speaker 3 --name NAME
    python benchmarks/demo_checkpoint.py --real ../shared/data/real_speech/manifest.jsonl

``--real`` adds zero-shot cloning of real speakers (those with two or more recordings: one prompts,
the others make the voice print); their figures carry the prefix ``real_``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from public_key import public_key
from results_io import write_result
from tqdm import tqdm

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.speaker import load_speaker_encoder
from evaluation.scorers.wer import word_error_rate
from valle.audio import load_audio
from valle.corpus.sentences import heldout_sentences
from valle.generate import GenerationOptions
from valle.manifest import by_speaker, read_manifest
from valle.sampling import SamplingOptions
from valle.synthesize import Generator
from watermark import load_watermarker
from watermark.base import WatermarkError

ROOT = Path(__file__).resolve().parents[1]


def score_voices(
    gen,
    asr,
    encoder,
    speakers: dict,
    chosen: list[str],
    args,
    first_target: int = 0,
    per_engine: bool = False,
) -> dict:
    """Clone each chosen speaker (prompt: its utterance nearest 3 s) reading ``args.per_speaker``
    held-out sentences; returns the rows and the figures of this group."""
    targets = heldout_sentences()

    def embed(wav: np.ndarray, sr: int) -> np.ndarray:
        return encoder.embed_batch([wav], sr)[0]

    prompts = {name: min(speakers[name], key=lambda u: abs(u.duration - 3.0)) for name in chosen}
    # each speaker's voice print: mean embedding of up to 8 of its utterances other than the prompt
    centroids, ceiling_refs, ceiling_hyps = {}, [], []
    for name in tqdm(chosen, desc="reference voices"):
        others = [u for u in speakers[name] if u.id != prompts[name].id]
        c = np.mean([embed(*load_audio(u.audio)) for u in others[:8]], axis=0)
        centroids[name] = c / np.linalg.norm(c)
        wav, sr = load_audio(others[0].audio)
        ceiling_refs.append(others[0].text)
        ceiling_hyps.append(asr.transcribe(wav, sr).text)

    rows = []
    k = first_target
    for name in tqdm(chosen, desc="generate + score"):
        prompt = prompts[name]
        texts = [targets[(k + j) % len(targets)].text for j in range(args.per_speaker)]
        k += args.per_speaker
        ids = [f"{name}__{j}" for j in range(len(texts))]
        sampling = SamplingOptions(greedy=args.greedy, repeat_penalty=args.repeat_penalty)
        for j, (text, uid) in enumerate(zip(texts, ids, strict=True)):  # item j has seed + j, as in a batch
            options = GenerationOptions(sampling=sampling, seed=args.seed + j)
            try:
                rec = gen.synthesize([text], prompt.audio, prompt.text, options, ids=[uid])[0]
            except WatermarkError:  # an output too short to carry the mark is refused, never written
                nan = float("nan")
                rows.append(
                    {"id": uid, "speaker": name, "text": text, "hyp": "", "hyp_unmarked": "", "refused": True,
                     "silent": False, "greedy": None, "repeat_penalty": None, "stop_reason": None,
                     "seconds": nan, "sim_own": nan, "sim_other_mean": nan, "sim_other_max": nan,
                     "watermark_detected": None}
                )  # fmt: skip
                continue
            gen.save([rec], args.out)
            silent = not rec.watermark["applied"]  # decoded to digital silence: a generation failure
            if silent:
                sims, own = {s: float("nan") for s in centroids if s != name}, float("nan")
            else:
                e = embed(rec.audio, rec.sample_rate)
                sims = {s: float(e @ c) for s, c in centroids.items()}
                own = sims.pop(name)
            rows.append(
                {
                    "id": rec.id,
                    "speaker": name,
                    "text": rec.text,
                    "hyp": "" if silent else asr.transcribe(rec.audio, rec.sample_rate).text,
                    "hyp_unmarked": "" if silent else asr.transcribe(*gen.codec.decode(rec.codes)).text,
                    "refused": False,
                    "silent": silent,
                    "greedy": rec.sampling["sampling"]["greedy"],
                    "repeat_penalty": rec.sampling["sampling"]["repeat_penalty"],
                    "stop_reason": rec.stop_reason,
                    "seconds": len(rec.audio) / rec.sample_rate,
                    "sim_own": own,
                    "sim_other_mean": float(np.mean(list(sims.values()))),
                    "sim_other_max": float(max(sims.values())),
                    "watermark_detected": rec.verification["detected"],
                }
            )
    w = word_error_rate([r["text"] for r in rows], [r["hyp"] for r in rows])
    unmarked = word_error_rate([r["text"] for r in rows], [r["hyp_unmarked"] for r in rows])
    ceiling = word_error_rate(ceiling_refs, ceiling_hyps)
    by_engine = defaultdict(list)
    for r in rows:
        by_engine[r["speaker"].split("-")[0]].append(r)
    figures = {
        "n_utterances": len(rows),
        "n_speakers": len(chosen),
        "wer": round(w.wer, 4),
        "mean_utt_wer": round(w.mean_utterance_wer, 4),
        "wer_unmarked": round(unmarked.wer, 4),
        "transcript_changed_by_mark_rate": round(
            float(np.mean([r["hyp"] != r["hyp_unmarked"] for r in rows if not r["refused"]])), 4
        ),
        "wer_ceiling_real_audio": round(ceiling.wer, 4),
        **{
            f"wer_{eng}": round(word_error_rate([r["text"] for r in rs], [r["hyp"] for r in rs]).wer, 4)
            for eng, rs in by_engine.items()
            if per_engine
        },
        "silent_output_rate": round(float(np.mean([r["silent"] for r in rows])), 4),
        "refused_too_short_rate": round(float(np.mean([r["refused"] for r in rows])), 4),
        "sim_own_speaker_mean": round(float(np.nanmean([r["sim_own"] for r in rows])), 4),
        "sim_other_speakers_mean": round(float(np.nanmean([r["sim_other_mean"] for r in rows])), 4),
        "own_speaker_is_nearest_rate": round(
            float(np.mean([r["sim_own"] > r["sim_other_max"] for r in rows])), 4
        ),
        "eos_rate": round(float(np.mean([r["stop_reason"] == "eos" for r in rows])), 4),
        "max_length_rate": round(float(np.mean([r["stop_reason"] == "max_length" for r in rows])), 4),
        "mean_output_seconds": round(float(np.nanmean([r["seconds"] for r in rows])), 2),
        "watermark_verified_rate_written": float(
            np.mean(
                [r["watermark_detected"] for r in rows if not (r["silent"] or r["refused"])] or [float("nan")]
            )
        ),
    }
    return {"rows": rows, "figures": figures, "next_target": k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--speakers", type=int, default=12)
    ap.add_argument("--engine", choices=("espeak", "piper"), default=None, help="only this engine's voices")
    ap.add_argument("--per-speaker", type=int, default=2)
    ap.add_argument(
        "--real", type=Path, default=None, help="also clone the speakers of this manifest (zero-shot: real_)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--key-seed", type=int, default=0, help="which public benchmark watermark key")
    ap.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--repeat-penalty", type=float, default=None, help="default: the checkpoint's")
    ap.add_argument("--speaker", default="campplus", choices=("campplus", "resemblyzer"))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_eval")
    ap.add_argument("--name", default="demo_checkpoint")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    # a public key, rebuilt from its seed: reruns repeat exactly (see the module docstring)
    key = public_key(f"demo-benchmark-{args.key_seed}")
    gen = Generator(args.checkpoint, load_watermarker("keyed", key=key), key=key)
    asr = FasterWhisperASR()
    encoder = load_speaker_encoder(args.speaker)
    corpus = read_manifest(args.corpus / "manifest.jsonl")
    speakers = by_speaker(u for u in corpus if u.extra.get("split") == "train")
    names = sorted(s for s, utts in speakers.items() if args.engine in (None, utts[0].extra.get("engine")))
    chosen = names[:: max(1, len(names) // args.speakers)][: args.speakers]
    voices = score_voices(gen, asr, encoder, speakers, chosen, args, per_engine=args.engine is None)
    rows, figures = voices["rows"], dict(voices["figures"])
    data = (
        f"{len(chosen)} training voices of {args.corpus} (prompt ~3 s of their own training audio), "
        f"{args.per_speaker} held-out ARCTIC sentences each"
    )
    if args.real is not None:
        real = by_speaker(read_manifest(args.real))
        with_two = sorted(s for s, utts in real.items() if len(utts) >= 2)  # a prompt and a voice print
        zero_shot = score_voices(gen, asr, encoder, real, with_two, args, voices["next_target"])
        rows += zero_shot["rows"]
        figures.update({f"real_{k}": v for k, v in zero_shot["figures"].items()})
        data += (
            f"; zero-shot: the {len(with_two)} speakers of {args.real} with >= 2 recordings (prompt "
            f"~3 s of one, voice print from the others), {args.per_speaker} held-out sentences each"
        )
    figures = {
        "checkpoint_sha256": gen.ckpt.weights_sha256,
        "checkpoint_step": gen.ckpt.step,
        "decode": "greedy" if next(r["greedy"] for r in rows if not r["refused"]) else "sampled",
        "repeat_penalty": next(r["repeat_penalty"] for r in rows if not r["refused"]),
        "speaker_model": args.speaker,
        **figures,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "target_wer_max": 0.20,
    }
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2) + "\n")
    data += f"; cross-sentence mode, seed {args.seed}, public benchmark watermark key {args.key_seed}"
    path = write_result(args.name, figures, data=data)
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}; audio and rows in {args.out}")


if __name__ == "__main__":
    main()
