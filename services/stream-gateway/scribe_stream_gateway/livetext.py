"""A live session's text features: glossary bias, glossary corrections and redaction, as in batch.

Batch jobs get these from three places; a live session reuses each of them, once:

- validation and pinning of ``glossary_ids`` (ingest, :meth:`scribe_libs.glossaries.GlossaryStore.resolve`):
  done once at session start by :func:`load_live_text`;
- decoding bias (:func:`scribe_libs.glossaries.biased`, ingest's step for the transcriber): the
  glossaries' verbatim terms appended to the caller's hotwords within the same byte budget
  (:data:`scribe_libs.textproc.MAX_PROMPT_BYTES`), for every ``Transcriber.Decode`` window;
- glossary corrections, rules and redaction (postprocess,
  :class:`scribe_libs.textproc.TextPipeline`): compiled once per session and run on each interim
  or final result as one segment (:meth:`LiveText.apply`).

Glossaries carry no owner (``scribe.v1.Glossary`` has no owner field; writing them needs the
``admin`` scope, reading them ``jobs:read``), so every caller may use every stored glossary, as
batch jobs may. The same versions bias decoding, correct the live results and, pinned in
:attr:`LiveText.glossary_ids`, correct the stored call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from scribe.v1 import streaming_pb2, transcript_pb2
from scribe_libs.errors import InvalidArgument
from scribe_libs.glossaries import GlossaryNotFound, GlossaryStore, biased
from scribe_libs.streaming import Word
from scribe_libs.textproc import Rule, TextPipeline, TextSegment, TextWord, glossary_from_proto

FIELD = "config.glossary_ids"


@dataclass(frozen=True)
class LiveText:
    """What a live session does to its text; built by :func:`load_live_text`.

    Attributes:
        hotwords: The caller's hotwords first, then the glossaries' verbatim terms while the
            space-joined string stays within ``MAX_PROMPT_BYTES`` (200) UTF-8 bytes, or within
            the caller's own length if that is longer (:func:`scribe_libs.glossaries.biased`).
            Send these as ``DecodeRequest.hotwords``.
        prompt: The glossary prompt batch uses as the initial prompt ("vLLM, Kubernetes."), ""
            without glossary terms. A decode window's prompt is the stream's previous text; this
            is for the caller to put before it (Whisper keeps the *last* 223 prompt tokens).
        glossary_ids: The glossaries applied, pinned as ``"id@version"`` (store these in the
            call's ``JobSpec.glossary_ids`` so post-processing applies the same versions).
        redacts: ``config.redact``: results are redacted, and the stored call's raw transcript
            must hold only redacted text too.
    """

    hotwords: tuple[str, ...]
    prompt: str = ""
    glossary_ids: tuple[str, ...] = ()
    redacts: bool = False
    pipeline: TextPipeline | None = field(default=None, repr=False, compare=False)

    def apply(
        self, text: str, words: Sequence[Word], context: Sequence[Word] = ()
    ) -> tuple[str, tuple[Word, ...]]:
        """The text and words a caller sees for one interim or final result.

        Runs the batch post-processing pass on the result as one segment: glossary corrections
        (aliases and automatic variants replaced by the verbatim term), the glossaries' rules,
        then, with ``redacts``, phone, card, e-mail and RRN numbers replaced by their typed
        placeholders (``[PHONE]``, ``[CARD]``, ``[EMAIL]``, ``[RRN]``) in the text and in the
        words. Pure; the regexes were compiled in :func:`load_live_text`. Cost grows with the
        glossary terms (one regex per term): for a 36-word result on the 2-core dev machine about
        0.6 ms with 2 terms, 3 ms with 50, 21 ms with 500 and 55 ms with 2000 (``MAX_TERMS``).

        Words follow the text as in batch: each character of the new text goes to the word its
        raw span came from, a replacement to the word where it starts. A word whose text went
        into a preceding word's replacement (the other digit groups of a redacted card number,
        the second half of "브이 엘엘엠") is merged into that word: the merged word keeps its start,
        takes the last merged word's end and the lowest probability. So ``[CARD]`` spans the
        audio of all four digit groups and no clear text is left in any word.

        Args:
            text: The result's text (its words joined by single spaces).
            words: The result's words, times in seconds from the stream start.
            context: Words before this result on its channel (the previous final's last words),
                seen by the rules but not returned; needs ``words``.

        Returns:
            ``(text, words)``; both unchanged (the same objects' values) when the session has no
            glossary terms or rules and does not redact.
        """
        if self.pipeline is None or not text.strip():
            return text, tuple(words)
        if context and words:
            # Left context (the channel's previous final): detection rules that need the words
            # before a number ("call me at ...") see them; only this result's words come back
            # (a placeholder that starts in the context is dropped with it: no clear digits).
            first = words[0].start
            joined = [*context, *words]
            _, out = self.apply(" ".join(w.text for w in joined), joined)
            mine = tuple(w for w in out if w.start >= first - 1e-6)
            return " ".join(w.text for w in mine), mine
        segment = TextSegment(
            0, " " + text, words=tuple(TextWord(" " + w.text, w.start, w.end, w.probability) for w in words)
        )
        processed, _ = self.pipeline.process_segment(segment)
        out: list[Word] = []
        pending: float | None = None  # start of leading words whose text went nowhere
        for word in processed.words:
            piece = word.word.strip()
            if piece:
                start = word.start if pending is None else pending
                out.append(Word(start, word.end, piece, word.probability))
                pending = None
            elif out:
                last = out[-1]
                out[-1] = Word(last.start, max(last.end, word.end), last.text, min(last.probability, word.probability))
            elif pending is None:
                pending = word.start
        return processed.text.strip(), tuple(out)


async def load_live_text(
    config: streaming_pb2.StreamingConfig,
    hotwords: Sequence[str],
    glossaries: GlossaryStore,
    rules: Sequence[Rule] = (),
) -> LiveText:
    """Resolve a session's glossaries and build its :class:`LiveText`, at session start.

    Args:
        config: The session's first message (``glossary_ids``, ``redact``).
        hotwords: The caller's validated hotwords (``SessionOptions.hotwords``).
        glossaries: The stored glossaries.
        rules: Global rules to run after the glossaries' rules, as postprocess does (its
            ``SCRIBE_POSTPROCESS_RULES``); none by default.

    Returns:
        The session's LiveText. Without glossaries, rules or redaction its :meth:`LiveText.apply`
        returns its input.

    Raises:
        InvalidArgument: field ``config.glossary_ids``, reason ``INVALID_GLOSSARY`` (malformed id
            or version), ``TOO_MANY_GLOSSARIES`` (more than ``MAX_GLOSSARIES_PER_JOB``, 10) or
            ``GLOSSARY_NOT_FOUND`` (unknown id or version; batch's reason, but INVALID_ARGUMENT
            as the stream's contract gives for a bad first message, where CreateJob answers
            NOT_FOUND).
    """
    refs = list(config.glossary_ids)
    try:
        messages = await glossaries.resolve(refs, field=FIELD) if refs else []
    except GlossaryNotFound as exc:
        raise InvalidArgument(exc.reason, exc.message, field=FIELD, metadata={"glossary": exc.resource_name}) from exc
    parsed = [glossary_from_proto(m) for m in messages]
    bias = biased(transcript_pb2.RecognitionConfig(hotwords=list(hotwords)), parsed)
    has_text_work = any(g.terms or g.rules for g in parsed) or bool(rules) or config.redact
    # Compiling costs ~1.3 ms per term (2.5 s for MAX_TERMS): off the event loop.
    pipeline = await asyncio.to_thread(TextPipeline, parsed, rules, redact=config.redact) if has_text_work else None
    return LiveText(
        hotwords=tuple(bias.hotwords),
        prompt=bias.initial_prompt,
        glossary_ids=tuple(f"{m.id}@{m.version}" for m in messages),
        redacts=config.redact,
        pipeline=pipeline,
    )


#: What an interim shows for a word holding a digit while the session redacts.
INTERIM_DIGITS_PLACEHOLDER = "[NUMBER]"
_DIGIT = re.compile(r"\d")


def has_digit(text: str) -> bool:
    """True when ``text`` holds a digit (a redacting session's finals never end on such a word)."""
    return bool(_DIGIT.search(text))


def mask_digits(text: str, words: Sequence[Word]) -> tuple[str, tuple[Word, ...]]:
    """Interims of a redacting session: every word holding a digit becomes ``[NUMBER]``.

    An interim can hold the first half of a number ("010-1234") that the redaction rules cannot
    classify until the rest is spoken; its final is redacted by :meth:`LiveText.apply`, but the
    interim would show the clear digits. Interims therefore hide every digit (times kept).

    Returns:
        ``(text, words)`` with the words masked and the text rebuilt from the words (or, without
        words, masked word by word).
    """
    if not _DIGIT.search(text):
        return text, tuple(words)
    masked = tuple(Word(w.start, w.end, INTERIM_DIGITS_PLACEHOLDER, w.probability) if _DIGIT.search(w.text) else w
                   for w in words)
    pieces = text.split() if not masked else [w.text for w in masked]
    return " ".join(INTERIM_DIGITS_PLACEHOLDER if _DIGIT.search(p) else p for p in pieces), masked
