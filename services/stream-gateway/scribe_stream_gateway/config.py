"""Stream gateway settings (environment prefix ``SCRIBE_STREAM_GATEWAY_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from scribe_libs.config import ServiceSettings, service_config
from scribe_libs.tempdirs import default_base


class Settings(ServiceSettings):
    """Stream gateway configuration. Durations in seconds."""

    model_config = service_config("SCRIBE_STREAM_GATEWAY_")

    port: int = Field(50055, description="gRPC port; 0 picks a free one.")
    max_sessions: int = Field(
        32, description="Concurrent sessions per gateway; more are refused with RESOURCE_EXHAUSTED and RetryInfo."
    )
    max_sessions_per_key: int = Field(
        8, ge=0,
        description="Concurrent sessions one API key may hold on this gateway (admin keys and a gateway without "
        "auth are exempt); more are refused with RESOURCE_EXHAUSTED KEY_SESSION_QUOTA and RetryInfo, so one "
        "caller cannot take every slot of max_sessions or of the workers' measured capacity. 0 = no per-key cap. "
        "The default, a quarter of max_sessions' default, leaves room for at least four callers.",
    )
    retry_after_seconds: float = Field(5.0, description="RetryInfo delay sent with a refused session.")
    default_model: str = Field(
        "", description="Model of sessions that name none; empty = each worker's realtime model."
    )
    max_session_seconds: float = Field(
        4 * 3600.0, description="Longest call (audio seconds); a session's own limit may only be lower."
    )
    idle_timeout_seconds: float = Field(
        30.0, description="A session with no audio, control or end for this long is closed (SESSION_IDLE)."
    )
    max_audio_gap_seconds: float = Field(
        120.0, gt=0,
        description="A session that sends no audio for this long (since its start or its last audio chunk) is "
        "closed with FAILED_PRECONDITION SESSION_IDLE even while it sends keepalives or force_finalize controls: "
        "those keep a quiet stream open across a pause, but a session holds a worker's realtime capacity, so "
        "one that only sends keepalives must not hold it forever. Silent audio (zeros) counts as audio. "
        "Two minutes covers a hold or a long pause in a call.",
    )
    key_check_seconds: float = Field(
        1.0, gt=0,
        description="How often an open session re-checks its caller's API key (the key file is re-read at most "
        "once a second); a key removed from the file ends its sessions with UNAUTHENTICATED KEY_REVOKED.",
    )
    temp_dir: str = Field(
        default_factory=default_base,
        description="Base of the gateway's own temporary directory `<temp_dir>/scribe-stream-gateway`: a "
        "retain_audio call is recorded into a sub-directory removed when the call ends; at start everything "
        "there that no running gateway holds (a killed gateway's recordings) is removed.",
    )
    max_lead_seconds: float = Field(
        5.0,
        description="Flow control: the gateway stops reading a session's requests while the audio it received "
        "is more than this far ahead of the wall clock since the first audio (gRPC then pushes back on the "
        "sender). A negative value disables pacing (accelerated replays): requests are then read as fast as "
        "they are processed.",
    )
    decode_timeout_seconds: float = Field(20.0, description="Deadline of one Transcriber.Decode call.")
    failover_timeout_seconds: float = Field(
        60.0,
        description="How long a session waits for a worker to decode its window (retrying other workers as "
        "profiles appear) before it fails with UNAVAILABLE; its audio is held meanwhile (flow control).",
    )
    worker_cooldown_seconds: float = Field(
        10.0, description="A worker whose Decode failed is not picked again for this long."
    )
    min_decode_interval_seconds: float = Field(
        0.5, gt=0,
        description="New speech (seconds) between two interim decodes of a channel when its worker keeps up; "
        "a busy worker gets fewer (one decode in flight per channel, interims coalesced).",
    )
    max_utterance_seconds: float = Field(
        0.5,
        description="Committed (LocalAgreement-2) words spanning this long are sent as a final without waiting for "
        "the end of the utterance: bounds word latency in long utterances (seconds). Committed words never "
        "change, so an early final costs no accuracy; the stored call joins a channel's finals less than 0.5 s "
        "apart into one segment. Larger values send fewer, longer finals (and later ones).",
    )
    worker_pool: str = Field("", description="Only workers of this pool decode streams; empty = any pool.")
    job_pool: str = Field("stream", description="Pool name recorded on the job of a stored call.")
    worker_api_key: SecretStr = Field(
        SecretStr(""),
        description="Service key (scope `internal`, made with generate_key(..., service=True)) for "
        "Transcriber.Decode calls. Required when the transcribers check keys: Decode needs `internal`, which no "
        "customer key holds. Empty forwards the caller's own key (development only: works for admin callers or "
        "transcribers without auth).",
    )
