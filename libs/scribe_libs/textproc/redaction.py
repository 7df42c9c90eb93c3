"""Redaction of phone, card, e-mail and resident registration numbers, with typed placeholders.

Covers phone numbers, payment card numbers, e-mail addresses and Korean resident registration
numbers (RRN).

Whisper renders spoken digits unpredictably ("4,111,111,111,111,111,111" for a spoken
"4111 1111 1111 1111", "4550132" for "415 555 0132"), so detection looks at *digit runs*: digits
joined by single spaces, hyphens, dots or commas (", " and ". " end a run: they separate list
items and sentences), an optional leading "+" and "(area)". A run that fits no class is tried
again piecewise at its spaces, longest piece first from the left, so "2024 010 1234 5678" still
yields the phone number. Each run is classified by its digit count and grouping. Then *loose
runs*, digit groups joined by any separator with spaces around it (", ", " .", ". "), which is how
Whisper writes digits spoken one at a time ("5 .5, 1, 2, 3, 4" in a live call's final): single
digits are classified as if written together, other groupings only by the cue rules below.

========  ===================================================================================
[RRN]     13 digits as YYMMDD-NNNNNNN or 13 in a row, with a valid month/day and a 7th digit 1-8;
          any 13-digit run within 40 characters after "주민(등록)번호".
[PHONE]   Korean: 9-11 digits starting with 0 ("010-1234-5678", "01012345678", "02-123-4567");
          8 digits starting 15/16/18 ("1588-1234"); "+" and 8-15 digits ("+82 10 1234 5678",
          "+1 415 555 0132"); "82" then 10-11 digits in groups. North American: 3-3-4 groups
          ("(415) 555-0132", "415-555-0132"), or 1-3-3-4. Any 6-12 digit run within 40
          characters after a phone cue ("phone", "call", "reach", "전화", "연락", "휴대폰", ...):
          this catches collapsed numbers like "4550132" where a cue says they are phone numbers.
[CARD]    13-19 digits in one group, in Whisper's thousands grouping ("4,111,111,...") or in
          groups of which all but the last have 4 or more digits (4-4-4-4, 4-6-5, 4-4-4-4-3);
          any grouping within 40 characters after a card cue ("card", "visa", "카드", "결제").
          Luhn validity is recorded on the correction as ``detail["luhn"]`` ("valid" or
          "invalid"): a confidence signal, never a gate, since Whisper drops and repeats digits.
[EMAIL]   ``local@domain.tld``, and spoken forms "name at example dot com", "이름 골뱅이 example 닷컴".
========  ===================================================================================

Never redacted (by design, see tests): amounts (a currency sign before or a currency unit or
"%" after the run: "1,500원", "$4,111,111,111,111,111", "2,000 dollars"), dates "2024-03-15",
"2024.03.15", years, times ("10:30", "3시 15분"), versions ("v1.2.3", "1.2.3"), numbers glued to
letters ("A100", "H100"), and short ids ("order 58213"). Known misses: a collapsed 7-8 digit
phone number with no cue word, digits spoken as Korean words ("공일공 ..."), card digits in
groups of 1-3 with no card cue. Over-redaction accepted: a 6-12 digit number after a phone cue
(e.g. "전화 주문 번호 12345678").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scribe_libs.textproc.edits import Edit, EditBuffer
from scribe_libs.textproc.models import Correction, CorrectionKind
from scribe_libs.textproc.rules import CURRENCY_AFTER, CURRENCY_BEFORE

PLACEHOLDERS = {"phone": "[PHONE]", "card": "[CARD]", "email": "[EMAIL]", "rrn": "[RRN]"}
CUE_WINDOW = 40

_RUN = re.compile(
    r"(?<![A-Za-z0-9_.,:/+\-])"
    r"(?>(?:\+\s?)?(?:\(\d{1,4}\)\s?)?\d+(?:(?:\s?-\s?|[.,]|\s)\d+)*)"
    r"(?![A-Za-z0-9_]|[:/]\d)"
)
#: Digit groups joined by any one separator with spaces around it (", ", " .", ". "): how Whisper
#: writes digits spoken one at a time ("5, 5, 1, 2, 3, 4", "5 .5, 1, 2").
_LOOSE_RUN = re.compile(
    r"(?<![A-Za-z0-9_.,:/+\-])"
    r"(?>\d+(?:(?:\s*[.,]\s*|\s?-\s?|\s)\d+)+)"
    r"(?![A-Za-z0-9_]|[:/]\d)"
)
_PIECE = re.compile(r"(?:\+\s?)?(?:\(\d{1,4}\)\s?)?\d+(?:(?:\s?-\s?|[.,])\d+)*")
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_TLD = r"(?:com|net|org|io|kr|co|edu|gov|dev|ai|me|jp|uk)"
_DOT = r"(?:\s*\.\s*|\s+(?i:dot)\s+|\s*닷\s*|\s+점\s+)"
_SPOKEN_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+\s+(?:(?i:at)|골뱅이|앳)\s+[A-Za-z0-9\-]+"
    rf"(?:(?:{_DOT}[A-Za-z0-9\-]+)*{_DOT}(?i:{_TLD})(?![A-Za-z0-9])|\s*닷컴)"
)
_PHONE_CUE = re.compile(
    r"(?i:\b(?:phone|call(?:ed|ing)?|reach|cell|mobile|tel|fax|whatsapp|text\s+me)\b)|전화|연락|핸드폰|휴대폰|폰\s?번호"
)
_CARD_CUE = re.compile(r"(?i:\b(?:card|credit|debit|visa|master\s?card|amex)\b)|카드|결제")
_RRN_CUE = re.compile(r"주민\s?(?:등록)?\s?번호|(?i:resident\s+registration)")
_AMOUNT_BEFORE = re.compile(CURRENCY_BEFORE + r"$")
_AMOUNT_AFTER = re.compile(CURRENCY_AFTER)
_DATE = re.compile(r"(?:19|20)\d\d[\-./]\s?\d{1,2}[\-./]\s?\d{1,2}")


@dataclass(frozen=True)
class Finding:
    """One span to redact.

    Attributes:
        start: Offset in the text searched.
        end: Exclusive end offset.
        type: "phone", "card", "email" or "rrn".
        detail: Extra signals, e.g. ``(("luhn", "valid"),)``.
    """

    start: int
    end: int
    type: str
    detail: tuple[tuple[str, str], ...] = ()


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check of a digit string, as payment card numbers carry (ISO/IEC 7812-1)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _valid_rrn(digits: str) -> bool:
    month, day = int(digits[2:4]), int(digits[4:6])
    return 1 <= month <= 12 and 1 <= day <= 31 and digits[6] in "12345678"


def _card_grouping(run: str, groups: list[str]) -> bool:
    if len(groups) == 1:
        return True
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", run):
        return True
    return all(len(g) >= 4 for g in groups[:-1])


def _classify(
    text: str, start: int, end: int, run: str | None = None
) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The class of the digit run ``text[start:end]`` (``run``: its digits as written instead)."""
    run = text[start:end] if run is None else run
    digits = re.sub(r"\D", "", run)
    groups = re.findall(r"\d+", run)
    n = len(digits)
    before = text[max(0, start - CUE_WINDOW) : start]
    if _is_amount(text, start, end):
        return None
    if _DATE.fullmatch(run):
        return None
    lengths = [len(g) for g in groups]
    if n == 13 and (_RRN_CUE.search(before) or (lengths in ([13], [6, 7]) and _valid_rrn(digits))):
        return "rrn", ()
    plus = run.lstrip().startswith("+")
    if plus and 8 <= n <= 15:
        return "phone", ()
    if not plus:
        if digits[0] == "0" and digits[1:2] != "0" and 9 <= n <= 11:
            return "phone", ()
        if n == 8 and digits[:2] in ("15", "16", "18") and lengths in ([8], [4, 4]):
            return "phone", ()
        if digits.startswith("82") and n in (11, 12) and len(groups) >= 3:
            return "phone", ()
    if 13 <= n <= 19 and (_card_grouping(run, groups) or _CARD_CUE.search(before)):
        return "card", (("luhn", "valid" if luhn_valid(digits) else "invalid"),)
    if lengths == [3, 3, 4] or (lengths == [1, 3, 3, 4] and digits[0] == "1"):
        return "phone", ()
    return _by_cue(before, digits)  # the RRN and card cues have been tried above: the phone cue


