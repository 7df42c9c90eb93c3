"""Deterministic, ordered rules over segment text.

Kinds: exact and regex replacements, acronym casing, Hangul/Latin spacing, number normalisation.

Rules run one after another in the order given; each rule sees the text the previous ones left,
but never matches characters an earlier term or rule wrote (they are protected), so the same
input and the same rule list always give the same output, and a rewrite is never rewritten.

Spacing policy of HANGUL_LATIN_SPACING (Korean spacing convention, 띄어쓰기, for loanwords):
particles, the copula and suffixes attach to the word before them, Latin or not ("API를",
"vLLM이에요"), and a new word starts after a space. So:

1. A Latin letter directly after a Hangul syllable starts a new word: a space is inserted
   ("이번vLLM" -> "이번 vLLM"). Digits are left alone ("3분", "제2").
2. A standalone particle after a Latin word is joined to it ("vLLM 을 써" -> "vLLM을 써"), for
   particles that cannot be read as a word of their own: 을 를 은 는 에 에서 에게 한테 으로 로 와 과
   의 도 만 까지 부터 처럼 보다 이랑 랑. "이" and "가" are left alone ("API 이 부분" is "this part").
3. Nothing is inserted inside a term a glossary wrote.

NUMBER_NORMALIZATION ``strip_thousands_separators`` removes commas from digit groups such as
"4,111,111" (Whisper's rendering of spoken digit strings) but keeps them in amounts, i.e. a
currency sign before or a currency unit or percent after the number ("1,500원", "$1,500",
"2,000 dollars"), unless ``strip_currency_amounts`` is set.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc import script
from scribe_libs.textproc.edits import Edit, EditBuffer
from scribe_libs.textproc.models import Correction, CorrectionKind, Rule, RuleKind

PARTICLES = (
    "에서", "에게", "한테", "으로", "까지", "부터", "처럼", "보다", "이랑",
    "을", "를", "은", "는", "에", "로", "와", "과", "의", "도", "만", "랑",
)  # fmt: skip
CURRENCY_BEFORE = r"(?:[$₩€£¥]|\b(?:USD|KRW|EUR|JPY|US\$)\s?)"
CURRENCY_AFTER = (
    r"\s?(?:만\s?원|천\s?원|억|조|원|달러|불|엔|위안|유로|파운드|퍼센트|%|"
    r"(?i:dollars?|won|euros?|yen|pounds?|usd|krw|eur|percent|cents?)(?![A-Za-z]))"
)

_THOUSANDS = re.compile(r"(?<![\d,.])\d{1,3}(?:,\d{3})+(?![\d]|[.,]\d)")
_AMOUNT_BEFORE = re.compile(CURRENCY_BEFORE + r"$")
_AMOUNT_AFTER = re.compile(CURRENCY_AFTER)
_HANGUL_THEN_LATIN = re.compile(rf"(?<=[{script.HANGUL_SYLLABLES}])(?=[A-Za-z])")
_SPACE_PARTICLE = re.compile(rf"(?<=[A-Za-z])( +)(?:{'|'.join(PARTICLES)})(?=[\s.,!?;:)\]]|$)")

Proposer = Callable[[EditBuffer], list[Edit]]


def _invalid(rule: Rule, message: str) -> InvalidArgument:
    return InvalidArgument("INVALID_RULE", f"rule {rule.id!r}: {message}", field="glossary.rules")


def _non_overlapping(edits: list[Edit], buffer: EditBuffer) -> list[Edit]:
    """Drop edits that touch protected text or overlap an earlier kept edit (text order)."""
    kept: list[Edit] = []
    for edit in sorted(edits, key=lambda e: (e.start, -(e.end - e.start))):
        if edit.start == edit.end:
            if not buffer.can_insert_at(edit.start):
                continue
        elif not buffer.is_free(edit.start, edit.end):
            continue
        if kept and edit.start < kept[-1].end:
            continue
        kept.append(edit)
    return kept


class CompiledRule:
    """A validated rule ready to run.

    Args:
        rule: The rule.
        rule_id: Id recorded on its corrections (``rule:<glossary id>:<rule id>`` or
            ``rule:<rule id>``).

    Raises:
        InvalidArgument: Reason ``INVALID_RULE``: unknown kind, empty pattern, a regex that does
            not compile, an empty acronym list.
    """

    def __init__(self, rule: Rule, rule_id: str):
        self.rule = rule
        self.rule_id = rule_id
        kind = RuleKind(rule.kind)
        if kind == RuleKind.EXACT:
            if not rule.pattern:
                raise _invalid(rule, "EXACT needs a pattern")
            pattern = rule.pattern
            body = r"\s+".join(re.escape(p) for p in pattern.split()) if pattern.strip() else re.escape(pattern)
            flags = "-i" if rule.case_sensitive else "i"
            left = script.LATIN_LEFT if script.is_latin_alnum(pattern[0]) else ""
            right = script.right_boundary(pattern[-1])
            self._regex = re.compile(f"{left}(?{flags}:{body}){right}")
            self._propose: Proposer = self._regex_edits
        elif kind == RuleKind.REGEX:
            if not rule.pattern:
                raise _invalid(rule, "REGEX needs a pattern")
            try:
                self._regex = re.compile(rule.pattern)
                self._regex.sub(rule.replacement, "")  # validates group references
            except (re.error, IndexError) as exc:
                raise _invalid(rule, f"bad regular expression or replacement: {exc}") from exc
            self._propose = self._regex_edits
        elif kind == RuleKind.ACRONYM_CASE:
            acronyms = sorted({a.strip() for a in rule.acronyms if a.strip()}, key=lambda a: (-len(a), a))
            if not acronyms:
                raise _invalid(rule, "ACRONYM_CASE needs acronyms")
            self._canonical = {a.lower(): a for a in acronyms}
            alternation = "|".join(re.escape(a) for a in acronyms)
            # A plural "s" only for acronyms of 3+ letters ("apis" -> "APIs"), never "its" -> "ITs".
            self._regex = re.compile(rf"{script.LATIN_LEFT}(?i:({alternation}))(s?){script.LATIN_RIGHT}")
            self._propose = self._acronym_edits
        elif kind == RuleKind.HANGUL_LATIN_SPACING:
            self._propose = self._spacing_edits
        elif kind == RuleKind.NUMBER_NORMALIZATION:
            self._propose = self._number_edits
        else:
            raise _invalid(rule, f"unsupported kind {rule.kind!r}")

    def _edit(self, start: int, end: int, replacement: str) -> Edit:
        return Edit(start, end, replacement, self.rule_id, CorrectionKind.RULE)

    def _regex_edits(self, buffer: EditBuffer) -> list[Edit]:
        edits = []
        for match in self._regex.finditer(buffer.text):
            if match.end() == match.start():
                continue  # zero-width matches would insert text everywhere
            replacement = (
                self.rule.replacement if self.rule.kind == RuleKind.EXACT else match.expand(self.rule.replacement)
            )
            edits.append(self._edit(match.start(), match.end(), replacement))
        return edits

    def _acronym_edits(self, buffer: EditBuffer) -> list[Edit]:
        edits = []
        for match in self._regex.finditer(buffer.text):
            canonical = self._canonical[match.group(1).lower()]
            plural = match.group(2)
            if plural and (len(canonical) < 3 or plural != "s"):
                continue
            edits.append(self._edit(match.start(), match.end(), canonical + plural))
        return edits

    def _spacing_edits(self, buffer: EditBuffer) -> list[Edit]:
        edits = [self._edit(m.start(), m.start(), " ") for m in _HANGUL_THEN_LATIN.finditer(buffer.text)]
        edits += [self._edit(m.start(1), m.end(1), "") for m in _SPACE_PARTICLE.finditer(buffer.text)]
        return edits

    def _number_edits(self, buffer: EditBuffer) -> list[Edit]:
        options = self.rule.number_options
        if not options.strip_thousands_separators:
            return []
        edits = []
        text = buffer.text
        for match in _THOUSANDS.finditer(text):
            amount = _AMOUNT_BEFORE.search(text[max(0, match.start() - 5) : match.start()]) or _AMOUNT_AFTER.match(
                text, match.end()
            )
            if amount and not options.strip_currency_amounts:
                continue
            edits.append(self._edit(match.start(), match.end(), match.group().replace(",", "")))
        return edits

    def apply(self, buffer: EditBuffer) -> list[Correction]:
        """Run the rule over the buffer in place; returns the corrections made."""
        return buffer.apply(_non_overlapping(self._propose(buffer), buffer))


def compile_rules(rules: Sequence[Rule], glossary_id: str = "") -> list[CompiledRule]:
    """Validate and compile rules in their order.

    Args:
        rules: The rules.
        glossary_id: Owning glossary, or "" for global rules (changes the recorded rule id).

    Raises:
        InvalidArgument: ``INVALID_RULE`` for an empty or duplicate id or a bad rule.
    """
    seen: set[str] = set()
    compiled = []
    for rule in rules:
        if not rule.id:
            raise InvalidArgument("INVALID_RULE", "a rule has an empty id", field="glossary.rules")
        if rule.id in seen:
            raise InvalidArgument("INVALID_RULE", f"duplicate rule id {rule.id!r}", field="glossary.rules")
        seen.add(rule.id)
        rule_id = f"rule:{glossary_id}:{rule.id}" if glossary_id else f"rule:{rule.id}"
        compiled.append(CompiledRule(rule, rule_id))
    return compiled


def apply_rules(text: str, rules: Sequence[Rule], segment_id: int = 0) -> tuple[str, list[Correction]]:
    """Run global rules over one text (convenience for tools and tests).

    Returns:
        The new text and the corrections (offsets in ``text``).
    """
    buffer = EditBuffer(text, segment_id)
    corrections: list[Correction] = []
    for rule in compile_rules(rules):
        corrections += rule.apply(buffer)
    return buffer.text, corrections
