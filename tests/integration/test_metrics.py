"""Prometheus metrics: a running stack is scraped and the platform's series are there."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES
from scribe_libs.telemetry import setup_telemetry

EXPECTED = [
    "scribe_jobs_created_total",
    "scribe_jobs_finished_total",
    "scribe_audio_processed_seconds_total",
    "scribe_transcriber_real_time_factor_bucket",
    "scribe_transcriber_job_duration_seconds_bucket",
    "scribe_queue_depth",
    "scribe_jobs{",
    "scribe_jobs_refused_total",
    "rpc_server_call_duration_seconds_bucket",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_url(stack_factory):
    port = free_port()
    setup_telemetry("scribe-test", "0", metrics_port=port)
    stack = stack_factory()
    stack.start("results", metrics_sample_seconds=0.1)
    for service in ("ingest", "postprocess", "transcriber"):
        stack.start(service)
    return stack, f"http://127.0.0.1:{port}/metrics"


def test_metrics_endpoint_exposes_the_platform_series(metrics_url):
    stack, url = metrics_url
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    data = (FIXTURES / "numbers_en.wav").read_bytes()
    job = ingest.CreateJob(iter([ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec()),
                                 ingest_pb2.CreateJobRequest(audio=data)])).job
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    assert list(results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id)))[-1].job.state == (
        jobs_pb2.JOB_STATE_COMPLETED)
    with pytest.raises(Exception):  # noqa: B017 - any refusal; its reason is checked in the metrics
        ingest.CreateJob(iter([ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec())]))
    deadline = time.monotonic() + 30
    while True:  # the gauges are sampled in the background: poll the scrape until they appear
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        missing = [name for name in EXPECTED if name not in text]
        # Finished jobs are counted as they end; the scribe_jobs gauge holds the queues' jobs.
        completed = any(line.startswith("scribe_jobs_finished_total{") and 'state="COMPLETED"' in line
                        and 'pool="cpu"' in line for line in text.splitlines())
        # Per-RPC server metrics: the refused CreateJob with its status (3 INVALID_ARGUMENT). Polled
        # too: context.abort() answers the caller before the server's call has returned.
        refused_call = any(line.startswith("rpc_server_call_duration_seconds_count{") and 'rpc_method="CreateJob"'
                           in line and 'rpc_grpc_status_code="3"' in line for line in text.splitlines())
        if not missing and completed and refused_call:
            break
        assert time.monotonic() < deadline, f"missing {missing} in:\n{text[:3000]}"
        time.sleep(0.2)
    lines = text.splitlines()
    assert any(line.startswith("scribe_jobs_refused_total{") and 'reason="EMPTY_AUDIO"' in line for line in lines)
    assert any(line.startswith("scribe_jobs{") and 'state="QUEUED"' in line for line in lines)
