r"""Character classes and boundaries for mixed Hangul/Latin text.

Word boundaries (``\b``) do not work for Korean: Python counts Hangul as word characters, so
"API를" has no boundary after "API", and particles attach to the word before them. The engine
uses these boundaries instead:

- An edge of a match that is a Latin letter or digit must not touch another Latin letter, digit
  or underscore, nor sit inside an address, path or hyphenated name (``@``, ``/``, ``.`` or ``-``
  joined to a letter or digit): "api" never matches in "rapid", "api.example.com", "me@api",
  and "nvidia" not in "nvidia-smi". Hangul next to a Latin edge is fine: "API를", "쓰는API".
- The right edge of a Hangul alias is free: particles, the copula and compounds attach there
  ("쿠버네티스에서", "도커라서", "쿠버네티스클러스터").
- The left edge of a Hangul alias must not touch a Latin letter or digit; for aliases of one or
  two syllables ("도커", "쿠다") it must not touch a Hangul syllable either, so "크기도 커요" never
  yields "Docker". Longer aliases may follow Hangul directly ("그쿠버네티스"), which a missing
  space in the decoder output produces.
- A match of a Hangul alias that spans a space must not end in a one-syllable piece glued to
  more Hangul, nor start with a one-syllable piece glued to Hangul before it: "레디 스테디"
  never yields "Redis테디" although "레디 스" spells the alias "레디스" with a space.
"""

from __future__ import annotations

HANGUL_SYLLABLES = "\uac00-\ud7a3"
LATIN_ALNUM = "A-Za-z0-9"

LATIN_LEFT = r"(?<![A-Za-z0-9_@/.])(?<![A-Za-z0-9]-)"
LATIN_RIGHT = r"(?![A-Za-z0-9_@/]|[.\-][A-Za-z0-9])"
HANGUL_LEFT_LONG = r"(?<![A-Za-z0-9])"
HANGUL_LEFT_SHORT = rf"(?<![A-Za-z0-9{HANGUL_SYLLABLES}])"


def is_hangul(ch: str) -> bool:
    """True for a precomposed Hangul syllable (U+AC00..U+D7A3)."""
    return "\uac00" <= ch <= "\ud7a3"


def is_latin_alnum(ch: str) -> bool:
    """True for an ASCII letter or digit."""
    return ch.isascii() and ch.isalnum()


def hangul_count(text: str) -> int:
    """Number of Hangul syllables in ``text``."""
    return sum(1 for ch in text if is_hangul(ch))


def left_boundary(first: str, hangul_syllables: int) -> str:
    """Look-behind for a match whose first character is ``first``.

    Args:
        first: First character of the literal form.
        hangul_syllables: Syllables in the form (decides the strict or loose Hangul edge).
    """
    if is_latin_alnum(first):
        return LATIN_LEFT
    if is_hangul(first):
        return HANGUL_LEFT_LONG if hangul_syllables >= 3 else HANGUL_LEFT_SHORT
    return ""


def spaced_match_ok(text: str, start: int, end: int) -> bool:
    """False when a match spanning whitespace cuts a Hangul word at its first or last piece."""
    matched = text[start:end]
    if not any(ch.isspace() for ch in matched):
        return True
    pieces = matched.split()
    if hangul_count(pieces[-1]) == 1 and is_hangul(pieces[-1][-1]) and end < len(text) and is_hangul(text[end]):
        return False
    if hangul_count(pieces[0]) == 1 and is_hangul(pieces[0][0]) and start > 0 and is_hangul(text[start - 1]):
        return False
    return True


def right_boundary(last: str) -> str:
    """Look-ahead for a match whose last character is ``last`` (free after Hangul)."""
    return LATIN_RIGHT if is_latin_alnum(last) else ""
