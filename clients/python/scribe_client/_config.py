"""What both clients share: addresses, channel options (retries, keep-alive), requests, results."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, cast

import grpc

from scribe_client._stubs import ingest_pb2, jobs_pb2, streaming_pb2, transcript_pb2

#: The embedded stack's front door (``scribe up``); ``$SCRIBE_ADDRESS`` overrides it.
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: Audio bytes per CreateJob message (what the CLI sends; far below the servers' 16 MiB limit).
CHUNK_BYTES = 1024 * 1024
#: Largest message the client accepts (the servers' own limit, scribe_libs.server.MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: The services a client talks to, by the name used in ``addresses``.
SERVICES = ("Ingest", "Results", "StreamGateway")

#: A batch source: a local file path, the audio bytes, or an ``s3://bucket/key`` URI of audio already
#: in the deployment's object storage (``JobSpec.source_uri``).
Source: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview

_RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

#: Idempotent methods gRPC itself retries on UNAVAILABLE (reads; WatchJob until its first message,
#: when a server stream is committed). CreateJob is retried by the client (see ``Client.submit``),
#: not here: a client-streamed upload is committed once it exceeds gRPC's 256 KiB retry buffer,
#: so only resending the whole source, with the same request_id, is a real retry.
RETRIED_METHODS = (
    ("scribe.v1.Results", "GetJob"),
    ("scribe.v1.Results", "ListJobs"),
    ("scribe.v1.Results", "GetTranscript"),
    ("scribe.v1.Results", "ListWorkers"),
    ("scribe.v1.Results", "WatchJob"),
)


def service_config(max_attempts: int = 5) -> str:
    """The ``grpc.service_config`` JSON: retries on UNAVAILABLE for :data:`RETRIED_METHODS`.

    Backoff 0.2 s doubling to at most 5 s (gRPC randomises each delay in [0, backoff]); gRPC caps
    ``maxAttempts`` at 5. ``retryThrottling`` stops retries when more than half of recent calls
    failed (10 tokens, 0.1 back per success), so an outage is not multiplied by five.
    """
    policy = dict(_RETRY_POLICY, maxAttempts=max(2, min(max_attempts, 5)))
    return json.dumps({
        "methodConfig": [
            {"name": [{"service": s, "method": m} for s, m in RETRIED_METHODS], "retryPolicy": policy},
        ],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    })


def channel_options(max_attempts: int, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Channel arguments: retries, keep-alive, message size, user agent; ``extra`` overrides them.

    Keep-alive: a ping every 5 minutes on an open call, 20 s to answer. Not more often: a gRPC
    server by default refuses pings closer than 5 minutes on a connection that sends no data
    (``grpc.http2.min_recv_ping_interval_without_data_ms``) and closes it with GOAWAY
    ``too_many_pings`` after two, which a quiet WatchJob of a queued job would trigger. A
    deployment whose servers or proxy allow more may pass e.g.
    ``[("grpc.keepalive_time_ms", 30000)]`` as ``channel_options``.
    """
    from scribe_client import __version__

    options: dict[str, Any] = {
        "grpc.enable_retries": 1,
        "grpc.service_config": service_config(max_attempts),
        "grpc.keepalive_time_ms": 300_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.primary_user_agent": f"scribe-client-python/{__version__}",
    }
    options.update(dict(extra))
    return list(options.items())


def credentials(ca_cert: str | os.PathLike[str] | bytes | None) -> grpc.ChannelCredentials:
    """TLS credentials; ``ca_cert`` (PEM bytes or a file path) replaces the system roots when given."""
    if ca_cert is None:
        return grpc.ssl_channel_credentials()
    pem = ca_cert if isinstance(ca_cert, bytes) else Path(ca_cert).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


