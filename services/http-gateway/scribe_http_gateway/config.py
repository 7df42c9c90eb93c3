"""http-gateway settings (environment prefix ``SCRIBE_HTTP_GATEWAY_``).

The gateway is an HTTP service with no NATS, object store or key file of its own, so its
settings are not :class:`scribe_libs.config.ServiceSettings` (whose ``nats``/``store``/``auth``
fields would accept variables that do nothing here); they share its config dict
(:func:`scribe_libs.config.service_config`) and its refusal of unknown variables
(:func:`scribe_libs.config.unknown_variables`).
"""

from __future__ import annotations

from pydantic import Field

from scribe_libs.config import StrictSettings, service_config

PREFIX = "SCRIBE_HTTP_GATEWAY_"


class Settings(StrictSettings):
    """http-gateway configuration. Sizes in bytes, durations in seconds.

    Raises:
        UnknownSetting: a ``SCRIBE_HTTP_GATEWAY_*`` variable names no field (a deployment's typo).
    """

    model_config = service_config(PREFIX)

    host: str = Field("0.0.0.0", description="Address the HTTP server binds.")
    port: int = Field(8080, description="HTTP port; 0 picks a free one (written to ready_file).")
    metrics_port: int = Field(0, description="Prometheus /metrics port; 0 disables the endpoint.")
    log_level: str = Field("INFO", description="Python logging level name.")
    access_log: bool = Field(True, description="Log one line per HTTP request (uvicorn's access log).")
    ready_file: str = Field(
        "", description="If set, a JSON file {port, pid} written once the server is bound (embedded mode)."
    )
    ingest_address: str = Field("127.0.0.1:50051", description="host:port of Ingest (gRPC, plaintext).")
    results_address: str = Field("127.0.0.1:50052", description="host:port of Results (gRPC, plaintext).")
    request_timeout_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest one transcription request may take, upload, queue and decode together; past it "
        "the job is cancelled and the caller gets 504.",
    )
    max_upload_bytes: int = Field(
        2 * 1024**3,
        gt=0,
        description="Largest accepted request body, bytes (2 GiB, ingest's default max_audio_bytes; keep it at "
        "most ingest's limit). Larger bodies get 413 before or while they are read.",
    )
    upload_chunk_bytes: int = Field(
        1024 * 1024,
        gt=0,
        le=8 * 1024 * 1024,
        description="Audio bytes per CreateJob message (the services accept messages up to 16 MiB).",
    )
    default_model: str = Field(
        "",
        description="The model `whisper-1` (OpenAI's model name) stands for; empty: ingest's default_model.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="Models listed by GET /v1/models besides those live workers have loaded (JSON list), e.g. "
        "the models of ingest's configured pools.",
    )
    backend_check_timeout_seconds: float = Field(
        2.0, gt=0, description="Seconds /readyz waits for each backend's gRPC health answer."
    )
    drain_seconds: float = Field(
        5.0, description="After SIGTERM: seconds /readyz reports 503 before the server stops accepting."
    )
    grace_seconds: float = Field(
        20.0, description="Seconds in-flight requests get to finish after the drain, before they are cancelled."
    )
