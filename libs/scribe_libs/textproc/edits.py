"""An edit buffer that keeps every character's origin in the raw text.

Each stage (glossary, each rule, redaction) proposes edits on the *current* text; the buffer
applies them and turns each into a :class:`Correction` whose offsets point into the *raw* text,
however many stages ran before. Characters written by an edit are marked protected with the
edit's id so that later glossary terms and rules never match them again ("no double
application"); redaction ignores protection because nothing may keep clear text.
"""

from __future__ import annotations

from dataclasses import dataclass

from scribe_libs.textproc.models import Correction, CorrectionKind


@dataclass(frozen=True)
class Edit:
    """A proposed replacement of ``current[start:end]`` by ``replacement``.

    Attributes:
        start: Offset in the current text.
        end: Exclusive end offset; equal to start for an insertion.
        replacement: New text ("" deletes).
        rule_id: Recorded on the correction.
        kind: Recorded on the correction.
        protect: Mark the written characters so later terms and rules skip them.
        keep_original: Record the replaced text; False for redactions (the clear text must go).
        detail: Recorded on the correction.
    """

    start: int
    end: int
    replacement: str
    rule_id: str
    kind: CorrectionKind
    protect: bool = True
    keep_original: bool = True
    detail: tuple[tuple[str, str], ...] = ()


class EditBuffer:
    """The current text of one segment plus, per character, its span in the raw text.

    Args:
        raw: The segment's raw text; correction offsets refer to it.
        segment_id: Recorded on every correction.
        protected: Optional per-character protection ids for ``raw`` (0 = free), e.g. the
            placeholders of an earlier redaction pass.
    """

    def __init__(self, raw: str, segment_id: int, protected: list[int] | None = None):
        self.raw = raw
        self.segment_id = segment_id
        self.text = raw
        # origin[i] = (raw_start, raw_end) that current character i stands for.
        self.origin: list[tuple[int, int]] = [(i, i + 1) for i in range(len(raw))]
        self.protected: list[int] = list(protected) if protected is not None else [0] * len(raw)
        self._next_edit_id = max(self.protected, default=0) + 1

    def is_free(self, start: int, end: int) -> bool:
        """True when no character of ``current[start:end]`` is protected."""
        return not any(self.protected[start:end])

    def can_insert_at(self, pos: int) -> bool:
        """True unless ``pos`` lies strictly inside one protected replacement."""
        if 0 < pos < len(self.text):
            left, right = self.protected[pos - 1], self.protected[pos]
            return not (left and left == right)
        return True

    def raw_span(self, start: int, end: int) -> tuple[int, int]:
        """The raw-text span ``(start, end)`` that ``current[start:end]`` stands for."""
        if start < end:
            return (min(o[0] for o in self.origin[start:end]), max(o[1] for o in self.origin[start:end]))
        if start < len(self.text):
            pos = self.origin[start][0]
        elif self.text:
            pos = self.origin[-1][1]
        else:
            pos = 0
        return (pos, pos)

    def apply(self, edits: list[Edit]) -> list[Correction]:
        """Apply non-overlapping edits of one stage at once.

        Args:
            edits: Edits on the current text; overlapping edits are a programming error.

        Returns:
            One correction per edit that changed the text, in text order.

        Raises:
            ValueError: Two edits overlap.
        """
        edits = sorted(edits, key=lambda e: (e.start, e.end))
        for a, b in zip(edits, edits[1:], strict=False):
            if b.start < a.end or (b.start == a.start and a.start == a.end == b.end):
                raise ValueError(f"overlapping edits {a} and {b}")
        corrections: list[Correction] = []
        for edit in reversed(edits):
            original = self.text[edit.start : edit.end]
            if original == edit.replacement:
                if edit.protect:  # a verbatim term: nothing to record, but never rewrite it
                    self.protected[edit.start : edit.end] = [self._next_edit_id] * len(original)
                    self._next_edit_id += 1
                continue
            raw_start, raw_end = self.raw_span(edit.start, edit.end)
            corrections.append(
                Correction(
                    segment_id=self.segment_id,
                    start=raw_start,
                    end=raw_end,
                    original=original if edit.keep_original else "",
                    replacement=edit.replacement,
                    rule_id=edit.rule_id,
                    kind=edit.kind,
                    detail=dict(edit.detail),
                )
            )
            edit_id = self._next_edit_id if edit.protect else 0
            self._next_edit_id += 1
            n = len(edit.replacement)
            self.text = self.text[: edit.start] + edit.replacement + self.text[edit.end :]
            self.origin[edit.start : edit.end] = [(raw_start, raw_end)] * n
            self.protected[edit.start : edit.end] = [edit_id] * n
        corrections.reverse()
        return corrections

    def owner_positions(self) -> list[int]:
        """Per current character, the raw offset it is attributed to (for word re-assembly).

        A character written by an edit belongs to where its raw span starts; an insertion
        (empty raw span at ``p``) belongs to ``p``.
        """
        return [o[0] for o in self.origin]
