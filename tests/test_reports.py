"""reports/: scorecard.json / .md / .html from an audit run directory built here with the documented
layout (tables via pandas, real WAV files via soundfile, report dicts with the keys the producers write:
detection/evaluate.py summarize/cm_metrics, evaluation/bypass/report.py asv_report/trial_table)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.stats import norm

from reports import FORMAT, SCHEMA_VERSION, build_scorecard, write_scorecard
from reports.scorecard import METRIC_SECTIONS

FLAGS = ("max_length", "code_loop", "transcript_repetition", "wer_failure", "silence", "truncation")
XSS = "<script>alert('x')</script> & friends"
VERDICTS = ["authentic"] * 5 + ["altered_copy"]
ITEMS = ("arctic_a0001", "arctic_a0002", "arctic_a0003", "arctic_a0004")


def _metric(value: float, spread: float = 0.05, n: int = 4) -> dict:
    return {"value": value, "low": max(value - spread, 0.0), "high": value + spread, "n": n}


def _wav(path: Path, seconds: float, sr: int = 24000, channels: int = 1, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.2 * np.sin(2 * np.pi * 180 * t) * (
        1 + 0.5 * np.sin(2 * np.pi * 3 * t)
    ) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, np.repeat(x[:, None], channels, axis=1).astype(np.float32), sr)


def _det(bona: np.ndarray, spoof: np.ndarray) -> dict:
    thr = np.sort(np.r_[bona, spoof])
    miss = np.array([(bona < t).mean() for t in thr])
    fa = np.array([(spoof >= t).mean() for t in thr])
    probit = lambda r: norm.ppf(np.clip(r, 1e-6, 1 - 1e-6)).round(6).tolist()  # noqa: E731
    return {
        "threshold": thr.round(6).tolist(),
        "miss": miss.tolist(),
        "fa": fa.tolist(),
        "miss_probit": probit(miss),
        "fa_probit": probit(fa),
    }


def _cm(eer: float, ci: list | None, nb: int = 10, ns: int = 14) -> dict:
    return {
        "eer": eer,
        "eer_threshold": 0.13,
        "eer_ci": ci,
        "ci_unit": "speaker" if ci else None,
        "min_dcf": 0.26,
        "min_dcf_threshold": 0.13,
        "cllr": 0.43,
        "min_cllr": 0.23,
        "n_bonafide": nb,
        "n_spoof": ns,
        "n_bonafide_speakers": 6,
        "n_spoof_speakers": 6,
        "dcf_costs": {"p_spoof": 0.05, "c_miss": 1.0, "c_fa": 10.0},
        "at_stored_threshold": {"threshold": 0.1, "bonafide_rejection": 0.1, "spoof_acceptance": 1 / 14},
    }


def make_run(
    root: Path,
    stages: tuple[str, ...] = ("generate", "verify", "score", "detect", "asv", "watermark"),
    audit: bool = True,
) -> Path:
    """An audit run directory with the given stages' outputs (and audit.json when ``audit``)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "generated").mkdir(exist_ok=True)
    (root / "tables").mkdir(exist_ok=True)
    config = {
        "run": root.name,
        "testset_sha256": "ab" * 32,
        "testset_source": "data/testset.jsonl",
        "n_items": 4,
        "seeds": [0, 1],
        "chunk_size": 4,
        "device": "cpu",
        "torch_threads": 2,
        "versions": {"python": "3.11.7", "torch": "2.11.0", "faster-whisper": "1.2.1"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "generator": {
            "generator": "valle",
            "checkpoint": "checkpoints/demo",
            "weights_sha256": "c0" * 32,
            "codec": {"name": "melvq_24khz", "weights_sha256": "c1" * 32},
            "watermark": {"name": "perth", "weights_sha256": "c2" * 32},
        },
        "scorers": {
            "asr": {"backend": "faster-whisper", "sha256": "a1" * 32},
            "speaker": {"backend": "resemblyzer", "sha256": "a2" * 32},
            "quality": {"backend": "dnsmos", "sha256": {"sig_bak_ovr.onnx": "a3" * 32}},
            "vad": {"backend": "silero-vad"},
        },
        "thresholds": {"wer_max": 0.5, "duration_ratio_range": [0.5, 2.0]},
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "testset.jsonl").write_text("".join(json.dumps({"id": i, "text": "x"}) + "\n" for i in ITEMS))

    rows = []
    for k, (item, seed) in enumerate((i, s) for i in ITEMS for s in (0, 1)):
        key = f"{item}.s{seed}"
        failed = k == 7
        wer = None if failed else [0.0, 0.1, 0.25, 0.5, 0.9, 1.2, 0.05][k]
        flags = {
            f"flag_{f}": (
                not failed and ((f == "wer_failure" and wer > 0.5) or (f == "code_loop" and k == 0))
            )
            for f in FLAGS
        }
        if not failed:  # k == 4 stereo and 12 s: the page must cut it to 10 s mono
            _wav(
                root / "generated" / f"{key}.wav",
                12.0 if k == 4 else 1.5,
                channels=2 if k == 4 else 1,
                seed=k,
            )
        rows.append(
            {
                "key": key,
                "id": item,
                "seed": seed,
                "status": "generation_failed" if failed else "ok",
                "error": "RuntimeError: CUDA out of memory" if failed else None,
                # run-relative paths, one absolute one; the failed row has none
                "audio": None
                if failed
                else str(root / "generated" / f"{key}.wav")
                if k == 1
                else f"generated/{key}.wav",
                "text": XSS if k == 5 else f"sentence number {k}",
                "hyp": "" if failed else f"hyp {k}",
                "wer": wer,
                "n_ref_words": 4,
                "sim_prompt": None if failed else 0.6 + 0.03 * k,
                "sim_target": None if failed else 0.55 + 0.03 * k,
                "dnsmos_ovrl": None if failed else 2.5,
                **flags,
                "any_flag": any(flags.values()),
                "flag_reasons": json.dumps(
                    {f.removeprefix("flag_"): "reason <b>" for f, v in flags.items() if v}
                ),
                "watermark_verified": not failed,
            }
        )
    scores = pd.DataFrame(rows)
    refs = pd.DataFrame(
        {
            "id": list(ITEMS),
            "wer": [0.0, 0.1, 0.6, 0.0],
            "n_ref_words": 4,
            "sim_target_prompt": [0.9, 0.88, 0.91, 0.87],
            "dnsmos_ovrl": [3.0, 2.9, 3.1, 2.8],
        }
    )
    metrics = {
        "wer": _metric(0.45),
        "mean_utt_wer": _metric(0.43),
        "ceiling_wer": _metric(0.17),
        "sim_prompt": _metric(0.69, 0.02),
        "sim_target": _metric(0.64, 0.02),
        "ceiling_sim_target_prompt": _metric(0.89, 0.01),
        "dnsmos_ovrl": _metric(2.5, 0.1),
        "generation_failure_rate": _metric(0.125, 0.1),
        "watermark_verified_rate": _metric(1.0, 0.0),
        "rate_any_flag": _metric(0.375, 0.2),
        "repetition_ratio": _metric(0.3),
        "brand_new_metric": _metric(7.0, 1.0),
    }
    metrics |= {f"rate_{f}": _metric(0.125 * (i % 3), 0.1) for i, f in enumerate(FLAGS)}
    if "score" in stages:
        scores.to_parquet(root / "tables" / "scores.parquet")
        refs.to_parquet(root / "tables" / "references.parquet")
        (root / "summary.json").write_text(
            json.dumps(
                {
                    "schema": 1,
                    "generator": "valle",
                    "backends": {
                        "asr": "faster-whisper (a1a1a1a1a1a1)",
                        "speaker": "resemblyzer (a2a2a2a2a2a2)",
                        "quality": "dnsmos (a3a3a3a3a3a3)",
                    },
                    "counts": {
                        "items": 4,
                        "seeds": 2,
                        "rows": 8,
                        "invalid_items": 0,
                        "scored_rows": 7,
                        "generation_failed": 1,
                        "invalid_audio": 0,
                        "asr_failed": 0,
                    },
                    "invalid_item_reasons": {},
                    "metrics": metrics,
                }
            )
        )
    if "verify" in stages:
        pd.DataFrame(
            {
                "key": scores["key"][:6],
                "id": scores["id"][:6],
                "audio": scores["audio"][:6],
                "verdict": VERDICTS,
                "detected": [True] * 6,
                "score": 0.9,
                "reasons": ["", "", "", "", "", "audio hash differs from manifest"],
            }
        ).to_parquet(root / "tables" / "verify.parquet")
    if "detect" in stages:
        (root / "detect").mkdir(exist_ok=True)
        bona, spoof = rng.normal(2, 1.5, 10), rng.normal(-2, 1.5, 14)
        noisy_b, noisy_s = bona - 1, spoof + 1
        (root / "detect" / "eval.json").write_text(
            json.dumps(
                {
                    "format": "valle-detect-eval",
                    "version": 1,
                    "conditions": ["clean", "mp3_32k"],
                    "generators": ["piper", "valle"],
                    "overall": _cm(0.0857, [0.0, 0.273]),
                    "per_generator": {
                        "piper": _cm(0.1, [0.0, 0.3], ns=7),
                        "valle": _cm(0.07, [0.0, 0.25], ns=7),
                    },
                    "per_condition": {"clean": _cm(0.0857, [0.0, 0.273]), "mp3_32k": _cm(0.31, None)},
                    "grid": {"clean": {"valle": {"eer": 0.07, "min_dcf": 0.2, "n_spoof": 7}}},
                    "curves": {
                        "clean/all": _det(bona, spoof),
                        "mp3_32k/all": _det(noisy_b, noisy_s),
                        "clean/valle": _det(bona, spoof[:7]),
                    },
                    "model": {
                        "path": "models/cm",
                        "kind": "lfcc-lr",
                        "name": "lfcc-logreg",
                        "eer_threshold": 0.1,
                    },
                    "split": {"seed": 0},
                    "degradations": {"mp3_32k": {"family": "codec"}},
                    "bootstrap": {"n": 50, "seed": 0},
                }
            )
        )
    if "asv" in stages:
        (root / "asv").mkdir(exist_ok=True)
        ci = {k: [0.0, 0.3] for k in ("sv_eer", "spf_eer", "sasv_eer", "eer.frr", "eer.far", "far.frr")}
        ci |= {
            "eer.spoof_acceptance": [0.33, 1.0],
            "eer.gated_spoof_acceptance": [0.0, 0.0],
            "t_eer": [0.88, 0.91],
        }

        def op(t, frr, far, sa):
            gated = {"frr": frr, "far": far, "spoof_acceptance": 0.0, "cm_added_frr": 0.0}
            return {"threshold": t, "frr": frr, "far": far, "spoof_acceptance": sa, "gated": gated}

        (root / "asv" / "asv_report.json").write_text(
            json.dumps(
                {
                    "format": "valle-asv-report",
                    "version": 1,
                    "sv_eer": 0.139,
                    "t_eer": 0.887,
                    "t_far": 0.904,
                    "far_target": 0.01,
                    "spf_eer": 0.5,
                    "sasv_eer": 0.1875,
                    "operating_points": {
                        "eer": op(0.887, 0.167, 0.111, 0.833),
                        "far": op(0.904, 0.333, 0.0, 0.5),
                    },
                    "cm": {
                        "threshold": 2.06,
                        "threshold_source": "stored with the detector",
                        "eer_on_this_run": 0.0,
                        "bonafide_rejection_rate": 0.0,
                        "spoof_acceptance_rate": 0.0,
                        "n_bonafide_utterances": 8,
                        "n_spoof_utterances": 6,
                    },
                    "gated": {
                        "score": "cosine if cm_score >= cm_threshold else -2.0",
                        "sv_eer": 0.139,
                        "spf_eer": 0.0,
                        "sasv_eer": 0.125,
                    },
                    "counts": {
                        "target_speakers": 3,
                        "speakers": 4,
                        "enrolment_utterances": 9,
                        "target": 6,
                        "nontarget": 18,
                        "spoof": 6,
                        "skipped_speakers": 1,
                        "skipped_spoofs": 0,
                    },
                    "ci": {"unit": "trial", "n": 50, "confidence": 0.95, "seed": 0, "intervals": ci},
                    "encoder": {"backend": "resemblyzer", "sha256": "a2" * 32, "dim": 256},
                    "skipped_spoofs": {"arctic_a0004.s0": "spoof: 0.3 s is shorter than the 0.5 s needed"},
                }
            )
        )
        kinds = ["target"] * 6 + ["nontarget"] * 18 + ["spoof"] * 6
        cos = np.r_[rng.normal(0.9, 0.02, 6), rng.normal(0.8, 0.05, 18), rng.normal(0.89, 0.02, 6)]
        pd.DataFrame({"id": [f"t{i}" for i in range(30)], "kind": kinds, "cosine": cos}).to_parquet(
            root / "tables" / "asv_trials.parquet"
        )
    if "watermark" in stages:
        (root / "watermark").mkdir(exist_ok=True)
        (root / "watermark" / "robustness.json").write_text(
            json.dumps(
                {
                    "backend": {"name": "perth"},
                    "n_clips": 6,
                    "attacks": ["none", "mp3_32k", "resample_8k"],
                    "note": "presence-only watermark",
                }
            )
        )
        pd.DataFrame(
            {
                "attack": ["none", "mp3_32k", "resample_8k"],
                "family": ["none", "codec", "resample"],
                "n": 6,
                "tpr": [1.0, 0.5, 2 / 6],
                "tpr_low": [0.61, 0.19, None],
                "tpr_high": [1.0, 0.81, None],
                "fpr": [0.0, 0.0, 1 / 6],
                "fpr_low": [0.0, 0.0, None],
                "fpr_high": [0.39, 0.39, None],
                "n_unmarked": 6,
                "n_errors": [0, 0, 1],
            }
        ).to_parquet(root / "tables" / "watermark.parquet")
    if audit:
        status = {
            s: ("done" if s in stages else "skipped")
            for s in ("generate", "verify", "score", "detect", "asv", "watermark")
        }
        (root / "audit.json").write_text(
            json.dumps(
                {
                    "format": "valle-audit",
                    "version": 1,
                    "profile": "offline",
                    "generator": "valle:checkpoints/demo",
                    "started": "2026-11-25T10:00:00+00:00",
                    "finished": "2026-11-25T10:05:00+00:00",
                    "backends": {  # cards, as evaluation/audit/state.py records them
                        "asr": config["scorers"]["asr"],
                        "watermark": {"name": "perth", "weights_sha256": "c2" * 32, "threshold": 0.5},
                        "detector": {"backend": "lfcc-lr", "name": "lfcc-lr"},
                        "asv": {"backend": "resemblyzer", "sha256": "a2" * 32, "dim": 256},
                    },
                    "stages": {
                        s: {
                            "status": st,
                            "seconds": 1.5,
                            "error": None,
                            "n_failed": 1 if s == "generate" else 0,
                            "n": 8,
                            "note": None,
                        }
                        for s, st in status.items()
                    }
                    | {"report": {"status": "running"}},  # as the audit's report stage leaves it
                    "seeds": {"generate": [0, 1], "bootstrap": 0},
                }
            )
        )
    return root


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, dict[str, Path], dict]:
    run = make_run(tmp_path_factory.mktemp("reports") / "audit_run")
    paths = write_scorecard(run)
    return run, paths, json.loads(paths["json"].read_text())


