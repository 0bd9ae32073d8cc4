"""Merging rank tables into a run's tables, the run summary with intervals, and paired comparisons.

Every mean and rate is computed per test item first (mean over its seeds) and its 95% interval
resamples items (:mod:`evaluation.scorers.stats`). WER is reported two ways, as the field does:

- ``wer``: corpus WER, sum of errors / sum of reference words (jiwer's convention);
- ``mean_utt_wer``: mean of per-utterance WERs (seed-tts-eval's convention).

Failed generations (command errors, missing or unreadable files) count as empty transcripts in
``wer`` and ``mean_utt_wer``; ``wer_generated_only`` leaves them out. ASR crashes are left out of
both and counted in ``counts.asr_failed``. ``wer_asr_reliable_items`` is WER without what the
recogniser, not the generator, got wrong (:func:`asr_unreliable`): items whose real recording the
same ASR gets more than half wrong or cannot transcribe without exhausting Whisper's temperature
fallback, and outputs on which the fallback was exhausted (the recogniser looped or stayed unsure at
every temperature). Each is listed with its reason in ``asr_unreliable``; plain WER is always
reported next to it. ``rate_asr_fallback_exhausted`` is the share of outputs whose fallback was
exhausted. Rows of invalid test items are counted with their reasons and never scored.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.runs.rundir import STAGES, TABLE_OF_STAGE, Run, write_json, write_parquet
from evaluation.scorers.flags import FLAG_NAMES
from evaluation.scorers.stats import mean_ci, paired_mean_diff_ci, paired_ratio_diff_ci, ratio_ci

CHARGED = ("ok", "generation_failed", "invalid_audio")  # rows whose errors count against the generator
RANK_TABLE = re.compile(r"^(?P<table>\w+)\.rank(?P<rank>\d+)-of-(?P<world>\d+)\.parquet$")
# scorer-card fields that change a number: runs differing in any of them are not compared
SCORER_IDENTITY = (
    "backend",
    "sha256",
    "compat",
    "text_normalizer",
    "beam_size",
    "temperatures",
    "compute_type",
)
ASR_RELIABLE_WER = 0.5  # ceiling WER above which an item's reference recording defeats the ASR
MEANS = (
    "sim_prompt",
    "sim_target",
    "dnsmos_sig",
    "dnsmos_bak",
    "dnsmos_ovrl",
    "duration_ratio",
    "repetition_ratio",
)


def merge(out: str | Path) -> dict:
    """Join every rank's tables into ``tables/<table>.parquet`` and write ``summary.json``.

    Idempotent: the same rank tables always give byte-identical outputs. Refuses (ValueError) when
    a rank's table is missing, when tables of different world sizes are mixed, or when a row is
    duplicated or missing.
    """
    run = Run(out)
    config = json.loads((run.dir / "config.json").read_text())
    expected = {f"{iid}.s{seed}" for iid in run.items for seed in config["seeds"]}
    merged = {}
    for stage in STAGES:
        for table in TABLE_OF_STAGE[stage]:
            found = {}
            for path in run.tables.glob(f"{table}.rank*-of-*.parquet"):
                m = RANK_TABLE.match(path.name)
                if m:
                    found[(int(m["rank"]), int(m["world"]))] = path
            if not found:
                continue
            worlds = {w for _, w in found}
            if len(worlds) > 1:
                raise ValueError(
                    f"{run.tables}: {table} tables from different world sizes {sorted(worlds)}; "
                    "delete the stale ones"
                )
            world = worlds.pop()
            missing = [r for r in range(world) if (r, world) not in found]
            if missing:
                raise ValueError(f"{table}: rank(s) {missing} of {world} have not written their table yet")
            frames = [pd.read_parquet(found[(r, world)]) for r in range(world)]
            df = pd.concat([f for f in frames if len(f)], ignore_index=True)
            key = "key" if table != "references" else "id"
            dup = df[key][df[key].duplicated()].tolist()
            if dup:
                raise ValueError(f"{table}: duplicate rows {dup[:5]}")
            want = expected if key == "key" else set(run.items)
            lost = sorted(want - set(df[key]))
            if lost and table != "references":
                raise ValueError(
                    f"{table}: {len(lost)} row(s) missing, e.g. {lost[:5]}; finish the run first"
                )
            df = df.sort_values(key, kind="stable").reset_index(drop=True)
            write_parquet(df, run.tables / f"{table}.parquet")
            merged[table] = df
    if "scores" not in merged:
        return {}
    summary = summarize(merged["scores"], merged.get("references"), config)
    write_json(run.dir / "summary.json", summary, sort_keys=False)  # metrics in reading order
    return summary


def _backend(card: dict | None) -> str | None:
    """'name (weights sha256 prefix)': which model produced a column, in a form fit for a table."""
    if not card:
        return None
    sha = card.get("sha256")
    sha = next(iter(sha.values())) if isinstance(sha, dict) else sha
    return f"{card.get('backend')} ({str(sha)[:12]})" if sha else str(card.get("backend"))


def _per_item(df: pd.DataFrame, col: str) -> pd.Series:
    """Mean over seeds per item (NaN / None rows ignored)."""
    values = pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)
    return values.groupby(df["id"]).mean()


def _sums(df: pd.DataFrame, num: str, den: str = "n_ref_words") -> tuple[np.ndarray, np.ndarray]:
    g = df.groupby("id")
    return g[num].sum().to_numpy(float), g[den].sum().to_numpy(float)


def _errors(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["errors"] = df["substitutions"] + df["deletions"] + df["insertions"]
    return df


def asr_unreliable(charged: pd.DataFrame, refs: pd.DataFrame | None) -> list[dict]:
    """Where the recogniser, not the generator, is at fault: ``[{"id", "seed", "reason"}]``.

    Per item (``seed`` None), from its real recording: ``reference_wer_over_50pct`` (the ASR gets
    the real speaker mostly wrong) and ``reference_fallback_exhausted``. Per output row:
    ``output_fallback_exhausted``. An output the generator made loop also exhausts the fallback, so
    these rows are left out of ``wer_asr_reliable_items`` only, never out of plain WER.
    """
    out = []
    if refs is not None:
        for _, r in refs.sort_values("id").iterrows():
            if r["wer"] > ASR_RELIABLE_WER:
                out.append({"id": r["id"], "seed": None, "reason": "reference_wer_over_50pct"})
            exhausted = r.get("gt_asr_fallback_exhausted")
            if exhausted is not None and pd.notna(exhausted) and bool(exhausted):
                out.append({"id": r["id"], "seed": None, "reason": "reference_fallback_exhausted"})
    if "asr_fallback_exhausted" in charged:
        hit = charged[charged["asr_fallback_exhausted"].fillna(False).astype(bool)]
        for _, r in hit.sort_values(["id", "seed"]).iterrows():
            out.append({"id": r["id"], "seed": int(r["seed"]), "reason": "output_fallback_exhausted"})
    return out


def summarize(scores: pd.DataFrame, references: pd.DataFrame | None, config: dict) -> dict:
    """The run's headline numbers, each ``{value, low, high, n}`` (n = test items), plus counts."""
    scorers = config.get("scorers") or {}
    asr = scorers.get("asr") or {}
    spk = scorers.get("speaker") or {}
    status = Counter(scores["status"])
    invalid = scores[scores["status"] == "invalid_item"].drop_duplicates("id")
    out: dict = {
        "schema": 1,
        "generator": (config.get("generator") or {}).get("generator"),
        "backends": {
            "asr": _backend(asr),
            "speaker": _backend(spk),
            "quality": _backend(scorers.get("quality")),
        },
        "counts": {
            "items": int(scores["id"].nunique()),
            "seeds": len(config.get("seeds", [])),
            "rows": len(scores),
            "invalid_items": len(invalid),
            "scored_rows": status.get("ok", 0),
            "generation_failed": status.get("generation_failed", 0),
            "invalid_audio": status.get("invalid_audio", 0),
            "asr_failed": status.get("asr_failed", 0),
        },
        "invalid_item_reasons": dict(Counter(invalid["error"]).most_common(10)),
        "metrics": {},
    }
    m = out["metrics"]
    charged = _errors(scores[scores["status"].isin(CHARGED)])
    ok = charged[charged["status"] == "ok"]
    if len(charged):
        m["wer"] = ratio_ci(*_sums(charged, "errors")).to_json()
        m["mean_utt_wer"] = mean_ci(_per_item(charged, "wer")).to_json()
        for name, col in (
            ("sub_rate", "substitutions"),
            ("del_rate", "deletions"),
            ("ins_rate", "insertions"),
        ):
            m[name] = ratio_ci(*_sums(charged, col)).to_json()
        failed = charged["status"] != "ok"
        m["generation_failure_rate"] = mean_ci(failed.astype(float).groupby(charged["id"]).mean()).to_json()
    if len(ok):
        m["wer_generated_only"] = ratio_ci(*_sums(ok, "errors")).to_json()
        for col in MEANS:
            if col in ok:
                m[col] = mean_ci(_per_item(ok, col)).to_json()
        for name in FLAG_NAMES:
            m[f"rate_{name}"] = mean_ci(_per_item(ok, f"flag_{name}")).to_json()
        m["rate_any_flag"] = mean_ci(_per_item(ok, "any_flag")).to_json()
        if "asr_fallback_exhausted" in ok:  # the ASR could not settle on a transcript (ASR-side)
            m["rate_asr_fallback_exhausted"] = mean_ci(_per_item(ok, "asr_fallback_exhausted")).to_json()
        if ok["watermark_verified"].notna().any():
            m["watermark_verified_rate"] = mean_ci(_per_item(ok, "watermark_verified")).to_json()
    has_refs = (
        references is not None and "n_ref_words" in references and references["n_ref_words"].notna().any()
    )
    refs = _errors(references[references["n_ref_words"].notna()]) if has_refs else None
    unreliable = asr_unreliable(charged, refs)
    out["counts"]["asr_unreliable_items"] = len({u["id"] for u in unreliable})
    out["asr_unreliable"] = unreliable
    if len(charged):
        bad_items = {u["id"] for u in unreliable if u["seed"] is None}
        bad_rows = {(u["id"], u["seed"]) for u in unreliable if u["seed"] is not None}
        row_keys = pd.Series(list(zip(charged["id"], charged["seed"], strict=True)), index=charged.index)
        kept = charged[~charged["id"].isin(bad_items) & ~row_keys.isin(bad_rows)]
        if len(kept):
            m["wer_asr_reliable_items"] = ratio_ci(*_sums(kept, "errors")).to_json()
    if refs is not None:
        m["ceiling_wer"] = ratio_ci(*_sums(refs.assign(id=refs["id"]), "errors")).to_json()
        m["ceiling_mean_utt_wer"] = mean_ci(refs.set_index("id")["wer"]).to_json()
        for col in ("sim_target_prompt", "dnsmos_ovrl"):
            if col in references:
                m[f"ceiling_{col}"] = mean_ci(references.set_index("id")[col]).to_json()
    return out


