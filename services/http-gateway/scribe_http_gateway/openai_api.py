"""OpenAI audio API shapes: request fields in, transcription objects out.

Shapes follow OpenAI's API reference ("Create transcription", "The transcription object (JSON)",
"The transcription object (Verbose JSON)", "Models") and speaches, the OpenAI-compatible
faster-whisper server:

* ``json``: ``{"text": ..., "usage": {"type": "duration", "seconds": <whole seconds, rounded up>}}``;
* ``verbose_json``: ``{"task": "transcribe", "language", "duration", "text", "segments"?, "words"?,
  "usage"}``. ``segments`` are there when segment timestamps are asked for (the default, or
  ``timestamp_granularities[]=segment``), ``words`` when word timestamps are (OpenAI omits the
  segments when only ``word`` is asked for). Each segment has OpenAI's fields ``id, seek, start,
  end, text, tokens, temperature, avg_logprob, compression_ratio, no_speech_prob``; each word
  ``word, start, end`` plus ``probability`` (as speaches adds);
* ``text``: the text and a newline, ``text/plain``; ``srt`` and ``vtt``: the platform's own
  renderings (Results.GetTranscript), served ``text/plain`` as OpenAI does.

What the platform's transcript does not carry is filled in the same way every time:
``tokens`` is ``[]`` (token ids are not kept), ``temperature`` is ``0.0`` (the fallback
temperature a segment was decoded at is not kept), ``seek`` is the segment start in 10 ms mel
frames (Whisper's unit; Whisper's own seek is the start of the 30 s window). ``language`` is the
ISO 639-1 code ("en") as speaches returns it, not OpenAI's English name ("english"). Segment
and word texts are stripped of Whisper's leading space; ``text`` joins segments with one space.
"""

from __future__ import annotations

import math
import re
from typing import Any

from scribe.v1 import transcript_pb2
from scribe_http_gateway.errors import bad_request

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
#: OpenAI's model name; an alias of the deployment's default model.
WHISPER_1 = "whisper-1"
#: A BCP-47 tag's primary language subtag (RFC 5646 section 2.1: 2-3 letters; 4-8 are reserved
#: or registered languages Whisper has none of), then optional subtags.
_BCP47 = re.compile(r"^(?P<primary>[A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")


def normalize_language(value: str) -> str:
    """The platform's language code for an OpenAI ``language`` field.

    ISO 639-1 codes pass through lower-cased; a BCP-47 tag gives its primary subtag
    (``en-US`` -> ``en``, ``zh-Hant-TW`` -> ``zh``, ``pt_BR`` -> ``pt``); empty or ``auto``
    means detect (``""``). Whether Whisper knows the language is ingest's check.

    Raises:
        HttpError: 400, param ``language``, for anything that is not a language tag.
    """
    text = value.strip()
    if not text or text.lower() == "auto":
        return ""
    match = _BCP47.match(text)
    if match is None:
        raise bad_request(
            f"language {value!r} is not an ISO 639-1 code or BCP-47 tag (e.g. 'en' or 'en-US')", "language"
        )
    return match.group("primary").lower()


def parse_granularities(values: list[str]) -> set[str]:
    """``timestamp_granularities[]`` values as a set; empty means ``{"segment"}`` (OpenAI's default).

    Raises:
        HttpError: 400, param ``timestamp_granularities``, for a value other than word/segment.
    """
    out = set()
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part not in GRANULARITIES:
                raise bad_request(
                    f"timestamp_granularities: {part!r} is not one of 'word', 'segment'", "timestamp_granularities"
                )
            out.add(part)
    return out or {"segment"}


def parse_temperature(value: str | None) -> float:
    """The ``temperature`` field, 0..1 (accepted and checked; see the service README for what is used).

    Raises:
        HttpError: 400, param ``temperature``, when it is not a number in [0, 1].
    """
    if value is None or not value.strip():
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        raise bad_request(f"temperature {value!r} is not a number", "temperature") from None
    if not 0.0 <= temperature <= 1.0 or math.isnan(temperature):
        raise bad_request(f"temperature {value!r} must be between 0 and 1", "temperature")
    return temperature


def transcript_text(transcript: transcript_pb2.Transcript) -> str:
    """The whole text: segment texts, stripped, joined by one space."""
    return " ".join(t for t in (s.text.strip() for s in transcript.segments) if t)


def _usage(transcript: transcript_pb2.Transcript) -> dict[str, Any]:
    # OpenAI bills whisper-1 by the second and reports whole seconds, rounded up.
    return {"type": "duration", "seconds": math.ceil(max(transcript.duration, 0.0))}


def _f32(value: float) -> float:
    """A float32 proto field as the decimal it was (0.1f reads back as 0.10000000149...)."""
    return round(float(value), 6)


def json_object(transcript: transcript_pb2.Transcript) -> dict[str, Any]:
    """OpenAI's transcription object (``response_format=json``)."""
    return {"text": transcript_text(transcript), "usage": _usage(transcript)}


def verbose_json_object(transcript: transcript_pb2.Transcript, granularities: set[str]) -> dict[str, Any]:
    """OpenAI's verbose transcription object (``response_format=verbose_json``).

    Args:
        transcript: The job's final transcript.
        granularities: Subset of ``{"word", "segment"}`` (:func:`parse_granularities`).
    """
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript.language,
        "duration": transcript.duration,
        "text": transcript_text(transcript),
    }
    if "segment" in granularities:
        body["segments"] = [
            {
                "id": index,
                "seek": max(0, round(segment.start * 100)),
                "start": segment.start,
                "end": segment.end,
                "text": segment.text.strip(),
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": _f32(segment.avg_logprob),
                "compression_ratio": _f32(segment.compression_ratio),
                "no_speech_prob": _f32(segment.no_speech_prob),
            }
            for index, segment in enumerate(transcript.segments)
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": word.word.strip(), "start": word.start, "end": word.end, "probability": _f32(word.probability)}
            for segment in transcript.segments
            for word in segment.words
            if word.word.strip()
        ]
    body["usage"] = _usage(transcript)
    return body


def model_object(model_id: str, created: int = 0, owned_by: str = "scribe") -> dict[str, Any]:
    """OpenAI's model object (``GET /v1/models`` entries)."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
