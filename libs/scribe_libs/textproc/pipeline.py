"""The whole text pass over a transcript's segments: glossary -> rules -> redaction -> flags -> hallucination guard.

Why this order:

1. Glossary terms first: they restore whole words ("브이엘엘엠" -> "vLLM") and protect them, so
   acronym casing, regexes and spacing rules work on the corrected words and never rewrite a
   term (a rule written for "vllm" cannot undo the glossary's "vLLM").
2. Rules next, in their order: glossary rules in glossary order, then the global rules, so
   normalisation (spacing, numbers) sees the final words.
3. Redaction after the rewrites, so no rule can reassemble a number after it was redacted and the
   placeholders are final. With redaction on, the raw text is redacted too, *before* step 1:
   ``raw_text`` is kept in the transcript and must not hold clear text either. The final
   redaction pass then only catches what rules may have reshaped into a number; its spans are
   redacted in ``raw_text`` as well and the other corrections' offsets moved to match.
4. Flags: they describe the decoder's confidence (scores, not text) and are attached to the
   final segments and words.
5. Hallucination guard last (opt-in, :mod:`scribe_libs.textproc.hallucination`): a segment that
   is a known Whisper stock phrase ("Thank you for watching", "시청해 주셔서 감사합니다") is
   dropped when its signals say no speech, or else flagged ``POSSIBLE_HALLUCINATION``. It is
   matched on the decoded text and runs after the other stages so that a drop can be recorded
   with the segment's kept ``raw_text`` (redacted when redaction is on: no clear text survives in
   the record either). A dropped segment leaves ``segments``; its id is in
   ``ProcessedTranscript.dropped``, the corrections the earlier stages made to it are discarded,
   and one rule correction replaces them: span ``0..len(raw_text)``, ``original`` = the raw text,
   ``replacement`` = "", ``rule_id`` = ``hallucination:<phrase id>``, ``detail`` = the signal
   that decided (``{"reason": "no_speech_prob 0.94 > 0.6"}``). A transcript mapped with
   ``convert.apply_processed`` must then leave out the dropped segments first (the postprocess
   service does).

Corrections' offsets refer to the segment's kept ``raw_text`` (code points). With redaction, a
redaction correction spans the placeholder in ``raw_text`` and carries no ``original``; any
glossary/rule correction overlapping a redacted span is dropped, since its text is clear text.

Words: each character of the new text is given to the word whose raw span it came from (a
replacement to the word where it starts), so the words' texts still concatenate to the segment
text and redacted digits vanish from the word list too. If words cannot be aligned with the
segment text (they do not appear in it in order), they are redacted one by one and, when the
segment had a redaction, every such word holding a digit is blanked; glossary and rules are not
applied to unaligned words.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from scribe_libs.textproc.edits import EditBuffer
from scribe_libs.textproc.flags import (
    FlagReason,
    FlagSummary,
    FlagThresholds,
    flag_summary,
    segment_flags,
    word_flags,
)
from scribe_libs.textproc.glossary import GlossaryMatcher
from scribe_libs.textproc.hallucination import HallucinationGuard
from scribe_libs.textproc.models import Correction, CorrectionKind, Glossary, Rule, TextSegment, TextWord
from scribe_libs.textproc.redaction import redact_text, redaction_edits
from scribe_libs.textproc.rules import CompiledRule, compile_rules

log = logging.getLogger(__name__)

#: Redaction passes over the rewritten text; each pass removes at least one digit run, and two
#: were the most seen (tests/hypothesis), so 5 is a bound, not a tuning.
MAX_REDACTION_PASSES = 5


@dataclass(frozen=True)
class ProcessedWord:
    """A word after processing; ``word`` may be "" when its text went into a neighbour's edit."""

    word: str
    start: float
    end: float
    probability: float
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessedSegment:
    """A segment after processing.

    Attributes:
        text: Post-processed text.
        raw_text: Decoded text, redacted when redaction is on; correction offsets refer to it.
        flags: Confidence reasons (``FlagReason`` values).
    """

    id: int
    start: float
    end: float
    text: str
    raw_text: str
    words: tuple[ProcessedWord, ...]
    flags: tuple[str, ...]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


@dataclass(frozen=True)
class ProcessedTranscript:
    """Result of :func:`process`.

    Attributes:
        segments: In input order, without the dropped ones.
        corrections: Every change, by segment then stage order (a dropped segment's only
            correction is its ``hallucination:<id>`` record).
        flag_summary: Flag counts for the job record (over the kept segments).
        redacted: Whether redaction ran.
        dropped: Ids of the segments the hallucination guard removed, in input order.
    """

    segments: tuple[ProcessedSegment, ...]
    corrections: tuple[Correction, ...]
    flag_summary: FlagSummary
    redacted: bool
    dropped: tuple[int, ...] = ()


