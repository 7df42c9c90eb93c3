"""Results settings (environment prefix ``SCRIBE_RESULTS_``)."""

from __future__ import annotations

from pydantic import Field

from scribe_libs.config import ServiceSettings, service_config


class Settings(ServiceSettings):
    """Results configuration. Durations in seconds."""

    model_config = service_config("SCRIBE_RESULTS_")

    port: int = Field(50052, description="gRPC port; 0 picks a free one.")
    sweep_interval_seconds: float = Field(
        900.0,
        description="How often the local object store is swept for expired objects and stale temporary files "
        "(embedded mode). Expiry is by whole days (as an S3 lifecycle rule, which S3 evaluates about once a "
        "day), and each sweep stats every object, so minutes are precise enough.",
    )
    metrics_sample_seconds: float = Field(10.0, description="How often queue and job gauges are sampled.")
    watch_poll_seconds: float = Field(
        1.0, description="While a watched job is QUEUED, how often its queue position is recomputed."
    )
