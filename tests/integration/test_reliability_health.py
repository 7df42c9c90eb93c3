"""Outage proof: health and error codes follow the broker, and no job is lost (issue: health).

A stack (results, ingest, postprocess, transcriber with tiny.en) runs; nats-server is killed.
Every service must report NOT_SERVING (watched, no fixed sleep), calls must fail UNAVAILABLE with
reason BROKER_UNAVAILABLE (retryable; never INTERNAL), and after nats-server restarts on the same
port and store every service reports SERVING again and the jobs submitted before the outage and
after it complete. The seconds to NOT_SERVING and back to SERVING go to stderr.
"""

from __future__ import annotations

import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe.v1 import ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES, wait_for
from scribe_harness import submit as harness_submit
from scribe_libs.errors import error_info

S = jobs_pb2.JobState
SERVICES = ("results", "ingest", "postprocess", "transcriber")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest")
    stack.start("postprocess", ack_wait_seconds=6)
    stack.start("transcriber", ack_wait_seconds=6, batch_size=1)
    return stack


def watch_until(address: str, wanted: int, timeout: float, seen: dict[str, float], name: str) -> None:
    """Watch health at ``address`` until it reports ``wanted``; record the time in ``seen[name]``."""
    with grpc.insecure_channel(address) as channel:
        for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=timeout):
            if reply.status == wanted:
                seen[name] = time.monotonic()
                return


def all_reach(stack, wanted: int, timeout: float) -> dict[str, float]:
    """Watch every service at once; the monotonic time each reached ``wanted``."""
    seen: dict[str, float] = {}
    threads = [
        threading.Thread(target=watch_until, args=(stack.addresses[n], wanted, timeout, seen, n), daemon=True)
        for n in SERVICES
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 5)
    missing = sorted(set(SERVICES) - set(seen))
    assert not missing, f"{missing} did not report {health_pb2.HealthCheckResponse.ServingStatus.Name(wanted)}"
    return seen


def assert_unavailable(call) -> None:  # noqa: ANN001 - a callable making one RPC
    with pytest.raises(grpc.RpcError) as raised:
        call()
    exc = raised.value
    assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())
    info = error_info(exc)
    assert info is not None and info.reason == "BROKER_UNAVAILABLE", info


def test_health_and_errors_follow_the_broker_and_no_job_is_lost(stack, nats_server):
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    audio = (FIXTURES / "numbers_en.wav").read_bytes()
    before = harness_submit(ingest, audio, timeout=60)

    assert nats_server.proc is not None
    killed = time.monotonic()
    nats_server.proc.kill()  # an outage, not a shutdown
    nats_server.proc.wait(10)
    down = all_reach(stack, NOT_SERVING, timeout=30)

    assert_unavailable(lambda: results.GetJob(results_pb2.GetJobRequest(job_id=before.job_id), timeout=30))
    assert_unavailable(lambda: harness_submit(ingest, audio, timeout=30))

    restarted = time.monotonic()
    url = nats_server.url
    assert nats_server.start() == url  # same port, same store
    up = all_reach(stack, SERVING, timeout=60)

    print(
        "\nbroker outage: NOT_SERVING after kill, s: "
        + ", ".join(f"{n}={down[n] - killed:.2f}" for n in SERVICES)
        + "; SERVING after restart, s: "
        + ", ".join(f"{n}={up[n] - restarted:.2f}" for n in SERVICES),
        file=sys.stderr,
    )

    after = wait_for(lambda: _try_submit(ingest, audio), 60, "CreateJob after the restart", interval=0.5)

    def finished():
        try:
            views = [results.GetJob(results_pb2.GetJobRequest(job_id=j.job_id), timeout=10).job
                     for j in (before, after)]
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return None
        terminal = (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
        return views if all(v.state in terminal for v in views) else None

    views = wait_for(finished, 300, "both jobs to finish", interval=0.5)
    assert [S.Name(v.state) for v in views] == ["JOB_STATE_COMPLETED"] * 2, [(v.error_reason) for v in views]
    for job in (before, after):
        transcript = results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job.job_id), timeout=10)
        assert transcript.content


def _try_submit(ingest, audio: bytes):  # noqa: ANN001, ANN202 - stub and Job
    try:
        return harness_submit(ingest, audio, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, (exc.code(), exc.details())  # retryable, never INTERNAL
        return None
