"""Validation of a session's first message (``StreamingConfig``) into :class:`SessionOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field

from scribe.v1 import streaming_pb2, transcript_pb2
from scribe_libs.callaudio import AudioEncoding, encoding_from_proto, validate_format
from scribe_libs.errors import InvalidArgument
from scribe_libs.limits import check_streaming_config
from scribe_libs.recognition import language_code, validate_config
from scribe_stream_gateway.config import Settings

#: Endpointing silence bounds, ms: below 100 ms a breath ends an utterance; above 5 s the caller
#: waits too long for finals (Google STT and Deepgram cap endpointing in the same range).
MIN_ENDPOINTING_MS = 100
MAX_ENDPOINTING_MS = 5000
DEFAULT_ENDPOINTING_MS = 500
MAX_ROLE_CHARS = 64


@dataclass(frozen=True)
class SessionOptions:
    """A validated session configuration.

    Attributes:
        encoding: LINEAR16, MULAW or ALAW (a ``str`` enum: equal to its name).
        sample_rate: Hz.
        channels: 1 or 2.
        roles: One label per channel ("" when none was given).
        language: Whisper language code, "" for auto.
        allowed_languages: Whisper codes detection may choose from (empty: any).
        model: Model name, "" for each worker's realtime model.
        hotwords: Bias terms.
        endpointing_ms: Silence that ends an utterance.
        max_session_seconds: Audio seconds after which the session ends (SESSION_TOO_LONG).
        config: The caller's config as sent (for the stored job).
    """

    encoding: AudioEncoding
    sample_rate: int
    channels: int
    roles: tuple[str, ...]
    language: str
    model: str
    hotwords: tuple[str, ...]
    endpointing_ms: int
    max_session_seconds: float
    config: streaming_pb2.StreamingConfig = field(compare=False)
    allowed_languages: tuple[str, ...] = ()

    @property
    def interim_results(self) -> bool:
        """Send interims."""
        return self.config.interim_results

    @property
    def word_timestamps(self) -> bool:
        """Send words with times."""
        return self.config.word_timestamps


def validate_streaming_config(config: streaming_pb2.StreamingConfig, settings: Settings) -> SessionOptions:
    """Check the first message's config.

    Raises:
        InvalidArgument: ``UNSUPPORTED_ENCODING`` (``config.encoding``), ``UNSUPPORTED_SAMPLE_RATE``,
            ``UNSUPPORTED_CHANNELS``, ``CHANNEL_ROLES_MISMATCH`` (``config.channel_roles``),
            ``INVALID_ENDPOINTING`` (``config.endpointing_ms``), ``INVALID_MAX_SESSION_DURATION``, and the
            RecognitionConfig reasons (``UNKNOWN_LANGUAGE``, ``UNKNOWN_MODEL``, ``MODEL_LANGUAGE_MISMATCH``,
            ``PROMPT_TOO_LONG``) with ``config.<field>``; ``FIELD_TOO_LONG`` / ``TOO_MANY_VALUES`` for any
            string or repeated field over its :mod:`scribe_libs.limits` bound (labels included).
    """
    check_streaming_config(config)
    encoding = encoding_from_proto(config.encoding, field="config.encoding")
    channels = config.audio_channel_count or 1
    validate_format(encoding, config.sample_rate_hertz, channels, field_prefix="config.")
    roles = tuple(r.strip() for r in config.channel_roles)
    if roles and len(roles) != channels:
        raise InvalidArgument(
            "CHANNEL_ROLES_MISMATCH", f"{len(roles)} channel roles for {channels} channel(s): give one per channel",
            field="config.channel_roles",
        )
    if any(len(r) > MAX_ROLE_CHARS for r in roles):
        raise InvalidArgument("INVALID_CHANNEL_ROLE", f"a role is at most {MAX_ROLE_CHARS} characters",
                              field="config.channel_roles")
    endpointing = config.endpointing_ms or DEFAULT_ENDPOINTING_MS
    if not MIN_ENDPOINTING_MS <= endpointing <= MAX_ENDPOINTING_MS:
        raise InvalidArgument(
            "INVALID_ENDPOINTING", f"endpointing_ms must be {MIN_ENDPOINTING_MS}-{MAX_ENDPOINTING_MS} (0: default)",
            field="config.endpointing_ms",
        )
    limit = settings.max_session_seconds
    requested = config.max_session_duration.ToTimedelta().total_seconds() if config.HasField(
        "max_session_duration") else 0.0
    if requested < 0:
        raise InvalidArgument("INVALID_MAX_SESSION_DURATION", "max_session_duration must be positive",
                              field="config.max_session_duration")
    model = config.model.strip() or settings.default_model
    recognition = transcript_pb2.RecognitionConfig(
        language=config.language, model=model or "large-v3", hotwords=config.hotwords,
        allowed_languages=config.allowed_languages,
    )
    # "large-v3" only stands in for "the worker's realtime model" so the language is checked.
    checked = validate_config(recognition, settings.default_model or "large-v3", field="config")
    return SessionOptions(
        encoding=encoding,
        sample_rate=config.sample_rate_hertz,
        channels=channels,
        roles=roles or tuple("" for _ in range(channels)),
        language=language_code(checked.language),  # the decoder's code; the call's tag stays in config
        model=model,
        hotwords=tuple(checked.hotwords),
        endpointing_ms=endpointing,
        max_session_seconds=min(requested, limit) if requested else limit,
        config=config,
        allowed_languages=tuple(language_code(tag) for tag in checked.allowed_languages),
    )
