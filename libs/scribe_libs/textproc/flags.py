"""Confidence flags: per segment and per word, each with the reason it was raised.

Default thresholds are Whisper's own (openai/whisper ``transcribe()`` and faster-whisper
``WhisperModel.transcribe`` defaults): ``log_prob_threshold=-1.0``, ``no_speech_threshold=0.6``,
``compression_ratio_threshold=2.4``. Whisper uses them to retry at a higher temperature or drop a
window as silence; here a segment that crosses one is kept and flagged for a reader. The word
threshold 0.5 and the 20 % share are this project's choice, not Whisper's.

``POSSIBLE_HALLUCINATION`` is not a score threshold: the hallucination guard
(:mod:`scribe_libs.textproc.hallucination`) raises it on a segment that is a known Whisper stock
phrase ("Thank you for watching", "시청해 주셔서 감사합니다") but whose signals do not say "no
speech", so it is kept for a reader to judge (with the signals saying "no speech" it is dropped).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class FlagReason(enum.StrEnum):
    """Why a segment or word is flagged (the strings stored in transcripts)."""

    LOW_AVG_LOGPROB = "LOW_AVG_LOGPROB"
    HIGH_NO_SPEECH = "HIGH_NO_SPEECH"
    HIGH_COMPRESSION_RATIO = "HIGH_COMPRESSION_RATIO"
    LOW_WORD_PROBABILITY = "LOW_WORD_PROBABILITY"
    #: The segment is a known hallucination phrase kept because its signals allowed speech
    #: (see :mod:`scribe_libs.textproc.hallucination`); always listed after the score flags.
    POSSIBLE_HALLUCINATION = "POSSIBLE_HALLUCINATION"


class FlagThresholds(BaseModel):
    """Thresholds of the confidence flags (nestable in a service's pydantic-settings config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_avg_logprob: float = Field(
        -1.0, description="Segment flagged LOW_AVG_LOGPROB when avg_logprob is below this (Whisper -1.0)."
    )
    max_no_speech_prob: float = Field(
        0.6, ge=0.0, le=1.0, description="Segment flagged HIGH_NO_SPEECH above this (Whisper 0.6)."
    )
    max_compression_ratio: float = Field(
        2.4, gt=0.0, description="Segment flagged HIGH_COMPRESSION_RATIO above this (Whisper 2.4)."
    )
    min_word_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="Word flagged LOW_WORD_PROBABILITY below this probability."
    )
    max_low_word_share: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Segment flagged LOW_WORD_PROBABILITY when more than this share of its words are flagged.",
    )


def word_flags(probability: float, thresholds: FlagThresholds) -> list[str]:
    """Reasons for one word with decoder probability ``probability`` (0..1)."""
    return [FlagReason.LOW_WORD_PROBABILITY.value] if probability < thresholds.min_word_probability else []


def segment_flags(
    avg_logprob: float,
    no_speech_prob: float,
    compression_ratio: float,
    word_probabilities: Sequence[float],
    thresholds: FlagThresholds,
) -> list[str]:
    """Reasons for one segment, in :class:`FlagReason` order; empty when confident.

    Args:
        avg_logprob: Mean token log probability (natural log).
        no_speech_prob: 0..1.
        compression_ratio: gzip ratio of the text.
        word_probabilities: Probabilities of its words; empty when there are no words.
        thresholds: The thresholds.
    """
    reasons = []
    if avg_logprob < thresholds.min_avg_logprob:
        reasons.append(FlagReason.LOW_AVG_LOGPROB.value)
    if no_speech_prob > thresholds.max_no_speech_prob:
        reasons.append(FlagReason.HIGH_NO_SPEECH.value)
    if compression_ratio > thresholds.max_compression_ratio:
        reasons.append(FlagReason.HIGH_COMPRESSION_RATIO.value)
    if word_probabilities:
        low = sum(1 for p in word_probabilities if p < thresholds.min_word_probability)
        if low / len(word_probabilities) > thresholds.max_low_word_share:
            reasons.append(FlagReason.LOW_WORD_PROBABILITY.value)
    return reasons


@dataclass(frozen=True)
class FlagSummary:
    """Counts over a transcript, for the job record.

    Attributes:
        segments: Segments in the transcript.
        flagged_segments: Segments with at least one flag.
        flagged_seconds: Audio seconds covered by flagged segments.
        words: Words in the transcript.
        flagged_words: Words with at least one flag.
        by_reason: Segments per reason, e.g. ``{"LOW_AVG_LOGPROB": 3}``; reasons with 0 omitted.
    """

    segments: int
    flagged_segments: int
    flagged_seconds: float
    words: int
    flagged_words: int
    by_reason: dict[str, int]


def flag_summary(segments: Sequence[object]) -> FlagSummary:
    """Summarise flagged segments.

    Args:
        segments: Objects with ``flags`` (list of reasons), ``start``/``end`` (seconds) and
            ``words`` (objects with ``flags``), e.g. ``ProcessedSegment``.
    """
    by_reason: Counter[str] = Counter()
    flagged = 0
    seconds = 0.0
    words = 0
    flagged_words = 0
    for segment in segments:
        reasons = list(segment.flags)  # type: ignore[attr-defined]
        by_reason.update(reasons)
        if reasons:
            flagged += 1
            seconds += max(0.0, segment.end - segment.start)  # type: ignore[attr-defined]
        for word in segment.words:  # type: ignore[attr-defined]
            words += 1
            flagged_words += bool(word.flags)
    return FlagSummary(len(segments), flagged, round(seconds, 3), words, flagged_words, dict(sorted(by_reason.items())))
