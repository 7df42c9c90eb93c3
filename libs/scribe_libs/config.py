"""Settings every service shares, as nested pydantic models.

Each service defines ``class Settings(ServiceSettings)`` with
``model_config = service_config("SCRIBE_<SERVICE>_")``, so ``SCRIBE_INGEST_NATS__URL`` sets
``settings.nats.url`` for ingest. Settings are built once in ``__main__`` and passed down.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scribe_libs.auth import AuthSettings
from scribe_libs.objectstore import StoreSettings


class NatsSettings(BaseModel):
    """How to reach NATS JetStream."""

    url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma separated.")
    connect_timeout: float = Field(5.0, description="Seconds to wait for each connection attempt.")
    max_reconnect_attempts: int = Field(-1, description="Reconnect attempts after a lost connection; -1 forever.")


class ServiceSettings(BaseSettings):
    """Fields every service has. Ports are TCP ports; 0 binds a free port (tests)."""

    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(0, description="gRPC port; 0 picks a free one (written to ready_file).")
    metrics_port: int = Field(0, description="Prometheus /metrics port; 0 disables the endpoint.")
    log_level: str = Field("INFO", description="Python logging level name.")
    drain_seconds: float = Field(
        5.0, description="After SIGTERM: seconds health reports NOT_SERVING before the server stops."
    )
    grace_seconds: float = Field(20.0, description="Seconds in-flight RPCs get in server.stop(grace).")
    ready_file: str = Field(
        "", description="If set, a JSON file {port, pid} written once the server is bound (embedded mode)."
    )
    nats: NatsSettings = Field(default_factory=NatsSettings, description="NATS connection.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Object store.")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys.")
    retention_days: float = Field(
        7.0, description="Days job records and transcripts are kept (KV TTL, bucket lifecycle, local sweeper)."
    )


def service_config(prefix: str) -> SettingsConfigDict:
    """The pydantic-settings config for a service whose variables start with ``prefix``."""
    return SettingsConfigDict(env_prefix=prefix, env_nested_delimiter="__", extra="ignore")
