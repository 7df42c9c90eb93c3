"""Transcript output formats: JSON, plain text, SubRip (SRT) and WebVTT.

A ``scribe.v1.Transcript`` renders into each ``TranscriptFormat`` as UTF-8 bytes plus the HTTP
content type to serve it with. This module holds the one table of formats: name (= file
extension) -> enum value -> content type (:data:`FORMAT_NAMES`, :data:`CONTENT_TYPES`); every
content type carries ``; charset=utf-8``. Times in the proto are seconds (float); cue timestamps are
rounded half-up to the nearest millisecond on the decimal value of the float (so 59.9995 s is
``00:01:00,000``, never ``00:00:59,1000``), carrying into seconds, minutes and hours. Hours have
at least two digits and grow as needed, so cues past 24 h (or 99 h) still render.

Layouts:

* txt: each segment's text, stripped, one segment per line (line breaks inside a segment become
  spaces), every line ending in a newline.
* srt: cues numbered from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, the text, a blank line
  (the SubRip layout as players read it; there is no formal spec).
* vtt: ``WEBVTT``, a blank line, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``, the text, a blank
  line (W3C "WebVTT: The Web Video Text Tracks Format"); ``&``, ``<`` and ``>`` in the text are
  escaped as the spec requires, which also keeps ``-->`` out of cue text.

In txt, srt and vtt a segment whose text is empty after stripping is skipped (and numbering in
srt stays consecutive); blank lines inside a segment's text are dropped because a blank line
ends a cue. A cue whose end is before its start is given its start as end. Negative times
render as zero. A segment with a speaker role (per-channel recognition of a call recording:
``Segment.role``, e.g. "agent") is labelled: ``agent: text`` in txt and srt, a WebVTT voice span
``<v agent>text</v>`` in vtt (the spec's way to name a cue's speaker).

Subtitle cues (srt, vtt) are bounded as subtitle style guides ask (Netflix Timed Text Style
Guide for English and Korean: at most 42 characters per line, at most two lines, at most 7 s
on screen): a segment's text is wrapped at word boundaries into lines of at most
:data:`MAX_LINE_CHARS` characters (a word longer than that is broken), and a segment that
needs more than :data:`MAX_CUE_LINES` lines or lasts longer than :data:`MAX_CUE_SECONDS` becomes
several consecutive cues. Cue times come from the words' timestamps when the segment has them
and they spell its text, else they are interpolated by character position within the
segment. A single word longer than 7 s is shown for 7 s.
"""

from __future__ import annotations

import json
import math
import textwrap
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from scribe.v1 import transcript_pb2
from scribe.v1.transcript_pb2 import Segment, Transcript
from scribe_libs.errors import InvalidArgument

__all__ = [
    "CONTENT_TYPES",
    "FORMAT_NAMES",
    "content_type",
    "format_name",
    "parse_format",
    "render",
    "srt_timestamp",
    "transcript_from_json",
    "transcript_to_json",
    "vtt_timestamp",
]

TranscriptFormat = transcript_pb2.TranscriptFormat

_FORMATS: tuple[tuple[str, transcript_pb2.TranscriptFormat.ValueType, str], ...] = (
    # (name = file extension, enum value, content type). Every one is UTF-8 text and says so:
    # RFC 8259 makes JSON UTF-8 by definition (compliant readers ignore the parameter), but the
    # other types' default charset is US-ASCII or unspecified, and a client that treats all four
    # alike should not have to know which is which.
    ("json", transcript_pb2.TRANSCRIPT_FORMAT_JSON, "application/json; charset=utf-8"),
    ("txt", transcript_pb2.TRANSCRIPT_FORMAT_TXT, "text/plain; charset=utf-8"),
    ("srt", transcript_pb2.TRANSCRIPT_FORMAT_SRT, "application/x-subrip; charset=utf-8"),  # de-facto type
    ("vtt", transcript_pb2.TRANSCRIPT_FORMAT_VTT, "text/vtt; charset=utf-8"),  # IANA-registered
)