def _is_amount(text: str, start: int, end: int) -> bool:
    """Whether the run ``text[start:end]`` is an amount: a currency sign before, a unit or % after."""
    return bool(_AMOUNT_BEFORE.search(text[max(0, start - 5) : start]) or _AMOUNT_AFTER.match(text, end))


def _by_cue(before: str, digits: str) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """The class a cue word in ``before`` gives ``digits``: RRN 13, card 13-19, phone 6-12 digits."""
    n = len(digits)
    if n == 13 and _RRN_CUE.search(before):
        return "rrn", ()
    if 13 <= n <= 19 and _CARD_CUE.search(before):
        return "card", (("luhn", "valid" if luhn_valid(digits) else "invalid"),)
    # 6, not 7: Whisper drops a digit of a spoken number ("five five five, one two three four"
    # came out "5 5 1 2 3 4"); near a phone cue, over-redacting beats leaking.
    if 6 <= n <= 12 and _PHONE_CUE.search(before):
        return "phone", ()
    return None


def _classify_loose(text: str, start: int, end: int) -> Finding | None:
    """A loose run (:data:`_LOOSE_RUN`): digits spoken one at a time, or any grouping after a cue.

    Single digits only ("0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8") are classified as if written together;
    other groupings ("555, 1234", "1, 2, ..., 13") only by the cue rules (phone 6-12 digits, card
    13-19, RRN 13 after their cue words), so counted lists and years stay clear.
    """
    groups = re.findall(r"\d+", text[start:end])
    digits = "".join(groups)
    if all(len(g) == 1 for g in groups):
        kind = _classify(text, start, end, run=digits)
    else:
        kind = None if _is_amount(text, start, end) else _by_cue(text[max(0, start - CUE_WINDOW) : start], digits)
    return Finding(start, end, kind[0], kind[1]) if kind else None


