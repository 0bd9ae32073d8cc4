"""Training data for VALL-E: the token cache and the dataset that reads it (batches: ``valle.batching``).

:func:`prepare_tokens` phonemizes every text of a manifest (one eSpeak pass) and encodes every
utterance's audio with the codec once, so training never touches audio. The cache folder holds

    tokens.safetensors   codes int16 [sum T, Q], phonemes int16/int32 [sum Lx],
                         code_offsets / phone_offsets int64 [N + 1] (item i = rows offsets[i]:offsets[i+1]),
                         with ``alignments``: durations int16 [sum Lx], frames per phoneme token
    index.json           format + version, the cache key (manifest sha256, codec card, symbol table,
                         phonemizer, settings), one entry per kept item (id, speaker, frames,
                         phonemes) and one per skipped row with its reason, tokens file sha256

Phoneme ids are stored without ``<bos>``/``<eos>`` (:data:`TEXT_HAS_BOS_EOS`); generation must
feed text the same way. Nothing is pickled. A cache whose key differs from the current inputs is
rebuilt, with a warning that says what changed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from valle.alignment import ALIGNMENT_VERSION, AlignmentError, token_durations
from valle.audio import AudioError, load_audio
from valle.codec.base import Codec, CodecCard, CodecError, sha256_file
from valle.corpus.phones import PhonesError, read_phones
from valle.manifest import ManifestError, Utterance, read_manifest
from valle.phonemes import PhonemeError, Phonemizer, SymbolTable
from valle.text import TextError

log = logging.getLogger(__name__)

FORMAT = "valle-token-cache"
FORMAT_VERSION = 1
INDEX = "index.json"
TOKENS = "tokens.safetensors"
TEXT_HAS_BOS_EOS = False  # phoneme ids are the bare sequence; see the module docstring


class DataError(ValueError):
    """A token cache that cannot be built or read, or a dataset/sampler set up inconsistently."""


@dataclass(frozen=True)
class PrepareOptions:
    """What besides the inputs decides the cache's content (part of the cache key)."""

    strict: bool = False  # an unknown phoneme symbol skips the row instead of becoming <unk>
    min_seconds: float = 0.5
    max_seconds: float = 20.0
    # frames per phoneme token from the corpus's phone timing (valle.alignment), for an AR with the
    # phone pointer; a row without a phones file is then skipped with the reason
    alignments: bool = False


def _cache_key(
    manifest: Path, codec: CodecCard, symbols: SymbolTable, phonemizer: Phonemizer, opts: PrepareOptions
) -> dict[str, Any]:
    return {
        "manifest_sha256": sha256_file(manifest),
        "codec": codec.to_json(),
        "symbols": symbols.to_json(),
        "phonemizer": {
            "language": phonemizer.language,
            "with_stress": phonemizer.with_stress,
            "espeak_version": phonemizer.espeak_version,
        },
        "options": {**asdict(opts), **({"alignment_version": ALIGNMENT_VERSION} if opts.alignments else {})},
    }


def _stale_reasons(cache_dir: Path, key: dict[str, Any]) -> list[str]:
    """Why the cache in ``cache_dir`` cannot be reused for ``key`` (empty list: reuse it)."""
    index_path, tokens_path = cache_dir / INDEX, cache_dir / TOKENS
    if not index_path.is_file():
        return ["no cache yet"]
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [f"{index_path} unreadable ({err})"]
    if (index.get("format"), index.get("version")) != (FORMAT, FORMAT_VERSION):
        return [f"format {index.get('format')!r} v{index.get('version')!r}, need {FORMAT} v{FORMAT_VERSION}"]
    names = {
        "manifest_sha256": "manifest changed",
        "codec": "codec card differs",
        "symbols": "symbol table differs",
        "phonemizer": "phonemizer differs",
        "options": "preparation options differ",
    }
    reasons = []
    for field_name, what in names.items():
        old, new = index.get("key", {}).get(field_name), key[field_name]
        if old != new:
            detail = (
                f": {old.get('name')}/{str(old.get('weights_sha256'))[:12]} -> "
                f"{new['name']}/{new['weights_sha256'][:12]}"
                if field_name == "codec" and isinstance(old, dict)
                else ""
            )
            reasons.append(what + detail)
    if not reasons and not tokens_path.is_file():
        reasons.append(f"{tokens_path} missing")
    return reasons


def _phonemize_all(phonemizer: Phonemizer, texts: list[str]) -> list[list[str] | str]:
    """Tokens per text, or the reason it failed. One batch call; per-text only to attribute a failure."""
    try:
        return list(phonemizer.phonemize_batch(texts))
    except (TextError, PhonemeError):
        pass  # the batch error names one text; redo one by one so every bad row gets its own reason
    out: list[list[str] | str] = []
    for text in texts:
        try:
            out.append(phonemizer.phonemize(text))
        except (TextError, PhonemeError) as err:
            out.append(str(err))  # already "text: <what is wrong>"
    return out


