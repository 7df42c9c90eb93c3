"""Glossary correction: known mis-hearings of a term replaced by the verbatim term.

For every term the matcher accepts, besides the listed aliases, these automatic variants:

- the term in any casing ("vllm", "Vllm", "KUBERNETES") unless ``case_sensitive``; the words
  of a multi-word term joined, hyphenated or spaced ("huggingface", "Hugging-Face");
- spaced letters of short all-letter acronyms (2..6 letters): "v l l m", "V-L-L-M", "a.p.i";
- one split of a Latin term, at a case change or letter/digit change ("Py Torch", "Tensor RT",
  "H 100") or anywhere leaving at least 3 characters on each side ("Kuber netes"); shorter
  pieces are not split because "red is" must not become "Redis";
- optional single spaces between the Hangul syllables of aliases of 3 or more syllables
  ("쿠버 네티스", "브이 엘엘엠").

Boundaries are those of :mod:`scribe_libs.textproc.script`. All candidate matches of all terms
are collected and the longest wins (ties: earlier in the text, then earlier glossary and term);
written terms are protected so no other term or rule rewrites them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc import script
from scribe_libs.textproc.edits import Edit, EditBuffer
from scribe_libs.textproc.models import Correction, CorrectionKind, Glossary, GlossaryTerm

#: Upper bound on the UTF-8 bytes of the hotwords string and of the initial prompt. Whisper keeps
#: at most ``max_length // 2 - 1 = 223`` prompt tokens (openai/whisper decoding.py, faster-whisper
#: transcribe.py ``get_prompt``: hotwords are cut to 223 tokens, previous text to its last 223),
#: and a byte-level BPE token covers at least one byte, so 200 bytes always fit with room for the
#: special tokens.
MAX_PROMPT_BYTES = 200

SPACED_LETTER_SEP = r"(?:\s*[\-.]\s*|\s+)"
SPLIT_SEP = r"[ \-]"


@dataclass(frozen=True)
class _CompiledTerm:
    glossary_id: str
    term: str
    order: int
    regex: re.Pattern[str]


def _literal(text: str) -> str:
    """Regex for literal text whose inner whitespace may be any run of whitespace."""
    return r"\s+".join(re.escape(part) for part in text.split())


def _split_points(term: str) -> list[int]:
    points = []
    for i in range(1, len(term)):
        a, b = term[i - 1], term[i]
        camel = a.islower() and b.isupper()
        digit = a.isdigit() != b.isdigit()
        if camel or digit or (i >= 3 and len(term) - i >= 3):
            points.append(i)
    return points


def _latin_forms(term: str) -> list[str]:
    """Automatic variants (regex bodies) of a single Latin word such as "vLLM"."""
    forms = []
    if term.isascii() and term.isalpha() and 2 <= len(term) <= 6:
        forms.append(SPACED_LETTER_SEP.join(re.escape(ch) for ch in term))
    for i in _split_points(term):
        forms.append(re.escape(term[:i]) + SPLIT_SEP + re.escape(term[i:]))
    return forms


def _hangul_alias_form(alias: str) -> str:
    """Regex body for an alias with Hangul, allowing single spaces between its syllables."""
    compact = re.sub(rf"(?<=[{script.HANGUL_SYLLABLES}])\s+(?=[{script.HANGUL_SYLLABLES}])", "", alias.strip())
    if script.hangul_count(compact) < 3:
        return _literal(compact)
    out = []
    for i, ch in enumerate(compact):
        if i and script.is_hangul(ch) and script.is_hangul(compact[i - 1]):
            out.append(" ?")
        out.append(r"\s+" if ch.isspace() else re.escape(ch))
    return "".join(out)


def _bounded(body: str, literal: str, ignore_case: bool) -> str:
    literal = literal.strip()
    left = script.left_boundary(literal[0], script.hangul_count(literal))
    right = script.right_boundary(literal[-1])
    flags = "i" if ignore_case else "-i"
    return f"{left}(?{flags}:{body}){right}"


def _term_regex(term: GlossaryTerm) -> re.Pattern[str]:
    ignore_case = not term.case_sensitive
    forms: list[tuple[int, str]] = []  # (literal length, bounded regex) to try longest first
    text = term.term.strip()
    # Words of a multi-word term may be joined or hyphenated: "huggingface", "Hugging-Face".
    body = r"[\s\-]*".join(re.escape(part) for part in text.split())
    forms.append((len(text), _bounded(body, text, ignore_case)))
    if script.is_latin_alnum(text[0]) and " " not in text and text.isascii():
        for body in _latin_forms(text):
            forms.append((len(text) + 1, _bounded(body, text, ignore_case)))
    for alias in term.aliases:
        alias = alias.strip()
        if not alias:
            continue
        body = _hangul_alias_form(alias) if script.hangul_count(alias) else _literal(alias)
        forms.append((len(alias), _bounded(body, alias, ignore_case)))
    forms.sort(key=lambda f: -f[0])
    return re.compile("|".join(f"(?:{regex})" for _, regex in forms))


class GlossaryMatcher:
    """Compiled terms of one or more glossaries.

    Args:
        glossaries: Applied together; on equal matches the earlier glossary wins.

    Raises:
        InvalidArgument: A term is empty (reason ``INVALID_GLOSSARY``, field
            ``glossary.terms``).
    """

    def __init__(self, glossaries: Sequence[Glossary]):
        self._terms: list[_CompiledTerm] = []
        self._words: dict[str, tuple[str, str, bool]] = {}  # single-word Latin terms, for glued pairs
        for glossary in glossaries:
            for term in glossary.terms:
                if not term.term.strip():
                    raise InvalidArgument(
                        "INVALID_GLOSSARY", f"glossary {glossary.id!r} has an empty term", field="glossary.terms"
                    )
                self._terms.append(_CompiledTerm(glossary.id, term.term.strip(), len(self._terms), _term_regex(term)))
                word = term.term.strip()
                if word.isascii() and word.isalnum() and len(word) >= 3:
                    key = word if term.case_sensitive else word.lower()
                    self._words.setdefault(key, (glossary.id, word, term.case_sensitive))

    def edits(self, buffer: EditBuffer) -> list[Edit]:
        """Non-overlapping replacements for the buffer's current text, longest match first."""
        candidates = []
        for term in self._terms:
            for match in term.regex.finditer(buffer.text):
                if match.end() > match.start() and script.spaced_match_ok(buffer.text, *match.span()):
                    candidates.append((match.start(), match.end(), term))
        candidates += self._glued(buffer.text)
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0], c[2].order))
        taken: list[tuple[int, int]] = []
        chosen = []
        for start, end, term in candidates:
            if not buffer.is_free(start, end) or any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            chosen.append(
                Edit(start, end, term.term, f"glossary:{term.glossary_id}:{term.term}", CorrectionKind.GLOSSARY)
            )
        return chosen

    def _lookup(self, piece: str) -> tuple[str, str] | None:
        for key in (piece, piece.lower()):
            found = self._words.get(key)
            if found and (not found[2] or key == piece):
                return found[0], found[1]
        return None

    def _glued(self, text: str) -> list[tuple[int, int, _CompiledTerm]]:
        """Two single-word Latin terms written as one word ("KubernetesvLLM"), split and restored.

        Whisper produces these when both terms are in its prompt and it drops the words between
        them. Only a whole Latin word that is exactly term + term (each 3+ characters) matches.
        """
        out = []
        for match in re.finditer(r"(?<![A-Za-z0-9])[A-Za-z0-9]{6,}(?![A-Za-z0-9])", text):
            word = match.group()
            for i in range(3, len(word) - 2):
                left, right = self._lookup(word[:i]), self._lookup(word[i:])
                if left and right:
                    joined = f"{left[1]} {right[1]}"
                    regex = re.compile(re.escape(word))
                    out.append((match.start(), match.end(), _CompiledTerm(left[0], joined, -1, regex)))
                    break
        return out

    def apply(self, buffer: EditBuffer) -> list[Correction]:
        """Correct the buffer in place; returns the corrections made."""
        return buffer.apply(self.edits(buffer))


