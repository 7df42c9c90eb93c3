"""Settings every service shares, as nested pydantic models.

Each service defines ``class Settings(ServiceSettings)`` with
``model_config = service_config("SCRIBE_<SERVICE>_")``, so ``SCRIBE_INGEST_NATS__URL`` sets
``settings.nats.url`` for ingest. Settings are built once in ``__main__`` and passed down.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scribe_libs.auth import AuthSettings
from scribe_libs.objectstore import StoreSettings


class NatsSettings(BaseModel):
    """How to reach NATS JetStream."""

    url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma separated.")
    connect_timeout: float = Field(5.0, description="Seconds to wait for each connection attempt.")
    max_reconnect_attempts: int = Field(-1, description="Reconnect attempts after a lost connection; -1 forever.")
    replicas: int = Field(
        1,
        ge=1,
        le=5,
        description=(
            "Replicas of every JetStream stream and KV bucket the services declare (1..5, at most the "
            "number of JetStream servers): 1 with the embedded single nats-server, 3 in the chart's "
            "3-node NATS cluster (SCRIBE_<SERVICE>_NATS__REPLICAS). An existing stream with fewer "
            "replicas is raised to this count at start (JetStream moves it by a stream update)."
        ),
    )


class UnknownSetting(ValueError):
    """Environment variables with a service's prefix that name no setting of that service."""

    def __init__(self, names: list[str], prefix: str):
        self.names = names
        super().__init__(
            f"{', '.join(names)}: no such setting (variables starting with {prefix} must name a field of "
            f"the service's settings; nested fields use '__', e.g. {prefix}NATS__URL)"
        )


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (``Model`` or ``Model | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _names_field(model: type[BaseModel], parts: list[str]) -> bool:
    """Whether ``parts`` (lower-case, split at ``__``) is a field path of ``model``."""
    fields = {name.lower(): info for name, info in model.model_fields.items()}
    info = fields.get(parts[0])
    if info is None:
        return False
    if len(parts) == 1:
        return True
    nested = _model_of(info.annotation)
    if nested is not None:
        return _names_field(nested, parts[1:])
    origin = typing.get_origin(info.annotation)
    return origin in (dict, Mapping)  # a dict field takes any key: PREFIX_POOLS__CPU


#: Variables the kubelet injects for every Service with a cluster IP (service links, on unless a
#: pod sets ``enableServiceLinks: false``): ``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT[_<port
#: name>]``, ``<NAME>_PORT_<n>_<PROTO>[_ADDR|_PORT|_PROTO]``. A Service named ``scribe-ingest``
#: gives ``SCRIBE_INGEST_SERVICE_HOST``: ingest's prefix, no setting, and not a deployment's typo.
#: (``<NAME>_PORT=tcp://...`` collides with the ``port`` field; the chart sets it explicitly, which
#: wins over service links, and turns service links off.)
#: Source: Kubernetes docs, "Service > Discovering services > Environment variables".
_SERVICE_LINK = re.compile(r"(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_ADDR|_PORT|_PROTO)?)")


def unknown_variables(settings_type: type[BaseSettings], environ: Mapping[str, str] | None = None) -> list[str]:
    """Variables of ``environ`` with the settings' ``env_prefix`` that name no field; sorted.

    ``environ`` defaults to ``os.environ``; nested fields are reached with ``__``.
    """
    prefix = str(settings_type.model_config.get("env_prefix") or "").upper()
    delimiter = settings_type.model_config.get("env_nested_delimiter") or "__"
    if not prefix:
        return []
    environ = os.environ if environ is None else environ
    unknown = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(prefix) or len(upper) == len(prefix):
            continue
        if _SERVICE_LINK.fullmatch(upper[len(prefix):]):
            continue
        parts = upper[len(prefix):].lower().split(delimiter.lower())
        if not _names_field(settings_type, parts):
            unknown.append(name)
    return sorted(unknown)


class StrictSettings(BaseSettings):
    """Settings that refuse an environment variable with their prefix that names no field.

    Building them raises :class:`UnknownSetting` (a ``ValueError``): a deployment's typo
    (``SCRIBE_TRANSCRIBER_MODELS_DIR`` for ``..._MODEL_STORE__MODELS_DIR``) stops the process at
    start, naming the variable, instead of being ignored. The base of every service's settings,
    and of processes without the services' common fields (the front door, the HTTP gateway).
    """

    def __init__(self, **values: Any) -> None:
        unknown = unknown_variables(type(self))
        if unknown:
            raise UnknownSetting(unknown, str(type(self).model_config.get("env_prefix")))
        super().__init__(**values)


class ServiceSettings(StrictSettings):
    """Fields every service has. Ports are TCP ports; 0 binds a free port (tests).

    Unknown variables with the service's prefix are refused (:class:`StrictSettings`).
    """

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
