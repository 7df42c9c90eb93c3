"""Stabilization policy: LocalAgreement-2 over consecutive Whisper hypotheses.

LocalAgreement-n (Machacek, Dabre, Bojar 2023, "Turning Whisper into Real-Time Transcription
System", IJCNLP-AACL demo; reference code ufal/whisper_streaming ``HypothesisBuffer``) commits the
longest common prefix of the last n hypotheses of the same growing audio window. With n = 2 a word
is committed once two consecutive decodes agree on it; committed words are never taken back.

What this policy adds for live calls:

- Finals. A final closes an utterance: at the VAD's end of speech (with the last hypothesis
  decoded over the whole utterance), on the caller's force-finalize, or when the buffer reaches its
  cap. It holds every word since the previous final, is sent once and never revised, and carries
  a stable ``result_id`` ``"<channel>-<n>"`` that its interims already carried.
- Interims. After each hypothesis: the committed-but-not-final words followed by the unconfirmed
  tail of the newest hypothesis; ``stability`` is the committed fraction (see :class:`Result`).
- No duplicates across commits. A hypothesis is shifted to stream time; words whose midpoint lies
  before the end of the last committed word are dropped, then an n-gram overlap between the
  committed tail and the hypothesis head is removed (whisper_streaming checks 1..5 words; any length
  here, since a short window after a commit can echo a whole prompted sentence).
- Looping hypotheses. Decoding at temperature 0 (DESIGN.md: the temperature fallback costs 7-28 s)
  leaves Whisper free to loop ("the the the ..."); :func:`cut_looping_tail` keeps one copy of a
  repeated n-gram tail and cuts text whose zlib compression ratio passes 2.4 (faster-whisper's
  ``compression_ratio_threshold`` default).
- Prompt. :meth:`LocalAgreementPolicy.prompt` returns the committed text before the current
  window (last 200 characters, whisper_streaming's choice) for the next decode's prompt.

The object is pure: no audio, no clock, no I/O. Times are seconds from the stream start.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from collections.abc import Callable, Sequence

from scribe_libs.streaming.types import Result, Word

#: faster-whisper's default ``compression_ratio_threshold`` (gzip ratio of a looping text).
LOOP_COMPRESSION_RATIO = 2.4
#: A repeated n-gram tail is a loop from this many consecutive copies on.
LOOP_MIN_REPEATS = 3
#: Two consecutive copies of a phrase this long (words) count as a loop for :func:`looks_looping`.
SENTENCE_REPEAT_WORDS = 2
#: A hypothesis starting with the committed text's last 2+ words within this many seconds of the
#: last commit repeats the prompt (an echo) and loses those words.
ECHO_WINDOW_SECONDS = 5.0
#: Committed prompt length, characters (whisper_streaming ``prompt()``).
PROMPT_CHARS = 200
#: Only texts of at least this many characters are judged by compression ratio (shorter texts do
#: not compress below 1 whatever they say).
_MIN_CHARS_FOR_RATIO = 60

_PUNCT = re.compile(r"[^\w']+")


def normalize(text: str) -> str:
    """Comparison key of a word: lower case, punctuation removed (``"Hello,"`` -> ``"hello"``)."""
    return _PUNCT.sub("", text.lower())


def compression_ratio(text: str) -> float:
    """``len(text) / len(zlib.compress(text))`` in bytes, as openai/whisper computes it."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def cut_looping_tail(words: Sequence[Word], max_ngram: int = 6, min_repeats: int = LOOP_MIN_REPEATS) -> list[Word]:
    """Cut a decoder loop from the end of a hypothesis.

    Two rules, applied in order:

    1. Repeated tail: if the hypothesis ends with ``min_repeats`` or more consecutive copies of the
       same n-gram (n = 1..``max_ngram``, compared after :func:`normalize`), only the first copy is
       kept. ("no, no" or "thank you, thank you" are two copies and stay.)
    2. Compression: if the text still compresses better than :data:`LOOP_COMPRESSION_RATIO`, it is
       cut at the first word where the ratio of the prefix passes it.

    Args:
        words: A hypothesis.
        max_ngram: Longest repeated unit looked for, words.
        min_repeats: Copies that make a loop.

    Returns:
        The hypothesis without its loop (a new list; unchanged when there is none).
    """
    out = list(words)
    keys = [normalize(w.text) for w in out]
    for n in range(1, max_ngram + 1):
        if len(keys) < n * min_repeats:
            break
        unit = keys[-n:]
        copies = 1
        while len(keys) >= n * (copies + 1) and keys[-n * (copies + 1) : len(keys) - n * copies] == unit:
            copies += 1
        if copies >= min_repeats:
            out = out[: len(out) - n * (copies - 1)]
            keys = keys[: len(out)]
    text = " ".join(w.text for w in out)
    if len(text) >= _MIN_CHARS_FOR_RATIO and compression_ratio(text) > LOOP_COMPRESSION_RATIO:
        for i in range(1, len(out) + 1):
            prefix = " ".join(w.text for w in out[:i])
            if len(prefix) >= _MIN_CHARS_FOR_RATIO and compression_ratio(prefix) > LOOP_COMPRESSION_RATIO:
                return out[: i - 1]
    return out