def correct_text(text: str, glossaries: Sequence[Glossary], segment_id: int = 0) -> tuple[str, list[Correction]]:
    """Glossary correction of one text (convenience for tools and tests).

    Returns:
        The corrected text and the corrections (offsets in ``text``).
    """
    buffer = EditBuffer(text, segment_id)
    corrections = GlossaryMatcher(glossaries).apply(buffer)
    return buffer.text, corrections


def _fit(items: list[str], sep: str, max_bytes: int) -> list[str]:
    kept: list[str] = []
    for item in items:
        if len(sep.join([*kept, item]).encode()) > max_bytes:
            break
        kept.append(item)
    return kept


def bias_terms(
    glossaries: Glossary | Sequence[Glossary], max_prompt_bytes: int = MAX_PROMPT_BYTES
) -> tuple[list[str], str]:
    """Terms to bias decoding towards a glossary.

    The transcriber passes ``" ".join(hotwords)`` as faster-whisper ``hotwords`` and the prompt
    as ``initial_prompt``. Only the verbatim terms go in (aliases are what we do not want the
    decoder to write). Both are cut, whole terms only, at ``max_prompt_bytes`` UTF-8 bytes; see
    :data:`MAX_PROMPT_BYTES` for why bytes bound Whisper's 224-token prompt limit.

    Args:
        glossaries: One glossary or several (terms de-duplicated, first occurrence kept).
        max_prompt_bytes: Byte cap of each of the two outputs.

    Returns:
        ``(hotwords, initial_prompt)``, e.g. ``(["vLLM", "Kubernetes"], "vLLM, Kubernetes.")``;
        ``([], "")`` for no terms.
    """
    if isinstance(glossaries, Glossary):
        glossaries = [glossaries]
    terms: list[str] = []
    for glossary in glossaries:
        for term in glossary.terms:
            text = " ".join(term.term.split())
            if text and text not in terms:
                terms.append(text)
    hotwords = _fit(terms, " ", max_prompt_bytes)
    prompt_terms = _fit(terms, ", ", max_prompt_bytes - 1)
    prompt = ", ".join(prompt_terms) + "." if prompt_terms else ""
    return hotwords, prompt
