"""Fixtures of the client's tests.

``fake_server``: a scripted Results/Ingest gRPC server on loopback that fails the first attempts
of chosen methods with a rich UNAVAILABLE status and counts every call. The real services come
from the repository's conftest.py (``stack_factory``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from scribe_client._stubs import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc


def unavailable_status(reason: str = "BROKER_UNAVAILABLE", retry_after: float = 1.0) -> Any:
    """A rich UNAVAILABLE status, as scribe_libs.errors.Unavailable encodes it."""
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="scribe.dev", metadata={"dependency": "nats"}))
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(retry_after))))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="the broker is unavailable", details=[info, retry])
    return rpc_status.to_status(status)


class Script:
    """How many times each method fails before it answers; what each call received."""

    def __init__(self, failures: dict[str, int] | None = None):
        self.failures = Counter(failures or {})
        self.calls: Counter[str] = Counter()
        self.received: dict[str, list[Any]] = defaultdict(list)

    def fail(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        if self.calls[method] <= self.failures[method]:
            context.abort_with_status(unavailable_status())


class Results(results_pb2_grpc.ResultsServicer):
    def __init__(self, script: Script):
        self.script = script

    def GetJob(self, request, context):  # noqa: N802
        self.script.fail("GetJob", context)
        return results_pb2.GetJobResponse(job=jobs_pb2.Job(job_id=request.job_id, state=jobs_pb2.JOB_STATE_QUEUED))

    def WatchJob(self, request, context):  # noqa: N802
        self.script.calls["WatchJob"] += 1
        yield results_pb2.WatchJobResponse(job=jobs_pb2.Job(job_id=request.job_id, state=jobs_pb2.JOB_STATE_QUEUED))
        if self.script.calls["WatchJob"] <= self.script.failures["WatchJob"]:
            context.abort_with_status(unavailable_status())
        yield results_pb2.WatchJobResponse(job=jobs_pb2.Job(job_id=request.job_id, state=jobs_pb2.JOB_STATE_COMPLETED))

    def CancelJob(self, request, context):  # noqa: N802
        self.script.fail("CancelJob", context)
        return results_pb2.CancelJobResponse(job=jobs_pb2.Job(job_id=request.job_id))


class Ingest(ingest_pb2_grpc.IngestServicer):
    def __init__(self, script: Script):
        self.script = script

    def CreateJob(self, request_iterator, context):  # noqa: N802
        messages = list(request_iterator)
        self.script.received["CreateJob"].append(
            (messages[0].spec.request_id, sum(len(m.audio) for m in messages[1:]), len(messages))
        )
        self.script.fail("CreateJob", context)
        return ingest_pb2.CreateJobResponse(job=jobs_pb2.Job(job_id="job-1", spec=messages[0].spec))


class FakeServer:
    """The scripted services on 127.0.0.1:<free port>."""

    def __init__(self, script: Script, credentials: grpc.ServerCredentials | None = None):
        self.script = script
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        results_pb2_grpc.add_ResultsServicer_to_server(Results(script), self.server)
        ingest_pb2_grpc.add_IngestServicer_to_server(Ingest(script), self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


@pytest.fixture
def fake_server():
    """``fake_server({"GetJob": 1})``: a started :class:`FakeServer` (stopped after the test)."""
    servers: list[FakeServer] = []

    def make(failures: dict[str, int] | None = None, credentials: grpc.ServerCredentials | None = None) -> FakeServer:
        server = FakeServer(Script(failures), credentials).__enter__()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.__exit__()
