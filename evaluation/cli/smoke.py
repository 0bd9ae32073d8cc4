"""`valle smoke`: an end-to-end check of the offline stack in about a minute.

Stage 1 checks the codec and ASR; stage 2 (when the demo checkpoint is present) runs VALL-E.

Synthesises a few held-out sentences with the bundled engines (eSpeak NG voices and Piper), adds
two real recordings from ``--extra-real MANIFEST`` when given, round-trips each through the
codec, transcribes original and round trip with the bundled Whisper tiny.en, and prints a
per-utterance table and the WER of both. It proves that speech synthesis, the codec, ASR and WER
scoring all work on this machine with no download.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from evaluation.scorers.asr import FasterWhisperASR
from evaluation.scorers.wer import utterance_wer, word_error_rate
from valle.audio import load_audio
from valle.codec import CODECS, DEFAULT_CODEC, load_codec
from valle.corpus.build import Synthesizers
from valle.corpus.sentences import heldout_sentences, training_sentences
from valle.corpus.speakers import select_speakers, speaker_catalogue
from valle.generate import GenerationOptions
from valle.manifest import read_manifest
from valle.synthesize import Generator
from watermark import load_watermarker
from watermark.keys import default_key


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "smoke",
        help="end-to-end smoke run: synthesise -> codec round trip -> Whisper -> WER",
        description=__doc__,
        epilog="example:\n  valle smoke --n 6 --out runs/smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=int, default=4, help="number of utterances (default 4)")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--weights", type=Path, default=None, help="codec weights (default: packaged/cache)")
    p.add_argument("--out", type=Path, default=Path("runs/smoke"), help="where results.json is written")
    p.add_argument(
        "--extra-real",
        type=Path,
        default=None,
        metavar="MANIFEST",
        help="also round-trip 2 real recordings from this manifest (default: none)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("checkpoints/demo"),
        help="VALL-E checkpoint for the generation stage, skipped when absent (default: %(default)s)",
    )
    p.add_argument("--prompt-speaker", default="piper-joe-vtl1.00", help="corpus voice used as the prompt")
    p.set_defaults(func=run)


def run_valle(args, synth, asr, heldout) -> dict:
    """Zero-shot TTS with the checkpoint: a corpus voice reads a training sentence as the ~3 s
    prompt, the model speaks held-out sentences in that voice; outputs are watermarked."""

    speaker = next((s for s in speaker_catalogue() if s.id == args.prompt_speaker), None)
    if speaker is None:
        raise ValueError(f"--prompt-speaker {args.prompt_speaker!r} is not a corpus voice")
    key = default_key()
    gen = Generator(args.checkpoint, load_watermarker("keyed", key=key), key=key)
    prompt_text = next(t.text for t in training_sentences() if 35 <= len(t.text) <= 50)
    wav, sr = synth(speaker, prompt_text)
    texts = [t.text for t in heldout[-2:]]
    records = gen.synthesize(texts, wav, prompt_text, GenerationOptions(seed=0), prompt_sr=sr)
    paths = gen.save(records, args.out / "valle")
    rows = []
    print(f"\nVALL-E {args.checkpoint} (step {gen.ckpt.step}), prompt: {speaker.id} reading {prompt_text!r}")
    for rec, path in zip(records, paths, strict=True):
        hyp = asr.transcribe(rec.audio, rec.sample_rate).text
        wer = utterance_wer(rec.text, hyp)
        mark = "verified" if rec.verification["detected"] else "NOT DETECTED"
        print(
            f"  {path.name}: {len(rec.audio) / sr:4.1f} s, stop={rec.stop_reason}, WER {wer:.0%}, mark {mark}"
        )
        print(f"    text: {rec.text}\n    heard: {hyp}")
        rows.append({**rec.metadata(), "hyp": hyp, "wer": wer})
    return {"checkpoint": str(args.checkpoint), "utterances": rows}


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    codec = load_codec(args.codec, weights=args.weights)
    asr = FasterWhisperASR()
    synth = Synthesizers(seed=0, sample_rate=codec.sample_rate)
    speakers = select_speakers(max(args.n, 8))
    # alternate engines so both are exercised even for small n
    speakers = [s for i, s in enumerate(speakers) if (i % 2 == 0) == ("espeak" in s.id)][: args.n]
    speakers += select_speakers(args.n)[: args.n - len(speakers)]
    sentences = heldout_sentences()[: args.n]

    items = [
        (spk.id, sent.id, sent.text, lambda s=spk, t=sent.text: synth(s, t))
        for spk, sent in zip(speakers, sentences, strict=False)
    ]
    if args.extra_real is not None:
        real = [u for u in read_manifest(args.extra_real) if u.duration and 3.0 <= u.duration <= 6.0][:2]
        items += [(u.speaker, u.id, u.text, lambda u=u: load_audio(u.audio)) for u in real]
    rows = []
    for speaker, item_id, text, load in items:
        wav, sr = load()
        codes = codec.encode(wav, sr, name=f"{speaker}/{item_id}")
        out, out_sr = codec.decode(codes)
        hyp_orig, hyp_rt = asr.transcribe(wav, sr).text, asr.transcribe(out, out_sr).text
        rows.append(
            {
                "speaker": speaker,
                "id": item_id,
                "text": text,
                "seconds": round(len(wav) / sr, 2),
                "codes": list(codes.shape),
                "hyp_original": hyp_orig,
                "hyp_roundtrip": hyp_rt,
                "wer_original": round(utterance_wer(text, hyp_orig), 3),
                "wer_roundtrip": round(utterance_wer(text, hyp_rt), 3),
            }
        )
    refs = [r["text"] for r in rows]
    before = word_error_rate(refs, [r["hyp_original"] for r in rows])
    after = word_error_rate(refs, [r["hyp_roundtrip"] for r in rows])

    print(f"{'speaker':32} {'sec':>5} {'WER orig':>8} {'WER codec':>9}  hypothesis after codec")
    for r in rows:
        print(
            f"{r['speaker']:32} {r['seconds']:5.1f} {r['wer_original']:8.1%} "
            f"{r['wer_roundtrip']:9.1%}  {r['hyp_roundtrip']}"
        )
    print(
        f"\ncorpus WER ({len(rows)} utterances, Whisper tiny.en): input {before.wer:.1%}, "
        f"after {codec.card.name} round trip {after.wer:.1%}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    valle = None
    if args.checkpoint and (args.checkpoint / "config.json").is_file():
        valle = run_valle(args, synth, asr, heldout_sentences())
    else:
        print(f"\n(no VALL-E checkpoint at {args.checkpoint}: generation stage skipped)")
    synth.close()
    summary = {
        "codec": codec.card.to_json(),
        "asr": asr.name,
        "wer_original": before.wer,
        "wer_roundtrip": after.wer,
        "seconds": round(time.perf_counter() - t0, 1),
        "utterances": rows,
        "valle": valle,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results: {args.out / 'results.json'} ({summary['seconds']} s)")
    return 0
