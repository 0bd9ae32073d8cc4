"""English text normalisation for TTS input: what eSpeak should read, spelled out in words.

Numbers, currency, percentages, ordinals, years and clock times are expanded with ``num2words``
(the library supplies the words; this module only decides which reading a token gets).
Abbreviations come from a small explicit table, because no library resolves them well.

Readings chosen here, so that callers know what to expect:

- a bare four-digit integer from 1100 to 2099 is read as a year ("1999" -> "nineteen
  ninety-nine", "1500" -> "fifteen hundred"); other integers as cardinals without commas;
- decimals are read digit by digit after "point" ("3.10" -> "three point one zero");
- "$3.50" -> "three dollars fifty cents" (also £ and €; "$5 million" -> "five million dollars");
- "10:30" -> "ten thirty", "10:05" -> "ten oh five", "10:00" -> "ten o'clock"; am/pm -> "AM"/"PM"
  (upper case so that eSpeak spells the letters);
- "St." is "Saint" before a capitalised word and "Street" otherwise.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal

from num2words import num2words

__all__ = ["MAX_CHARS", "MAX_WORDS_PER_SECOND", "TextError", "normalize_text", "rate_problem", "text_problem"]

MAX_CHARS = 600
# Fast read speech is 4-6 words/s; a transcript faster than this over its clip is not that clip's
MAX_WORDS_PER_SECOND = 10.0


class TextError(ValueError):
    """Text that cannot be spoken, with the reason in the message."""


# NFKC leaves typographic quotes and dashes alone (they are not compatibility characters).
_PUNCT_TO_ASCII = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": " - ",
        "\u2015": " - ",
        "\u2212": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)

# (pattern, expansion). Matched case-insensitively at a word start; the trailing period is part
# of the abbreviation. "No." only before a number, since "no." is usually the word "no".
_ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    (r"mrs\.", "missus"),
    (r"mr\.", "mister"),
    (r"ms\.", "miz"),
    (r"dr\.", "doctor"),
    (r"prof\.", "professor"),
    (r"jr\.", "junior"),
    (r"sr\.", "senior"),
    (r"capt\.", "captain"),
    (r"col\.", "colonel"),
    (r"gen\.", "general"),
    (r"gov\.", "governor"),
    (r"lt\.", "lieutenant"),
    (r"sgt\.", "sergeant"),
    (r"rev\.", "reverend"),
    (r"hon\.", "honorable"),
    (r"mt\.", "mount"),
    (r"ave\.", "avenue"),
    (r"blvd\.", "boulevard"),
    (r"rd\.", "road"),
    (r"dept\.", "department"),
    (r"approx\.", "approximately"),
    (r"etc\.", "et cetera"),
    (r"vs\.?", "versus"),
    (r"e\.g\.", "for example"),
    (r"i\.e\.", "that is"),
    (r"no\.(?=\s*\d)", "number"),
)
# Abbreviations whose period may also end a sentence ("... and so on, etc. Then ...").
_SENTENCE_FINAL = frozenset({"et cetera", "versus", "approximately", "department", "road", "avenue"})
_ABBREV_RES = tuple(
    (re.compile(r"(?<![\w.])" + pat + r"(?!\w)", re.IGNORECASE), word, word in _SENTENCE_FINAL)
    for pat, word in _ABBREVIATIONS
)
# "St." before a capitalised word is a name ("St. Paul"); the case of that word matters here.
_SAINT_RE = re.compile(r"(?<![\w.])[Ss][Tt]\.(?=\s+[A-Z])")
_STREET_RE = re.compile(r"(?<![\w.])st\.", re.IGNORECASE)

# symbol -> (singular, plural, minor singular, minor plural)
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_SCALE = r"thousand|million|billion|trillion"
_CURRENCY_RE = re.compile(r"([$£€])\s?(" + _NUM + r")(?:\s+(" + _SCALE + r")\b)?", re.IGNORECASE)
_PERCENT_RE = re.compile(r"(-?)(" + _NUM + r")\s?%")
_AM_PM = r"(?:\s*([ap])(?:\.\s?m\.|\s?m\b))"
_TIME_RE = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b" + _AM_PM + "?", re.IGNORECASE)
_HOUR_RE = re.compile(r"\b(1[0-2]|0?[1-9])()" + _AM_PM, re.IGNORECASE)
_ORDINAL_RE = re.compile(r"\b(\d{1,3}(?:,\d{3})+|\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])(-?)(" + _NUM + r")(?![\d])")
_SPACE_RE = re.compile(r"\s+")
_MAX_CARDINAL_DIGITS = 15


def _words(text: str) -> str:
    # num2words puts commas inside long numbers ("one million, two hundred ..."); a comma would
    # become a pause in the phoneme string, which a reader does not make.
    return text.replace(",", "")


def _digits(digits: str) -> str:
    return " ".join(num2words(int(d)) for d in digits)


def _cardinal(digits: str) -> str:
    """Integer or decimal string (commas allowed) -> words; decimals read digit by digit."""
    digits = digits.replace(",", "")
    whole, _, frac = digits.partition(".")
    # Past the trillions nobody reads a number as a quantity (and num2words stops at 10**36);
    # long digit strings are identifiers, read one digit at a time.
    out = _words(num2words(int(whole))) if len(whole) <= _MAX_CARDINAL_DIGITS else _digits(whole)
    if frac:
        out += " point " + _digits(frac)
    return out


def _number(match: re.Match[str]) -> str:
    sign, digits = match.group(1), match.group(2)
    plain = digits.isdigit()
    if plain and len(digits) == 4 and 1100 <= int(digits) <= 2099 and not sign:
        return _words(num2words(int(digits), to="year"))
    return ("minus " if sign else "") + _cardinal(digits)


def _currency(match: re.Match[str]) -> str:
    one, many, minor_one, minor_many = _CURRENCIES[match.group(1)]
    amount = Decimal(match.group(2).replace(",", ""))
    scale = match.group(3)
    if scale:  # "$5 million", "$2.5 billion": the whole amount is in major units
        return f"{_cardinal(match.group(2))} {scale.lower()} {many}"
    major = int(amount)
    minor = int((amount - major) * 100)
    parts = []
    if major or not minor:
        parts.append(f"{_words(num2words(major))} {one if major == 1 else many}")
    if minor:
        parts.append(f"{_words(num2words(minor))} {minor_one if minor == 1 else minor_many}")
    return " ".join(parts)


def _time(match: re.Match[str]) -> str:
    hour, minute, half = int(match.group(1)), int(match.group(2) or 0), match.group(3)
    out = num2words(hour)
    if minute == 0:
        out += "" if half else " o'clock"
    elif minute < 10:
        out += " oh " + num2words(minute)
    else:
        out += " " + num2words(minute)
    if half:
        out += " AM" if half.lower() == "a" else " PM"
    return out + _full_stop(match)


def _ordinal(match: re.Match[str]) -> str:
    return _words(num2words(int(match.group(1).replace(",", "")), to="ordinal"))


def _full_stop(match: re.Match[str]) -> str:
    """'.' when a matched abbreviation's own period also ends the sentence, else ''."""
    if not match.group(0).endswith("."):
        return ""
    rest = match.string[match.end() :].lstrip()
    # End of text, or a capitalised word after it: the period doubled as a full stop.
    return "." if not rest or rest[0].isupper() else ""


