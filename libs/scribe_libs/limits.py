"""Input limits, in one place: every string and repeated field a caller sends, and audio shape.

Why bounds at all: a job record is one NATS message (KV ``scribe_jobs``) and every job event
carries it; NATS refuses a message over the server's ``max_payload`` (1 MiB by default,
nats-server ``max_payload``) and a client that sends one loses its connection. Every field a
caller controls is therefore bounded well below that, so that a record of a spec at every limit
still fits (:data:`MAX_SPEC_BYTES` is the sum, checked by a unit test), and
:class:`scribe_libs.jobs.JobStore` refuses any record that would not fit anyway.

Sizes are UTF-8 bytes (what travels), not characters: a Korean character is 3 bytes.

=====================================  ==========  ============================================
Field                                  Limit       Source
=====================================  ==========  ============================================
``filename``                           1024 B      POSIX ``PATH_MAX`` is 4096; names are ~255
``labels``                             64 entries  Kubernetes/GCP label practice
label key                              128 B       GCP label keys are <= 63 chars; headroom
label value                            1024 B      a label is a tag, not a document
``request_id``                         256 B       idempotency keys are UUIDs (36 chars)
``source_uri``                         2048 B      S3 keys are <= 1024 B, plus bucket/scheme
``glossary_ids``                       32 ids      ``GlossaryStore`` ids are short slugs
glossary id                            128 B
``config.language``                    35 B        BCP-47 tags (RFC 5646 advises 35 characters), "auto"
``config.model``                       256 B       hub ids ``org/name``
``config.hotwords``                    100 terms   = ``recognition.MAX_HOTWORDS``
hotword                                4000 B      ``recognition.MAX_PROMPT_CHARS`` (1000) x 4
``config.initial_prompt``              4000 B      1000 chars (Whisper's 224-token budget) x 4
``channel_roles`` (streaming, batch)   8 roles     a role each for at most MAX_CHANNELS
``config.allowed_languages``           16 tags     a call's languages are few; each 35 B
=====================================  ==========  ============================================

Audio: at most :data:`MAX_CHANNELS` channels (a call has 1-2, a conference recorder up to 8;
FFmpeg's downmix of 64 channels fails with EINVAL deep inside the decode). A file whose decoded
audio is shorter than its header states by more than :func:`truncation_tolerance` is truncated
(an upload cut short) and fails with ``TRUNCATED_AUDIO``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scribe_libs.errors import InvalidArgument

MAX_FILENAME_BYTES = 1024
MAX_LABELS = 64
MAX_LABEL_KEY_BYTES = 128
MAX_LABEL_VALUE_BYTES = 1024
MAX_REQUEST_ID_BYTES = 256
MAX_SOURCE_URI_BYTES = 2048
MAX_GLOSSARY_IDS = 32
MAX_GLOSSARY_ID_BYTES = 128
MAX_LANGUAGE_BYTES = 35
MAX_MODEL_BYTES = 256
MAX_HOTWORDS = 100
MAX_HOTWORD_BYTES = 4000
MAX_PROMPT_BYTES = 4000
MAX_CHANNEL_ROLES = 8
MAX_CHANNEL_ROLE_BYTES = 256
MAX_ALLOWED_LANGUAGES = 16

#: Most channels accepted in an uploaded file.
MAX_CHANNELS = 8

#: Bytes a JobSpec at every limit takes at most (field payloads; protobuf framing adds < 10 %).
MAX_SPEC_BYTES = (
    MAX_FILENAME_BYTES + MAX_LABELS * (MAX_LABEL_KEY_BYTES + MAX_LABEL_VALUE_BYTES) + MAX_REQUEST_ID_BYTES
    + MAX_SOURCE_URI_BYTES + MAX_GLOSSARY_IDS * MAX_GLOSSARY_ID_BYTES + MAX_LANGUAGE_BYTES + MAX_MODEL_BYTES
    + MAX_HOTWORDS * MAX_HOTWORD_BYTES + MAX_PROMPT_BYTES + MAX_CHANNEL_ROLES * MAX_CHANNEL_ROLE_BYTES
    + MAX_ALLOWED_LANGUAGES * MAX_LANGUAGE_BYTES
)

#: Truncation tolerance: decoded audio may fall short of the header's duration by this many
#: seconds or this fraction of it, whichever is larger (encoder padding, rounding of the header).
TRUNCATION_TOLERANCE_SECONDS = 1.0
TRUNCATION_TOLERANCE_FRACTION = 0.02


def truncation_tolerance(stated_seconds: float) -> float:
    """Seconds decoded audio may fall short of ``stated_seconds``: max(1 s, 2 %)."""
    return max(TRUNCATION_TOLERANCE_SECONDS, TRUNCATION_TOLERANCE_FRACTION * stated_seconds)


def is_truncated(decoded_seconds: float, stated_seconds: float) -> bool:
    """True when ``decoded_seconds`` is shorter than ``stated_seconds`` beyond the tolerance."""
    return stated_seconds > 0 and stated_seconds - decoded_seconds > truncation_tolerance(stated_seconds)


def truncated_message(decoded_seconds: float, stated_seconds: float) -> str:
    """The caller's explanation of ``TRUNCATED_AUDIO``, with processed and total seconds."""
    return (
        f"the audio is truncated: {decoded_seconds:.1f} s of {stated_seconds:.1f} s stated by its header could "
        "be decoded (an incomplete upload or a cut file); upload the whole file"
    )


