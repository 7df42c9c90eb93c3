"""Plain data types of the text engine: segments in, glossaries and rules, corrections out.

The engine works on these dataclasses rather than on the protobuf messages so that it can be
tested and used without the transcript contract; ``convert.py`` maps glossaries to and from
``scribe.v1.Glossary`` and the postprocess service maps segments and results.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TextWord:
    """One recognised word as faster-whisper returns it.

    Attributes:
        word: The word's text, usually with its leading space (" vLLM").
        start: Start time in seconds from the start of the audio.
        end: End time in seconds.
        probability: Decoder probability of the word, 0..1.
    """

    word: str
    start: float = 0.0
    end: float = 0.0
    probability: float = 1.0


@dataclass(frozen=True)
class TextSegment:
    """One recognised segment, the unit the engine processes.

    Attributes:
        id: Segment id, unique within the transcript.
        text: Decoded text (faster-whisper ``Segment.text``).
        words: Per-word results, empty when word timestamps were not requested. Tuples
            ``(word, start, end, probability)`` are accepted and converted to ``TextWord``.
        avg_logprob: Mean token log probability (natural log, <= 0).
        no_speech_prob: Probability that the window held no speech, 0..1.
        compression_ratio: gzip compression ratio of the text.
        start: Segment start in seconds.
        end: Segment end in seconds.
    """

    id: int
    text: str
    words: tuple[TextWord, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    start: float = 0.0
    end: float = 0.0

    def __post_init__(self) -> None:
        words = tuple(w if isinstance(w, TextWord) else TextWord(*w) for w in self.words)
        object.__setattr__(self, "words", words)


class CorrectionKind(enum.StrEnum):
    """What made a correction."""

    GLOSSARY = "glossary"
    RULE = "rule"
    REDACTION = "redaction"


@dataclass(frozen=True)
class Correction:
    """One recorded change of a segment's text.

    Attributes:
        segment_id: The segment changed.
        start: Character offset (Python ``str`` index, i.e. code points) in the segment's raw
            text where the changed span begins.
        end: Offset where it ends (exclusive); ``start == end`` for a pure insertion.
        original: The text the rule replaced. Empty for redactions: the clear text is never kept.
        replacement: The text written instead (a placeholder such as "[PHONE]" for redactions).
        rule_id: ``glossary:<glossary id>:<term>``, ``rule:<glossary id>:<rule id>``,
            ``rule:<rule id>`` for a global rule, or ``redaction:<type>``.
        kind: Glossary, rule or redaction.
        detail: Extra signals, e.g. ``{"luhn": "valid"}`` for a redacted card number.
    """

    segment_id: int
    start: int
    end: int
    original: str
    replacement: str
    rule_id: str
    kind: CorrectionKind
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GlossaryTerm:
    """A term and its known mis-hearings (see ``glossary.proto`` GlossaryTerm)."""

    term: str
    aliases: tuple[str, ...] = ()
    case_sensitive: bool = False


class RuleKind(enum.IntEnum):
    """Kinds of rules; values equal ``scribe.v1.RuleKind``."""

    UNSPECIFIED = 0
    EXACT = 1
    REGEX = 2
    ACRONYM_CASE = 3
    HANGUL_LATIN_SPACING = 4
    NUMBER_NORMALIZATION = 5


@dataclass(frozen=True)
class NumberOptions:
    """Options of a NUMBER_NORMALIZATION rule (see ``glossary.proto`` NumberOptions)."""

    strip_thousands_separators: bool = False
    strip_currency_amounts: bool = False


@dataclass(frozen=True)
class Rule:
    """One deterministic rewrite (see ``glossary.proto`` Rule)."""

    id: str
    kind: RuleKind
    pattern: str = ""
    replacement: str = ""
    case_sensitive: bool = False
    acronyms: tuple[str, ...] = ()
    number_options: NumberOptions = field(default_factory=NumberOptions)
    description: str = ""


@dataclass(frozen=True)
class Glossary:
    """A named, versioned set of terms and rules (see ``glossary.proto`` Glossary)."""

    id: str
    terms: tuple[GlossaryTerm, ...] = ()
    rules: tuple[Rule, ...] = ()
    version: int = 0
    description: str = ""
