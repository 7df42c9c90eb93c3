"""Ingest settings (environment prefix ``SCRIBE_INGEST_``)."""

from __future__ import annotations

from pydantic import Field

from scribe_libs.config import ServiceSettings, service_config
from scribe_libs.tempdirs import default_base
from scribe_libs.textproc.postcorrection import ModeName, check_allowed


class Settings(ServiceSettings):
    """Ingest configuration. Sizes in bytes, durations in seconds."""

    model_config = service_config("SCRIBE_INGEST_")

    port: int = Field(50051, description="gRPC port; 0 picks a free one.")
    default_model: str = Field("base", description="Model used when a JobSpec names none.")
    pools: dict[str, list[str]] = Field(
        default_factory=lambda: {"cpu": ["base", "tiny.en"]},
        description="Configured pools and the models each serves (JSON). A job for a model only a "
        "configured pool serves waits in that pool's queue even while no worker is live.",
    )
    max_audio_bytes: int = Field(2 * 1024**3, description="Largest accepted upload, bytes (2 GiB).")
    max_audio_seconds: float = Field(4 * 3600.0, description="Longest accepted audio, seconds (4 h).")
    max_queue_depth: int = Field(
        1000, description="Waiting jobs per pool; beyond it CreateJob is refused with QUEUE_FULL and a retry delay."
    )
    source_prefixes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Where each owner's jobs may read source_uri objects from (JSON): owner -> list of "
        "'bucket/' or 'bucket/key-prefix'. An owner not listed may not use source_uri; admin keys may read any "
        "bucket but scribe's own. A forbidden object gets the same NOT_FOUND answer as a missing one.",
    )
    upload_idle_timeout_seconds: float = Field(
        60.0,
        description="A CreateJob stream that sends nothing (spec, audio chunk or half-close) for this long ends "
        "with DEADLINE_EXCEEDED (reason UPLOAD_IDLE) and its spooled file is removed; 0 disables the limit.",
    )
    upload_dir: str = Field(
        default_factory=default_base,
        description="Base of ingest's own temporary directory `<upload_dir>/scribe-ingest`, where uploads are "
        "spooled while they stream in (one sub-directory per upload, removed when the call ends); cleared at "
        "start of what no running instance holds (files a killed instance left behind).",
    )
    post_correction_allowed: list[ModeName] = Field(
        default_factory=lambda: ["off"],
        description="Post-correction modes (RecognitionConfig.post_correction: off, flagged, all) a job may ask "
        "for; off and unspecified are always accepted, another mode not listed is refused at CreateJob with "
        "FAILED_PRECONDITION (reason POST_CORRECTION_NOT_ALLOWED). Must match postprocess's "
        "SCRIBE_POSTPROCESS_POST_CORRECTION_ALLOWED, and stay ['off'] where postprocess has no LLM endpoint.",
    )

    def check_post_correction(self, value: int) -> None:
        """Refuse a job's ``RecognitionConfig.post_correction`` this deployment does not allow.

        Raises:
            FailedPrecondition: ``POST_CORRECTION_NOT_ALLOWED`` (metadata ``post_correction``, ``allowed``).
            InvalidArgument: ``INVALID_POST_CORRECTION`` for an unknown value.
        """
        check_allowed(value, self.post_correction_allowed)