def align_words(text: str, words: Sequence[str]) -> list[int] | None:
    """Start offset of each word in ``text``, or None when they are not in it in order."""
    if "".join(words) == text:
        starts, pos = [], 0
        for word in words:
            starts.append(pos)
            pos += len(word)
        return starts
    starts, pos = [], 0
    for word in words:
        core = word.strip()
        found = text.find(core, pos) if core else pos
        if found < 0:
            return None
        # A word's leading space belongs to it, as in faster-whisper output.
        begin = found
        while begin > pos and text[begin - 1].isspace():
            begin -= 1
        starts.append(begin)
        pos = found + len(core)
    return starts


def _reassign(buffer: EditBuffer, starts: list[int], count: int) -> list[str]:
    """New text of each of ``count`` words whose raw spans begin at ``starts``."""
    parts = [[] for _ in range(count)]
    for ch, owner in zip(buffer.text, buffer.owner_positions(), strict=True):
        index = max(0, bisect.bisect_right(starts, owner) - 1)
        parts[index].append(ch)
    return ["".join(p) for p in parts]


def _overlaps(c: Correction, r: Correction) -> bool:
    if c.start == c.end:
        return r.start < c.start < r.end
    return c.start < r.end and r.start < c.end


def _redact_raw_spans(raw: str, kept: list[Correction], late: list[Correction]) -> tuple[str, list[Correction]]:
    """Put late redactions' placeholders into the raw text too and move every offset accordingly.

    Late redactions (found only after rules reshaped the text) cover raw spans that still hold
    clear text; overlapping ones are merged under the first placeholder.
    """
    merged: list[Correction] = []
    for c in sorted(late, key=lambda c: (c.start, c.end)):
        if merged and c.start < merged[-1].end:
            merged[-1] = replace(merged[-1], end=max(merged[-1].end, c.end))
        else:
            merged.append(c)
    out, pos, moves, placed = [], 0, [], []
    length = 0
    for c in merged:
        out.append(raw[pos : c.start])
        length += c.start - pos
        placed.append(replace(c, start=length, end=length + len(c.replacement)))
        out.append(c.replacement)
        length += len(c.replacement)
        moves.append((c.end, len(c.replacement) - (c.end - c.start)))
        pos = c.end
    out.append(raw[pos:])

    def move(p: int) -> int:
        return p + sum(delta for end, delta in moves if end <= p)

    shifted = [replace(c, start=move(c.start), end=move(c.end)) for c in kept]
    return "".join(out), shifted + placed


