"""eSpeak NG G2P, tokenisation and the phoneme symbol table (real eSpeak from espeakng-loader)."""

from __future__ import annotations

import json
import random

import pytest

from valle.phonemes import (
    DEFAULT_SYMBOLS,
    MULTI_CHAR_UNITS,
    PAD,
    SPECIALS,
    UNK,
    WORD,
    PhonemeError,
    Phonemizer,
    SymbolTable,
    text_to_ids,
    tokenize_ipa,
)
from valle.text import TextError


@pytest.fixture(scope="module")
def phonemizer() -> Phonemizer:
    return Phonemizer()


@pytest.fixture(scope="module")
def table() -> SymbolTable:
    return SymbolTable.default()


def test_hello_world_is_plausible_ipa(phonemizer: Phonemizer) -> None:
    tokens = phonemizer.phonemize("Hello, world!")
    assert tokens[0] == "h"
    assert {"l", "ˈ", "oʊ", ",", "!", WORD} <= set(tokens)
    assert tokens[-1] == "!"
    # One word boundary after the comma; punctuation sits at the end of the word it follows.
    assert "".join(tokens) == "həlˈoʊ, wˈɜːld!"
    assert phonemizer.espeak_version.startswith("1.")


def test_affricates_diphthongs_and_marks_are_tokens(phonemizer: Phonemizer) -> None:
    tokens = phonemizer.phonemize("The church judge said I may go now, boy.")
    for unit in ("tʃ", "dʒ", "aɪ", "eɪ", "oʊ", "aʊ", "ɔɪ", "ˈ", "ː"):
        assert unit in tokens, unit
    # Length is its own token: "ɜː" in "church" is two tokens.
    i = tokens.index("ɜ")
    assert tokens[i + 1] == "ː"


def test_normalises_before_phonemizing(phonemizer: Phonemizer) -> None:
    # "$3" and "Dr." are read as words; compounds from num2words split into two words.
    assert phonemizer.phonemize("Dr. Smith has $3.") == phonemizer.phonemize(
        "doctor Smith has three dollars."
    )
    assert phonemizer.phonemize("ninety-nine") == phonemizer.phonemize("ninety nine")
    assert "-" in phonemizer.phonemize("yes - no")


def test_without_stress(phonemizer: Phonemizer) -> None:
    plain = Phonemizer(with_stress=False).phonemize("Hello, beautiful world.")
    stressed = phonemizer.phonemize("Hello, beautiful world.")
    assert not {"ˈ", "ˌ"} & set(plain)
    assert plain == [t for t in stressed if t not in ("ˈ", "ˌ")]


def test_batch_equals_per_item(phonemizer: Phonemizer) -> None:
    texts = [
        "It was 10:30 when we left.",
        "Why? Because - as Mr. Brown said - it's 21st-century thinking!",
        "I almost think I can remember feeling a little different.",
        "Rhythm and button; bottle: prism.",
    ]
    batch = phonemizer.phonemize_batch(texts)
    assert len(batch) == len(texts)
    assert batch == [phonemizer.phonemize(t) for t in texts]
    assert phonemizer.phonemize_batch([]) == []


def test_batch_errors_name_the_index(phonemizer: Phonemizer) -> None:
    with pytest.raises(TextError, match=r"texts\[1\].*empty"):
        phonemizer.phonemize_batch(["fine", "  "])
    with pytest.raises(TypeError):
        phonemizer.phonemize_batch("not a list")


def test_backend_paths_are_not_left_set_globally() -> None:
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    before = (EspeakWrapper._ESPEAK_LIBRARY, EspeakWrapper._ESPEAK_DATA_PATH)
    Phonemizer()
    assert (EspeakWrapper._ESPEAK_LIBRARY, EspeakWrapper._ESPEAK_DATA_PATH) == before


def test_tokenize_ipa_longest_match() -> None:
    assert tokenize_ipa("tʃˈɜːtʃ  dʒˈʌdʒ") == ["tʃ", "ˈ", "ɜ", "ː", "tʃ", WORD, "dʒ", "ˈ", "ʌ", "dʒ"]
    assert tokenize_ipa("bˈʌʔn̩") == ["b", "ˈ", "ʌ", "ʔ", "n", "\u0329"]
    # With no multi-character units every character is a token.
    assert tokenize_ipa("aɪ", units=()) == ["a", "ɪ"]