def _expand_abbreviations(text: str) -> str:
    # Titles ("Dr. Smith") are followed by a capitalised name, so their period never ends a
    # sentence unless it ends the text; "etc." and the like may end one before a new sentence.
    text = _SAINT_RE.sub("Saint", text)
    text = _STREET_RE.sub(lambda m: "Street" + _full_stop(m), text)
    for pattern, word, ends_sentence in _ABBREV_RES:
        text = pattern.sub(
            lambda m, w=word, e=ends_sentence: w + (_full_stop(m) if e or m.end() == len(m.string) else ""),
            text,
        )
    return text


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be English speech for this model, or None.

    Refused: control characters (``\\x00``, ``\\x07``, ...; tab and newline are whitespace), symbols
    outside any script (emoji), unassigned and private-use code points, and letters of a script other
    than Latin (eSpeak's English voice reads a Chinese sentence as the names of its characters). The
    character and its position are named.
    """
    for i, c in enumerate(text):
        cat = unicodedata.category(c)
        if c in "\t\n\r":
            continue
        name = unicodedata.name(c, "no name")
        why = None
        if cat == "Cc":
            why = "a control character"
        elif cat in ("Co", "Cn", "Cs"):
            why = "a private-use, unassigned or surrogate code point"
        elif cat == "So":
            why = "a symbol that is not speech (emoji or pictograph)"
        elif cat.startswith("L") and not name.startswith("LATIN"):
            why = "a letter of a script other than Latin (the model speaks English)"
        if why:
            return f"character {i} is U+{ord(c):04X} ({name}), {why}"
    return None


def rate_problem(text: str, seconds: float) -> str | None:
    """Why ``text`` cannot be the transcript of a ``seconds``-long clip, or None (a 10,000-word
    transcript on a 2 s clip). Clips under 1 s are measured as 1 s, so short words pass."""
    words = len(text.split())
    if words > MAX_WORDS_PER_SECOND * max(seconds, 1.0):
        return (
            f"{words} words for {seconds:.2f} s of audio is more than {MAX_WORDS_PER_SECOND:g} words/s: "
            "not this clip's transcript"
        )
    return None


def normalize_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """Normalise English text for TTS: NFKC, ASCII punctuation, numbers and abbreviations as words.

    Raises :class:`TextError` for non-string, empty or whitespace-only text, text with characters
    :func:`text_problem` refuses, text with no letters after normalisation, and text longer than
    ``max_chars`` after normalisation.
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise TextError("text is empty or whitespace only")
    if problem := text_problem(text):
        raise TextError(problem)
    out = unicodedata.normalize("NFKC", text).translate(_PUNCT_TO_ASCII)
    out = _expand_abbreviations(out)
    out = _CURRENCY_RE.sub(_currency, out)
    out = _PERCENT_RE.sub(
        lambda m: ("minus " if m.group(1) else "") + _cardinal(m.group(2)) + " percent", out
    )
    out = _TIME_RE.sub(_time, out)
    out = _HOUR_RE.sub(_time, out)
    out = _ORDINAL_RE.sub(_ordinal, out)
    out = _NUMBER_RE.sub(_number, out)
    out = out.replace("&", " and ")
    out = _SPACE_RE.sub(" ", out).strip()
    if not any(c.isalpha() for c in out):
        raise TextError(f"text has no letters to speak after normalisation: {text[:80]!r}")
    if len(out) > max_chars:
        raise TextError(
            f"text is {len(out)} characters after normalisation (input {len(text)}), "
            f"longer than the limit of {max_chars}"
        )
    return out