def load_tables(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    run_dir = Path(run_dir)
    path = run_dir / "tables" / "scores.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no merged scores (run `valle merge {run_dir}` first)")
    return pd.read_parquet(path), json.loads((run_dir / "config.json").read_text())


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict:
    """Paired differences A - B over the test items both runs scored, each with its 95% interval.

    Refuses runs on different test sets, or whose ASR / speaker scorers differ in anything that
    changes a number (:data:`SCORER_IDENTITY`): their numbers are not comparable.
    """
    (a, ca), (b, cb) = load_tables(run_a), load_tables(run_b)
    if ca["testset_sha256"] != cb["testset_sha256"]:
        raise ValueError(f"{run_a} and {run_b} were scored on different test sets")
    for part in ("asr", "speaker"):
        ba, bb = (ca.get("scorers") or {}).get(part) or {}, (cb.get("scorers") or {}).get(part) or {}
        differ = [k for k in SCORER_IDENTITY if ba.get(k) != bb.get(k)]
        if differ:
            raise ValueError(
                f"{part} scorers differ between {run_a} and {run_b} ({', '.join(differ)}: "
                f"{[ba.get(k) for k in differ]} vs {[bb.get(k) for k in differ]}); their numbers are not "
                "comparable"
            )
    a, b = _errors(a[a["status"].isin(CHARGED)]), _errors(b[b["status"].isin(CHARGED)])
    ids = sorted(set(a["id"]) & set(b["id"]))
    a, b = a[a["id"].isin(ids)], b[b["id"].isin(ids)]
    out = {"n_items": len(ids), "diff": {}}
    na, da = _sums(a, "errors")
    nb, db = _sums(b, "errors")
    out["diff"]["wer"] = paired_ratio_diff_ci(na, da, nb, db).to_json()
    cols = ["wer", *MEANS, *(f"flag_{n}" for n in FLAG_NAMES), "any_flag"]
    oka, okb = a[a["status"] == "ok"], b[b["status"] == "ok"]
    for col in cols:
        if col == "wer":
            pa, pb = _per_item(a, col).reindex(ids), _per_item(b, col).reindex(ids)
            name = "mean_utt_wer"
        else:
            pa, pb = _per_item(oka, col).reindex(ids), _per_item(okb, col).reindex(ids)
            name = "rate_any_flag" if col == "any_flag" else col.replace("flag_", "rate_")
        out["diff"][name] = paired_mean_diff_ci(pa.to_numpy(float), pb.to_numpy(float)).to_json()
    return out
