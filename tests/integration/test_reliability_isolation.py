"""Isolation between callers: owned glossaries, the service-only transcriber API, per-key stream quota.

Real services (results, ingest, transcriber tiny.en, stream gateway) with the Stack's keys: admin
(owner ops), alice (owner alice, jobs + stream), bob (owner bob, jobs), alice-reader. The gateway
gets a service key (scope ``internal``) added to the stack's key file, as the embedded stack and
the chart give it one.
"""

from __future__ import annotations

import time

import grpc
import pytest

from scribe.v1 import (
    glossary_pb2,
    glossary_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    jobs_pb2,
    streaming_pb2,
    streaming_pb2_grpc,
    transcriber_pb2,
    transcriber_pb2_grpc,
)
from scribe_cli.stream import call_requests, load_call_audio
from scribe_harness import FIXTURES
from scribe_libs.errors import error_info, status_details

SPEECH = FIXTURES / "speech_en.wav"


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory(auth=True)  # its gateway holds the harness's service key (scope internal)
    for service in ("results", "ingest", "transcriber"):
        stack.start(service)
    stack.start("stream_gateway", max_lead_seconds=-1, max_sessions_per_key=1, retry_after_seconds=2.0)
    return stack


def status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    info = error_info(caught.value)
    return caught.value.code(), info.reason if info else ""


def glossaries(stack, key: str):
    return glossary_pb2_grpc.GlossariesStub(stack.channel("results", key))


def put(stack, key: str, glossary_id: str, term: str) -> glossary_pb2.Glossary:
    glossary = glossary_pb2.Glossary(id=glossary_id, terms=[glossary_pb2.GlossaryTerm(term=term)])
    return glossaries(stack, key).PutGlossary(glossary_pb2.PutGlossaryRequest(glossary=glossary), timeout=30).glossary


def create_job(stack, key: str, glossary_ids: list[str]) -> jobs_pb2.Job:
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest", key))

    def gen():
        yield ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec(glossary_ids=glossary_ids))
        yield ingest_pb2.CreateJobRequest(audio=(FIXTURES / "numbers_en.wav").read_bytes())

    return ingest.CreateJob(gen(), timeout=60).job


def ids(stack, key: str) -> list[str]:
    reply = glossaries(stack, key).ListGlossaries(glossary_pb2.ListGlossariesRequest(), timeout=30)
    return [g.id for g in reply.glossaries]


# --- glossaries are owned ------------------------------------------------------------------------


def test_a_glossary_is_invisible_to_other_owners(stack):
    put(stack, "alice", "alice-confidential", "ACME confidential")
    assert "alice-confidential" in ids(stack, "alice")
    assert "alice-confidential" in ids(stack, "alice-reader")  # same owner, read-only key
    assert "alice-confidential" not in ids(stack, "bob")
    assert "alice-confidential" in ids(stack, "admin")
    bob = glossaries(stack, "bob")
    missing = status(lambda: bob.GetGlossary(glossary_pb2.GetGlossaryRequest(id="no-such-glossary"), timeout=30))
    assert missing == (grpc.StatusCode.NOT_FOUND, "GLOSSARY_NOT_FOUND")
    # Another owner's glossary reads exactly like a missing one.
    assert status(lambda: bob.GetGlossary(glossary_pb2.GetGlossaryRequest(id="alice-confidential"), timeout=30)) == (
        missing)
    assert status(lambda: bob.DeleteGlossary(glossary_pb2.DeleteGlossaryRequest(id="alice-confidential"),
                                             timeout=30)) == missing
    assert status(lambda: put(stack, "bob", "alice-confidential", "mine now")) == (
        grpc.StatusCode.PERMISSION_DENIED, "GLOSSARY_ID_TAKEN")
    assert glossaries(stack, "admin").GetGlossary(
        glossary_pb2.GetGlossaryRequest(id="alice-confidential"), timeout=30).glossary.terms[0].term == (
        "ACME confidential")


