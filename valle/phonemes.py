"""Grapheme-to-phoneme conversion with eSpeak NG, and the phoneme symbol table of the model.

eSpeak NG comes from the ``espeakng-loader`` wheel (library and data inside it; no system
package) and is driven through ``phonemizer``'s espeak backend. phonemizer copies the shared
library into a temporary directory for every backend instance, so each instance has its own
copy of eSpeak's global state; another module may load the same ``libespeak-ng.so`` with ctypes
for synthesis without the two interfering. We keep that behaviour.

Tokenisation (deterministic): eSpeak's IPA string is split by greedy longest match over
:data:`MULTI_CHAR_UNITS` (the affricates ``tʃ dʒ`` and the diphthongs ``aɪ aʊ eɪ oʊ ɔɪ``, which
eSpeak emits as single phonemes); every other character is its own token. Stress marks
(``ˈ ˌ``), the length mark (``ː``) and the combining nasal (U+0303) and syllabic (U+0329)
diacritics are therefore separate tokens, so ``ɜː`` is ``ɜ`` + ``ː`` and ``n̩`` is ``n`` + U+0329.
The price of longest match: a ``t`` + ``ʃ`` across a morpheme boundary ("nutshell") is read as
``tʃ``, as eSpeak's unseparated IPA does not tell them apart. Runs of spaces become one
word-boundary token ``" "``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from valle.text import MAX_CHARS, TextError, normalize_text

__all__ = [
    "BOS",
    "DEFAULT_SYMBOLS",
    "EOS",
    "MULTI_CHAR_UNITS",
    "PAD",
    "PUNCTUATION",
    "SPECIALS",
    "UNK",
    "WORD",
    "PhonemeError",
    "Phonemizer",
    "SymbolTable",
    "text_to_ids",
    "tokenize_ipa",
]

# phonemizer logs a "words count mismatch" warning on most calls: eSpeak merges and splits words
# ("coup de" -> one word), which is expected and harmless here. A logger of our own at ERROR level
# (not registered with logging, so no global configuration changes) keeps real errors visible.
_ESPEAK_LOG = logging.Logger(f"{__name__}.espeak", level=logging.ERROR)

PAD, BOS, EOS, UNK, WORD = "<pad>", "<bos>", "<eos>", "<unk>", " "
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, UNK, WORD)

# Marks phonemizer cuts out before eSpeak and puts back into the IPA. valle.text.normalize_text
# has already turned typographic quotes and dashes into these ASCII ones.
PUNCTUATION = '!"(),-.:;?'

MULTI_CHAR_UNITS: tuple[str, ...] = ("aɪ", "aʊ", "dʒ", "eɪ", "oʊ", "tʃ", "ɔɪ")

# Every symbol eSpeak NG 1.52 en-us emits for English (phoneme tables ph_english and
# ph_english_us, checked against ~4,000 distinct words, letter names, loanwords and numbers),
# plus the punctuation above. Kept literal and sorted so that ids never depend on data or on
# the order of a run. Any change shifts ids: a checkpoint stores its own table (to_json) and
# is always decoded with that one.
_INVENTORY: tuple[str, ...] = (
    "!",
    '"',
    "(",
    ")",
    ",",
    "-",
    ".",
    ":",
    ";",
    "?",
    "a",
    "aɪ",
    "aʊ",
    "b",
    "d",
    "dʒ",
    "e",
    "eɪ",
    "f",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "oʊ",
    "p",
    "r",
    "s",
    "t",
    "tʃ",
    "u",
    "v",
    "w",
    "x",
    "z",
    "æ",
    "ç",
    "ð",
    "ŋ",
    "ɐ",
    "ɑ",
    "ɔ",
    "ɔɪ",
    "ə",
    "ɚ",
    "ɛ",
    "ɜ",
    "ɡ",
    "ɪ",
    "ɬ",
    "ɹ",
    "ɾ",
    "ʃ",
    "ʊ",
    "ʌ",
    "ʍ",
    "ʒ",
    "ʔ",
    "ˈ",  # primary stress
    "ˌ",  # secondary stress
    "ː",  # length
    "\u0303",  # combining tilde: nasal vowel in French loanwords ("croissant")
    "\u0329",  # combining vertical line below: syllabic consonant ("button" -> bˈʌʔn̩)
    "θ",
    "ᵻ",
)
DEFAULT_SYMBOLS: tuple[str, ...] = SPECIALS + _INVENTORY

# A hyphen between two letters joins a compound ("ninety-nine", "well-known"); eSpeak would
# glue the halves into one word, so we split them into two words instead. Other hyphens are
# dashes between clauses and stay as the "-" punctuation token.
_COMPOUND_HYPHEN_RE = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")
_SPACES_RE = re.compile(r"\s+")

# EspeakWrapper keeps the library and data paths in class attributes; construction sets them,
# builds the backend and restores them, under this lock, so that nothing global changes.
_BACKEND_LOCK = threading.Lock()


class PhonemeError(ValueError):
    """Text that cannot be turned into phoneme ids, or an invalid symbol table."""


def tokenize_ipa(ipa: str, units: Sequence[str] = MULTI_CHAR_UNITS) -> list[str]:
    """Split an IPA string into tokens: greedy longest match over ``units``, else one character.

    Whitespace runs become a single word-boundary token ``" "``; leading/trailing ones are dropped.
    """
    by_first: dict[str, list[str]] = {}
    for unit in sorted(set(units), key=len, reverse=True):
        by_first.setdefault(unit[0], []).append(unit)
    ipa = _SPACES_RE.sub(WORD, ipa.strip())
    tokens: list[str] = []
    i = 0
    while i < len(ipa):
        for unit in by_first.get(ipa[i], ()):
            if ipa.startswith(unit, i):
                tokens.append(unit)
                i += len(unit)
                break
        else:
            tokens.append(ipa[i])
            i += 1
    return tokens


@dataclass(frozen=True)
class SymbolTable:
    """Phoneme token <-> id. ``<pad>`` is id 0; ``<bos>``, ``<eos>``, ``<unk>`` and ``" "`` must exist."""

    symbols: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        symbols = self.symbols
        if not isinstance(symbols, tuple) or not all(isinstance(s, str) and s for s in symbols):
            raise PhonemeError("symbol table: symbols must be a tuple of non-empty strings")
        dups = sorted(s for s, n in Counter(symbols).items() if n > 1)
        if dups:
            raise PhonemeError(f"symbol table: duplicate symbols {dups!r}")
        missing = [s for s in SPECIALS if s not in symbols]
        if missing:
            raise PhonemeError(f"symbol table: missing special tokens {missing!r}")
        if symbols[0] != PAD:
            raise PhonemeError(f"symbol table: {PAD!r} must have id 0, found {symbols[0]!r}")
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(symbols)})

    @classmethod
    def default(cls) -> SymbolTable:
        """The fixed eSpeak NG en-us inventory (:data:`DEFAULT_SYMBOLS`)."""
        return cls(DEFAULT_SYMBOLS)

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def bos_id(self) -> int:
        return self._index[BOS]

    @property
    def eos_id(self) -> int:
        return self._index[EOS]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    @property
    def word_id(self) -> int:
        return self._index[WORD]

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Tokens -> ids; a token not in the table becomes ``<unk>``."""
        unk = self.unk_id
        return [self._index.get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens. Raises :class:`PhonemeError` naming the position of an out-of-range id."""
        out = []
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < len(self.symbols):
                raise PhonemeError(f"id {i} at position {pos} is outside the table (size {len(self)})")
            out.append(self.symbols[i])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SymbolTable:
        """Inverse of :meth:`to_json`; raises :class:`PhonemeError` for a malformed table."""
        if not isinstance(d, dict) or "symbols" not in d:
            raise PhonemeError("symbol table JSON: expected an object with a 'symbols' list")
        symbols = d["symbols"]
        if not isinstance(symbols, list):
            raise PhonemeError(f"symbol table JSON: 'symbols' must be a list, got {type(symbols).__name__}")
        bad = [i for i, s in enumerate(symbols) if not isinstance(s, str) or not s]
        if bad:
            raise PhonemeError(f"symbol table JSON: 'symbols' entries {bad[:10]} are not non-empty strings")
        return cls(tuple(symbols))


class Phonemizer:
    """English text -> IPA tokens with eSpeak NG. One backend per instance, reused; not thread-safe."""

    def __init__(self, language: str = "en-us", with_stress: bool = True) -> None:
        # Imported here: loading phonemizer pulls in joblib, segments, dlinfo; only G2P needs them.
        import espeakng_loader
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper

        self.language = language
        self.with_stress = with_stress
        with _BACKEND_LOCK:
            saved = (EspeakWrapper._ESPEAK_LIBRARY, EspeakWrapper._ESPEAK_DATA_PATH)
            try:
                EspeakWrapper.set_library(espeakng_loader.get_library_path())
                EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
                self._backend = EspeakBackend(
                    language,
                    punctuation_marks=PUNCTUATION,
                    preserve_punctuation=True,
                    with_stress=with_stress,
                    # eSpeak switches language for some foreign words and marks it "(fr)...(en)";
                    # keep its phonemes, drop the markers (they are not speech).
                    language_switch="remove-flags",
                    logger=_ESPEAK_LOG,
                )
                version = EspeakBackend.version()
            except RuntimeError as err:
                raise PhonemeError(f"cannot start eSpeak NG for language {language!r}: {err}") from err
            finally:
                EspeakWrapper.set_library(saved[0])
                EspeakWrapper.set_data_path(saved[1])
        from phonemizer.separator import Separator

        self._separator = Separator(phone="", syllable="", word=WORD)
        #: e.g. "1.52.0": record it next to a symbol table, as G2P output changes across releases.
        self.espeak_version = ".".join(map(str, version))

    def phonemize(self, text: str, max_chars: int = MAX_CHARS) -> list[str]:
        """Normalise ``text`` and return its IPA tokens, with punctuation and ``" "`` word boundaries."""
        return self._run([text], max_chars, ["text"])[0]

    def phonemize_batch(self, texts: Sequence[str], max_chars: int = MAX_CHARS) -> list[list[str]]:
        """:meth:`phonemize` for many texts in one eSpeak pass (much faster than one call each).

        Raises :class:`valle.text.TextError` naming the index of a text that cannot be normalised.
        """
        if isinstance(texts, str):
            raise TypeError("phonemize_batch expects a sequence of strings, got a single str")
        return self._run(list(texts), max_chars, [f"texts[{i}]" for i in range(len(texts))])

    def _run(self, texts: list[str], max_chars: int, labels: list[str]) -> list[list[str]]:
        prepared = []
        for text, label in zip(texts, labels, strict=True):
            try:
                norm = normalize_text(text, max_chars=max_chars)
            except TextError as err:
                raise TextError(f"{label}: {err}") from None
            prepared.append(_COMPOUND_HYPHEN_RE.sub(" ", norm))
        if not prepared:
            return []
        # One backend call for the whole batch: eSpeak's per-call setup dominates short texts.
        ipa = self._backend.phonemize(prepared, separator=self._separator, strip=True, njobs=1)
        out = []
        for line, label, norm in zip(ipa, labels, prepared, strict=True):
            tokens = tokenize_ipa(line)
            if all(t in PUNCTUATION or t == WORD for t in tokens):
                raise PhonemeError(f"{label}: eSpeak produced no phonemes for {norm[:80]!r}")
            out.append(tokens)
        return out


def text_to_ids(
    text: str,
    table: SymbolTable,
    phonemizer: Phonemizer,
    strict: bool = False,
    add_bos_eos: bool = False,
) -> tuple[list[int], list[str]]:
    """Text -> (phoneme ids, sorted unknown symbols). Unknown symbols map to ``<unk>``.

    With ``strict`` an unknown symbol raises :class:`PhonemeError` naming it. With
    ``add_bos_eos`` the ids are wrapped in ``<bos>`` ... ``<eos>``.
    """
    tokens = phonemizer.phonemize(text)
    unknown = sorted({t for t in tokens if t not in table})
    if unknown and strict:
        names = ", ".join(f"{t!r} ({' '.join(f'U+{ord(c):04X}' for c in t)})" for t in unknown)
        raise PhonemeError(f"symbols not in the table: {names}; text: {text[:80]!r}")
    ids = table.encode(tokens)
    if add_bos_eos:
        ids = [table.bos_id, *ids, table.eos_id]
    return ids, unknown
