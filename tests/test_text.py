"""English text normalisation: numbers, currency, abbreviations, and errors."""

from __future__ import annotations

import re

import pytest

from valle.text import TextError, normalize_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I have 42 cats", "I have forty-two cats"),
        ("12,345 people", "twelve thousand three hundred and forty-five people"),
        ("pi is 3.14", "pi is three point one four"),
        ("3.10 kg", "three point one zero kg"),
        ("-40 degrees", "minus forty degrees"),
        ("the 21st century", "the twenty-first century"),
        ("my 2nd and 3rd try", "my second and third try"),
        ("in 1999", "in nineteen ninety-nine"),
        ("in 2024", "in twenty twenty-four"),
        ("in 2005", "in two thousand and five"),
        ("it costs $3.50", "it costs three dollars fifty cents"),
        ("$1 and $0.01", "one dollar and one cent"),
        ("$1,000 each", "one thousand dollars each"),
        ("£5.20", "five pounds twenty pence"),
        ("$5 million", "five million dollars"),
        ("up 12%", "up twelve percent"),
        ("3.5 % more", "three point five percent more"),
        ("at 10:30", "at ten thirty"),
        ("at 10:05", "at ten oh five"),
        ("at 10:00", "at ten o'clock"),
        ("at 9 pm and 7:15 a.m. too", "at nine PM and seven fifteen AM too"),
        (
            "a 1234567890123456 id",
            "a one two three four five six seven eight nine zero one two three four five six id",
        ),
    ],
)
def test_numbers_expand(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. and Mrs. Smith", "mister and missus Smith"),
        ("Dr. Jones, Jr.", "doctor Jones, junior."),
        ("St. Paul lives on Main St. now", "Saint Paul lives on Main Street now"),
        ("cats vs. dogs", "cats versus dogs"),
        ("fruit, e.g. apples, i.e. food", "fruit, for example apples, that is food"),
        ("pens, ink, etc. Then we left", "pens, ink, et cetera. Then we left"),
        ("pens, ink, etc. and paper", "pens, ink, et cetera and paper"),
        ("room No. 5, no. really", "room number five, no. really"),
        ("rock & roll", "rock and roll"),
    ],
)
def test_abbreviations_expand(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_unicode_punctuation_and_whitespace() -> None:
    text = "\u201cHello\u201d \u2014 she said\u2026 \u2018ok\u2019\n\t fine\u00a0now \ufb01x"
    assert normalize_text(text) == "\"Hello\" - she said... 'ok' fine now fix"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_rejected(text: str) -> None:
    with pytest.raises(TextError, match="empty"):
        normalize_text(text)


@pytest.mark.parametrize("text", ["...", "?!", "$", "-- ; --"])
def test_text_without_letters_is_rejected(text: str) -> None:
    with pytest.raises(TextError, match="no letters"):
        normalize_text(text)


def test_digits_alone_are_spoken() -> None:
    # Digits have no letters until expanded; the check runs after normalisation.
    assert normalize_text("123") == "one hundred and twenty-three"


def test_too_long_text_names_length_and_limit() -> None:
    with pytest.raises(TextError, match=r"601 characters.*limit of 600"):
        normalize_text("a" * 601)
    assert normalize_text("a" * 600) == "a" * 600
    # The limit applies to what is spoken: "1000000" grows to 11 words.
    with pytest.raises(TextError, match="limit of 10"):
        normalize_text("1000000", max_chars=10)


def test_non_string_is_rejected() -> None:
    with pytest.raises(TextError, match="must be a str"):
        normalize_text(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("beep\x07", "U+0007"),
        ("a\x00b", "U+0000"),
        ("ok 🎉", "U+1F389"),
        ("中文", "U+4E2D"),
        ("Привет", "U+041F"),
    ],
)
def test_text_that_is_not_english_speech_is_refused(text: str, named: str) -> None:
    with pytest.raises(TextError, match=re.escape(named)):
        normalize_text(text)


def test_latin_accents_typography_and_whitespace_pass() -> None:
    assert normalize_text("Ça va?\t«Naïve» café —\nfine.") == 'Ça va? "Naïve" café - fine.'