def _numeric_leaves_not_numbers(node, path="") -> list[str]:
    """Paths of numeric leaves that are not inside a {value, low, high, n, backend} object."""
    if isinstance(node, dict):
        if {"value", "low", "high", "n", "backend"} <= node.keys():
            ok = all(
                node[k] is None or isinstance(node[k], (int, float)) for k in ("value", "low", "high", "n")
            )
            return [] if ok and not isinstance(node["value"], bool) else [path]
        return [p for k, v in node.items() for p in _numeric_leaves_not_numbers(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _numeric_leaves_not_numbers(v, f"{path}[{i}]")]
    return [path] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def test_all_three_files_and_schema(full_run):
    run, paths, card = full_run
    assert set(paths) == {"json", "md", "html"} and all(
        p.is_file() and p.parent == run for p in paths.values()
    )
    assert not list(run.glob(".scorecard*"))  # temporary files renamed away
    assert card["format"] == FORMAT == "valle-scorecard" and card["schema_version"] == SCHEMA_VERSION == 1
    assert "wilson" in card["definitions"]["intervals"].lower()
    for name in METRIC_SECTIONS:
        assert card[name]["status"] == "ok", (name, card[name].get("error"))
        assert _numeric_leaves_not_numbers(card[name], name) == []
    assert card["other"]["metrics"]["brand_new_metric"]["value"] == 7.0  # unknown metrics are kept
    assert card["profile"] == "offline" and card["generator"] == "valle:checkpoints/demo"
    rep = card["reproducibility"]
    assert rep["git_commit"].startswith("0123") and rep["generator"]["weights_sha256"] == "c0" * 32
    assert rep["scorers"]["speaker"]["sha256"] == "a2" * 32 and rep["seeds"] == [0, 1]


def test_numbers_carry_the_inputs(full_run):
    _, _, card = full_run
    wer = card["intelligibility"]["metrics"]["wer"]
    assert wer == {"value": 0.45, "low": 0.4, "high": 0.5, "n": 4, "backend": "faster-whisper (a1a1a1a1a1a1)"}
    assert card["flags"]["rates"]["silence"]["backend"] == "silero-vad"
    # verify: 5 of 6 authentic, Wilson interval (closed form, z = 1.96)
    vr = card["watermark"]["verify"]["verified_rate"]
    k, n, z = 5, 6, norm.ppf(0.975)
    centre, half = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    assert vr["value"] == pytest.approx(5 / 6) and vr["n"] == 6
    assert (vr["low"], vr["high"]) == pytest.approx((centre - half, centre + half))
    assert card["watermark"]["verify"]["verdicts"]["altered_copy"]["value"] == 1
    attacks = card["watermark"]["robustness"]["attacks"]
    assert attacks["mp3_32k"]["tpr"]["low"] == 0.19  # given interval kept
    assert (
        attacks["resample_8k"]["tpr"]["low"] is not None and "Wilson" in attacks["resample_8k"]["tpr"]["note"]
    )
    det = card["detection"]
    assert det["metrics"]["eer"]["value"] == 0.0857 and det["metrics"]["eer"]["high"] == 0.273
    assert det["metrics"]["eer"]["n"] == 24 and det["metrics"]["min_dcf"]["low"] is None
    assert "no interval" in det["metrics"]["min_dcf"]["note"]
    assert det["per_condition"]["mp3_32k"]["eer"]["low"] is None
    op = card["asv"]["operating_points"]["eer"]
    assert op["spoof_acceptance"]["value"] == 0.833 and op["spoof_acceptance"]["low"] == 0.33
    assert op["spoof_acceptance"]["n"] == 6 and op["gated_spoof_acceptance"]["value"] == 0.0
    assert card["asv"]["metrics"]["sv_eer"]["n"] == 24
    f = card["failures"]
    assert f["counts"]["generation_failed"] == 1 and f["n_failed_rows"] == 1
    assert (
        f["failed_rows"][0]["error"].startswith("RuntimeError") and f["stages"]["generate"]["n_failed"] == 1
    )
    assert f["n_attack_errors"] == 1 and f["n_failed_in_stages"] == 1 and f["ok"] is False
    assert card["stages"]["report"]["status"] == "running"
    assert {
        "stage": "verify",
        "item": "arctic_a0003.s1",
        "problem": "altered_copy: audio hash differs from manifest",
    } in f["items"]
    assert {
        "stage": "asv",
        "item": "arctic_a0004.s0",
        "problem": "skipped_spoofs: spoof: 0.3 s is shorter than the 0.5 s needed",
    } in f["items"]
    worst = card["examples"]["worst_wer"]
    assert [e["wer"] for e in worst] == [1.2, 0.9, 0.5, 0.25, 0.1]
    assert [e["key"] for e in card["examples"]["flagged"]] == [
        "arctic_a0001.s0"
    ]  # others are among the worst
    assert card["examples"]["flagged"][0]["flags"] == ["code_loop"]


def test_missing_stages_are_failures_and_all_files_written(tmp_path):
    run = make_run(tmp_path / "score_only", stages=("generate", "score"), audit=False)
    paths = write_scorecard(run)
    card = json.loads(paths["json"].read_text())
    assert all(p.is_file() for p in paths.values())
    assert card["intelligibility"]["status"] == "ok"
    for name in ("detection", "asv"):
        assert card[name]["status"] == "not_run" and "not found" in card[name]["error"]
    assert card["stages"]["detect"]["status"] == "not_run" and card["stages"]["score"]["status"] == "done"
    assert {"detection", "asv", "watermark.verify", "watermark.robustness"} <= set(
        card["failures"]["sections"]
    )
    assert card["failures"]["ok"] is False and card["failures"]["n_sections_missing"] == 4
    assert "detection: not_run" in paths["md"].read_text()

    # a stage that failed in audit.json: its error shows on the section and is counted
    audit = json.loads((make_run(tmp_path / "tmp_audit") / "audit.json").read_text())
    audit["stages"]["asv"] = {
        "status": "failed",
        "seconds": 3.0,
        "error": "ValueError: no speaker <has> 4 clips",
    }
    audit["stages"]["detect"]["status"] = "skipped"
    (run / "audit.json").write_text(json.dumps(audit))
    card = json.loads(write_scorecard(run)["json"].read_text())
    assert card["asv"]["status"] == "failed" and "no speaker <has> 4 clips" in card["asv"]["error"]
    assert card["detection"]["status"] == "skipped" and card["failures"]["n_failed_stages"] == 1
    assert card["failures"]["stages"]["asv"]["error"].startswith("ValueError")
    assert "no speaker &lt;has&gt; 4 clips" in (run / "scorecard.html").read_text()


def test_corrupt_files_become_section_errors(tmp_path):
    run = make_run(tmp_path / "corrupt")
    (run / "detect" / "eval.json").write_text('{"overall": {"eer": 0.1,')  # truncated write
    (run / "tables" / "verify.parquet").write_bytes(b"PAR1 not really parquet")
    (run / "asv" / "asv_report.json").write_text("[1, 2]")
    (run / "audit.json").write_bytes(b"\xff\xfe not json")
    paths = write_scorecard(run)
    card = json.loads(paths["json"].read_text())
    assert card["detection"]["status"] == "error" and "detect/eval.json" in card["detection"]["error"]
    assert "not valid JSON" in card["detection"]["error"]
    assert card["watermark"]["verify"]["status"] == "error"
    assert "tables/verify.parquet" in card["watermark"]["verify"]["error"]
    assert "asv/asv_report.json" in card["asv"]["error"] and card["watermark"]["robustness"]["status"] == "ok"
    # without a readable audit.json the stages are inferred from the files, and that is an error too
    assert card["failures"]["sections"]["audit"]["error"].startswith("audit.json: not valid JSON")
    assert card["stages"]["detect"]["status"] == "done" and "inferred" in card["stages"]["detect"]["source"]
    assert card["failures"]["n_section_errors"] == 4 and card["failures"]["ok"] is False
    assert "detect/eval.json" in paths["md"].read_text() and "detect/eval.json" in paths["html"].read_text()


def test_empty_run_dir_still_gets_a_scorecard(tmp_path):
    paths = write_scorecard(tmp_path)
    card = json.loads(paths["json"].read_text())
    assert all(card[s]["status"] == "not_run" for s in ("intelligibility", "detection", "asv", "quality"))
    assert card["failures"]["ok"] is False and paths["html"].stat().st_size > 1000
    with pytest.raises(NotADirectoryError, match="nope"):
        write_scorecard(tmp_path / "nope")
    assert build_scorecard(tmp_path)["watermark"]["status"] == "not_run"


def test_html_is_self_contained_with_png_plots(full_run):
    _, paths, _ = full_run
    page = paths["html"].read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and not [r for r in refs if r.startswith(("http://", "https://", "//"))]
    assert "http://" not in page and "https://" not in page
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(imgs) == 6, re.findall(r'class="err">plot[^<]*', page)  # WER, SIM, flags, watermark, DET, ASV
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "unavailable" not in page and "HTML rendering failed" not in page
    assert "&quot;weights_sha256&quot;: &quot;c2c2" in page  # the backend cards in the reproducibility block


def test_audio_data_uris_are_16k_mono_wav_at_most_10s(full_run):
    run, paths, card = full_run
    page = paths["html"].read_text()
    srcs = re.findall(r'<audio [^>]*src="([^"]+)"', page)
    assert len(srcs) == len(card["examples"]["worst_wer"]) + len(card["examples"]["flagged"]) == 6
    durations = []
    for src in srcs:
        assert src.startswith("data:audio/wav;base64,")
        info = sf.info(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        durations.append(info.duration)
    assert max(durations) == pytest.approx(10.0) and min(durations) == pytest.approx(1.5)
    links = re.findall(r'<a href="(generated/[^"]+\.wav)"', page)
    assert links and all((run / link).is_file() for link in links)


def test_markdown_fits_100_columns(full_run):
    _, paths, _ = full_run
    text = paths["md"].read_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert (
        "| metric | value | 95% CI | n | backend |" in text and "| WER | 45.0% | [40.0%, 50.0%] | 4 |" in text
    )
    for needle in (
        "verified 83.3%",
        "detector (lfcc-logreg): EER 8.6%",
        "clones accepted @EER thr 83.3%",
        "NOT OK: 0 failed stages, 1 items failed inside stages, 0 section errors",
        "1 failed score rows, 1 watermark attack errors",
        "| score | done | 1.5 |",
    ):
        assert needle in " ".join(text.split()), needle  # wrapped lines joined


def test_text_is_escaped(full_run):
    _, paths, _ = full_run
    page = paths["html"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in page
    assert "reason <b>" not in page and "reason &lt;b&gt;" in page


def test_scorecard_lists_the_verdicts_verify_gives_in_its_order():
    """reports is a leaf and keeps its own copy of watermark.verify.VERDICTS: they must not drift."""
    from reports.sections import VERDICTS as shown
    from watermark.verify import VERDICTS

    assert shown == VERDICTS
