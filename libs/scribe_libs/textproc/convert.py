"""Conversions between ``scribe.v1`` messages (Glossary, Transcript) and the engine's dataclasses.

The stubs come from ``python tools/gen_protos.py``; they are imported lazily so the engine works
without them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc.glossary import GlossaryMatcher
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
from scribe_libs.textproc.pipeline import ProcessedTranscript
from scribe_libs.textproc.rules import compile_rules


def glossary_from_proto(message: Any) -> Glossary:
    """``scribe.v1.Glossary`` -> :class:`Glossary` (times are not carried)."""
    return Glossary(
        id=message.id,
        version=message.version,
        description=message.description,
        terms=tuple(GlossaryTerm(t.term, tuple(t.aliases), t.case_sensitive) for t in message.terms),
        rules=tuple(
            Rule(
                id=r.id,
                kind=RuleKind(r.kind) if r.kind in RuleKind._value2member_map_ else RuleKind.UNSPECIFIED,
                pattern=r.pattern,
                replacement=r.replacement,
                case_sensitive=r.case_sensitive,
                acronyms=tuple(r.acronyms),
                number_options=NumberOptions(
                    r.number_options.strip_thousands_separators, r.number_options.strip_currency_amounts
                ),
                description=r.description,
            )
            for r in message.rules
        ),
    )


def glossary_to_proto(
    glossary: Glossary, create_time: datetime | None = None, update_time: datetime | None = None
) -> Any:
    """:class:`Glossary` -> ``scribe.v1.Glossary``.

    Args:
        glossary: The glossary.
        create_time: Set on the message when given (timezone-aware).
        update_time: Set on the message when given (timezone-aware).
    """
    from scribe.v1 import glossary_pb2

    message = glossary_pb2.Glossary(
        id=glossary.id,
        version=glossary.version,
        description=glossary.description,
        terms=[
            glossary_pb2.GlossaryTerm(term=t.term, aliases=t.aliases, case_sensitive=t.case_sensitive)
            for t in glossary.terms
        ],
        rules=[
            glossary_pb2.Rule(
                id=r.id,
                kind=int(r.kind),
                pattern=r.pattern,
                replacement=r.replacement,
                case_sensitive=r.case_sensitive,
                acronyms=r.acronyms,
                number_options=glossary_pb2.NumberOptions(
                    strip_thousands_separators=r.number_options.strip_thousands_separators,
                    strip_currency_amounts=r.number_options.strip_currency_amounts,
                ),
                description=r.description,
            )
            for r in glossary.rules
        ],
    )
    if create_time is not None:
        message.create_time.FromDatetime(create_time)
    if update_time is not None:
        message.update_time.FromDatetime(update_time)
    return message


def validate_glossary(glossary: Glossary) -> None:
    """Check a glossary as ``PutGlossary`` should before storing it.

    Raises:
        InvalidArgument: ``INVALID_GLOSSARY`` (empty id, empty term) or ``INVALID_RULE`` (empty or
            duplicate rule id, unknown kind, bad regex, missing pattern or acronyms).
    """
    if not glossary.id.strip():
        raise InvalidArgument("INVALID_GLOSSARY", "glossary id is empty", field="glossary.id")
    GlossaryMatcher([glossary])
    compile_rules(glossary.rules, glossary.id)


# --- Transcripts ---------------------------------------------------------------------------------


def segments_from_transcript(transcript: Any) -> list[TextSegment]:
    """The segments of a ``scribe.v1.Transcript`` as the engine's :class:`TextSegment` list."""
    return [
        TextSegment(
            id=s.id,
            text=s.text,
            words=tuple(TextWord(w.word, w.start, w.end, w.probability) for w in s.words),
            avg_logprob=s.avg_logprob,
            no_speech_prob=s.no_speech_prob,
            compression_ratio=s.compression_ratio,
            start=s.start,
            end=s.end,
        )
        for s in transcript.segments
    ]


def correction_to_proto(correction: Correction) -> Any:
    """:class:`Correction` -> ``scribe.v1.Correction``."""
    from scribe.v1 import transcript_pb2

    kinds = {
        CorrectionKind.GLOSSARY: transcript_pb2.CORRECTION_KIND_GLOSSARY,
        CorrectionKind.RULE: transcript_pb2.CORRECTION_KIND_RULE,
        CorrectionKind.REDACTION: transcript_pb2.CORRECTION_KIND_REDACTION,
    }
    return transcript_pb2.Correction(
        segment_id=correction.segment_id,
        start=correction.start,
        end=correction.end,
        original=correction.original,
        replacement=correction.replacement,
        rule_id=correction.rule_id,
        kind=kinds.get(correction.kind, transcript_pb2.CORRECTION_KIND_UNSPECIFIED),
        detail=correction.detail,
    )


def apply_processed(transcript: Any, processed: ProcessedTranscript, keep_raw_text: bool = True) -> Any:
    """A copy of ``transcript`` carrying the engine's result.

    Segment ``text``, its words' text and ``flags``, ``raw_text`` (when ``keep_raw_text``), and
    the transcript's ``flag_summary`` and ``redacted`` are set from
    ``processed``, whose segments must be those of ``transcript`` in the same order; its
    corrections are appended to those ``transcript`` already carries.

    Raises:
        ValueError: the segment lists differ in length or ids.
    """
    out = type(transcript)()
    out.CopyFrom(transcript)
    if len(out.segments) != len(processed.segments):
        raise ValueError("processed segments do not match the transcript")
    for segment, result in zip(out.segments, processed.segments, strict=True):
        if segment.id != result.id or len(segment.words) != len(result.words):
            raise ValueError(f"segment {segment.id} does not match its processed result")
        segment.text = result.text
        if keep_raw_text:
            segment.raw_text = result.raw_text
        del segment.flags[:]
        segment.flags.extend(result.flags)
        for word, word_result in zip(segment.words, result.words, strict=True):
            word.word = word_result.word
            del word.flags[:]
            word.flags.extend(word_result.flags)
    # Corrections already on the input (the transcriber's redaction of raw.json) come first; their
    # offsets refer to the same raw text.
    out.corrections.extend(correction_to_proto(c) for c in processed.corrections)
    summary = processed.flag_summary
    out.flag_summary.segments = summary.segments
    out.flag_summary.flagged_segments = summary.flagged_segments
    out.flag_summary.flagged_seconds = summary.flagged_seconds
    out.flag_summary.words = summary.words
    out.flag_summary.flagged_words = summary.flagged_words
    out.flag_summary.by_reason.clear()
    out.flag_summary.by_reason.update(summary.by_reason)
    out.redacted = processed.redacted
    return out


def redact_transcript(transcript: Any) -> Any:
    """A copy of a ``scribe.v1.Transcript`` with phone, card, e-mail and RRN numbers replaced.

    The transcriber calls this on a job with ``spec.redact`` *before* writing ``raw.json``, so
    clear text never reaches the object store. Segment texts and word texts are redacted with
    the same detector as the post-processing pass (see :mod:`scribe_libs.textproc.pipeline` for
    how words follow the segment text). Each placeholder is recorded as a redaction correction
    (offsets in the redacted text, no original); no flags or raw text are added and ``redacted``
    is set. Post-processing with redaction on finds nothing more to redact in it and keeps these
    corrections.
    """
    from scribe_libs.textproc.pipeline import TextPipeline

    processed = TextPipeline(redact=True).process(segments_from_transcript(transcript))
    out = apply_processed(transcript, processed, keep_raw_text=False)
    for segment in out.segments:
        del segment.flags[:]
        for word in segment.words:
            del word.flags[:]
    out.ClearField("flag_summary")
    return out