def test_a_job_cannot_use_another_owners_glossary(stack):
    put(stack, "alice", "alice-terms", "vLLM")
    assert list(create_job(stack, "alice", ["alice-terms"]).spec.glossary_ids) == ["alice-terms@1"]
    assert status(lambda: create_job(stack, "bob", ["alice-terms"])) == (
        grpc.StatusCode.NOT_FOUND, "GLOSSARY_NOT_FOUND")
    assert status(lambda: create_job(stack, "bob", ["alice-terms@1"])) == (
        grpc.StatusCode.NOT_FOUND, "GLOSSARY_NOT_FOUND")


def test_a_stream_cannot_use_another_owners_glossary(stack):
    put(stack, "bob", "bob-terms", "Kubernetes")
    stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway", "alice"))
    config = streaming_pb2.StreamingConfig(encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000,
                                           glossary_ids=["bob-terms"])
    assert status(lambda: list(stub.StreamingRecognize(iter([streaming_pb2.StreamingRecognizeRequest(
        config=config)]), timeout=30))) == (grpc.StatusCode.INVALID_ARGUMENT, "GLOSSARY_NOT_FOUND")


def test_admin_glossaries_are_shared_read_only(stack):
    put(stack, "admin", "shared-terms", "Triton")
    assert "shared-terms" in ids(stack, "bob")
    assert list(create_job(stack, "bob", ["shared-terms"]).spec.glossary_ids) == ["shared-terms@1"]
    assert status(lambda: put(stack, "bob", "shared-terms", "changed")) == (
        grpc.StatusCode.PERMISSION_DENIED, "GLOSSARY_READ_ONLY")
    bob = glossaries(stack, "bob")
    assert status(lambda: bob.DeleteGlossary(glossary_pb2.DeleteGlossaryRequest(id="shared-terms"), timeout=30)) == (
        grpc.StatusCode.PERMISSION_DENIED, "GLOSSARY_READ_ONLY")


@pytest.mark.parametrize("bad", ["../../x", "a/b", "x.y", "*", ">"])
def test_malformed_glossary_ids_are_invalid(stack, bad):
    bob = glossaries(stack, "bob")
    expected = (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_GLOSSARY")
    assert status(lambda: bob.GetGlossary(glossary_pb2.GetGlossaryRequest(id=bad), timeout=30)) == expected
    assert status(lambda: bob.DeleteGlossary(glossary_pb2.DeleteGlossaryRequest(id=bad), timeout=30)) == expected
    assert status(lambda: put(stack, "bob", bad, "x")) == expected
    assert status(lambda: create_job(stack, "bob", [bad])) == expected


# --- the transcriber's API is for services -------------------------------------------------------


def test_customer_keys_cannot_call_the_transcriber(stack):
    for key in ("alice", "bob"):
        stub = transcriber_pb2_grpc.TranscriberStub(stack.channel("transcriber", key))
        window = transcriber_pb2.DecodeRequest(audio=b"\0\0" * 16000)
        assert status(lambda s=stub, w=window: s.Decode(w, timeout=30)) == (
            grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
        assert status(lambda s=stub: s.GetProfile(transcriber_pb2.GetProfileRequest(), timeout=30)) == (
            grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
    service = transcriber_pb2_grpc.TranscriberStub(stack.channel("transcriber", "stream-gateway"))
    assert service.GetProfile(transcriber_pb2.GetProfileRequest(), timeout=30).profile.worker_id


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"prompt": "x" * (1 << 20)}, "PROMPT_TOO_LONG"),
        ({"hotwords": ["term"] * 1000}, "TOO_MANY_HOTWORDS"),
        ({"hotwords": ["t" * 5000]}, "TOO_MANY_HOTWORDS"),
        ({"language": "../../x"}, "UNKNOWN_LANGUAGE"),
        ({"audio": b"\0\0" * 16000 * 31}, "WINDOW_TOO_LONG"),
    ],
)
def test_decode_windows_are_validated(stack, fields, reason):
    service = transcriber_pb2_grpc.TranscriberStub(stack.channel("transcriber", "admin"))
    window = transcriber_pb2.DecodeRequest(audio=b"\0\0" * 16000)
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(window, name).extend(value)
        else:
            setattr(window, name, value)
    assert status(lambda: service.Decode(window, timeout=60)) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


