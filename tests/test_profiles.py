"""Profiles: the pre-flight weight check and the checkpoint/profile codec rule, on the real caches."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from evaluation.audit.model_files import ECAPA_FILES, cached_sha256, hash_cache_path, required_files
from evaluation.audit.preflight import check_checkpoint, check_profile, checkpoint_of
from evaluation.audit.profiles import PROFILES, Overrides, ProfileError
from valle.codec.base import sha256_file
from valle.codec.encodec import CHECKPOINT_SHA256 as ENCODEC_SHA256

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
LARGE_V3_SHA256 = "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb"  # from whisper's URL


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Empty user caches: whisper, audioseal and torch hub follow XDG_CACHE_HOME, the Hugging Face hub
    its HF_HUB_CACHE; the hash cache goes there too, so no test touches the real home."""
    from huggingface_hub import constants

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for var in ("TORCH_HOME", "AUDIOSEAL_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache" / "huggingface" / "hub"))
    return tmp_path / "cache"


def _checkpoint_with_codec(src: Path, dst: Path, **card) -> Path:
    """A copy of ``src``'s config.json (and weights) with the codec card fields replaced."""
    dst.mkdir(parents=True)
    meta = json.loads((src / "config.json").read_text())
    meta["codec"].update(card)
    (dst / "config.json").write_text(json.dumps(meta))
    os.symlink(src / "model.safetensors", dst / "model.safetensors")
    return dst


def test_offline_profile_passes_here_with_every_bundled_file_hashed(empty_caches):
    r = check_profile("offline", checkpoint=DEMO)
    assert r.scoring_kwargs() == {"asr": "faster-whisper", "asr_model": None, "speaker": "campplus",
                                  "speaker_model": None}  # fmt: skip
    assert (r.watermark, r.watermark_kwargs, r.detector, r.detector_size, r.quality) == (
        "keyed", {}, "lfcc-gmm", "small", "dnsmos"
    )  # fmt: skip
    # the keyed watermark has no weights, so no watermark file is listed
    assert {f["role"] for f in r.files} == {"asr", "speaker", "quality", "vad", "codec"}
    assert all(f["sha256"] and len(f["sha256"]) == 64 for f in r.files)  # every offline file is pinned
    codec = next(f for f in r.files if f["role"] == "codec")
    assert codec["sha256"] == json.loads((DEMO / "config.json").read_text())["codec"]["weights_sha256"]
    assert (r.codec, r.codec_weights, r.encodec_weights) == ("vqvae_24khz", None, None)
    assert r.checkpoint["codec"]["name"] == "vqvae_24khz"
    assert hash_cache_path().is_relative_to(empty_caches) and hash_cache_path().is_file()
    from evaluation.scorers.scoring import ScoringConfig

    assert ScoringConfig(**r.scoring_kwargs()).asr == "faster-whisper"
    assert json.loads(json.dumps(r.to_json()))["files"] == list(r.files)  # fit for config.json
    # a folder:/command: generator decodes nothing, so no codec is checked
    assert check_profile("offline", generator="folder:outputs").codec is None
    assert check_profile("offline", {"asr_model": None}, generator=f"valle:{DEMO}").codec == "vqvae_24khz"


def test_paper_profile_lists_every_missing_file_with_hash_path_and_url(empty_caches):
    with pytest.raises(ProfileError) as err:
        check_profile("paper")
    msg = str(err.value)
    assert "nothing was started. 9 problem(s)" in msg and msg.count("- MISSING: ") == 9
    assert f"expected at: {empty_caches / 'whisper' / 'large-v3.pt'}" in msg
    assert f"sha256:      {LARGE_V3_SHA256}" in msg and f"/{LARGE_V3_SHA256}/large-v3.pt" in msg
    for f in ECAPA_FILES:
        assert f"SpeechBrain ECAPA {f}\n" in msg
        assert f"https://huggingface.co/speechbrain/spkrec-ecapa-voxceleb/resolve/main/{f}" in msg
    assert "hf download speechbrain/spkrec-ecapa-voxceleb" in msg
    for role in ("generator", "detector"):
        assert f"expected at: {empty_caches / 'audioseal' / f'{role}_base.pth'}" in msg
        assert f"https://huggingface.co/facebook/audioseal/resolve/main/{role}_base.pth" in msg
    assert msg.count("none pinned: upstream publishes no hash") == 7  # ECAPA x5, AudioSeal x2
    # no checkpoint, but the watermark stage attacks with EnCodec: paper needs it anyway
    assert (
        f"expected at: {empty_caches / 'torch' / 'hub' / 'checkpoints' / 'encodec_24khz-d7cc33bc.th'}" in msg
    )


def test_wrong_hashes_are_reported_together_with_missing_files(tmp_path):
    junk = tmp_path / "large-v3.pt"
    junk.write_bytes(b"not whisper")
    codec = tmp_path / "encodec.th"
    codec.write_bytes(b"not encodec")
    ecapa = tmp_path / "ecapa"
    ecapa.mkdir()
    for f in ECAPA_FILES[:-1]:  # label_encoder.txt left out
        (ecapa / f).write_text("x")
    ckpt = _checkpoint_with_codec(
        DEMO, tmp_path / "ck", name="encodec_24khz_6kbps", weights_sha256=ENCODEC_SHA256
    )
    overrides = Overrides(asr_model=junk, speaker_model=ecapa, codec_weights=codec)
    with pytest.raises(ProfileError) as err:
        check_profile("paper", overrides, checkpoint=ckpt)
    msg = str(err.value)
    assert f"SHA256 MISMATCH (file has {sha256_file(junk)}): Whisper large-v3" in msg
    assert f"expected at: {junk}" in msg and LARGE_V3_SHA256 in msg
    assert f"SHA256 MISMATCH (file has {sha256_file(codec)}): EnCodec 24 kHz" in msg and ENCODEC_SHA256 in msg
    assert (
        f"MISSING: SpeechBrain ECAPA label_encoder.txt\n    expected at: {ecapa / 'label_encoder.txt'}" in msg
    )
    assert "5 problem(s)" in msg  # + the two AudioSeal files; the EnCodec checkpoint itself is accepted
    # a directory given as --asr-model is a download root
    files = required_files("paper", Overrides(asr_model=tmp_path))
    assert next(f for f in files if f.role == "asr").path == tmp_path / "large-v3.pt"