def looks_looping(text: str, max_ngram: int = 6, min_repeats: int = LOOP_MIN_REPEATS) -> bool:
    """True when a decoded text shows a decoder loop by the rules of :func:`cut_looping_tail`.

    A text ending in ``min_repeats`` copies of one n-gram (n = 1..``max_ngram`` words), or one of at
    least 60 characters whose zlib compression ratio passes :data:`LOOP_COMPRESSION_RATIO`
    (faster-whisper's ``compression_ratio_threshold``). Used by the transcriber's short-input
    guard (a looping short-input decode is decoded again on the full 30 s input), which also
    counts a text ending in two copies of a phrase of ``SENTENCE_REPEAT_WORDS`` words or more as a
    loop: tiny.en on short inputs of jfk.flac wrote "Ask what you can do for your country." and
    "Ask not." twice, which a 30 s decode does not (a false alarm only costs the full decode).
    """
    keys = [k for k in (normalize(w) for w in text.split()) if k]
    for n in range(SENTENCE_REPEAT_WORDS, len(keys) // 2 + 1):
        if keys[-n:] == keys[-2 * n : -n]:
            return True
    for n in range(1, max_ngram + 1):
        if len(keys) < n * min_repeats:
            break
        unit = keys[-n:]
        if all(keys[len(keys) - n * (c + 1) : len(keys) - n * c] == unit for c in range(1, min_repeats)):
            return True
    return len(text) >= _MIN_CHARS_FOR_RATIO and compression_ratio(text) > LOOP_COMPRESSION_RATIO


def _common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if normalize(x.text) != normalize(y.text):
            break
        n += 1
    return n


class LocalAgreementPolicy:
    """LocalAgreement-2 with finals, interims and stable result ids for one channel.

    Args:
        channel: Channel index, used in result ids (``"<channel>-<n>"``).

    Invariants (what the tests check): the concatenated finals never contain a word twice nor
    skip a committed word; a committed word is final-or-pending and never changes; ``committed_end``
    never decreases.
    """

    def __init__(self, channel: int = 0):
        self.channel = channel
        self._committed: list[Word] = []  # committed, not yet final
        self._tail: list[Word] = []  # unconfirmed words of the newest hypothesis
        self._history: deque[Word] = deque(maxlen=64)  # latest committed words, for prompt/overlap
        self._finals = 0
        self._committed_end = 0.0
        self.held_word: Word | None = None
        """The word the last ``force_finalize(hold_last_word=True)`` left out (stream times)."""

    # --- state ---------------------------------------------------------------------------------

    @property
    def committed_end(self) -> float:
        """End (s) of the last committed word, final or not; 0.0 before any. The buffer may be cut here."""
        return self._committed_end

    @property
    def result_id(self) -> str:
        """Id of the utterance in progress (the next final's id)."""
        return f"{self.channel}-{self._finals}"

    @property
    def finals_sent(self) -> int:
        """Number of finals produced so far."""
        return self._finals

    @property
    def committed_words(self) -> tuple[Word, ...]:
        """Committed words not yet sent in a final (they will be, unchanged)."""
        return tuple(self._committed)

    @property
    def pending_words(self) -> tuple[Word, ...]:
        """Committed-not-final words followed by the unconfirmed tail."""
        return (*self._committed, *self._tail)

    def prompt(self, before: float | None = None) -> str:
        """Committed text for the next decode's prompt.

        Args:
            before: Only words ending at or before this time (the window start: words inside the
                window are heard again, so they are not also put in the prompt). None: all.

        Returns:
            At most :data:`PROMPT_CHARS` characters, cut at a word boundary.
        """
        words = [w.text for w in self._history if before is None or w.end <= before + 1e-6]
        text = ""
        for word in reversed(words):
            candidate = f"{word} {text}" if text else word
            if len(candidate) > PROMPT_CHARS:
                break
            text = candidate
        return text

    # --- events --------------------------------------------------------------------------------

    def feed(self, hypothesis: Sequence[Word], window_start: float, now: float) -> list[Result]:
        """Take the newest hypothesis of the current window and commit what two agree on.

        Args:
            hypothesis: Words with times relative to ``window_start`` (as a decoder returns them).
            window_start: Stream time (s) of the window's first sample.
            now: Stream time (s) of the window's last sample; words starting after it are dropped
                (a decoder writing past its audio) and ends are clipped to it.

        Returns:
            One interim result, or nothing when no word is pending.
        """
        new = self._prepare(hypothesis, window_start, now)
        agreed = _common_prefix(new, self._tail)
        self._commit(new[:agreed])
        self._tail = new[agreed:]
        interim = self._interim()
        return [interim] if interim else []

    def end_of_speech(
        self, hypothesis: Sequence[Word] | None = None, window_start: float = 0.0, now: float = float("inf")
    ) -> list[Result]:
        """Close the utterance (VAD end of speech): a final with every word since the last final.

        Args:
            hypothesis: A last hypothesis decoded over the whole utterance (recommended); its words
                after the committed ones replace the unconfirmed tail. None: the tail is used as is.
            window_start: As in :meth:`feed`.
            now: As in :meth:`feed`.

        Returns:
            The final, or nothing when the utterance produced no word (e.g. a cough).
        """
        return self._finalize(hypothesis, window_start, now, hold_last_word=False)

    def force_finalize(
        self,
        hypothesis: Sequence[Word] | None = None,
        window_start: float = 0.0,
        now: float = float("inf"),
        hold_last_word: bool = False,
    ) -> list[Result]:
        """Close the utterance now (caller's force-finalize, or the buffer cap).

        Args:
            hypothesis: As in :meth:`end_of_speech`.
            window_start: As in :meth:`feed`.
            now: As in :meth:`feed`.
            hold_last_word: Leave the last unconfirmed word out of the final (speech goes on and
                the window edge may have cut it; its audio stays in the buffer and is heard again).

        Returns:
            The final, or nothing when no word is pending.
        """
        return self._finalize(hypothesis, window_start, now, hold_last_word=hold_last_word)

    def finalize_committed(self, hold: Callable[[str], bool] | None = None) -> list[Result]:
        """A final of the committed-not-final words only; the unconfirmed tail stays pending.

        For long speech without a pause: the session closes an utterance this way once it spans
        its cap, so finals keep coming on a monologue. Returns nothing when nothing is committed.

        Args:
            hold: Committed words at the end for which ``hold(text)`` is true stay pending (a
                redacting session holds words with digits, so a number is never split across
                two finals that are redacted one by one).
        """
        keep = 0
        if hold is not None:
            while keep < len(self._committed) and hold(self._committed[len(self._committed) - 1 - keep].text):
                keep += 1
        if keep == len(self._committed):
            return []
        held = self._committed[len(self._committed) - keep :]
        self._committed = self._committed[: len(self._committed) - keep]
        tail = self._tail
        self._tail = []
        results = self._finalize([], 0.0, float("inf"), hold_last_word=False)
        self._committed, self._tail = held, tail
        return results

    @property
    def committed_start(self) -> float | None:
        """Start (s) of the first committed-not-final word; None when there is none."""
        return self._committed[0].start if self._committed else None

    # --- internals -----------------------------------------------------------------------------

    def _prepare(self, hypothesis: Sequence[Word], window_start: float, now: float) -> list[Word]:
        words = [w.shifted(window_start) for w in hypothesis if w.text.strip()]
        words = [Word(w.start, min(w.end, now), w.text.strip(), w.probability) for w in words if w.start < now]
        words = cut_looping_tail(words)
        # Drop what is already committed: by time first (midpoint before the commit boundary) ...
        words = [w for w in words if (w.start + w.end) / 2 >= self._committed_end]
        # ... then by text: an n-gram the committed tail ends with and the hypothesis starts with
        # (any length: a decode of the few tenths of a second after a commit may echo the whole
        # prompted sentence, e.g. tiny.en on jfk.flac's last 0.6 s).
        # One word is taken for an echo within 1 s of the commit; two or more within
        # ECHO_WINDOW_SECONDS (after a pause the decoder, prompted with "... ask not.", wrote
        # "Ask not. What your country ..." for jfk.flac's next utterance).
        if words and self._history:
            gap = words[0].start - self._committed_end
            history = list(self._history)
            for n in range(min(len(history), len(words)), 0, -1):
                if gap >= (1.0 if n == 1 else ECHO_WINDOW_SECONDS):
                    continue
                tail = [normalize(w.text) for w in history[-n:]]
                head = [normalize(w.text) for w in words[:n]]
                if tail == head:
                    words = words[n:]
                    break
        return words

    def _commit(self, words: Sequence[Word]) -> None:
        for word in words:
            self._committed.append(word)
            self._history.append(word)
            self._committed_end = max(self._committed_end, word.end)

    def _interim(self) -> Result | None:
        words = (*self._committed, *self._tail)
        if not words:
            return None
        return Result(
            result_id=self.result_id,
            is_final=False,
            text=" ".join(w.text for w in words),
            words=words,
            stability=len(self._committed) / len(words),
            start=words[0].start,
            end=words[-1].end,
            committed_words=len(self._committed),
            channel=self.channel,
        )

    def _finalize(
        self, hypothesis: Sequence[Word] | None, window_start: float, now: float, hold_last_word: bool
    ) -> list[Result]:
        tail = self._tail if hypothesis is None else self._prepare(hypothesis, window_start, now)
        self.held_word = None
        if hold_last_word and tail:
            self.held_word = tail[-1]
            tail = tail[:-1]
        self._commit(tail)
        self._tail = []
        words = tuple(self._committed)
        self._committed = []
        if not words:
            return []
        final = Result(
            result_id=self.result_id,
            is_final=True,
            text=" ".join(w.text for w in words),
            words=words,
            stability=1.0,
            start=words[0].start,
            end=words[-1].end,
            committed_words=len(words),
            channel=self.channel,
        )
        self._finals += 1
        return [final]