FORMAT_NAMES: dict[str, transcript_pb2.TranscriptFormat.ValueType] = {name: fmt for name, fmt, _ in _FORMATS}
"""Format names as users type them, which are also the file extensions -> enum value, in the
order outputs are written (json, txt, srt, vtt)."""

CONTENT_TYPES: dict[transcript_pb2.TranscriptFormat.ValueType, str] = {fmt: ctype for _, fmt, ctype in _FORMATS}
"""Content type each format is stored and served with (``GetTranscriptResponse.content_type``)."""

_MS_PER_HOUR = 3_600_000
_MS_PER_MINUTE = 60_000


def _unknown_format(what: object) -> InvalidArgument:
    return InvalidArgument(
        "UNKNOWN_FORMAT", f"unknown transcript format {what!r}; use one of {', '.join(FORMAT_NAMES)}", field="format"
    )


def parse_format(name: str) -> transcript_pb2.TranscriptFormat.ValueType:
    """The format named ``name`` (``"json"``, ``"txt"``, ``"srt"``, ``"vtt"``; case and spaces ignored).

    Raises:
        InvalidArgument: reason ``UNKNOWN_FORMAT``, field ``format``.
    """
    try:
        return FORMAT_NAMES[name.strip().lower()]
    except KeyError:
        raise _unknown_format(name) from None


def format_name(fmt: transcript_pb2.TranscriptFormat.ValueType) -> str:
    """The short name of ``fmt``, which is also its file extension, e.g. ``"srt"``.

    Raises:
        InvalidArgument: reason ``UNKNOWN_FORMAT``, field ``format``, for UNSPECIFIED or an
            unknown value.
    """
    for name, value, _ in _FORMATS:
        if value == fmt:
            return name
    raise _unknown_format(fmt)


def content_type(fmt: transcript_pb2.TranscriptFormat.ValueType) -> str:
    """The content type ``fmt`` is stored and served with, e.g. ``"text/vtt; charset=utf-8"``.

    Raises:
        InvalidArgument: reason ``UNKNOWN_FORMAT``, field ``format``, for UNSPECIFIED or an
            unknown value.
    """
    try:
        return CONTENT_TYPES[fmt]
    except KeyError:
        raise _unknown_format(fmt) from None


def _millis(seconds: float) -> int:
    """Whole milliseconds in ``seconds``, rounded half-up on the float's shortest decimal form.

    ``Decimal(repr(x))`` is the decimal a person wrote (59.9995, not 59.99949999999999761...), so
    half a millisecond always rounds up. Negative times clamp to 0.

    Raises:
        InvalidArgument: reason ``INVALID_TRANSCRIPT`` for NaN or infinity.
    """
    if not math.isfinite(seconds):
        raise InvalidArgument("INVALID_TRANSCRIPT", f"time {seconds!r} is not a finite number of seconds")
    if seconds <= 0:
        return 0
    return int((Decimal(repr(float(seconds))) * 1000).to_integral_value(rounding=ROUND_HALF_UP))


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, _MS_PER_HOUR)
    minutes, rest = divmod(rest, _MS_PER_MINUTE)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_timestamp(seconds: float) -> str:
    """SubRip time ``HH:MM:SS,mmm`` of ``seconds`` (rounded to the millisecond; hours may exceed 99)."""
    return _clock(_millis(seconds), ",")


def vtt_timestamp(seconds: float) -> str:
    """WebVTT time ``HH:MM:SS.mmm`` of ``seconds`` (rounded to the millisecond; hours may exceed 99)."""
    return _clock(_millis(seconds), ".")


def _lines(text: str) -> list[str]:
    """Non-blank, stripped lines of a segment's text."""
    return [line.strip() for line in text.splitlines() if line.strip()]


