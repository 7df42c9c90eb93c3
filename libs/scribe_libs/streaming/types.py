"""Values that flow through a streaming session: words, results, speech events.

Every time is in seconds from the start of the stream (the first sample the caller sent on the
channel), unless a docstring says it is relative to a decode window.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Word:
    """One recognised word.

    Attributes:
        start: Seconds (from the window start in a decoder's hypothesis; from the stream start in a
            :class:`Result`).
        end: Seconds, ``>= start``.
        text: The word as the decoder wrote it, without surrounding whitespace (punctuation kept).
        probability: The decoder's word probability in [0, 1] (faster-whisper ``Word.probability``).
    """

    start: float
    end: float
    text: str
    probability: float = 1.0

    def shifted(self, offset: float) -> Word:
        """The same word with ``offset`` seconds added to both times."""
        return Word(self.start + offset, self.end + offset, self.text, self.probability)


@dataclass(frozen=True)
class Result:
    """An interim or final recognition result of one channel.

    Attributes:
        result_id: ``"<channel>-<n>"``: ``n`` counts the channel's finals from 0. The interims of an
            utterance carry the id of the final that will close it; a final is sent once and never
            revised, and the next utterance gets ``n + 1``.
        is_final: True for a final (append-only), False for an interim.
        text: The words joined by single spaces.
        words: Words with times from the stream start.
        stability: For an interim, the fraction (0..1) of its words that two consecutive
            hypotheses agreed on (LocalAgreement-2): those words reappear unchanged in the final,
            the rest may still change. 1.0 for a final.
        start: Start of the first word, seconds from the stream start (0.0 when there are none).
        end: End of the last word, seconds from the stream start.
        committed_words: How many leading words of ``words`` are agreed (``stability`` as a count).
        channel: The channel the result belongs to.
    """

    result_id: str
    is_final: bool
    text: str
    words: tuple[Word, ...]
    stability: float
    start: float
    end: float
    committed_words: int = 0
    channel: int = 0


class SpeechEventType(StrEnum):
    """Speech activity detected by the VAD."""

    SPEECH_BEGIN = "SPEECH_BEGIN"
    SPEECH_END = "SPEECH_END"


@dataclass(frozen=True)
class SpeechEvent:
    """Speech began or ended on a channel.

    Attributes:
        type: Begin or end.
        time: For a begin, where speech starts (seconds from the stream start, before padding);
            for an end, where it ended (the endpointing silence follows it, so the event is known
            only ``endpointing_ms`` later).
        channel: The channel.
    """

    type: SpeechEventType
    time: float
    channel: int = 0
