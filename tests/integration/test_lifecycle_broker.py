"""Broker restart (issue 5): nats-server stops and restarts (file store, same port) mid-work.

Jobs are queued and one is RUNNING when the broker goes away; the services reconnect by
themselves (nats-py reconnects forever, ``NatsSettings.max_reconnect_attempts = -1``). Nothing
may be lost: every job ends COMPLETED with exactly one transcript and one "completed" event,
and the services take new work afterwards.
"""

from __future__ import annotations

import io
import time
import wave

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe.v1 import ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES, wait_for
from scribe_harness import submit as harness_submit
from scribe_libs.bus import EVENTS_STREAM
from scribe_libs.jobs import RESULTS_BUCKET

S = jobs_pb2.JobState
CHUNK = 64 * 1024
SERVICES = ("results", "ingest", "postprocess", "transcriber")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest")
    stack.start("postprocess", ack_wait_seconds=6)
    # Short ack wait: a message whose ack was lost with the connection comes back quickly.
    stack.start("transcriber", ack_wait_seconds=6, batch_size=1)
    return stack


def repeated_wav(name: str, times: int) -> bytes:
    with wave.open(str(FIXTURES / name)) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames * times)
    return out.getvalue()


def submit(stack, data: bytes, deadline: float) -> jobs_pb2.Job:
    """CreateJob, retried on UNAVAILABLE until ``deadline`` (the broker may still be coming back)."""

    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    return harness_submit(ingest, data, timeout=max(deadline - time.monotonic(), 1), chunk=CHUNK)




def get(results, job_id: str) -> jobs_pb2.Job:
    return results.GetJob(results_pb2.GetJobRequest(job_id=job_id), timeout=10).job


def completed_events(stack) -> dict[str, int]:
    import nats

    async def read() -> dict[str, int]:
        nc = await nats.connect(stack.nats_url)
        try:
            info = await nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter="scribe.events.*.completed")
            return {s.split(".")[2]: int(n) for s, n in (info.state.subjects or {}).items()}
        finally:
            await nc.close()

    return stack.run(read(), timeout=30)


def test_nothing_is_lost_when_the_broker_restarts(stack, nats_server):
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    long_audio = repeated_wav("speech_en.wav", 8)  # ~62 s: still decoding when the broker stops
    deadline = time.monotonic() + 60
    jobs = [submit(stack, long_audio, deadline)]
    jobs += [submit(stack, (FIXTURES / "numbers_en.wav").read_bytes(), deadline) for _ in range(5)]
    wait_for(lambda: get(results, jobs[0].job_id).state == S.JOB_STATE_RUNNING, 120, "the long job to run")
    assert [get(results, j.job_id).state for j in jobs[1:]].count(S.JOB_STATE_QUEUED) >= 4

    nats_server.stop()
    url = nats_server.url
    assert nats_server.start() == url  # same port, same store

    # A job submitted once the broker is back is taken too (retried while ingest reconnects).
    def submit_after_restart():
        try:
            return submit(stack, (FIXTURES / "numbers_en.wav").read_bytes(), time.monotonic() + 10)
        except grpc.RpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNKNOWN,), exc
            return None

    jobs.append(wait_for(submit_after_restart, 60, "CreateJob to succeed after the restart", interval=1.0))

    def all_terminal():
        try:
            views = [get(results, j.job_id) for j in jobs]
        except grpc.RpcError:
            return None  # results still reconnecting
        return views if all(v.state in (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
                            for v in views) else None

    views = wait_for(all_terminal, 300, "every job to finish", interval=0.5)
    summary = [(v.job_id[:8], S.Name(v.state), v.delivery_count, v.error_reason) for v in views]
    print("\njobs after the broker restart:", summary)
    assert [v.state for v in views] == [S.JOB_STATE_COMPLETED] * len(jobs), summary

    results_dir = stack.workdir / "objects" / RESULTS_BUCKET
    for job in jobs:
        assert (results_dir / job.job_id / "transcript.json").is_file()
        assert results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job.job_id), timeout=10).content
    events = completed_events(stack)
    assert {j.job_id: events.get(j.job_id, 0) for j in jobs} == {j.job_id: 1 for j in jobs}
    listed = results.ListJobs(results_pb2.ListJobsRequest(page_size=1000), timeout=30).jobs
    assert len(listed) == len(jobs)

    for name in SERVICES:
        with grpc.insecure_channel(stack.addresses[name]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