def too_long(field: str, size: int, limit: int) -> InvalidArgument:
    """``FIELD_TOO_LONG`` naming ``field`` and its limit (ErrorInfo metadata ``field``, ``limit``)."""
    return InvalidArgument(
        "FIELD_TOO_LONG", f"{field} is {size} bytes; the limit is {limit} bytes", field=field,
        metadata={"field": field, "limit": str(limit), "size": str(size)},
    )


def too_many(field: str, count: int, limit: int) -> InvalidArgument:
    """``TOO_MANY_VALUES`` naming ``field`` and its limit."""
    return InvalidArgument(
        "TOO_MANY_VALUES", f"{field} has {count} entries; the limit is {limit}", field=field,
        metadata={"field": field, "limit": str(limit), "size": str(count)},
    )


def check_string(value: str, field: str, limit: int) -> None:
    """Raise ``FIELD_TOO_LONG`` when ``value`` is over ``limit`` UTF-8 bytes."""
    # len(str) <= bytes <= 4 x len(str): skip the encode for the common short value.
    if len(value) * 4 <= limit:
        return
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise too_long(field, size, limit)


def check_strings(values: Iterable[str], field: str, count_limit: int, size_limit: int) -> None:
    """A repeated string field: at most ``count_limit`` entries of at most ``size_limit`` bytes."""
    values = list(values)
    if len(values) > count_limit:
        raise too_many(field, len(values), count_limit)
    for value in values:
        check_string(value, field, size_limit)


def check_labels(labels: Mapping[str, str], field: str) -> None:
    """A label map: MAX_LABELS entries, keys and values bounded."""
    if len(labels) > MAX_LABELS:
        raise too_many(field, len(labels), MAX_LABELS)
    for key, value in labels.items():
        check_string(key, f"{field}.key", MAX_LABEL_KEY_BYTES)
        check_string(value, f"{field}[{key}]" if len(key) <= 64 else f"{field}.value", MAX_LABEL_VALUE_BYTES)


def check_recognition_config(config, field: str) -> None:  # noqa: ANN001 - a RecognitionConfig
    """The string fields of a ``RecognitionConfig`` (before :func:`recognition.validate_config`)."""
    check_string(config.language, f"{field}.language", MAX_LANGUAGE_BYTES)
    check_string(config.model, f"{field}.model", MAX_MODEL_BYTES)
    check_strings(config.hotwords, f"{field}.hotwords", MAX_HOTWORDS, MAX_HOTWORD_BYTES)
    check_string(config.initial_prompt, f"{field}.initial_prompt", MAX_PROMPT_BYTES)
    check_strings(config.channel_roles, f"{field}.channel_roles", MAX_CHANNEL_ROLES, MAX_CHANNEL_ROLE_BYTES)
    check_strings(config.allowed_languages, f"{field}.allowed_languages", MAX_ALLOWED_LANGUAGES, MAX_LANGUAGE_BYTES)


def check_job_spec(spec, field: str = "spec") -> None:  # noqa: ANN001 - a JobSpec
    """Every string and repeated field of a ``JobSpec`` within its limit.

    Raises:
        InvalidArgument: ``FIELD_TOO_LONG`` or ``TOO_MANY_VALUES`` with the field (e.g.
            ``spec.filename``) in BadRequest and ErrorInfo metadata, and the limit in the message.
    """
    check_string(spec.filename, f"{field}.filename", MAX_FILENAME_BYTES)
    check_string(spec.request_id, f"{field}.request_id", MAX_REQUEST_ID_BYTES)
    check_string(spec.source_uri, f"{field}.source_uri", MAX_SOURCE_URI_BYTES)
    check_labels(spec.labels, f"{field}.labels")
    check_strings(spec.glossary_ids, f"{field}.glossary_ids", MAX_GLOSSARY_IDS, MAX_GLOSSARY_ID_BYTES)
    check_recognition_config(spec.config, f"{field}.config")


def check_streaming_config(config, field: str = "config") -> None:  # noqa: ANN001 - a StreamingConfig
    """Every string and repeated field of a ``StreamingConfig`` within its limit (see check_job_spec)."""
    check_string(config.language, f"{field}.language", MAX_LANGUAGE_BYTES)
    check_string(config.model, f"{field}.model", MAX_MODEL_BYTES)
    check_strings(config.hotwords, f"{field}.hotwords", MAX_HOTWORDS, MAX_HOTWORD_BYTES)
    check_strings(config.channel_roles, f"{field}.channel_roles", MAX_CHANNEL_ROLES, MAX_CHANNEL_ROLE_BYTES)
    check_strings(config.allowed_languages, f"{field}.allowed_languages", MAX_ALLOWED_LANGUAGES, MAX_LANGUAGE_BYTES)
    check_strings(config.glossary_ids, f"{field}.glossary_ids", MAX_GLOSSARY_IDS, MAX_GLOSSARY_ID_BYTES)
    check_labels(config.labels, f"{field}.labels")
