"""Generator diagnostics for the three offline codecs, side by side.

Runs ``valle diagnose`` for each codec on the same held-out data and writes the flat figures to
``benchmarks/results/generator_diagnostics.json`` (the full reports beside it as
``generator_diagnostics.<codec>.json``):

- ``melvq_24khz`` with the committed demo checkpoint (``checkpoints/demo``, 850 steps);
- ``contentvq_24khz`` with a checkpoint trained on it (``--checkpoint``; e.g. the NAR-only run
  ``valle train --manifest data/corpus/manifest.jsonl --out runs/nar_cvq --preset tiny --parts nar
  --max-steps 2000``);
- ``vqvae_24khz`` with a checkpoint trained on it (``--vqvae-checkpoint``; the same command with
  ``--codec vqvae_24khz --out runs/nar_vqvae``).

``--codecs`` picks which of them run and ``--name`` the results file, so a codec added later is
measured on its own, in one run with its own raw-audio baseline (Whisper's int8 kernels differ
between CPU families, so WER is only compared within one run of one machine).

Held-out data: 5 held-out ARCTIC sentences read by each of the 8 Piper corpus voices (training
voices, unseen sentences; synthesised here into ``data/heldout_piper``) and every utterance of
``../shared/data/real_speech``. H(c_j | c_<j) is estimated from 600 corpus utterances spread over
all 48 voices.

    python benchmarks/generator_diagnostics.py --checkpoint runs/nar_cvq/last \
        --vqvae-checkpoint runs/nar_vqvae/last
    python benchmarks/generator_diagnostics.py --codecs vqvae_24khz --vqvae-checkpoint runs/nar_vqvae/last \
        --name generator_diagnostics_vqvae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from results_io import RESULTS, write_result

from evaluation.cli.main import main as valle

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "real_speech" / "manifest.jsonl"
PER_VOICE = 5
CODECS = ("melvq_24khz", "contentvq_24khz", "vqvae_24khz")


def build_heldout_piper(
    out: Path, seed: int = 1, voices: list[str] | None = None, per_voice: int = PER_VOICE
) -> Path:
    """Each Piper corpus voice (or each of ``voices``) reads ``per_voice`` held-out sentences (6-14 words).

    Voice k reads sentences ``k * per_voice ...`` of the held-out list, so the default set spreads the
    voices over different sentences; the list has 55 such sentences.
    """
    import soundfile as sf

    from valle.corpus.build import CorpusConfig, Synthesizers, condition
    from valle.corpus.sentences import heldout_sentences
    from valle.corpus.speakers import EspeakSpeaker, speaker_catalogue

    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        return manifest
    (out / "audio").mkdir(parents=True, exist_ok=True)
    cfg = CorpusConfig(seed=0)
    catalogue = [s for s in speaker_catalogue() if not isinstance(s, EspeakSpeaker)]
    voices = catalogue if voices is None else [s for s in catalogue if s.id in voices]
    if not voices:
        raise SystemExit("no Piper corpus voice to read the held-out sentences")
    sentences = [s for s in heldout_sentences() if 6 <= len(s.text.split()) <= 14]
    synth = Synthesizers(seed=seed, sample_rate=cfg.sample_rate)
    rows = []
    try:
        for k, voice in enumerate(voices):
            for j in range(min(per_voice, len(sentences))):
                sent = sentences[(k * per_voice + j) % len(sentences)]
                wav, sr = synth(voice, sent.text)
                wav = condition(wav, sr, cfg, name=sent.id)
                uid = f"{voice.id}_{sent.id}"
                sf.write(out / "audio" / f"{uid}.flac", wav, cfg.sample_rate)
                rows.append(
                    {"id": uid, "audio": f"audio/{uid}.flac", "text": sent.text, "speaker": voice.id,
                     "duration": round(len(wav) / cfg.sample_rate, 4)}
                )  # fmt: skip
    finally:
        synth.close()
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def flatten(report: dict, prefix: str) -> dict:
    """The figures the README quotes, as flat keys ``<codec>_<set>_<figure>``."""
    out: dict = {f"{prefix}_checkpoint_step": report["checkpoint_step"]}
    for name, figs in report["sets"].items():
        key = f"{prefix}_{'piper' if 'piper' in name else 'real'}"
        out[f"{key}_n"] = figs["n"]
        for cond, wer in figs.get("oracle_wer", {}).items():
            out[f"{key}_wer_{cond}"] = wer
        out[f"{key}_ras_gt_firing_rate"] = figs["ras_ground_truth_firing_rate"]
        for k in ("text_gap_nats", "top1_accuracy", "copy_previous_accuracy"):
            out[f"{key}_ar_{k}"] = figs["ar"][k]
        for j, s in figs["nar"].items():
            out[f"{key}_nar_ce_{j}"], out[f"{key}_nar_acc_{j}"] = s["ce"], s["accuracy"]
    for j, h in report.get("conditional_entropy_nats", {}).items():
        out[f"{prefix}_cond_entropy_{j}"] = h
    out[f"{prefix}_ras_threshold"] = report["ras"]["threshold"]
    out.update({f"{prefix}_{k}": v for k, v in report.get("embedding_rms", {}).items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="a checkpoint on contentvq_24khz")
    ap.add_argument("--vqvae-checkpoint", type=Path, help="a checkpoint on vqvae_24khz")
    ap.add_argument("--old-checkpoint", type=Path, default=REPO / "checkpoints" / "demo")
    ap.add_argument("--heldout", type=Path, default=REPO / "data" / "heldout_piper")
    ap.add_argument("--train-manifest", type=Path, default=REPO / "data" / "corpus" / "manifest.jsonl")
    ap.add_argument("--codecs", nargs="+", choices=CODECS, default=list(CODECS))
    ap.add_argument("--name", default="generator_diagnostics", help="results file name")
    ap.add_argument("--reuse", action="store_true", help="flatten reports already written, do not rerun")
    args = ap.parse_args()

    heldout = build_heldout_piper(args.heldout)
    figures = {}
    checkpoints = {
        "melvq_24khz": args.old_checkpoint,
        "contentvq_24khz": args.checkpoint,
        "vqvae_24khz": args.vqvae_checkpoint,
    }
    for codec in args.codecs:
        ckpt = checkpoints[codec]
        report = RESULTS / f"generator_diagnostics.{codec}.json"
        entropy = RESULTS / f"generator_diagnostics.{codec}.entropy.json"
        if ckpt is None and not (args.reuse and report.is_file()):
            raise SystemExit(f"{codec}: pass its checkpoint (or --reuse with {report} written)")
        runs = {
            # the checkpoint's figures: oracle WER, AR text dependence, NAR per stage
            report: ["--checkpoint", str(ckpt)],
            # the codec's own: H(c_j | c_<j) on the same held-out audio (no ASR, no checkpoint)
            entropy: ["--codec", codec, "--no-asr", "--train-manifest", str(args.train_manifest)],
        }
        for out, extra in runs.items():
            if not (args.reuse and out.is_file()):
                cmd = [
                    "diagnose",
                    *extra,
                    "--manifest",
                    str(heldout),
                    "--manifest",
                    str(REAL),
                    "--out",
                    str(out),
                ]
                if valle(cmd) != 0:
                    raise SystemExit(f"valle {' '.join(cmd)} failed")
        merged = json.loads(report.read_text())
        merged["conditional_entropy_nats"] = json.loads(entropy.read_text())["conditional_entropy_nats"]
        figures.update(flatten(merged, codec.split("_")[0]))
    path = write_result(
        args.name,
        figures,
        data=f"{heldout} (8 Piper corpus voices x {PER_VOICE} held-out sentences) and {REAL} (50 real "
        "utterances, 16 speakers); Whisper tiny.en (faster-whisper int8); H(c_j|c_<j) from 600 utterances "
        f"spread over {args.train_manifest}",
    )
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