def test_default_table_is_fixed_and_well_formed(table: SymbolTable) -> None:
    assert table.symbols[: len(SPECIALS)] == SPECIALS
    assert table.pad_id == 0 and table.symbols[table.unk_id] == UNK
    rest = list(DEFAULT_SYMBOLS[len(SPECIALS) :])
    assert rest == sorted(rest)
    assert set(MULTI_CHAR_UNITS) <= set(table.symbols)
    # Same ids across constructions (and equal tables compare equal).
    again = SymbolTable.default()
    assert again == table
    tokens = ["h", "ə", "l", "ˈ", "oʊ", WORD, "!"]
    assert again.encode(tokens) == table.encode(tokens)


def test_encode_decode_and_unknown(table: SymbolTable) -> None:
    tokens = ["tʃ", "ˈ", "ɜ", "ː", "tʃ", WORD, "?"]
    ids = table.encode(tokens)
    assert table.decode(ids) == tokens
    assert table.encode(["ʘ"]) == [table.unk_id]
    with pytest.raises(PhonemeError, match=r"id 9999 at position 1"):
        table.decode([1, 9999])
    assert len(table) == len(DEFAULT_SYMBOLS)


def test_json_round_trip(table: SymbolTable) -> None:
    restored = SymbolTable.from_json(json.loads(json.dumps(table.to_json(), ensure_ascii=False)))
    assert restored == table
    assert restored.encode(["ŋ", "ʒ"]) == table.encode(["ŋ", "ʒ"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"symbols": [PAD, "<bos>", "<eos>", UNK, WORD, "a", "a"]}, "duplicate symbols \\['a'\\]"),
        ({"symbols": [PAD, "<bos>", "<eos>", WORD, "a"]}, "missing special tokens \\['<unk>'\\]"),
        ({"symbols": ["a", PAD, "<bos>", "<eos>", UNK, WORD]}, "must have id 0"),
        ({"symbols": [PAD, "<bos>", "<eos>", UNK, WORD, ""]}, "not non-empty strings"),
        ({"symbols": "abc"}, "must be a list"),
        ({"tokens": []}, "'symbols' list"),
    ],
)
def test_from_json_validation(payload: dict, message: str) -> None:
    with pytest.raises(PhonemeError, match=message):
        SymbolTable.from_json(payload)


def test_default_table_covers_real_speech(
    real_speech_rows: list[dict], phonemizer: Phonemizer, table: SymbolTable
) -> None:
    texts = [row["text"] for row in real_speech_rows]
    assert texts
    unknown = {t for tokens in phonemizer.phonemize_batch(texts) for t in tokens if t not in table}
    assert unknown == set()


def test_default_table_covers_numbers_and_loanwords(phonemizer: Phonemizer, table: SymbolTable) -> None:
    rng = random.Random(0)
    texts = [
        f"In {rng.randint(1100, 2099)}, {rng.randint(0, 10**7)} people paid ${rng.randint(0, 999)}."
        f"{rng.randint(0, 99):02d} for the {rng.randint(1, 200)}th time; {rng.randint(0, 100)}% at "
        f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}."
        for _ in range(40)
    ]
    texts += [
        "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z; NASA, BBC and the FBI.",
        "Croissant, genre, loch, Bach, Llanelli, naïve café, Dvořák and Zürich.",
        '"Well," she said - quietly - "it\'s (probably) fine; isn\'t it?" Yes: no! Hmm...',
        "The kitten's button, a little bottle, rhythm, hour, fire and science.",
    ]
    unknown = {t for tokens in phonemizer.phonemize_batch(texts) for t in tokens if t not in table}
    assert unknown == set()


def test_text_to_ids(phonemizer: Phonemizer, table: SymbolTable) -> None:
    ids, unknown = text_to_ids("The quick brown fox.", table, phonemizer)
    assert unknown == []
    assert table.unk_id not in ids and table.pad_id not in ids
    assert table.decode(ids) == phonemizer.phonemize("The quick brown fox.")
    wrapped, _ = text_to_ids("The quick brown fox.", table, phonemizer, add_bos_eos=True)
    assert wrapped == [table.bos_id, *ids, table.eos_id]


def test_unknown_symbols_and_strict_mode(phonemizer: Phonemizer) -> None:
    small = SymbolTable(tuple(s for s in DEFAULT_SYMBOLS if s not in ("ð", "θ")))
    ids, unknown = text_to_ids("The thin man.", small, phonemizer)
    assert unknown == ["ð", "θ"]
    assert ids.count(small.unk_id) == 2
    with pytest.raises(PhonemeError, match=r"'ð' \(U\+00F0\), 'θ' \(U\+03B8\)"):
        text_to_ids("The thin man.", small, phonemizer, strict=True)
