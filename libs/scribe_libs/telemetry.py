"""OpenTelemetry, set up once per process, and trace context through NATS headers.

Traces and metrics are exported over OTLP when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set; Prometheus metrics are served on ``metrics_port`` when it is non-zero. gRPC servers are
instrumented by the official ``opentelemetry-instrumentation-grpc`` aio interceptors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)

_configured = False


def setup_telemetry(service: str, version: str, metrics_port: int = 0) -> None:
    """Install tracer and meter providers for ``service`` (idempotent within a process).

    Args:
        service: ``service.name`` resource attribute, e.g. ``"scribe-ingest"``.
        version: ``service.version``.
        metrics_port: TCP port for a Prometheus ``/metrics`` endpoint; 0 serves none.
    """
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": service, "service.version": version})
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
        readers.append(PrometheusMetricReader())
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    log.info("telemetry ready", extra={"otlp": bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))})


def shutdown_telemetry() -> None:
    """Flush and stop exporters (called last during shutdown)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.shutdown()


def server_interceptors() -> list[object]:
    """The official OpenTelemetry aio server interceptor."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Current trace context as NATS message headers (W3C ``traceparent``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None):  # noqa: ANN201 - otel Context
    """The trace context carried by a NATS message's headers."""
    return propagate.extract(dict(headers or {}))
