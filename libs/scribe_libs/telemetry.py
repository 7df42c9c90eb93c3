"""OpenTelemetry, set up once per process, and trace context through NATS headers.

Exporters are chosen with OpenTelemetry's standard environment variables (the SDK
configuration spec, "General SDK Configuration" and "Exporter Selection"):

- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: comma-separated ``otlp``, ``console``,
  ``none`` (metrics also ``prometheus``). One deviation from the spec's default (``otlp``): when
  the variable is unset, OTLP is used only if ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the signal's
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``) is set, so a pod without a
  collector does not log export failures forever.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or the per-signal ``..._TRACES_PROTOCOL`` /
  ``..._METRICS_PROTOCOL``): ``grpc`` (default) or ``http/protobuf``; the exporters read their
  endpoint, headers and timeout from the ``OTEL_EXPORTER_OTLP_*`` variables themselves.
- ``OTEL_SDK_DISABLED=true``: no providers at all.

The exporter classes are found through the entry points the exporter packages register
(``opentelemetry_traces_exporter``, ``opentelemetry_metrics_exporter``), as the SDK's own
auto-configuration does. Prometheus metrics are served on ``metrics_port`` when it is non-zero.

gRPC servers are traced by the official ``opentelemetry-instrumentation-grpc`` aio interceptor;
that package records no metrics, so :class:`RpcMetricsInterceptor` records the semantic
conventions' ``rpc.server.call.duration`` histogram (seconds) per call with ``rpc.system``,
``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code``: request rate, error rate and
latency per method.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

import grpc
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

log = logging.getLogger(__name__)

_configured = False


def _exporter_names(signal: str) -> list[str]:
    """The exporters asked for ``signal`` (``"traces"`` or ``"metrics"``), per the module docstring."""
    raw = os.environ.get(f"OTEL_{signal.upper()}_EXPORTER")
    if raw is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [name.strip().lower() for name in raw.split(",") if name.strip() and name.strip().lower() != "none"]


def _exporter_class(signal: str, name: str) -> type:
    """The exporter class registered for ``name`` (``otlp`` resolved by the OTLP protocol variable).

    Raises:
        ValueError: no installed package provides it (the message lists what is installed).
    """
    if name == "otlp":
        protocol = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        name = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol.strip(), protocol)
    found = {e.name: e for e in entry_points(group=f"opentelemetry_{signal}_exporter")}
    if name not in found:
        have = ", ".join(sorted(found))
        raise ValueError(f"OTEL_{signal.upper()}_EXPORTER: no exporter {name!r} installed (have: {have})")
    return found[name].load()


def setup_telemetry(service: str, version: str, metrics_port: int = 0) -> None:
    """Install tracer and meter providers for ``service`` (idempotent within a process).

    Args:
        service: ``service.name`` resource attribute, e.g. ``"scribe-ingest"``.
        version: ``service.version``.
        metrics_port: TCP port for a Prometheus ``/metrics`` endpoint; 0 serves none.

    Raises:
        ValueError: an exporter named in ``OTEL_*_EXPORTER`` is not installed.
    """
    global _configured
    if _configured:
        return
    _configured = True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.info("telemetry disabled (OTEL_SDK_DISABLED)")
        return
    resource = Resource.create({"service.name": service, "service.version": version})
    tracer_provider = TracerProvider(resource=resource)
    traces = _exporter_names("traces")
    for name in traces:
        exporter = _exporter_class("traces", name)()
        # Console spans are written as they end (a batch would hold them until shutdown).
        processor = SimpleSpanProcessor(exporter) if name == "console" else BatchSpanProcessor(exporter)
        tracer_provider.add_span_processor(processor)
    readers: list[MetricReader] = []
    metric_exporters = _exporter_names("metrics")
    for name in metric_exporters:
        if name == "prometheus":
            continue  # served on metrics_port below
        readers.append(PeriodicExportingMetricReader(_exporter_class("metrics", name)()))
    if metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
        readers.append(PrometheusMetricReader())
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    log.info("telemetry ready", extra={"traces": traces, "metrics": metric_exporters, "metrics_port": metrics_port})


def shutdown_telemetry() -> None:
    """Flush and stop exporters (called last during shutdown)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.shutdown()


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records ``rpc.server.call.duration`` (seconds) for every call, whatever its outcome.

    Placed first, so the status it records is the one the caller receives (after the error and
    auth interceptors ran). The status is the context's code when the handler set one (abort),
    CANCELLED when the caller went away, UNKNOWN for another exception that escaped, else OK.
    Streaming calls are timed until the last response was sent (server streams) or the response
    returned (client streams).
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        """Args: meter_provider: where to record (default: the global one :func:`setup_telemetry` installs)."""
        from opentelemetry.semconv._incubating.metrics.rpc_metrics import create_rpc_server_call_duration

        provider = meter_provider or metrics.get_meter_provider()
        self._duration = create_rpc_server_call_duration(provider.get_meter("scribe.rpc"))

    def _record(self, method: str, started: float, context: Any, failed: bool, cancelled: bool = False) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        code = grpc.StatusCode.CANCELLED.value[0] if cancelled else _status_code(context, failed)
        self._duration.record(time.perf_counter() - started, {
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": name, "rpc.grpc.status_code": code,
        })

    async def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """The handler, its behavior wrapped to record the call's duration and status."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        record = self._record
        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            async def unary_response(request: Any, context: Any) -> Any:
                started, failed, cancelled = time.perf_counter(), False, False
                try:
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                except BaseException:
                    failed = True
                    raise
                finally:
                    record(method, started, context, failed, cancelled)

            factory = (grpc.unary_unary_rpc_method_handler if handler.unary_unary
                       else grpc.stream_unary_rpc_method_handler)
            return factory(unary_response, handler.request_deserializer, handler.response_serializer)
        behavior = handler.unary_stream or handler.stream_stream
        if not inspect.isasyncgenfunction(behavior):  # writes with context.write() instead of yielding

            async def writing_response(request: Any, context: Any) -> Any:
                started, failed, cancelled = time.perf_counter(), False, False
                try:
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                except BaseException:
                    failed = True
                    raise
                finally:
                    record(method, started, context, failed, cancelled)

            stream_response: Callable = writing_response
        else:

            async def yielding_response(request: Any, context: Any) -> Any:
                started, failed, cancelled = time.perf_counter(), False, False
                try:
                    async for response in behavior(request, context):
                        yield response
                except asyncio.CancelledError:
                    cancelled = True
                    raise
                except BaseException:
                    failed = True
                    raise
                finally:
                    record(method, started, context, failed, cancelled)

            stream_response = yielding_response

        factory = (grpc.unary_stream_rpc_method_handler if handler.unary_stream
                   else grpc.stream_stream_rpc_method_handler)
        return factory(stream_response, handler.request_deserializer, handler.response_serializer)


def _status_code(context: Any, failed: bool) -> int:
    """The numeric gRPC status a call ends with (see :class:`RpcMetricsInterceptor`)."""
    code = None
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a context without code() (older grpc): unknown here
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.value[0]
    if isinstance(code, int):
        return code
    return grpc.StatusCode.UNKNOWN.value[0] if failed else grpc.StatusCode.OK.value[0]


def server_interceptors() -> list[object]:
    """Per-call metrics (:class:`RpcMetricsInterceptor`), then the official OpenTelemetry aio tracer."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [RpcMetricsInterceptor(), aio_server_interceptor()]


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Current trace context as NATS message headers (W3C ``traceparent``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None):  # noqa: ANN201 - otel Context
    """The trace context carried by a NATS message's headers."""
    return propagate.extract(dict(headers or {}))
