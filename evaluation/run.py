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

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from evaluation.generators import GenRequest, load_generator, sample_seed
from evaluation.scoring import Scorers, ScoringConfig, Timer
from evaluation.testset import TestSet, cut_prompt

STAGES = ("generate", "score")
TABLE_OF_STAGE = {"generate": ("generations",), "score": ("scores", "references")}
PACKAGES = ("torch", "torchaudio", "faster-whisper", "ctranslate2", "openai-whisper", "speechbrain",
            "resemblyzer", "speechmos", "silero-vad", "jiwer", "valle-safety")  # fmt: skip


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


def rank_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from torchrun's environment; (0, 1) outside it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


BOOL_COLUMNS = ("any_flag", "asr_fallback_exhausted", "watermark_applied", "watermark_verified", "has_target")


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    """Atomic: a killed process leaves no half-written table under the final name.

    Yes/no columns are stored as nullable booleans whatever a chunk happened to hold (a chunk of
    only clean rows would otherwise infer ``bool`` and one with a failure ``object``).
    """
    for col in df.columns:
        if col in BOOL_COLUMNS or (col.startswith("flag_") and col != "flag_reasons"):
            df[col] = df[col].astype("boolean")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def _write_json(path: Path, obj: dict, sort_keys: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")
    tmp.replace(path)


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


class Run:
    """One run directory; see the module docstring for its layout."""

    def __init__(self, out: str | Path, testset: TestSet | None = None) -> None:
        self.dir = Path(out)
        self.tables = self.dir / "tables"
        if testset is None:
            testset = TestSet.load(self.dir / "testset.jsonl")
        self.testset = testset
        self.items = {it.id: it for it in testset.items}

    def chunked(self, chunk_size: int) -> list[list[str]]:
        ids = sorted(self.items)
        return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)]

    def part(self, table: str, k: int) -> Path:
        return self.tables / "parts" / table / f"c{k:05d}.parquet"

    def read_parts(self, table: str, ks: list[int]) -> pd.DataFrame:
        frames = [pd.read_parquet(self.part(table, k)) for k in ks if self.part(table, k).is_file()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    _write_json(path, config)


class RunLockedError(ValueError):
    """Another live process is writing the same run directory."""


@contextlib.contextmanager
def exclusive(directory: Path, role: str) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` for ``role`` (``fcntl.flock`` on ``.<role>.lock``).

    A second writer is refused at once with :class:`RunLockedError`: two processes on one run directory
    would redo every chunk and write every ledger entry twice. The kernel drops the lock when its
    process dies, so a run killed with SIGKILL resumes without any clean-up.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".{role}.lock"
    f = open(path, "a+")  # held open (and locked) for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunLockedError(
            f"{directory} is in use by {holder} ({path.name}); wait for it to finish or use another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {platform.node()}")
    f.flush()
    try:
        yield
    finally:
        f.close()  # closing releases the lock


def records(df: pd.DataFrame) -> list[dict]:
    """Rows of a table as dicts, with missing cells as None. A chunk that mixes rows with and without
    a column (an unusable item beside good ones) comes back from parquet with NaN in those cells, and
    NaN is neither None nor a value: ``len(nan)`` fails, ``nan is not None`` passes."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


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
            _write_json(out / f"timings.generate.rank{rank}.json", timings)
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
            _write_json(out / f"timings.score.rank{rank}.json", timings)
    if world == 1:
        from evaluation.summary import merge

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
