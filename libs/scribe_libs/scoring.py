"""Word and character error rates (WER, CER) and glossary-term retention, Korean first.

One place for scoring: the harness (``scribe_harness.wer``), ``scribe bench`` and tools/bench_*.py
call these. The edit distance and its substitution/deletion/insertion counts are jiwer's
(``jiwer.process_words`` / ``jiwer.process_characters``, RapidFuzz Levenshtein); what is
compared is decided here, by :func:`normalize`, the same for the reference and the hypothesis:

1. Unicode NFC (UAX #15), so a Hangul syllable typed as conjoining jamo (NFD, e.g. from macOS
   file names) equals the precomposed syllable: ``"한"`` (U+1112 U+1161 U+11AB) == ``"한"``
   (U+D55C). Not NFKC: NFKC turns compatibility jamo (``ㅋㅋ``, U+314B) into conjoining jamo that
   then compose with a following vowel into a different syllable.
2. Fullwidth ASCII (U+FF01..U+FF5E, what Korean input methods produce for ``ＡＰＩ`` or ``１``) is
   folded to ASCII; this is the only piece of NFKC taken.
3. Case folding (``str.casefold``, Unicode default case folding), so English terms inside Korean
   text compare case-insensitively (``"api"`` == ``"API"``, ``"VLLM"`` == ``"vLLM"``); Hangul
   has no case. ``language="tr"`` or ``"az"`` folds ``I``/``İ`` the Turkish way first (the one
   language-dependent rule; ``ko``, ``en`` and None are treated alike).
4. Punctuation removed: every character whose Unicode general category starts with ``P`` (jiwer's
   ``RemovePunctuation`` definition, which ../shared/data/README.md names), and symbols, category
   ``S*`` (``~ + = $ ₩ ^ ©`` and emoji), which Whisper's own evaluation normaliser drops as well
   (openai/whisper ``whisper/normalizers/basic.py``, ``remove_symbols``; it also drops marks,
   ``M*``, which would break Indic scripts and are kept here). Removed, not replaced by a space:
   ``"e-mail"`` == ``"email"``, ``"don't"`` == ``"dont"`` (jiwer's behaviour, on which the
   harness thresholds were measured).
5. Whitespace: any run of Unicode white space (newlines included) is one space; leading and
   trailing space dropped. For CER all white space is removed before the character alignment:
   Korean spacing (띄어쓰기) is inconsistent in references and hypotheses alike, so spacing is not
   counted as an error. This is how Korean ASR toolkits score KsponSpeech (Bang et al. 2020,
   "KsponSpeech", Appl. Sci. 10(19):6936, which reports CER beside WER and a space-normalised
   WER; sooftware/kospeech ``kospeech/metrics.py`` ``CharacterErrorRate`` strips ``' '`` before
   the Levenshtein distance). WER keeps the spaces, so a spacing-only difference is a WER error
   but not a CER error.
6. Numerals are kept as written: ``"3개"`` and ``"세 개"`` differ, ``"5"`` and ``"five"`` differ.
   Korean numeral readings depend on the counter that follows (세 개 / 삼 층 / 세 시 삼십 분), so a
   correct mapping is a ruleset of its own (e.g. the ``kocer`` package's candidate readings);
   none is attempted here. Digit-versus-word mismatches therefore count as errors: compare models
   on the same references and read the worst files.

Rates are corpus-level when summed: :class:`ErrorCounts` add up (``sum(counts)``), and the rate
of a sum is total errors / total reference units, not the mean of per-file rates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass


def _jiwer():  # noqa: ANN202 - the jiwer module
    """Jiwer, imported where alignment is needed.

    :func:`normalize` works without it: the postprocess image, which matches stock phrases with
    it, does not carry jiwer.
    """
    import jiwer  # noqa: PLC0415

    return jiwer
_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_TURKIC = {"tr", "az"}
_TURKIC_CASE = str.maketrans({"I": "ı", "İ": "i"})
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of one reference/hypothesis pair, or the sum over a corpus.

    Attributes:
        hits: reference units (words or characters) matched.
        substitutions: reference units replaced by another unit.
        deletions: reference units missing from the hypothesis.
        insertions: hypothesis units with no reference unit.
    """

    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def reference_length(self) -> int:
        """Units in the reference (hits + substitutions + deletions)."""
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        """Substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit, a fraction (above 1 with many insertions).

        An empty reference scores 0.0 against an empty hypothesis and 1.0 against anything else.
        """
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.hits + other.hits, self.substitutions + other.substitutions,
                           self.deletions + other.deletions, self.insertions + other.insertions)

    def __radd__(self, other: object) -> ErrorCounts:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented


