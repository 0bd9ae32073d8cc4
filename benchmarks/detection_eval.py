"""How well do the synthetic-speech detectors separate real speech from four kinds of generated speech,
also from a generator they never saw, and how much of that survives common signal degradations?

Data (offline):

- bona fide: ``../shared/data/real_speech`` (50 real read-English clips, 16 speakers, 16-48 kHz);
- ``espeak`` and ``piper``: a seeded sample of ``--per-engine`` clips of each engine from the offline
  corpus ``data/corpus/manifest.jsonl`` (their own synthetic voices);
- ``melvq``: every real clip resynthesised through the offline codec ``melvq_24khz`` (mel VQ + Griffin-Lim):
  a vocoder-style spoof of the SAME speakers and sentences;
- ``valle``: clones from the demo checkpoint (``checkpoints/demo``, carrying the keyed mark as every
  output of the public API does; a throwaway key), each prompted by one real clip (<= 10 s, with its
  transcript; cross-sentence mode) and speaking a held-out ARCTIC sentence, so the clones target the
  real speakers. Silent generations (a known failure of the tiny model) are dropped and counted.

Generated audio is cached under ``runs/bench_detection/`` (reruns reuse it; the clones only if the
same checkpoint made them).

Protocols (``detection.split.split``, seed 0, test fraction 0.3, speaker-disjoint): ``standard``
(every generator in train and test) and ``heldout_valle`` (trained on espeak + piper + melvq; tested on
the test speakers' bona fide clips vs the valle clones of those speakers). Detectors: ``lfcc-gmm``
(64 components), ``lfcc-lr`` and ``lcnn`` (small), each with the shortcut controls (silence trim +
loudness match + 16 kHz) and without (``Controls.none()``: 16 kHz only). Each is scored on its test set
clean and under the default degradations of ``valle detect eval`` (both classes degraded); EER with a
speaker-level 95% bootstrap interval, minDCF (ASVspoof 5 costs), Cllr. Each detector's decision
threshold is fixed on its training split as ``valle detect train`` does (EER threshold of out-of-fold
scores, 3 speaker-disjoint folds); the bona fide rejection and spoof acceptance it gives on the clean
test set are reported, and so are those of the in-sample threshold (EER threshold of the final
detector's scores on its own training clips) for comparison.

Timing: fit and score wall time for 1,000 utterances (50 real + 950 corpus clips; labels real + piper = 1,
espeak = 0, for timing only, no accuracy is measured), torch and BLAS with 1 thread, on this machine.

    python benchmarks/detection_eval.py [--per-engine 60] [--bootstrap 1000] [--timing-clips 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_io import write_result
from threadpoolctl import threadpool_limits

from detection.evaluate import degrade, evaluate
from detection.metrics import rates_at
from detection.split import Clip, split
from detection.train import build_detector, fit_and_calibrate
from evaluation.testsets.detector_data import degradations, load_clip_audio

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real_speech"
CORPUS = ROOT / "data" / "corpus"
CACHE = ROOT / "runs" / "bench_detection"
MODELS = ("lfcc-gmm", "lfcc-lr", "lcnn")
PROTOCOLS = {"standard": None, "heldout_valle": "valle"}
GENERATORS = ("bonafide", "espeak", "piper", "melvq", "valle")
MAX_PROMPT_S = 10.0
CALIBRATION_FOLDS = 3


def rows_of(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def real_clips(real: Path) -> list[Clip]:
    return [
        Clip(r["id"], str(real / r["audio"]), r["speaker"], 1, "bonafide")
        for r in rows_of(real / "manifest.jsonl")
    ]


def corpus_clips(corpus: Path, per_engine: int, seed: int) -> list[Clip]:
    rows = rows_of(corpus / "manifest.jsonl")
    rng = np.random.default_rng(seed)
    out = []
    for engine in ("espeak", "piper"):
        mine = sorted((r for r in rows if r.get("engine") == engine), key=lambda r: r["id"])
        pick = rng.choice(len(mine), size=min(per_engine, len(mine)), replace=False)
        out += [
            Clip(mine[i]["id"], str(corpus / mine[i]["audio"]), mine[i]["speaker"], 0, engine)
            for i in sorted(pick)
        ]
    return out


def _cached(kind: str) -> list[Clip] | None:
    manifest = CACHE / kind / "clips.jsonl"
    if not manifest.is_file():
        return None
    return [Clip(**json.loads(line)) for line in manifest.read_text().splitlines() if line.strip()]


def _store(kind: str, clips: list[Clip], notes: dict) -> None:
    (CACHE / kind / "clips.jsonl").write_text("".join(json.dumps(c.to_json()) + "\n" for c in clips))
    (CACHE / kind / "notes.json").write_text(json.dumps(notes, indent=1) + "\n")


def melvq_clips(real: list[Clip]) -> list[Clip]:
    """Each real clip through the offline codec (encode + decode), same speaker."""
    if (cached := _cached("melvq")) is not None:
        return cached
    from valle.audio import load_audio, save_audio
    from valle.codec import load_codec

    codec = load_codec("melvq_24khz")
    (CACHE / "melvq").mkdir(parents=True, exist_ok=True)
    out, t0 = [], time.perf_counter()
    for c in real:
        wav, sr = load_audio(c.path)
        y, ysr = codec.decode(codec.encode(wav, sr, name=c.id))
        path = save_audio(CACHE / "melvq" / f"{c.id}.wav", y, ysr)
        out.append(Clip(f"melvq:{c.id}", str(path), c.speaker, 0, "melvq"))
    _store("melvq", out, {"codec": codec.card.to_json(), "seconds": round(time.perf_counter() - t0, 1)})
    return out


def valle_clips(real: list[Clip], checkpoint: Path, seed: int, batch: int = 8) -> list[Clip]:
    """One clone per real clip of <= MAX_PROMPT_S (prompt = that clip + its transcript); the cache is
    reused only if the same checkpoint made it."""
    import secrets
    import shutil

    from valle.audio import save_audio
    from valle.checkpoint import read_config
    from valle.corpus.sentences import heldout_sentences
    from valle.generate import GenerationOptions
    from valle.synthesize import Generator, SynthesisRequest
    from watermark import load_watermarker
    from watermark.keys import WatermarkKey

    if (cached := _cached("valle")) is not None:
        made_by = json.loads((CACHE / "valle" / "notes.json").read_text()).get("weights_sha256")
        if made_by == read_config(checkpoint)["weights_sha256"]:
            return cached
        shutil.rmtree(CACHE / "valle")  # another checkpoint's clones

    texts = {r["id"]: r["text"] for r in rows_of(REAL / "manifest.jsonl")}
    durations = {r["id"]: r["duration"] for r in rows_of(REAL / "manifest.jsonl")}
    prompts = [c for c in real if durations[c.id] <= MAX_PROMPT_S]
    sentences = [s.text for s in heldout_sentences()]
    key = WatermarkKey("detection-benchmark", secrets.token_bytes(32))  # this run's only, never stored
    gen = Generator(checkpoint, load_watermarker("keyed", key=key), key=key)
    (CACHE / "valle").mkdir(parents=True, exist_ok=True)
    out, silent, t0 = [], [], time.perf_counter()
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        requests = [
            SynthesisRequest(f"valle-{c.id}", sentences[(start + i) % len(sentences)], c.path, texts[c.id])
            for i, c in enumerate(chunk)
        ]
        records = gen.synthesize_requests(
            requests, GenerationOptions(seed=seed), seeds=[seed + start + i for i in range(len(chunk))]
        )
        for c, rec in zip(chunk, records, strict=True):
            if not rec.watermark["applied"]:  # decoded to digital silence: no spoof to detect
                silent.append(rec.id)
                continue
            path = save_audio(CACHE / "valle" / f"{rec.id}.wav", rec.audio, rec.sample_rate)
            out.append(Clip(f"valle:{c.id}", str(path), c.speaker, 0, "valle"))
        print(
            f"  valle: {start + len(chunk)}/{len(prompts)} prompts, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    notes = {
        "checkpoint": str(checkpoint),
        "weights_sha256": gen.ckpt.weights_sha256,
        "prompts": len(prompts),
        "silent_dropped": silent,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _store("valle", out, notes)
    return out


def _r(x: float | None, k: int = 4) -> float | None:
    return None if x is None else round(float(x), k)


def run_protocol(
    name: str, clips: list[Clip], audio: dict, attacks, bootstrap: int, quick: bool
) -> tuple[dict, list]:
    sp = split(clips, 0.3, seed=0, holdout_generator=PROTOCOLS[name])
    train_audio = [audio[c.id] for c in sp.train]
    test_audio = [audio[c.id] for c in sp.test]
    t0 = time.perf_counter()
    conditions = degrade(sp.test, test_audio, attacks)
    print(
        f"[{name}] train {sp.description['counts']['train']}, test {sp.description['counts']['test']}; "
        f"degraded in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    figures, table = (
        {"split": sp.description["counts"], "test_speakers": len(sp.description["test_speakers"])},
        [],
    )
    for model in MODELS:
        for controls in (True, False):
            tag = f"{model}_{'ctl' if controls else 'noctl'}"

            def make(model=model, controls=controls):
                epochs = 5 if quick and model == "lcnn" else None
                return build_detector(model, "small", controls, seed=0, epochs=epochs, device="cpu")

            det = make()
            t0 = time.perf_counter()
            cal = fit_and_calibrate(det, sp.train, train_audio, folds=CALIBRATION_FOLDS, make=make)
            fit_s = time.perf_counter() - t0
            report, scores = evaluate(
                det, sp.test, test_audio, bootstrap=bootstrap, seed=0, conditions=conditions
            )
            (CACHE / "reports").mkdir(parents=True, exist_ok=True)
            (CACHE / "reports" / f"{name}_{tag}.json").write_text(json.dumps(report, indent=1) + "\n")
            scores.to_parquet(CACHE / "reports" / f"{name}_{tag}.scores.parquet", index=False)
            o = report["overall"]
            clean = scores[scores["condition"] == "clean"]
            rates = rates_at(
                clean.loc[clean["label"] == 1, "score"], clean.loc[clean["label"] == 0, "score"],
                cal["in_sample_eer_threshold"],
            )  # fmt: skip
            f = {
                "eer": _r(o["eer"]),
                "eer_ci_low": _r(o["eer_ci"][0]) if o["eer_ci"] else None,
                "eer_ci_high": _r(o["eer_ci"][1]) if o["eer_ci"] else None,
                "ci_unit": o["ci_unit"],
                "min_dcf": _r(o["min_dcf"]),
                "cllr": _r(o["cllr"]),
                "min_cllr": _r(o["min_cllr"]),
                "train_eer_out_of_fold": _r(cal["train_eer"]),
                "train_eer_in_sample": _r(cal["in_sample_train_eer"]),
                # the stored (out-of-fold) threshold and the in-sample one, applied to the clean test set
                "bonafide_rejection_at_oof_threshold": _r(o["at_stored_threshold"]["bonafide_rejection"]),
                "spoof_acceptance_at_oof_threshold": _r(o["at_stored_threshold"]["spoof_acceptance"]),
                "bonafide_rejection_at_in_sample_threshold": _r(rates[0]),
                "spoof_acceptance_at_in_sample_threshold": _r(rates[1]),
                "fit_seconds": cal["fit_seconds"],
                "calibration_fit_seconds": cal["calibration_fit_seconds"],
                **{f"eer_gen_{g}": _r(m["eer"]) for g, m in report["per_generator"].items()},
                **{f"eer_cond_{c}": _r(m["eer"]) for c, m in report["per_condition"].items() if c != "clean"},
            }
            figures.update({f"{name}_{tag}_{k}": v for k, v in f.items()})
            table.append((name, model, controls, o, report))
            print(
                f"  {tag:<16} EER {100 * o['eer']:5.1f}% [{100 * (o['eer_ci'] or [0, 0])[0]:.1f}, "
                f"{100 * (o['eer_ci'] or [0, 0])[1]:.1f}]  minDCF {o['min_dcf']:.3f}  Cllr {o['cllr']:.3f}  "
                f"fit {fit_s:.0f} s",
                flush=True,
            )
    return figures, table


def timing(real: list[Clip], corpus: Path, n: int, quick: bool) -> dict:
    """Fit + score wall time of each detector (controls on) on ``n`` utterances."""
    rows = sorted(rows_of(corpus / "manifest.jsonl"), key=lambda r: r["id"])
    rng = np.random.default_rng(1)
    take = rng.choice(len(rows), size=min(n - len(real), len(rows)), replace=False)
    clips = list(real)
    for i in sorted(take):
        r = rows[i]
        label = int(r["engine"] == "piper")  # timing only: any two classes do
        clips.append(Clip(r["id"], str(corpus / r["audio"]), r["speaker"], label, r["engine"]))
    audio = load_clip_audio(clips)
    labels = np.array([c.label for c in clips])
    seconds = sum(len(w) / sr for w, sr in audio)
    out = {"timing_n_utterances": len(clips), "timing_audio_minutes": round(seconds / 60, 1)}
    for model in MODELS:
        det = build_detector(
            model, "small", True, seed=0, epochs=5 if quick and model == "lcnn" else None, device="cpu"
        )
        t0 = time.perf_counter()
        det.fit(audio, labels)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        det.score(audio)
        score_s = time.perf_counter() - t0
        out[f"timing_{model}_fit_seconds"] = round(fit_s, 1)
        out[f"timing_{model}_score_seconds"] = round(score_s, 1)
        out[f"timing_{model}_score_ms_per_utterance"] = round(1000 * score_s / len(clips), 2)
        print(
            f"  timing {model}: fit {fit_s:.1f} s, score {score_s:.1f} s for {len(clips)} utterances",
            flush=True,
        )
    return out


def markdown(tables: list) -> str:
    def pct(x):
        return f"{100 * x:.1f}"

    gens = GENERATORS[1:]
    lines = [
        "| protocol | detector | controls | EER % [95% CI] | minDCF | Cllr | "
        + " | ".join(f"EER {g}" for g in gens)
        + " | EER noise 20 dB | EER mp3 32k | EER 8 kHz | EER tel. band |",
        "|---|---|---|---|---|---|" + "---|" * len(gens) + "---|---|---|---|",
    ]
    for name, model, controls, o, report in tables:
        ci = o["eer_ci"]
        per_gen = [
            pct(report["per_generator"][g]["eer"]) if g in report["per_generator"] else "-" for g in gens
        ]
        conds = [pct(report["per_condition"][c]["eer"]) if c in report["per_condition"] else "-"
                 for c in ("white_noise_20db", "mp3_32k", "resample_8k", "bandpass_300_3400")]  # fmt: skip
        lines.append(
            f"| {name} | {model} | {'on' if controls else 'off'} | "
            f"{pct(o['eer'])} [{pct(ci[0])}, {pct(ci[1])}] | "
            f"{o['min_dcf']:.3f} | {o['cllr']:.2f} | "
            + " | ".join(per_gen)
            + " | "
            + " | ".join(conds)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo")
    ap.add_argument("--per-engine", type=int, default=60)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--timing-clips", type=int, default=1000, help="0 skips the timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5 LCNN epochs, 100 bootstrap draws (a dry run)")
    ap.add_argument("--name", default="detection")
    args = ap.parse_args()
    for path, what in ((args.real / "manifest.jsonl", "real speech set (../shared)"),
                       (args.corpus / "manifest.jsonl", "offline corpus (valle corpus build)"),
                       (args.checkpoint / "config.json", "demo checkpoint")):  # fmt: skip
        if not path.is_file():
            sys.exit(f"benchmarks/detection_eval.py: {what} not found at {path}; this benchmark needs it")
    bootstrap = 100 if args.quick else args.bootstrap
    t_start = time.perf_counter()
    load_1min = round(os.getloadavg()[0], 2)

    real = real_clips(args.real)
    torch.set_num_threads(2)  # generation only (the demo benchmark's setting)
    melvq = melvq_clips(real)
    valle = valle_clips(real, args.checkpoint, args.seed)
    torch.set_num_threads(1)
    clips = real + corpus_clips(args.corpus, args.per_engine, args.seed) + melvq + valle
    t0 = time.perf_counter()
    audio = dict(zip([c.id for c in clips], load_clip_audio(clips), strict=True))
    print(f"{len(clips)} clips loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    attacks = degradations("default")

    valle_notes = json.loads((CACHE / "valle" / "notes.json").read_text())
    figures: dict = {
        **{f"n_clips_{g}": sum(c.generator == g for c in clips) for g in GENERATORS},
        "n_real_speakers": len({c.speaker for c in real}),
        "valle_prompts": valle_notes["prompts"],
        "valle_silent_dropped": len(valle_notes["silent_dropped"]),
        "load_average_1min_at_start": load_1min,
        "torch_threads": 1,
        "bootstrap": bootstrap,
    }
    tables = []
    with threadpool_limits(1):
        for name in PROTOCOLS:
            f, t = run_protocol(name, clips, audio, attacks, bootstrap, args.quick)
            figures.update({f"{name}_{k}" if k in ("split", "test_speakers") else k: v for k, v in f.items()})
            tables += t
        if args.timing_clips:
            figures.update(timing(real, args.corpus, args.timing_clips, args.quick))
    figures["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    table = markdown(tables)
    figures["table_markdown"] = table
    path = write_result(
        args.name,
        figures,
        data=f"bona fide: {len(real)} clips of {args.real.name} ({figures['n_real_speakers']} speakers); "
        f"spoof: {args.per_engine} espeak + {args.per_engine} piper clips of {args.corpus.name} corpus "
        f"(seed {args.seed}), melvq "
        f"resynthesis of every real clip, {len(valle)} demo-checkpoint clones prompted by real clips <= "
        f"{MAX_PROMPT_S:g} s; speaker-disjoint split seed 0, test fraction 0.3; "
        f"{'QUICK dry run (5 LCNN epochs)' if args.quick else 'full settings'}",
    )
    print(table)
    print(f"wrote {path} in {figures['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