def prepare_tokens(
    manifest_path: str | Path,
    cache_dir: str | Path,
    codec: Codec,
    phonemizer: Phonemizer,
    symbols: SymbolTable,
    options: PrepareOptions = PrepareOptions(),
    progress: bool = True,
) -> Path:
    """Build (or reuse) the token cache of ``manifest_path`` in ``cache_dir``; returns ``cache_dir``.

    Rows that cannot be used (no or unreadable audio, text eSpeak cannot read, unknown symbols
    with ``options.strict``, shorter than ``min_seconds`` or longer than ``max_seconds``) are
    listed in the index's ``skipped`` with their reason. Raises :class:`DataError` when no row is
    usable and :class:`valle.manifest.ManifestError` for a malformed or empty manifest.
    """
    manifest_path, cache_dir = Path(manifest_path), Path(cache_dir)
    utts, unreadable = _read_utterances(manifest_path)
    key = _cache_key(manifest_path, codec.card, symbols, phonemizer, options)
    reasons = _stale_reasons(cache_dir, key)
    if not reasons:
        log.info("reusing token cache %s", cache_dir)
        return cache_dir
    if reasons != ["no cache yet"]:
        log.warning("token cache %s is stale (%s); rebuilding it", cache_dir, "; ".join(reasons))

    phonemes = _phonemize_all(phonemizer, [u.text for u in utts])
    frame_rate = codec.card.frame_rate
    kept: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = list(unreadable)
    codes_list: list[torch.Tensor] = []
    phones_list: list[torch.Tensor] = []
    durations_list: list[torch.Tensor] = []
    for utt, tokens in zip(
        tqdm(utts, desc="encode", unit="utt", disable=not progress), phonemes, strict=True
    ):
        reason = _check_text(tokens, symbols, options.strict)
        if reason is None and utt.audio is None:
            reason = "audio: none (row has no recording)"
        if reason is None and utt.duration is not None:
            reason = _check_duration(utt.duration, options)  # skip before decoding a too-long file
        if reason is None:
            try:
                wav, sr = load_audio(utt.audio)
                reason = _check_duration(len(wav) / sr, options)
                if reason is None:
                    codes = codec.encode(wav, sr, name=str(utt.audio))
            except (AudioError, CodecError) as err:
                reason = f"audio: {err}"
        if reason is None and options.alignments:
            try:
                segments = read_phones(utt.audio)
                frames = token_durations(tokens, segments, int(codes.shape[0]), frame_rate)
                durations_list.append(torch.tensor(frames, dtype=torch.int16))
            except (PhonesError, AlignmentError) as err:
                reason = f"phones: {err}"
        if reason is not None:
            skipped.append({"id": utt.id, "reason": reason})
            continue
        unknown = sorted({t for t in tokens if t not in symbols})
        codes_list.append(codes.to(torch.int16))  # codebook entries < 32768 always fit
        phones_list.append(torch.tensor(symbols.encode(tokens)))
        kept.append(
            {
                "id": utt.id,
                "speaker": utt.speaker,
                "frames": int(codes.shape[0]),
                "phonemes": len(tokens),
                "seconds": round(codes.shape[0] / frame_rate, 3),
                **({"unknown_symbols": unknown} if unknown else {}),
            }
        )
    if not kept:
        listed = "\n  ".join(f"{s['id']}: {s['reason']}" for s in skipped[:20])
        raise DataError(f"{manifest_path}: none of {len(skipped)} rows is usable:\n  {listed}")
    if skipped:
        n = len(skipped) + len(kept)
        log.warning("%s: skipped %d of %d rows (reasons in %s)", manifest_path, len(skipped), n, INDEX)
    _write_cache(cache_dir, key, kept, skipped, codes_list, phones_list, len(symbols), durations_list)
    return cache_dir


def _read_utterances(path: Path) -> tuple[list[Utterance], list[dict[str, str]]]:
    """The manifest's utterances, and rows skipped because their audio header is unreadable.

    Missing audio files are a per-row failure here (``check_files=False``), not a reason to reject
    the manifest. read_manifest also opens existing files to fill in a missing duration and rejects
    the whole manifest when one is corrupt; such rows are re-parsed one by one and skipped when
    they are valid without their audio. Any other problem is a broken manifest and is raised.
    """
    try:
        return read_manifest(path, check_files=False), []
    except ManifestError as err:
        original = err
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise original from None
    root = path.parent.resolve()
    utts: list[Utterance] = []
    skipped: list[dict[str, str]] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            utts.append(Utterance.from_json(row, root, check_files=False))
        except ManifestError as err:
            if not isinstance(row, dict):
                raise original from None
            try:
                Utterance.from_json({**row, "audio": None}, root, check_files=False)
            except ManifestError:
                raise original from None
            skipped.append({"id": row["id"], "reason": "; ".join(err.problems)})
        except json.JSONDecodeError:
            raise original from None
    ids = [u.id for u in utts] + [s["id"] for s in skipped]
    if not skipped or len(set(ids)) != len(ids):  # the problem was not an unreadable audio file
        raise original
    return utts, skipped


