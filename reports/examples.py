"""Worst examples of a run: the scored rows with the highest WER and the flagged ones, each with a
playable copy of its audio for the HTML page.

Audio is re-encoded to 16 kHz mono 16-bit PCM WAV (``scipy.signal.resample_poly``, then ``soundfile``),
at most ``MAX_AUDIO_S`` seconds, and embedded as a ``data:audio/wav;base64`` URI, so that a page with ten
examples stays small (~32 kB per second) and needs no file beside it; a relative link to the original
file in the run directory is kept.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import soundfile as sf
from scipy.signal import resample_poly

from reports.inputs import InputError, RunInputs

N_EXAMPLES = 5
AUDIO_SR = 16000
MAX_AUDIO_S = 10.0


def _e(x: object) -> str:
    return escape("" if x is None else str(x))


def _true(v: object) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA and bool(v)


def select_examples(ctx: RunInputs, n: int = N_EXAMPLES) -> dict:
    """The ``n`` scored rows with the highest WER and up to ``n`` other flagged rows (raw values)."""
    try:
        df = ctx.table("tables/scores.parquet", ("key",))
    except InputError as err:
        return {"worst_wer": [], "flagged": [], "error": str(err)}
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    worst = ok.sort_values("wer", ascending=False, na_position="last").head(n) if "wer" in ok else ok.head(0)
    flagged = ok[ok["any_flag"].map(_true).astype(bool)] if "any_flag" in ok else ok.head(0)
    flagged = flagged[~flagged["key"].isin(worst["key"])].head(n)
    return {
        "worst_wer": [_example(ctx, r) for r in worst.to_dict("records")],
        "flagged": [_example(ctx, r) for r in flagged.to_dict("records")],
    }


def _audio_path(ctx: RunInputs, row: dict) -> Path:
    """The row's audio file: its ``audio`` path (absolute, relative to the run directory, or relative to
    the working directory the run was made from), else ``generated/<key>.wav``; the first that exists."""
    audio = row.get("audio")
    default = ctx.run_dir / "generated" / f"{row['key']}.wav"  # the audit layout's name for the output
    candidates = []
    if isinstance(audio, str) and audio:
        p = Path(audio)
        candidates = [p] if p.is_absolute() else [ctx.run_dir / p, p]
    return next((c for c in [*candidates, default] if c.is_file()), candidates[0] if candidates else default)


def _example(ctx: RunInputs, row: dict) -> dict:
    path = _audio_path(ctx, row)
    try:
        rel = os.path.relpath(path, ctx.run_dir)
    except ValueError:  # another drive on Windows
        rel = str(path)
    flags = sorted(
        k.removeprefix("flag_")
        for k, v in row.items()
        if k.startswith("flag_") and k != "flag_reasons" and _true(v)
    )
    return {
        "key": str(row["key"]),
        "id": row.get("id"),
        "seed": row.get("seed"),
        "wer": row.get("wer"),
        "text": row.get("text"),
        "hyp": row.get("hyp"),
        "flags": flags,
        "reasons": row.get("flag_reasons"),
        "audio": rel,
    }


def audio_data_uri(path: str | Path, max_seconds: float = MAX_AUDIO_S) -> str:
    """``data:audio/wav;base64,...``: ``path`` as 16 kHz mono 16-bit PCM WAV, cut to ``max_seconds``."""
    wav, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    x = wav.mean(axis=1)
    x = x[: math.ceil(max_seconds * sr)]
    if sr != AUDIO_SR:
        g = math.gcd(int(sr), AUDIO_SR)
        x = resample_poly(x, AUDIO_SR // g, int(sr) // g).astype(np.float32)
    x = x[: int(max_seconds * AUDIO_SR)]
    if x.size == 0:
        raise ValueError(f"{path}: no samples")
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), AUDIO_SR, subtype="PCM_16", format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def example_html(ctx: RunInputs, ex: dict) -> str:
    path = ctx.run_dir / ex["audio"]
    try:
        player = f'<audio controls preload="metadata" src="{audio_data_uri(path)}"></audio>'
    except Exception as err:
        player = f'<p class="err">audio unavailable: {_e(type(err).__name__)}: {_e(err)}</p>'
    link = f'<a href="{_e(quote(ex["audio"]))}">{_e(ex["audio"])}</a>'
    wer = ex.get("wer")
    wer_s = "n/a" if wer is None else f"{100 * wer:.1f}%"
    return (
        f'<div class="ex"><b>{_e(ex["key"])}</b> &middot; WER {_e(wer_s)} &middot; flags: '
        f"{_e(', '.join(ex.get('flags') or []) or 'none')}<br>text: {_e(ex.get('text'))}<br>"
        f"hypothesis: {_e(ex.get('hyp'))}<br>"
        f"<span class=note>reasons: {_e(_reasons(ex.get('reasons')))}</span>"
        f"{player}file: {link}</div>"
    )


def _reasons(raw: object) -> str:
    """flag_reasons (a JSON object of flag -> reason) as ``flag: reason; ...``."""
    if not raw:
        return "-"
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return str(raw)
    if isinstance(parsed, dict):
        return "; ".join(f"{k}: {v}" for k, v in parsed.items()) or "-"
    return str(raw)


def examples_html(ctx: RunInputs, ex: dict, scores_err: str | None) -> str:
    out = "<h2>Worst examples</h2>"
    if scores_err or ex.get("error"):
        out += f'<p class="err">{_e(scores_err or ex.get("error"))}</p>'
    worst, flagged = ex.get("worst_wer") or [], ex.get("flagged") or []
    out += f"<h3>Highest WER ({len(worst)})</h3>" + "".join(example_html(ctx, e) for e in worst)
    out += f"<h3>Other flagged ({len(flagged)})</h3>" + "".join(example_html(ctx, e) for e in flagged)
    return out
