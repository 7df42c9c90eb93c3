"""Telemetry as users configure it (issue 12): exporters from the standard OTEL_* variables, and
per-RPC server metrics (rpc.server.call.duration) on a real grpc.aio server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from scribe_libs import telemetry


@pytest.mark.parametrize(
    ("env", "signal", "expected"),
    [
        ({}, "traces", []),  # nothing asked, no endpoint: no exporter (no failing exports)
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "traces", ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318"}, "metrics", ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, "traces", ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, "traces", ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "traces", []),
    ],
)
def test_exporters_are_chosen_by_the_standard_variables(monkeypatch, env, signal, expected):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert telemetry._exporter_names(signal) == expected


def test_the_otlp_protocol_variable_picks_grpc_or_http_and_console_is_the_sdks(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    assert telemetry._exporter_class("traces", "otlp").__module__.endswith("proto.grpc.trace_exporter")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert telemetry._exporter_class("traces", "otlp").__module__.endswith("proto.http.trace_exporter")
    assert telemetry._exporter_class("metrics", "otlp").__module__.endswith("proto.http.metric_exporter")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")  # the per-signal one wins
    assert telemetry._exporter_class("metrics", "otlp").__module__.endswith("proto.grpc.metric_exporter")
    assert telemetry._exporter_class("traces", "console").__name__ == "ConsoleSpanExporter"
    with pytest.raises(ValueError, match="no exporter 'zipkin'"):
        telemetry._exporter_class("traces", "zipkin")


async def test_every_call_is_measured_with_its_method_and_final_status():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = grpc.aio.server(interceptors=[telemetry.RpcMetricsInterceptor(provider)])
    servicer = health.aio.HealthServicer()
    await servicer.set("scribe.v1.Results", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    cancelled = grpc.StatusCode.CANCELLED.value[0]
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(3):
                await stub.Check(health_pb2.HealthCheckRequest(service="scribe.v1.Results"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"))  # NOT_FOUND
            stream = stub.Watch(health_pb2.HealthCheckRequest(service="scribe.v1.Results"))
            assert (await stream.read()).status == health_pb2.HealthCheckResponse.SERVING
            stream.cancel()
            # The server learns of the caller's cancel when the RST_STREAM arrives: wait for the
            # handler to end (it records on the way out) before stopping the server, whose stop
            # cancels what is left without waiting for it to unwind.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while _call_counts(reader).get(("grpc.health.v1.Health", "Watch", cancelled)) is None:
                assert loop.time() < deadline, f"Watch never recorded: {_call_counts(reader)}"
                await asyncio.sleep(0.01)
    finally:
        await server.stop(None)
    counts = _call_counts(reader)
    assert counts[("grpc.health.v1.Health", "Check", 0)] == 3
    assert counts[("grpc.health.v1.Health", "Check", grpc.StatusCode.NOT_FOUND.value[0])] == 1
    assert counts[("grpc.health.v1.Health", "Watch", cancelled)] == 1  # the server stream, cancelled by the caller


def _call_counts(reader: InMemoryMetricReader) -> dict[tuple[str, str, int], int]:
    """``rpc.server.call.duration`` point counts by (service, method, status code); checks the unit."""
    counts = {}
    data = reader.get_metrics_data()
    for resource in (data.resource_metrics if data else ()):
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "rpc.server.call.duration":
                    continue
                assert metric.unit == "s"
                for point in metric.data.data_points:
                    attrs = dict(point.attributes)
                    counts[(attrs["rpc.service"], attrs["rpc.method"], attrs["rpc.grpc.status_code"])] = point.count
    return counts