def _check_text(tokens: list[str] | str, symbols: SymbolTable, strict: bool) -> str | None:
    if isinstance(tokens, str):
        return tokens
    unknown = sorted({t for t in tokens if t not in symbols})
    if unknown and strict:
        return f"text: symbols not in the table: {unknown!r}"
    return None


def _check_duration(seconds: float, opts: PrepareOptions) -> str | None:
    if seconds < opts.min_seconds:
        return f"too short: {seconds:.2f} s < min {opts.min_seconds} s"
    if seconds > opts.max_seconds:
        return f"too long: {seconds:.2f} s > max {opts.max_seconds} s"
    return None


def _offsets(lengths: Sequence[int]) -> torch.Tensor:
    return torch.cumsum(torch.tensor([0, *lengths], dtype=torch.int64), dim=0)


def _write_cache(
    cache_dir: Path,
    key: dict[str, Any],
    kept: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    codes_list: list[torch.Tensor],
    phones_list: list[torch.Tensor],
    n_symbols: int,
    durations_list: list[torch.Tensor] | None = None,
) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    phone_dtype = torch.int16 if n_symbols <= torch.iinfo(torch.int16).max else torch.int32
    tensors = {
        "codes": torch.cat(codes_list).contiguous(),
        "phonemes": torch.cat(phones_list).to(phone_dtype).contiguous(),
        "code_offsets": _offsets([len(c) for c in codes_list]),
        "phone_offsets": _offsets([len(p) for p in phones_list]),
    }
    if durations_list:
        tensors["durations"] = torch.cat(durations_list).contiguous()
    # Tokens first, index last (both by rename): a readable index always describes a complete file.
    tmp = cache_dir / f".{TOKENS}.partial"
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
    os.replace(tmp, cache_dir / TOKENS)
    index = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key,
        "text_has_bos_eos": TEXT_HAS_BOS_EOS,
        "tokens_sha256": sha256_file(cache_dir / TOKENS),
        "items": kept,
        "skipped": skipped,
    }
    tmp_index = cache_dir / f".{INDEX}.partial"
    tmp_index.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp_index, cache_dir / INDEX)


@dataclass(frozen=True)
class Item:
    index: int
    id: str
    speaker: str
    text: torch.Tensor  # [Lx] phoneme ids (long)
    codes: torch.Tensor  # [T, Q] codec codes (long)
    durations: torch.Tensor | None = None  # [Lx] frames per phoneme (long; caches with alignments)


class TokenDataset(Dataset):
    """The items of a token cache, held in memory (int16); ``dataset[i]`` -> :class:`Item`."""

    def __init__(self, cache_dir: str | Path, verify: bool = True) -> None:
        cache_dir = Path(cache_dir)
        index_path, tokens_path = cache_dir / INDEX, cache_dir / TOKENS
        if not index_path.is_file() or not tokens_path.is_file():
            raise DataError(
                f"{cache_dir}: not a token cache ({INDEX} or {TOKENS} missing); run prepare_tokens"
            )
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{index_path}: invalid JSON ({err})") from err
        if (index.get("format"), index.get("version")) != (FORMAT, FORMAT_VERSION):
            raise DataError(f"{index_path}: not a {FORMAT} v{FORMAT_VERSION} index")
        if verify and sha256_file(tokens_path) != index["tokens_sha256"]:
            raise DataError(f"{tokens_path}: sha256 does not match {INDEX} (modified or half-written)")
        tensors = load_file(str(tokens_path))
        self.cache_dir = cache_dir
        self.items: list[dict[str, Any]] = index["items"]
        self.skipped: list[dict[str, str]] = index["skipped"]
        self.codec_card = CodecCard.from_json(index["key"]["codec"])
        self.symbols = SymbolTable.from_json(index["key"]["symbols"])
        self.manifest_sha256: str = index["key"]["manifest_sha256"]
        self._codes, self._phones = tensors["codes"], tensors["phonemes"]
        self._code_off, self._phone_off = tensors["code_offsets"], tensors["phone_offsets"]
        self._durations: torch.Tensor | None = tensors.get("durations")
        if len(self._code_off) != len(self.items) + 1:
            raise DataError(
                f"{tokens_path}: {len(self._code_off) - 1} items, {INDEX} lists {len(self.items)}"
            )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def frames(self) -> list[int]:
        """Codec frames per item (what the sampler buckets on)."""
        return [it["frames"] for it in self.items]

    def codebook1(self) -> list[torch.Tensor]:
        """Codebook 1 of every item, ``[T_i]`` each (what RAS is calibrated on)."""
        return [self._codes[a:b, 0] for a, b in zip(self._code_off[:-1], self._code_off[1:], strict=True)]

    def __getitem__(self, i: int) -> Item:
        meta = self.items[i]
        c0, c1 = int(self._code_off[i]), int(self._code_off[i + 1])
        p0, p1 = int(self._phone_off[i]), int(self._phone_off[i + 1])
        return Item(
            index=i,
            id=meta["id"],
            speaker=meta["speaker"],
            text=self._phones[p0:p1].long(),
            codes=self._codes[c0:c1].long(),
            durations=None if self._durations is None else self._durations[p0:p1].long(),
        )