def normalize(text: str, language: str | None = None) -> str:
    """The text as it is compared: NFC, fullwidth ASCII folded, case-folded, no punctuation or symbols.

    Words stay separated by single spaces (see the module docstring for each rule and its source).

    Args:
        text: a reference or hypothesis transcript, any length.
        language: ISO 639-1 code of the text, or None; only ``tr``/``az`` change the result
            (Turkish dotted/dotless I).
    """
    text = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    if language and language.lower() in _TURKIC:
        text = text.translate(_TURKIC_CASE)
    text = text.casefold()
    text = "".join(c for c in text if unicodedata.category(c)[0] not in "PS")
    return _SPACE.sub(" ", text).strip()


def word_errors(reference: str, hypothesis: str, language: str | None = None) -> ErrorCounts:
    """Word-level alignment counts of the normalised texts (words split on white space)."""
    jiwer = _jiwer()
    words = jiwer.Compose([jiwer.ReduceToListOfListOfWords()])
    out = jiwer.process_words(normalize(reference, language), normalize(hypothesis, language),
                              reference_transform=words, hypothesis_transform=words)
    return ErrorCounts(out.hits, out.substitutions, out.deletions, out.insertions)


def character_errors(reference: str, hypothesis: str, language: str | None = None) -> ErrorCounts:
    """Character-level alignment counts of the normalised texts with all white space removed."""
    ref = normalize(reference, language).replace(" ", "")
    hyp = normalize(hypothesis, language).replace(" ", "")
    jiwer = _jiwer()
    chars = jiwer.Compose([jiwer.ReduceToListOfListOfChars()])
    out = jiwer.process_characters(ref, hyp, reference_transform=chars, hypothesis_transform=chars)
    return ErrorCounts(out.hits, out.substitutions, out.deletions, out.insertions)


def wer(reference: str, hypothesis: str, language: str | None = None) -> float:
    """Word error rate (a fraction) of ``hypothesis`` against ``reference`` after :func:`normalize`."""
    return word_errors(reference, hypothesis, language).rate


def cer(reference: str, hypothesis: str, language: str | None = None) -> float:
    """Character error rate (a fraction) after :func:`normalize`, spacing not counted."""
    return character_errors(reference, hypothesis, language).rate


def _term_pattern(term: str) -> re.Pattern[str]:
    # A Latin letter or digit next to the term would make it part of a longer word ("API" in
    # "RAPID" or "APIs"); Hangul may follow directly ("Kubernetes에서": a particle).
    before = r"(?<![A-Za-z0-9])" if term[:1].isascii() and term[:1].isalnum() else ""
    after = r"(?![A-Za-z0-9])" if term[-1:].isascii() and term[-1:].isalnum() else ""
    return re.compile(before + r"\s+".join(map(re.escape, term.split())) + after)


def term_counts(terms: Iterable[str], reference: str, hypothesis: str) -> tuple[int, int]:
    """How many glossary terms found in ``reference`` ``hypothesis`` also holds verbatim: (kept, expected).

    Matching is case-sensitive, because the product promises terms written exactly as the glossary
    writes them ("vLLM", not "VLLM"); texts and terms are NFC-normalised and white space inside a
    term matches any white space. A term inside a longer Latin word does not count ("API" in
    "RAPID"); a Korean particle after it does ("Kubernetes에서"). Each term counts once per text,
    however often it occurs.
    """
    reference = unicodedata.normalize("NFC", reference)
    hypothesis = unicodedata.normalize("NFC", hypothesis)
    expected = kept = 0
    for term in dict.fromkeys(unicodedata.normalize("NFC", t).strip() for t in terms):
        if not term:
            continue
        pattern = _term_pattern(term)
        if pattern.search(reference):
            expected += 1
            kept += bool(pattern.search(hypothesis))
    return kept, expected


def term_retention(terms: Iterable[str], reference: str, hypothesis: str) -> float | None:
    """Entity-term retention: the fraction of glossary terms in ``reference`` kept in ``hypothesis``.

    Terms match as :func:`term_counts` says; None when the reference holds no term.
    """
    kept, expected = term_counts(terms, reference, hypothesis)
    return kept / expected if expected else None