#: Characters per subtitle line, lines per cue, seconds per cue (Netflix Timed Text Style Guide).
MAX_LINE_CHARS = 42
MAX_CUE_LINES = 2
MAX_CUE_SECONDS = 7.0
_MAX_CUE_MS = int(MAX_CUE_SECONDS * 1000)


def _segments(transcript: Transcript) -> list[tuple[int, int, list[str], Segment]]:
    """``(start_ms, end_ms, lines, segment)`` of every segment with text, in transcript order."""
    out = []
    segment: Segment
    for segment in transcript.segments:
        lines = _lines(segment.text)
        if not lines:
            continue
        start = _millis(segment.start)
        out.append((start, max(start, _millis(segment.end)), lines, segment))
    return out


def _wrap(text: str, prefix: str = "") -> list[str]:
    """``text`` in lines of at most :data:`MAX_LINE_CHARS`, the first starting with ``prefix``."""
    return textwrap.wrap(text, MAX_LINE_CHARS, initial_indent=prefix, break_long_words=True, break_on_hyphens=False)


def _units(text: str, start: int, end: int, segment: Segment) -> list[tuple[str, int, int]]:
    """The segment's words with their times (ms): the decoder's when they spell the text, else interpolated."""
    tokens = [t[i : i + MAX_LINE_CHARS] for t in text.split() for i in range(0, len(t), MAX_LINE_CHARS)]
    words = [w for w in segment.words if w.word.strip()]
    if [w.word.strip() for w in words] == tokens:
        return [(t, max(_millis(w.start), start), max(_millis(w.end), _millis(w.start), start))
                for t, w in zip(tokens, words, strict=True)]
    total = max(sum(len(t) for t in tokens), 1)
    units, done = [], 0
    for token in tokens:
        t0 = start + (end - start) * done // total
        done += len(token)
        units.append((token, t0, start + (end - start) * done // total))
    return units


def _labelled(lines: list[str], segment: Segment) -> list[str]:
    """``lines`` with the segment's role before the first (``agent: ...``), unchanged without a role."""
    role = segment.role.strip()
    return [f"{role}: {lines[0]}", *lines[1:]] if role and lines else lines


def _cues(transcript: Transcript, label_text: bool = True) -> list[tuple[int, int, list[str], str]]:
    """``(start_ms, end_ms, lines, role)`` subtitle cues, each within the limits in the module docstring.

    ``label_text``: every cue of a segment with a role starts with ``role: `` (srt), counted in
    its first line's length; otherwise the role is only returned (vtt marks it up as a voice
    span, which is not displayed text).
    """
    cues = []
    for start, end, lines, segment in _segments(transcript):
        role = segment.role.strip()
        prefix = f"{role}: " if role and label_text else ""
        labelled = [prefix + lines[0], *lines[1:]]
        fits = len(lines) <= MAX_CUE_LINES and all(len(x) <= MAX_LINE_CHARS for x in labelled)
        if end - start <= _MAX_CUE_MS and fits:
            cues.append((start, end, labelled, role))  # the segment's own line breaks already fit
            continue
        text = " ".join(lines)
        wrapped = _wrap(text, prefix)
        if len(wrapped) <= MAX_CUE_LINES and end - start <= _MAX_CUE_MS:
            cues.append((start, end, wrapped, role))
            continue
        current: list[tuple[str, int, int]] = []
        for unit in _units(text, start, end, segment):
            candidate = current + [unit]
            too_long = unit[2] - current[0][1] > _MAX_CUE_MS if current else False
            if current and (too_long or len(_wrap(" ".join(u[0] for u in candidate), prefix)) > MAX_CUE_LINES):
                cues.append((*_cue(current, prefix), role))
                current = [unit]
            else:
                current = candidate
        if current:
            cues.append((*_cue(current, prefix), role))
    return cues


def _cue(units: list[tuple[str, int, int]], prefix: str) -> tuple[int, int, list[str]]:
    start = units[0][1]
    end = min(max(units[-1][2], start), start + _MAX_CUE_MS)
    return start, end, _wrap(" ".join(u[0] for u in units), prefix)


def _render_txt(transcript: Transcript) -> str:
    return "".join(" ".join(_labelled(lines, segment)) + "\n" for _, _, lines, segment in _segments(transcript))


def _render_srt(transcript: Transcript) -> str:
    out = []
    for number, (start, end, lines, _) in enumerate(_cues(transcript), start=1):
        out.append(f"{number}\n{_clock(start, ',')} --> {_clock(end, ',')}\n" + "\n".join(lines) + "\n\n")
    return "".join(out)


def _vtt_escape(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render_vtt(transcript: Transcript) -> str:
    out = ["WEBVTT\n\n"]
    for start, end, lines, role in _cues(transcript, label_text=False):
        text = "\n".join(_vtt_escape(line) for line in lines)
        if role:
            text = f"<v {_vtt_escape(role)}>{text}</v>"
        out.append(f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n\n")
    return "".join(out)


def _in_field_order(descriptor: Descriptor, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` (from ``MessageToDict``) with keys in .proto declaration order, recursively."""
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in obj:
            continue
        value = obj[field.name]
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            if isinstance(value, list):
                value = [_in_field_order(field.message_type, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = _in_field_order(field.message_type, value)
        out[field.name] = value
    return out


def transcript_to_json(transcript: Transcript) -> bytes:
    """The transcript as indented UTF-8 JSON (proto field names, every field, non-ASCII kept).

    Proto3 JSON mapping (``google.protobuf.json_format``) with ``snake_case`` names as in the
    .proto, fields with default values included (so segment 0 has ``"id": 0``), keys in
    declaration order, 2-space indent, Hangul etc. written as-is rather than as escapes, and a
    final newline.
    """
    as_dict = json_format.MessageToDict(
        transcript, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    ordered = _in_field_order(Transcript.DESCRIPTOR, as_dict)
    return (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def transcript_from_json(data: bytes | str) -> Transcript:
    """Parse JSON written by ``transcript_to_json`` (or any proto3 JSON of a Transcript).

    Both ``snake_case`` and ``lowerCamelCase`` names are accepted; unknown fields are ignored so
    that a transcript written by a newer version still reads.

    Raises:
        InvalidArgument: reason ``INVALID_TRANSCRIPT`` when ``data`` is not UTF-8 or not a
            Transcript in JSON.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        obj = json.loads(text)
        if not isinstance(obj, dict):  # json_format would read "[]" as an empty transcript
            raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
        return json_format.ParseDict(obj, Transcript(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:  # Unicode/JSONDecodeError are ValueErrors
        raise InvalidArgument("INVALID_TRANSCRIPT", f"not a transcript in JSON: {exc}") from exc


def render(transcript: Transcript, fmt: transcript_pb2.TranscriptFormat.ValueType) -> tuple[bytes, str]:
    """Render ``transcript`` as ``fmt``: ``(UTF-8 content, content type)``.

    ``TRANSCRIPT_FORMAT_UNSPECIFIED`` is not a format here: the caller decides what it defaults to.

    Raises:
        InvalidArgument: reason ``UNKNOWN_FORMAT`` (field ``format``) for UNSPECIFIED or an
            unknown value; reason ``INVALID_TRANSCRIPT`` when a time is NaN or infinite.
    """
    if fmt == transcript_pb2.TRANSCRIPT_FORMAT_JSON:
        content = transcript_to_json(transcript)
    elif fmt == transcript_pb2.TRANSCRIPT_FORMAT_TXT:
        content = _render_txt(transcript).encode("utf-8")
    elif fmt == transcript_pb2.TRANSCRIPT_FORMAT_SRT:
        content = _render_srt(transcript).encode("utf-8")
    elif fmt == transcript_pb2.TRANSCRIPT_FORMAT_VTT:
        content = _render_vtt(transcript).encode("utf-8")
    else:
        raise _unknown_format(fmt)
    return content, content_type(fmt)