# --- streaming through the gateway's service key, per-key quota ----------------------------------


def test_a_customer_streams_through_the_gateways_service_key(stack):
    stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway", "alice"))
    data, enum, rate = load_call_audio(SPEECH, "linear16", 1)
    config = streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate)
    responses = list(stub.StreamingRecognize(call_requests(config, data), timeout=240))
    text = " ".join(r.result.text for r in responses if r.WhichOneof("response") == "result" and r.result.is_final)
    assert text.strip()


def test_one_key_holds_at_most_its_session_quota(stack):
    stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway", "alice"))
    config = streaming_pb2.StreamingConfig(encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000)
    release = []

    def held():
        yield streaming_pb2.StreamingRecognizeRequest(config=config)
        yield streaming_pb2.StreamingRecognizeRequest(audio=b"\0\0" * 1600)
        while not release:
            time.sleep(0.05)

    first = stub.StreamingRecognize(held(), timeout=120)
    try:
        deadline = time.monotonic() + 30
        while True:  # the first session is admitted once the gateway read its config
            try:
                list(stub.StreamingRecognize(iter([streaming_pb2.StreamingRecognizeRequest(config=config)]),
                                             timeout=30))
                error = None
            except grpc.RpcError as exc:
                error = exc
            reason = error_info(error).reason if error is not None and error_info(error) else ""
            if reason == "KEY_SESSION_QUOTA" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert error is not None and (error.code(), reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "KEY_SESSION_QUOTA")
        assert any(d.type_url.endswith("google.rpc.RetryInfo") for d in status_details(error))
        # Another caller is not affected by alice's quota.
        admin = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway", "admin"))
        data, enum, rate = load_call_audio(SPEECH, "linear16", 1)
        responses = list(admin.StreamingRecognize(
            call_requests(streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate), data), timeout=240))
        assert responses[-1].WhichOneof("response") == "summary"
    finally:
        release.append(True)
        first.cancel()


def test_source_uri_is_restricted_to_the_owners_prefixes(stack):
    """Before: any key read any bucket but scribe's own, and NOT_FOUND vs success told existence."""
    from scribe.v1 import ingest_pb2_grpc
    from scribe_harness import FIXTURES, submit
    from scribe_libs.objectstore import LocalStore

    name = "ingest-sources"
    if name not in stack.addresses:
        stack.start("ingest", name=name, source_prefixes={"alice": ["calls-alice/"]})
    store = LocalStore(stack.workdir / "objects")
    for bucket in ("calls-alice", "calls-bob"):
        stack.run(store.ensure_bucket(bucket))
        stack.run(store.put_file(bucket, "2026/speech.wav", FIXTURES / "speech_en.wav"))

    def outcome(key: str, uri: str):
        ingest = ingest_pb2_grpc.IngestStub(stack.channel(name, key))
        try:
            submit(ingest, None, source_uri=uri)
            return "ok"
        except grpc.RpcError as exc:
            info = error_info(exc)
            return exc.code(), info.reason if info else ""

    assert outcome("alice", "s3://calls-alice/2026/speech.wav") == "ok"
    forbidden = outcome("alice", "s3://calls-bob/2026/speech.wav")
    missing = outcome("alice", "s3://calls-bob/2026/nothing-here.wav")
    assert forbidden == missing == (grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND")
    assert outcome("bob", "s3://calls-bob/2026/speech.wav") == (grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND")
    assert outcome("admin", "s3://calls-bob/2026/speech.wav") == "ok"
