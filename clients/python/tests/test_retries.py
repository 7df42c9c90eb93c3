"""Retries as a caller sees them, against a scripted gRPC server that fails the first attempts."""

from __future__ import annotations

import json

import pytest

from scribe_client import AsyncClient, Client, UnavailableError, service_config
from scribe_client._stubs import jobs_pb2


def test_service_config_retries_only_idempotent_methods():
    methods = {(n["service"], n["method"]) for mc in json.loads(service_config())["methodConfig"] for n in mc["name"]}
    assert ("scribe.v1.Results", "GetJob") in methods and ("scribe.v1.Results", "WatchJob") in methods
    assert not {m for m in methods if m[1] in ("CreateJob", "CancelJob", "DeleteJob", "StreamingRecognize")}


def test_get_job_is_retried_by_grpc_on_unavailable(fake_server):
    server = fake_server({"GetJob": 1})
    with Client(server.address, api_key="k") as client:
        assert client.get("j1").job_id == "j1"
    assert server.script.calls["GetJob"] == 2


def test_unavailable_after_every_attempt_carries_the_reason_and_retry_info(fake_server):
    server = fake_server({"GetJob": 99})
    with Client(server.address, max_attempts=3) as client, pytest.raises(UnavailableError) as caught:
        client.get("j1")
    assert server.script.calls["GetJob"] == 3
    err = caught.value
    assert err.reason == "BROKER_UNAVAILABLE" and err.domain == "scribe.dev"
    assert err.retry_after == 1.0 and err.metadata == {"dependency": "nats"}


def test_cancel_is_not_retried(fake_server):
    server = fake_server({"CancelJob": 1})
    with Client(server.address) as client, pytest.raises(UnavailableError):
        client.cancel("j1")
    assert server.script.calls["CancelJob"] == 1


def test_create_job_resends_the_whole_upload_with_the_same_request_id(fake_server):
    audio = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three chunks, past gRPC's retry buffer
    server = fake_server({"CreateJob": 1})
    with Client(server.address) as client:
        job = client.submit(audio, language="en")
    received = server.script.received["CreateJob"]
    assert job.job_id == "job-1" and len(received) == 2
    (first_id, first_bytes, first_msgs), (second_id, second_bytes, _) = received
    assert first_id and first_id == second_id == job.spec.request_id
    assert first_bytes == second_bytes == len(audio) and first_msgs == 1 + 3


def test_create_job_without_request_id_is_not_retried(fake_server):
    server = fake_server({"CreateJob": 1})
    with Client(server.address) as client, pytest.raises(UnavailableError):
        client.submit(b"RIFF....", request_id="")
    assert len(server.script.received["CreateJob"]) == 1


def test_watch_resumes_after_a_broken_stream_without_repeating_a_record(fake_server):
    server = fake_server({"WatchJob": 1})
    with Client(server.address) as client:
        states = [j.state for j in client.watch("j1")]
    assert server.script.calls["WatchJob"] == 2
    assert states == [jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_COMPLETED]


async def test_async_client_retries_the_same_way(fake_server):
    server = fake_server({"GetJob": 1, "CreateJob": 1, "WatchJob": 1})
    async with AsyncClient(server.address) as client:
        assert (await client.get("j1")).job_id == "j1"
        job = await client.submit(b"\0" * 100, request_id="req-7")
        states = [j.state async for j in client.watch("j1")]
    assert server.script.calls["GetJob"] == 2
    assert [r[0] for r in server.script.received["CreateJob"]] == ["req-7", "req-7"]
    assert job.spec.request_id == "req-7"
    assert states == [jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_COMPLETED]