def test_files_without_a_pinned_hash_are_checked_for_presence_only(tmp_path):
    ecapa = tmp_path / "ecapa"
    ecapa.mkdir()
    for f in ECAPA_FILES:
        (ecapa / f).write_text("x")
    gen, det = tmp_path / "gen.pth", tmp_path / "det.pth"
    gen.write_bytes(b"g"), det.write_bytes(b"d")
    # stand-in bytes pass where no hash is pinned; large-v3 (hash pinned) is still missing
    with pytest.raises(ProfileError) as err:
        check_profile(
            "paper", {"speaker_model": ecapa, "watermark_generator": gen, "watermark_detector": det}
        )
    msg = str(err.value)
    assert "2 problem(s)" in msg and "MISSING: Whisper large-v3" in msg and "MISSING: EnCodec" in msg
    with pytest.raises(ProfileError, match=r"unknown model path option.*asr_modle"):
        check_profile("paper", {"asr_modle": "x"})


def test_demo_checkpoint_is_refused_by_paper_and_accepted_by_offline(tmp_path):
    with pytest.raises(ProfileError) as err:
        check_checkpoint("paper", DEMO)
    assert (
        f"{DEMO} uses codec vqvae_24khz; profile 'paper' needs encodec_24khz_6kbps "
        "(train a checkpoint on EnCodec codes, or use --profile offline)"
    ) in str(err.value)
    info = check_checkpoint("offline", DEMO)
    assert info["codec"]["name"] == "vqvae_24khz" and len(info["weights_sha256"]) == 64
    # the codec message comes first, with every missing file after it
    with pytest.raises(ProfileError, match=r"(?s)uses codec vqvae_24khz.*MISSING: EnCodec 24 kHz"):
        check_profile("paper", checkpoint=DEMO)
    unofficial = _checkpoint_with_codec(
        DEMO, tmp_path / "enc", name="encodec_24khz_6kbps", weights_sha256="0" * 64
    )
    with pytest.raises(ProfileError, match="not the official d7cc33bc"):
        check_checkpoint("paper", unofficial)


def test_missing_or_non_checkpoint_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ProfileError, match=f"checkpoint folder {tmp_path / 'gone'} does not exist"):
        check_checkpoint("offline", tmp_path / "gone")
    with pytest.raises(ProfileError, match=rf"{tmp_path}: not a checkpoint \(config.json not found\)"):
        check_checkpoint("offline", tmp_path)
    assert checkpoint_of("valle:checkpoints/demo") == Path("checkpoints/demo")
    assert checkpoint_of("folder:outputs") is None and checkpoint_of("command:tts {out_wav}") is None


def test_overrides_that_do_not_apply_and_unknown_profiles_are_refused(tmp_path):
    with pytest.raises(
        ProfileError,
        match=r"--watermark-generator \(profile 'offline' uses keyed, which has no weights.*does not apply",
    ):
        check_profile("offline", Overrides(watermark_generator=tmp_path / "g.pth"))
    with pytest.raises(ProfileError, match=r"--speaker-model .*does not apply"):
        required_files("offline", Overrides(speaker_model=tmp_path))
    with pytest.raises(ProfileError, match="profile 'paper' uses Whisper large-v3"):
        required_files("paper", Overrides(asr_model="tiny.en"))
    with pytest.raises(ProfileError, match="unknown profile 'fast'; choose one of offline, paper"):
        check_profile("fast")
    args = argparse.Namespace(asr_model="m", watermark_detector=Path("d"), unrelated=1)
    assert Overrides.from_args(args) == Overrides(asr_model="m", watermark_detector=Path("d"))
    # an offline run on another CTranslate2 model: that folder must hold one
    with pytest.raises(
        ProfileError, match=rf"MISSING: Whisper \(CTranslate2, user-given\)\n.*{tmp_path}/model.bin"
    ):
        check_profile("offline", Overrides(asr_model=tmp_path))
    with pytest.raises(ProfileError, match="takes a CTranslate2 model folder, not a file"):
        required_files("offline", Overrides(asr_model=DEMO / "config.json"))
    with pytest.raises(ProfileError, match="--codec-weights does not apply"):
        check_profile("offline", Overrides(codec_weights=tmp_path / "c.th"), generator="folder:x")
    assert set(PROFILES) == {"offline", "paper"}


def test_hash_cache_is_keyed_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = cached_sha256(f)
    assert first == sha256_file(f)
    cache = json.loads(hash_cache_path().read_text())
    # prove the second call reads the cache: plant a value it could not compute
    cache[str(f.resolve())]["sha256"] = "planted"
    hash_cache_path().write_text(json.dumps(cache))
    assert cached_sha256(f) == "planted"
    f.write_bytes(b"b" * 1000)  # same size, new content
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cached_sha256(f) == sha256_file(f) != first
    hash_cache_path().write_text("{not json")  # a damaged cache is rebuilt, not trusted
    assert cached_sha256(f) == sha256_file(f)
    assert json.loads(hash_cache_path().read_text())[str(f.resolve())]["sha256"] == sha256_file(f)