def open_channel(
    address: str,
    *,
    tls: bool = False,
    ca_cert: str | os.PathLike[str] | bytes | None = None,
    max_attempts: int = 5,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``address`` as :class:`scribe_client.Client` opens them.

    The retry service config, keep-alive and message limits of :func:`channel_options`; TLS when
    ``tls`` or ``ca_cert`` (PEM bytes or a path) is given. For callers that use the generated
    stubs themselves (the ``scribe`` CLI); the API key is the caller's to send.
    """
    opts = channel_options(max(1, max_attempts), options)
    if tls or ca_cert is not None:
        return grpc.secure_channel(address, credentials(ca_cert), options=opts)
    return grpc.insecure_channel(address, options=opts)


def resolve_addresses(address: str | None, addresses: Mapping[str, str] | None) -> dict[str, str]:
    """``{service: host:port}`` for :data:`SERVICES`: ``addresses`` where given, else ``address``.

    Raises:
        ValueError: ``addresses`` names a service that is not one of :data:`SERVICES`.
    """
    unknown = set(addresses or {}) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown services in addresses: {sorted(unknown)}; known: {list(SERVICES)}")
    default = address or os.environ.get("SCRIBE_ADDRESS") or DEFAULT_ADDRESS
    return {name: (addresses or {}).get(name, default) for name in SERVICES}


def api_key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying ``api_key`` (None: ``$SCRIBE_API_KEY``; empty: no metadata).

    The header is ``x-api-key``; the servers also accept ``authorization: Bearer <key>``
    (scribe_libs.auth), but never two different keys in one call (``AMBIGUOUS_CREDENTIALS``).
    """
    key = api_key if api_key is not None else os.environ.get("SCRIBE_API_KEY", "")
    return (("x-api-key", key),) if key else ()


# --- requests --------------------------------------------------------------------------------------

_SPEC_FIELDS = frozenset(f.name for f in jobs_pb2.JobSpec.DESCRIPTOR.fields) - {"config", "source_uri"}
_CONFIG_FIELDS = frozenset(f.name for f in transcript_pb2.RecognitionConfig.DESCRIPTOR.fields)


def job_spec(
    config: Any = None, fields: Mapping[str, Any] | None = None, source_uri: str = "", filename: str = ""
) -> Any:
    """A ``scribe.v1.JobSpec``.

    Args:
        config: A ``scribe.v1.RecognitionConfig``, a dict of its fields, or None.
        fields: Keyword fields, each a RecognitionConfig field (``language``, ``model``,
            ``hotwords``, ``initial_prompt``, ``word_timestamps``, ``beam_size``, ``vad_filter``) or
            a JobSpec field (``labels``, ``request_id``, ``filename``, ``retain_audio``,
            ``glossary_ids``, ``redact``); they override ``config``. ``request_id=None`` or absent:
            a random one is sent (so the upload can be retried safely); ``""``: none.
        source_uri: ``JobSpec.source_uri``.
        filename: Default ``JobSpec.filename``.

    Raises:
        TypeError: a field that is in neither message.
    """
    fields = dict(fields or {})
    unknown = set(fields) - _SPEC_FIELDS - _CONFIG_FIELDS
    if unknown:
        raise TypeError(
            f"unknown job fields {sorted(unknown)}; RecognitionConfig has {sorted(_CONFIG_FIELDS)}, "
            f"JobSpec has {sorted(_SPEC_FIELDS)}"
        )
    recognition = transcript_pb2.RecognitionConfig()
    if isinstance(config, Mapping):
        recognition = transcript_pb2.RecognitionConfig(**config)
    elif config is not None:
        recognition.CopyFrom(config)
    for name in _CONFIG_FIELDS & set(fields):
        value = fields.pop(name)
        if value is None:
            recognition.ClearField(name)
        elif isinstance(value, list | tuple):
            del getattr(recognition, name)[:]
            getattr(recognition, name).extend(value)
        else:
            setattr(recognition, name, value)
    request_id = fields.pop("request_id", None)
    spec = jobs_pb2.JobSpec(
        config=recognition, source_uri=source_uri,
        request_id=uuid.uuid4().hex if request_id is None else request_id,
        **{k: v for k, v in fields.items() if v is not None},
    )
    if not spec.filename and filename:
        spec.filename = filename
    return spec


@dataclass(frozen=True)
class Upload:
    """A batch source resolved: the spec to send first and where the audio comes from.

    ``path`` or ``data`` holds the audio (neither for a ``source_uri``); both can be read again,
    so a retried upload resends the same bytes.
    """

    spec: Any
    path: Path | None = None
    data: bytes | None = None

    def requests(self) -> Iterator[Any]:
        """``CreateJobRequest`` messages: the spec, then the audio in :data:`CHUNK_BYTES` chunks."""
        yield ingest_pb2.CreateJobRequest(spec=self.spec)
        if self.path is not None:
            with self.path.open("rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield ingest_pb2.CreateJobRequest(audio=chunk)
        elif self.data is not None:
            view = memoryview(self.data)
            for lo in range(0, len(view), CHUNK_BYTES):
                yield ingest_pb2.CreateJobRequest(audio=bytes(view[lo:lo + CHUNK_BYTES]))


def upload(source: Source, config: Any, fields: Mapping[str, Any]) -> Upload:
    """Resolve ``source`` (see :data:`Source`) and the job fields into an :class:`Upload`.

    Raises:
        FileNotFoundError: a path that is not a file.
        TypeError: an unknown field or source type.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return Upload(job_spec(config, fields), data=bytes(source))
    if isinstance(source, str) and "://" in source:
        return Upload(job_spec(config, fields, source_uri=source))
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file")
        return Upload(job_spec(config, fields, filename=path.name), path=path)
    raise TypeError(f"source must be a path, bytes or an s3:// URI, not {type(source).__name__}")


_ENCODINGS = {
    "linear16": streaming_pb2.AUDIO_ENCODING_LINEAR16,
    "mulaw": streaming_pb2.AUDIO_ENCODING_MULAW,
    "alaw": streaming_pb2.AUDIO_ENCODING_ALAW,
}


def streaming_config(config: Any, fields: Mapping[str, Any]) -> Any:
    """A ``scribe.v1.StreamingConfig`` from a message or dict plus keyword fields.

    ``encoding`` may be the enum value or a name (``"linear16"``, ``"mulaw"``, ``"alaw"``); unset
    means LINEAR16, and an unset ``sample_rate_hertz`` means 16000 Hz.

    Raises:
        TypeError: a field StreamingConfig does not have.
        ValueError: an unknown encoding name.
    """
    names = {f.name for f in streaming_pb2.StreamingConfig.DESCRIPTOR.fields}
    unknown = set(fields) - names
    if unknown:
        raise TypeError(f"unknown StreamingConfig fields {sorted(unknown)}; it has {sorted(names)}")
    merged: dict[str, Any] = {}
    if isinstance(config, Mapping):
        merged.update(config)
    merged.update({k: v for k, v in fields.items() if v is not None})
    encoding = merged.get("encoding")
    if isinstance(encoding, str):
        try:
            merged["encoding"] = _ENCODINGS[encoding.lower().removeprefix("audio_encoding_")]
        except KeyError:
            raise ValueError(f"unknown encoding {encoding!r}; use one of {sorted(_ENCODINGS)}") from None
    out = streaming_pb2.StreamingConfig()
    if config is not None and not isinstance(config, Mapping):
        out.CopyFrom(config)
    out.MergeFrom(streaming_pb2.StreamingConfig(**merged))
    if not out.encoding:
        out.encoding = streaming_pb2.AUDIO_ENCODING_LINEAR16
    if not out.sample_rate_hertz:
        out.sample_rate_hertz = 16000
    return out


def stream_request(item: bytes | bytearray | memoryview | Any) -> Any:
    """A ``StreamingRecognizeRequest``: audio bytes wrapped, a request (e.g. a control) as is."""
    if isinstance(item, bytes | bytearray | memoryview):
        return streaming_pb2.StreamingRecognizeRequest(audio=bytes(item))
    return item


# --- results ---------------------------------------------------------------------------------------

_FORMATS = {
    "json": transcript_pb2.TRANSCRIPT_FORMAT_JSON,
    "txt": transcript_pb2.TRANSCRIPT_FORMAT_TXT,
    "srt": transcript_pb2.TRANSCRIPT_FORMAT_SRT,
    "vtt": transcript_pb2.TRANSCRIPT_FORMAT_VTT,
}


def transcript_format(fmt: str | int) -> transcript_pb2.TranscriptFormat:
    """The ``TranscriptFormat`` value of a name (``json``, ``txt``, ``srt``, ``vtt``) or value.

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(fmt, int):
        transcript_pb2.TranscriptFormat.Name(fmt)  # ValueError for a value the contract does not have
        return cast("transcript_pb2.TranscriptFormat", fmt)
    try:
        return _FORMATS[fmt.lower().lstrip(".")]
    except KeyError:
        raise ValueError(f"unknown transcript format {fmt!r}; use one of {sorted(_FORMATS)}") from None


TERMINAL = frozenset({jobs_pb2.JOB_STATE_COMPLETED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED})


def is_terminal(job: Any) -> bool:
    """True for COMPLETED, FAILED and CANCELLED."""
    return job.state in TERMINAL


def parse_transcript(response: Any) -> Any:
    """The ``scribe.v1.Transcript`` of a JSON ``GetTranscriptResponse``.

    Uses the typed ``transcript`` field when the server sets it (newer servers), else parses the
    JSON ``content`` (fields this client does not know are ignored, so a newer server's additions
    do not break it).
    """
    from google.protobuf import json_format

    descriptor = response.DESCRIPTOR
    if "transcript" in descriptor.fields_by_name and response.HasField("transcript"):
        return response.transcript
    return json_format.Parse(response.content, transcript_pb2.Transcript(), ignore_unknown_fields=True)


class Transcript:
    """A finished job's transcript: the ``scribe.v1.Transcript`` message plus its text.

    Attributes:
        message: The ``scribe.v1.Transcript`` (segments, words, language, model, corrections, ...).
        job: The job's final ``scribe.v1.Job`` record (None when fetched by id alone).
    """

    def __init__(self, message: Any, job: Any = None):
        self.message = message
        self.job = job

    @property
    def text(self) -> str:
        """Every segment's text, stripped, joined by single spaces (the txt format has one per line)."""
        return " ".join(s.text.strip() for s in self.message.segments if s.text.strip())

    @property
    def segments(self) -> Sequence[Any]:
        """The ``scribe.v1.Segment`` list; times in seconds from the start of the audio."""
        return self.message.segments  # type: ignore[no-any-return]

    @property
    def words(self) -> list[Any]:
        """Every segment's ``scribe.v1.Word`` in order (empty unless ``word_timestamps`` was set)."""
        return [w for s in self.message.segments for w in s.words]

    @property
    def language(self) -> str:
        """Detected or requested language, ISO 639-1 (e.g. ``"en"``)."""
        return str(self.message.language)

    @property
    def duration(self) -> float:
        """Audio duration in seconds."""
        return float(self.message.duration)

    @property
    def job_id(self) -> str:
        """The job's id."""
        return str(self.message.job_id)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        preview = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return f"Transcript(job_id={self.job_id!r}, language={self.language!r}, text={preview!r})"