def _classify_run(text: str, start: int, end: int) -> list[Finding]:
    kind = _classify(text, start, end)
    if kind:
        return [Finding(start, end, kind[0], kind[1])]
    # Pieces split at plain spaces (not at "- " or "+ "): try the longest from each piece on.
    pieces = [m.span() for m in _PIECE.finditer(text[start:end])]
    if len(pieces) < 2:
        return []
    found, i = [], 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):
            if (i, j) == (0, len(pieces)):
                continue
            s, e = start + pieces[i][0], start + pieces[j - 1][1]
            kind = _classify(text, s, e)
            if kind:
                found.append(Finding(s, e, kind[0], kind[1]))
                i = j
                break
        else:
            i += 1
    return found


def find(text: str) -> list[Finding]:
    """Every span of ``text`` to redact, non-overlapping, in text order."""
    found: list[Finding] = []
    for regex in (_EMAIL, _SPOKEN_EMAIL):
        found += [Finding(m.start(), m.end(), "email") for m in regex.finditer(text)]
    for match in _RUN.finditer(text):
        if any(f.start < match.end() and match.start() < f.end for f in found):
            continue
        found += _classify_run(text, match.start(), match.end())
    for match in _LOOSE_RUN.finditer(text):
        if any(f.start < match.end() and match.start() < f.end for f in found):
            continue
        loose = _classify_loose(text, match.start(), match.end())
        if loose is not None:
            found.append(loose)
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    kept: list[Finding] = []
    for f in found:
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


def redaction_edits(buffer: EditBuffer) -> list[Edit]:
    """Edits replacing every finding in the buffer's text with its placeholder.

    Redaction ignores protection: nothing may keep clear text, including text an earlier
    rule wrote. The clear text is not recorded on the corrections (``keep_original=False``).
    """
    return [
        Edit(
            f.start,
            f.end,
            PLACEHOLDERS[f.type],
            f"redaction:{f.type}",
            CorrectionKind.REDACTION,
            protect=True,
            keep_original=False,
            detail=f.detail,
        )
        for f in find(buffer.text)
    ]


def redact_text(text: str, segment_id: int = 0) -> tuple[str, list[Correction]]:
    """Redact one text (convenience for tools and tests).

    Returns:
        The redacted text and one correction per placeholder (offsets in ``text``, empty
        ``original``).
    """
    buffer = EditBuffer(text, segment_id)
    corrections = buffer.apply(redaction_edits(buffer))
    return buffer.text, corrections
