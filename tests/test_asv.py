"""ASV bypass harness (evaluation/bypass/): calibration on constructed trials with known score
distributions, CM gating, and the real pipeline (eSpeak NG voices -> Resemblyzer -> report -> CLI)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from detection.metrics import compute_eer, compute_min_adcf, rates_at, threshold_at_far
from evaluation.bypass.asv import REPORT_FILE, TRIALS_FILE, run_asv
from evaluation.bypass.report import GATED_SCORE, asv_report, trial_table
from evaluation.bypass.trials import AsvConfig, enrol, trials_from_embeddings
from evaluation.cli.asv import add_parser, read_spoof_rows

# ----------------------------------------------------------------------------- constructed embeddings


def _exact_cosine_set(rng, n_speakers=5, n_test=400, dim=256, target=(0.3, 0.05), nontarget=(0.2, 0.05)):
    """Embeddings whose trial cosines are prescribed exactly.

    Speaker s enrols from three copies of the basis vector e_s, so its voice print is e_s. A test
    utterance of s has coefficient a ~ N(target) on e_s, b_o ~ N(nontarget) on every other e_o,
    and the rest of its unit norm in the dimensions no speaker uses; so cos(print_o, utt) = b_o and
    cos(print_s, utt) = a exactly. Returns (real rows, target cosines, non-target cosines)."""
    real, tgt, non = [], [], []
    for s in range(n_speakers):
        real += [(f"s{s}_enrol{i}", f"spk{s}", np.eye(dim)[s]) for i in range(3)]
        for j in range(n_test):
            coef = rng.normal(*nontarget, n_speakers)
            coef[s] = rng.normal(*target)
            free = rng.standard_normal(dim - n_speakers)
            free *= np.sqrt(1.0 - coef @ coef) / np.linalg.norm(free)
            real.append((f"s{s}_test{j:04d}", f"spk{s}", np.concatenate([coef, free])))
            tgt.append(coef[s])
            non += [coef[o] for o in range(n_speakers) if o != s]
    return real, np.array(tgt), np.array(non)


def _spoofs_with_cosine(rng, n_speakers, per_speaker, dim, mean, sd):
    """Spoofs of each target with cosine ~ N(mean, sd) to its print (e_s); returns rows and cosines."""
    rows, cos = [], []
    for s in range(n_speakers):
        for j in range(per_speaker):
            a = rng.normal(mean, sd)
            free = rng.standard_normal(dim - n_speakers)
            free *= np.sqrt(1.0 - a * a) / np.linalg.norm(free)
            v = np.concatenate([np.zeros(n_speakers), free])
            v[s] = a
            rows.append((f"clone_s{s}_{j:03d}", f"spk{s}", v))
            cos.append(a)
    return rows, np.array(cos)


def test_calibration_reproduces_known_eer_and_far():
    rng = np.random.default_rng(0)
    real, tgt, non = _exact_cosine_set(rng)
    like, like_cos = _spoofs_with_cosine(rng, 5, 200, 256, 0.3, 0.05)  # clones as good as the real voice
    rand = [(f"rand{i:03d}", f"spk{i % 5}", rng.standard_normal(256)) for i in range(500)]
    cfg = AsvConfig(bootstrap=0)
    _, trials = trials_from_embeddings(real, like + rand, cfg)
    assert np.allclose(np.sort(trials.scores("target")), np.sort(tgt), atol=1e-12)
    assert np.allclose(np.sort(trials.scores("nontarget")), np.sort(non), atol=1e-12)
    rep = asv_report(trials)

    # SV-EER is the EER of the constructed cosines, and matches the analytic value for two
    # Gaussians d' = 2 apart: EER = Phi(-1) = 0.1587, threshold at the midpoint 0.25
    assert rep["sv_eer"] == pytest.approx(compute_eer(tgt, non)[0], abs=1e-12)
    assert rep["sv_eer"] == pytest.approx(norm.cdf(-1.0), abs=0.02)
    assert rep["t_eer"] == pytest.approx(0.25, abs=0.01)
    # FAR = 1 % on non-targets: t = 0.2 + 0.05 * z_0.99; FRR there = Phi((t - 0.3) / 0.05)
    assert rep["t_far"] == threshold_at_far(non, 0.01)
    assert rep["t_far"] == pytest.approx(0.2 + 0.05 * norm.ppf(0.99), abs=0.01)
    far_op = rep["operating_points"]["far"]
    assert far_op["far"] <= 0.01
    assert far_op["frr"] == pytest.approx(norm.cdf((0.2 + 0.05 * norm.ppf(0.99) - 0.3) / 0.05), abs=0.04)

    # spoof acceptance: share of spoof trials with cosine >= threshold; target-like clones pass
    # about as often as targets (1 - EER at t_eer), random vectors (cos ~ N(0, 1/256)) never
    rand_cos = np.array([t.cosine for t in trials if t.kind == "spoof" and t.utterance.startswith("rand")])
    for name in ("eer", "far"):
        t = rep[f"t_{name}"]
        spoof_cos = np.concatenate([like_cos, rand_cos])
        assert rep["operating_points"][name]["spoof_acceptance"] == pytest.approx(np.mean(spoof_cos >= t))
        assert rates_at(tgt, rand_cos, t)[1] == 0.0
    assert np.mean(like_cos >= rep["t_eer"]) == pytest.approx(1 - norm.cdf(-1.0), abs=0.05)
    spoofs = np.concatenate([like_cos, rand_cos])
    assert rep["spf_eer"] == pytest.approx(compute_eer(tgt, spoofs)[0], abs=1e-12)
    assert rep["sasv_eer"] == pytest.approx(compute_eer(tgt, np.concatenate([non, spoofs]))[0], abs=1e-12)
    assert rep["min_adcf"] == pytest.approx(compute_min_adcf(tgt, non, spoofs)[0], abs=1e-12)
    assert 0 < rep["min_adcf"] < 1  # better than accepting or rejecting everything, far from perfect
    assert rep["counts"] == {
        "target_speakers": 5, "speakers": 5, "enrolment_utterances": 15, "target": 2000,
        "nontarget": 8000, "spoof": 1500, "skipped_speakers": 0, "skipped_spoofs": 0,
    }  # fmt: skip
    # only target-like clones: SPF-EER ~ 0.5 (indistinguishable); only random ones: ~0
    only_like = asv_report(trials_from_embeddings(real, like, cfg)[1])
    only_rand = asv_report(trials_from_embeddings(real, rand, cfg)[1])
    assert only_like["spf_eer"] == pytest.approx(0.5, abs=0.05)
    assert only_rand["spf_eer"] < 0.01  # the lowest targets (~0.3 - 3.5 sd) meet the top random ones
    assert only_rand["operating_points"]["eer"]["spoof_acceptance"] == 0.0


def _centre_set(rng, n_speakers=6, n_utts=13, dim=64, noise=0.35):
    """Unit vectors around per-speaker centres (the brief's natural construction)."""
    centres = rng.standard_normal((n_speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = []
    for s in range(n_speakers):
        for j in range(n_utts):
            v = centres[s] + noise * rng.standard_normal(dim) / np.sqrt(dim) * 3
            rows.append((f"u{s}_{j:02d}", f"spk{s}", v / np.linalg.norm(v)))
    return rows, centres


def test_enrolment_trials_and_bootstrap_by_speaker():
    rng = np.random.default_rng(1)
    real, centres = _centre_set(rng)
    rng.shuffle(real)  # enrolment must not depend on input order
    spoofs = [
        (f"c{s}_{j}", f"spk{s}", centres[s] + 0.3 * rng.standard_normal(64))
        for s in range(6)
        for j in range(4)
    ]
    prints, trials = trials_from_embeddings(real, spoofs, AsvConfig(bootstrap=100, seed=3))
    # voice print = L2-normalised mean of the first 3 utterances by id
    for s in range(6):
        first = sorted((r for r in real if r[1] == f"spk{s}"), key=lambda r: r[0])[:3]
        expect = np.mean([r[2] for r in first], axis=0)
        assert np.allclose(prints[f"spk{s}"], expect / np.linalg.norm(expect))
        assert trials.enrolment_ids[f"spk{s}"] == [r[0] for r in first]
    emb = {r[0]: r[2] for r in [*real, *spoofs]}
    again = enrol({spk: np.stack([emb[u] for u in ids]) for spk, ids in trials.enrolment_ids.items()})
    assert all(np.allclose(again[spk], prints[spk]) for spk in prints)
    for t in trials:
        e = emb[t.utterance] / np.linalg.norm(emb[t.utterance])
        assert t.cosine == pytest.approx(float(prints[t.speaker] @ e), abs=1e-12)
        assert t.utterance not in trials.enrolment_ids[t.speaker]
    kinds = pd.Series([t.kind for t in trials]).value_counts().to_dict()
    assert kinds == {"target": 60, "nontarget": 300, "spoof": 24}

    rep = asv_report(trials)
    assert rep["sv_eer"] == compute_eer(trials.scores("target"), trials.scores("nontarget"))[0]
    assert rep["ci"]["unit"] == "speaker" and rep["ci"]["n"] == 100
    for key in ("sv_eer", "spf_eer", "sasv_eer", "t_eer", "t_far"):
        low, high = rep["ci"]["intervals"][key]
        assert low <= rep[key] <= high, key
    assert set(rep["per_speaker"]) == {f"spk{s}" for s in range(6)}
    assert sum(p["n_spoof"] for p in rep["per_speaker"].values()) == 24
    assert json.loads(json.dumps(rep, allow_nan=False))["sv_eer"] == rep["sv_eer"]
    # fewer target speakers than min_bootstrap_speakers: trials are resampled within each kind
    few = trials_from_embeddings(real, spoofs, AsvConfig(bootstrap=50, min_bootstrap_speakers=7))[1]
    assert asv_report(few)["ci"]["unit"] == "trial"


def test_skipped_speakers_and_bad_input():
    rng = np.random.default_rng(2)
    real, _ = _centre_set(rng, n_speakers=3, n_utts=5)
    real += [("lone_0", "lone", rng.standard_normal(64)), ("lone_1", "lone", rng.standard_normal(64))]
    spoofs = [("sp_a", "spk0", rng.standard_normal(64)), ("sp_lone", "lone", rng.standard_normal(64)),
              ("sp_ghost", "nobody", rng.standard_normal(64))]  # fmt: skip
    _, trials = trials_from_embeddings(real, spoofs, AsvConfig(bootstrap=0))
    assert set(trials.skipped_speakers) == {"lone"}
    assert "2 real utterances < enrol_per_speaker + 1 = 4" in trials.skipped_speakers["lone"]
    assert set(trials.skipped_spoofs) == {"sp_lone", "sp_ghost"}
    # the skipped speaker's utterances are impostor trials against every target, never targets
    lone = [t for t in trials if t.true_speaker == "lone"]
    assert {t.kind for t in lone} == {"nontarget"} and len(lone) == 2 * 3
    assert "lone" not in {t.speaker for t in trials}
    rep = asv_report(trials)
    assert rep["skipped_speakers"] == trials.skipped_speakers and rep["counts"]["skipped_spoofs"] == 2

    with pytest.raises(ValueError, match="at least 2"):
        trials_from_embeddings([r for r in real if r[1] == "spk0"], [], AsvConfig())
    with pytest.raises(ValueError, match="no speaker has the 6 real utterances"):
        trials_from_embeddings(real, [], AsvConfig(enrol_per_speaker=5))
    with pytest.raises(ValueError, match="duplicate utterance ids"):
        trials_from_embeddings(real, [(real[0][0], "spk0", real[0][2])], AsvConfig())
    with pytest.raises(ValueError, match="zero or not finite"):
        trials_from_embeddings([*real, ("zero", "spk1", np.zeros(64))], [], AsvConfig())
    for bad in ({"far": 0.0}, {"enrol_per_speaker": 0}, {"bootstrap": -1}):
        with pytest.raises(ValueError):
            AsvConfig(**bad)


def test_cm_gating():
    rng = np.random.default_rng(4)
    real, centres = _centre_set(rng)
    spoofs = [
        (f"c{s}_{j}", f"spk{s}", centres[s] + 0.05 * rng.standard_normal(64))
        for s in range(6)
        for j in range(10)
    ]
    _, trials = trials_from_embeddings(real, spoofs, AsvConfig(bootstrap=0))
    plain = asv_report(trials)
    assert plain["operating_points"]["eer"]["spoof_acceptance"] > 0.5  # close clones pass the ASV alone
    utts = {t.utterance: t.kind for t in trials}

    # a perfect CM: every clone is stopped, no target is lost
    perfect = {u: (-1.0 if k == "spoof" else 1.0) for u, k in utts.items()}
    rep = asv_report(trials, perfect, 0.0)
    for name in ("eer", "far"):
        op = rep["operating_points"][name]
        assert op["gated"]["spoof_acceptance"] == 0.0
        assert op["gated"]["frr"] == op["frr"] and op["gated"]["cm_added_frr"] == 0.0
        assert op["gated"]["far"] == op["far"]
    assert rep["gated"]["spf_eer"] == 0.0 and rep["gated"]["sv_eer"] == rep["sv_eer"]
    assert rep["gated"]["sasv_eer"] <= rep["sv_eer"]
    assert rep["cm"]["eer_on_this_run"] == 0.0 and rep["cm"]["spoof_acceptance_rate"] == 0.0

    # an imperfect CM: lets every other clone through and rejects some real recordings
    ids = sorted(utts)
    partial = {u: float(rng.normal()) for u in ids}
    rep = asv_report(trials, partial, 0.3)
    cos = np.array([t.cosine for t in trials])
    kind = np.array([t.kind for t in trials])
    ok = np.array([partial[t.utterance] >= 0.3 for t in trials])
    for name in ("eer", "far"):
        t, op = rep[f"t_{name}"], rep["operating_points"][name]
        assert op["threshold"] == t == plain[f"t_{name}"]  # the CM never moves the ASV thresholds
        spf, tgt = kind == "spoof", kind == "target"
        assert op["gated"]["spoof_acceptance"] == pytest.approx(np.mean((cos[spf] >= t) & ok[spf]))
        assert op["gated"]["frr"] == pytest.approx(1 - np.mean((cos[tgt] >= t) & ok[tgt]))
        assert op["gated"]["frr"] >= op["frr"] and op["gated"]["spoof_acceptance"] <= op["spoof_acceptance"]
    gated = np.where(ok, cos, GATED_SCORE)
    assert rep["gated"]["sasv_eer"] == pytest.approx(
        compute_eer(gated[kind == "target"], gated[kind != "target"])[0]
    )

    table = trial_table(trials, rep, partial)
    assert len(table) == len(trials) and set(table["kind"]) == {"target", "nontarget", "spoof"}
    assert (table["accepted_gated_eer"] == (table["accepted_eer"] & table["cm_accept"])).all()
    assert (table["accepted_eer"] == (table["cosine"] >= rep["t_eer"])).all()

    with pytest.raises(ValueError, match="no score for 1 trial utterance"):
        asv_report(trials, {u: 0.0 for u in ids[1:]}, 0.0)
    with pytest.raises(ValueError, match="give both or neither"):
        asv_report(trials, perfect, None)


# ----------------------------------------------------------------------------- real audio

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every summer morning.",
    "A large crowd gathered to watch the old ship sail into the harbour.",
    "Please call Stella and ask her to bring these things from the store.",
    "We also need a small plastic snake and a big toy frog for the kids.",
)
VOICES = {"spk-a": "en-us+m1", "spk-b": "en-us+f3", "spk-c": "en+m3"}


@pytest.fixture(scope="module")
def encoder(one_torch_thread):
    from evaluation.scorers.speaker import load_speaker_encoder

    return load_speaker_encoder("resemblyzer")


@pytest.fixture(scope="module")
def espeak_sets(tmp_path_factory):
    """Real set: 3 eSpeak NG voices x 5 sentences plus a voice with 2 (too few to enrol);
    clones: each target voice re-synthesised at another pitch and rate (2 each) plus one 0.2 s
    clip (too short to embed). Written as wavs with a manifest and a spoof JSONL."""
    import soundfile as sf

    from valle.corpus.espeak import EspeakSynth

    root = tmp_path_factory.mktemp("asv")
    (root / "wavs").mkdir()
    real, spoof = [], []
    with EspeakSynth() as synth:
        for spk, voice in [*VOICES.items(), ("spk-lone", "en+f2")]:
            for i, text in enumerate(SENTENCES[: 2 if spk == "spk-lone" else 5]):
                wav, sr = synth.synthesize(text, voice=voice)
                sf.write(root / "wavs" / f"{spk}_{i}.wav", wav, sr)
                real.append(
                    {"id": f"{spk}_{i}", "audio": f"wavs/{spk}_{i}.wav", "text": text, "speaker": spk}
                )
            if spk != "spk-lone":
                for i, text in enumerate(SENTENCES[3:]):
                    wav, sr = synth.synthesize(text, voice=voice, pitch=62, rate=190)
                    sf.write(root / "wavs" / f"clone_{spk}_{i}.wav", wav, sr)
                    spoof.append({"audio": f"wavs/clone_{spk}_{i}.wav", "speaker": spk})
        sf.write(root / "wavs" / "clone_short.wav", wav[: int(0.2 * sr)], sr)
        spoof.append({"id": "short", "audio": "wavs/clone_short.wav", "speaker": "spk-a"})
    (root / "real.jsonl").write_text("".join(json.dumps(r) + "\n" for r in real))
    (root / "spoof.jsonl").write_text("".join(json.dumps(r) + "\n" for r in spoof))
    return root


def test_run_asv_on_espeak_voices(espeak_sets, encoder):
    from evaluation.cli.asv import read_real_rows

    real = read_real_rows(espeak_sets / "real.jsonl")
    spoof, source = read_spoof_rows(espeak_sets / "spoof.jsonl")
    assert source["rows"] == 7 and {r["id"] for r in spoof} >= {"clone_spk-a_0", "short"}
    report, table = run_asv(real, spoof, AsvConfig(bootstrap=100), encoder=encoder)
    c = report["counts"]
    assert (c["target_speakers"], c["speakers"], c["target"], c["spoof"]) == (3, 4, 6, 6)
    assert c["nontarget"] == 3 * (2 * 2 + 2)  # the other targets' 2 test utterances each + the lone voice's 2
    assert "spk-lone" in report["skipped_speakers"]
    assert "short" in report["skipped_spoofs"] and "shorter than" in report["skipped_spoofs"]["short"]
    assert report["encoder"]["backend"] == "resemblyzer"
    assert 0.0 <= report["sv_eer"] <= 0.5 and report["spf_eer"] is not None
    # the same eSpeak voice at another pitch and rate is the same "speaker" to the encoder
    assert report["operating_points"]["eer"]["spoof_acceptance"] >= 0.5
    assert len(table) == c["target"] + c["nontarget"] + c["spoof"]
    assert table["cm_score"].isna().all() and table["accepted_gated_eer"].isna().all()

    with pytest.raises(ValueError, match="at least 2"):
        run_asv([r for r in real if r["speaker"] == "spk-a"], spoof, AsvConfig(), encoder=encoder)
    broken = [*real[:-1], {**real[-1], "audio": str(espeak_sets / "missing.wav")}]
    with pytest.raises(ValueError, match=r"missing\.wav: file not found"):
        run_asv(broken, [], AsvConfig(bootstrap=0), encoder=encoder)


def test_cli_with_run_dir_and_detector(espeak_sets, tmp_path, capsys, one_torch_thread):
    import soundfile as sf

    from evaluation.testsets.testset import TestItem, TestSet
    from valle.audio import load_audio

    models = pytest.importorskip("detection.models", reason="detection/models.py not available")
    # a `valle score` run directory: test items (target speaker) + the generations table
    run_dir = tmp_path / "run"
    (run_dir / "tables").mkdir(parents=True)
    (run_dir / "generated").mkdir()
    items, gens = [], []
    for spk in VOICES:
        for i in range(2):
            iid = f"{spk}_t{i}"
            items.append(TestItem(iid, SENTENCES[3 + i], spk, "cross_sentence", None, 4.0, None, None))
            wav, sr = load_audio(espeak_sets / "wavs" / f"clone_{spk}_{i}.wav")
            sf.write(run_dir / "generated" / f"{iid}.s0.wav", wav, sr)
            gens.append({"key": f"{iid}.s0", "id": iid, "seed": 0, "status": "ok",
                         "audio": str(run_dir / "generated" / f"{iid}.s0.wav")})  # fmt: skip
    gens.append({"key": "spk-a_t9.s0", "id": "spk-a_t1", "seed": 0, "status": "failed", "audio": None})
    TestSet(items).save(run_dir / "testset.jsonl")
    pd.DataFrame(gens).to_parquet(run_dir / "tables" / "generations.parquet")
    rows, source = read_spoof_rows(run_dir)
    assert len(rows) == 6 and source["not_ok"] == {"failed": 1}
    assert {r["speaker"] for r in rows} == set(VOICES)

    # a real detector, trained on these clips (plumbing only: it sees its own test data)
    real = [load_audio(p) for p in sorted((espeak_sets / "wavs").glob("spk-*.wav"))]
    fake = [load_audio(p) for p in sorted((espeak_sets / "wavs").glob("clone_spk*.wav"))]
    det = models.LfccLogReg().fit(real + fake, np.array([1] * len(real) + [0] * len(fake)))
    det.save(tmp_path / "det")

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    argv = ["asv", "--real", str(espeak_sets / "real.jsonl"), "--spoof", str(run_dir),
            "--detector", str(tmp_path / "det"), "--bootstrap", "50", "--out", str(out)]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "SV-EER" in printed and "gated spoof" in printed
    report = json.loads((out / REPORT_FILE).read_text())
    table = pd.read_parquet(out / TRIALS_FILE)
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_FILE, TRIALS_FILE])  # no leftovers
    assert report["counts"]["spoof"] == 6 and len(table) == sum(
        report["counts"][k] for k in ("target", "nontarget", "spoof")
    )
    assert report["inputs"]["spoof"]["kind"] == "run"
    cm = report["cm"]
    assert cm is not None and cm["threshold_source"]
    for name in ("eer", "far"):
        op = report["operating_points"][name]
        assert op["gated"]["spoof_acceptance"] <= op["spoof_acceptance"]
        assert op["gated"]["frr"] >= op["frr"]
    assert table["cm_score"].notna().all()
    assert (
        table["accepted_gated_far"] == (table["accepted_far"] & (table["cm_score"] >= cm["threshold"]))
    ).all()


def test_real_speech(real_speech_rows, real_speech_dir, encoder):
    """Resemblyzer on real human speech: every speaker with >= 4 utterances (first 5 of each) as
    targets, three single-utterance speakers as extra impostors; no spoofs."""
    by_spk: dict[str, list[dict]] = {}
    for r in real_speech_rows:
        by_spk.setdefault(r["speaker"], []).append(r)
    rows = [r for rs in by_spk.values() if len(rs) >= 4 for r in sorted(rs, key=lambda r: r["id"])[:5]]
    rows += [rs[0] for rs in list(by_spk.values()) if len(rs) == 1][:3]
    rows = [{**r, "audio": str(real_speech_dir / r["audio"])} for r in rows]
    report, table = run_asv(rows, [], AsvConfig(bootstrap=100), encoder=encoder)
    assert set(table["kind"]) == {"target", "nontarget"}
    assert report["counts"]["target_speakers"] >= 2 and report["counts"]["skipped_speakers"] == 3
    assert report["spf_eer"] is None and report["sasv_eer"] is None
    assert report["sv_eer"] < 0.25  # distinct real speakers: Resemblyzer separates them well
    assert report["operating_points"]["far"]["far"] <= 0.01 + 1e-12
