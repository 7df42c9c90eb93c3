"""Postprocess settings (environment prefix ``SCRIBE_POSTPROCESS_``)."""

from __future__ import annotations

from pydantic import Field

from scribe_libs.config import ServiceSettings, service_config


class Settings(ServiceSettings):
    """Postprocess configuration. Durations in seconds."""

    model_config = service_config("SCRIBE_POSTPROCESS_")

    port: int = Field(50054, description="gRPC port (health only); 0 picks a free one.")
    ack_wait_seconds: float = Field(60.0, description="JetStream ack wait for a post-processing message.")
    max_deliver: int = Field(5, description="Deliveries of a post-processing message before the job is FAILED.")
    retention_days: int = Field(7, description="Days transcripts are kept (scribe-results lifecycle expiry).")
