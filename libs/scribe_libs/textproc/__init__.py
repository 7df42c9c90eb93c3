"""Text engine of the postprocess stage: glossaries, rules, confidence flags, redaction.

Pure functions over plain dataclasses (no I/O, no protobuf needed). Entry point::

    from scribe_libs.textproc import process, TextSegment, Glossary, GlossaryTerm
    result = process(segments, glossaries=[glossary], rules=[], redact=True)

See ``pipeline.py`` for the order of the stages and ``script.py`` for the word boundaries used
in mixed Hangul/Latin text.
"""

from scribe_libs.textproc.convert import (
    apply_processed,
    correction_to_proto,
    glossary_from_proto,
    glossary_to_proto,
    redact_transcript,
    segments_from_transcript,
    validate_glossary,
)
from scribe_libs.textproc.flags import FlagReason, FlagSummary, FlagThresholds, flag_summary
from scribe_libs.textproc.glossary import MAX_PROMPT_BYTES, GlossaryMatcher, bias_terms, correct_text
from scribe_libs.textproc.models import (
    Correction,
    CorrectionKind,
    Glossary,
    GlossaryTerm,
    NumberOptions,
    Rule,
    RuleKind,
    TextSegment,
    TextWord,
)
from scribe_libs.textproc.pipeline import (
    ProcessedSegment,
    ProcessedTranscript,
    ProcessedWord,
    TextPipeline,
    process,
)
from scribe_libs.textproc.redaction import luhn_valid, redact_text
from scribe_libs.textproc.rules import apply_rules

__all__ = [
    "MAX_PROMPT_BYTES",
    "Correction",
    "CorrectionKind",
    "FlagReason",
    "FlagSummary",
    "FlagThresholds",
    "Glossary",
    "GlossaryMatcher",
    "GlossaryTerm",
    "NumberOptions",
    "ProcessedSegment",
    "ProcessedTranscript",
    "ProcessedWord",
    "Rule",
    "RuleKind",
    "TextPipeline",
    "TextSegment",
    "TextWord",
    "apply_processed",
    "apply_rules",
    "bias_terms",
    "correct_text",
    "correction_to_proto",
    "flag_summary",
    "glossary_from_proto",
    "glossary_to_proto",
    "luhn_valid",
    "process",
    "redact_text",
    "redact_transcript",
    "segments_from_transcript",
    "validate_glossary",
]