class TextPipeline:
    """Compiled glossaries and rules, reusable across transcripts.

    Args:
        glossaries: Terms applied together; their rules run in glossary order.
        rules: Global rules, run after the glossaries' rules.
        thresholds: Flag thresholds; Whisper's defaults when None.
        redact: Redact phone, card, e-mail and RRN (opt-in).
        hallucination: The hallucination guard (stage 5); None skips it, so no segment is ever
            dropped (what the transcriber's and the stream gateway's uses rely on).

    Raises:
        InvalidArgument: A bad term or rule (``INVALID_GLOSSARY`` / ``INVALID_RULE``).
    """

    def __init__(
        self,
        glossaries: Sequence[Glossary] = (),
        rules: Sequence[Rule] = (),
        thresholds: FlagThresholds | None = None,
        redact: bool = False,
        hallucination: HallucinationGuard | None = None,
    ):
        self.matcher = GlossaryMatcher(glossaries)
        self.rules: list[CompiledRule] = []
        for glossary in glossaries:
            self.rules += compile_rules(glossary.rules, glossary.id)
        self.rules += compile_rules(rules)
        self.thresholds = thresholds or FlagThresholds()
        self.redact = redact
        self.hallucination = hallucination

    def _redact_raw(self, segment: TextSegment) -> tuple[EditBuffer, list[Correction]]:
        buffer = EditBuffer(segment.text, segment.id)
        corrections: list[Correction] = []
        for _ in range(MAX_REDACTION_PASSES):  # see the late pass in process_segment
            found = buffer.apply(redaction_edits(buffer))
            if not found:
                break
            corrections += found
        corrections.sort(key=lambda c: (c.start, c.end))
        shift, moved = 0, []
        for c in corrections:  # re-express as the placeholder's span in the redacted raw text
            start = c.start + shift
            shift += len(c.replacement) - (c.end - c.start)
            moved.append(replace(c, start=start, end=start + len(c.replacement)))
        return buffer, moved

    def process_segment(self, segment: TextSegment) -> tuple[ProcessedSegment, list[Correction]]:
        """Process one segment; returns it and its corrections."""
        word_texts = [w.word for w in segment.words]
        corrections: list[Correction] = []
        protected = None
        raw = segment.text
        starts = align_words(raw, word_texts) if word_texts else []
        if self.redact:
            first, corrections = self._redact_raw(segment)
            raw, protected = first.text, first.protected
            if starts is not None and word_texts:
                word_texts = _reassign(first, starts, len(word_texts))
                starts = align_words(raw, word_texts)
        buffer = EditBuffer(raw, segment.id, protected)
        corrections += self.matcher.apply(buffer)
        for rule in self.rules:
            corrections += rule.apply(buffer)
        if self.redact:
            # Until nothing is found: a placeholder can end an e-mail match that hid a number
            # glued to it ("a@b.com010-1234-5678"), which only the next pass sees.
            late: list[Correction] = []
            for _ in range(MAX_REDACTION_PASSES):
                found = buffer.apply(redaction_edits(buffer))
                if not found:
                    break
                late += found
            if late:
                kept = [c for c in corrections if not any(_overlaps(c, r) for r in late)]
                raw, corrections = _redact_raw_spans(raw, kept, late)
        if starts is not None and word_texts:
            word_texts = _reassign(buffer, starts, len(word_texts))
        elif word_texts:
            log.warning("segment %s: words do not align with its text; only redaction applied to them", segment.id)
            word_texts = self._fallback_words(word_texts, bool(corrections))
        words = tuple(self._word(w, text) for w, text in zip(segment.words, word_texts, strict=True))
        flags = segment_flags(
            segment.avg_logprob,
            segment.no_speech_prob,
            segment.compression_ratio,
            [w.probability for w in segment.words],
            self.thresholds,
        )
        processed = ProcessedSegment(
            id=segment.id,
            start=segment.start,
            end=segment.end,
            text=buffer.text,
            raw_text=raw,
            words=words,
            flags=tuple(flags),
            avg_logprob=segment.avg_logprob,
            no_speech_prob=segment.no_speech_prob,
            compression_ratio=segment.compression_ratio,
        )
        return processed, corrections

    def _fallback_words(self, texts: list[str], had_corrections: bool) -> list[str]:
        if not self.redact:
            return texts
        out = []
        for text in texts:
            redacted, found = redact_text(text)
            if not found and had_corrections and any(ch.isdigit() for ch in text):
                redacted = ""
            out.append(redacted)
        return out

    def _word(self, word: TextWord, text: str) -> ProcessedWord:
        flags = tuple(word_flags(word.probability, self.thresholds))
        return ProcessedWord(text, word.start, word.end, word.probability, flags)

    def process(self, segments: Sequence[TextSegment]) -> ProcessedTranscript:
        """Process a transcript's segments (see the module docstring for the order)."""
        out: list[ProcessedSegment] = []
        corrections: list[Correction] = []
        dropped: list[int] = []
        for segment in segments:
            processed, segment_corrections = self.process_segment(segment)
            verdict = (
                self.hallucination.check(segment.text, segment.no_speech_prob, segment.avg_logprob)
                if self.hallucination is not None
                else None
            )
            if verdict is not None and verdict.drop:
                dropped.append(segment.id)
                corrections.append(
                    Correction(
                        segment_id=segment.id,
                        start=0,
                        end=len(processed.raw_text),
                        original=processed.raw_text,
                        replacement="",
                        rule_id=f"hallucination:{verdict.phrase_id}",
                        kind=CorrectionKind.RULE,
                        detail={"reason": verdict.reason},
                    )
                )
                continue
            if verdict is not None:
                processed = replace(processed, flags=(*processed.flags, FlagReason.POSSIBLE_HALLUCINATION.value))
            out.append(processed)
            corrections += segment_corrections
        return ProcessedTranscript(tuple(out), tuple(corrections), flag_summary(out), self.redact, tuple(dropped))


def process(
    segments: Sequence[TextSegment],
    glossaries: Sequence[Glossary] = (),
    rules: Sequence[Rule] = (),
    thresholds: FlagThresholds | None = None,
    redact: bool = False,
    hallucination: HallucinationGuard | None = None,
) -> ProcessedTranscript:
    """One-shot :class:`TextPipeline` run; see it for arguments and errors."""
    return TextPipeline(glossaries, rules, thresholds, redact, hallucination).process(segments)


__all__ = [
    "CorrectionKind",
    "ProcessedSegment",
    "ProcessedTranscript",
    "ProcessedWord",
    "TextPipeline",
    "align_words",
    "process",
]
