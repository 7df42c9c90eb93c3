"""Pure code of the client: request building, error decoding, transcript parsing (no network)."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from scribe_client import (
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    NotFoundError,
    ScribeError,
    Transcript,
)
from scribe_client._config import job_spec, parse_transcript, resolve_addresses, streaming_config, transcript_format
from scribe_client.client import _raise_unless_completed, list_request
from scribe_client.errors import from_rpc_error
from scribe_client.types import jobs_pb2, results_pb2, streaming_pb2, transcript_pb2


def test_fields_go_to_the_config_or_the_spec():
    spec = job_spec({"model": "base"}, dict(language="ko", vad_filter=False, hotwords=["vLLM"], labels={"a": "b"},
                                            redact=True), filename="call.wav")
    assert spec.config.model == "base" and spec.config.language == "ko" and list(spec.config.hotwords) == ["vLLM"]
    assert spec.config.HasField("vad_filter") and not spec.config.vad_filter
    assert dict(spec.labels) == {"a": "b"} and spec.redact and spec.filename == "call.wav"
    assert len(spec.request_id) == 32  # random, so CreateJob is idempotent and may be retried
    assert job_spec(None, {"request_id": ""}).request_id == ""
    with pytest.raises(TypeError, match="langauge"):
        job_spec(None, {"langauge": "ko"})


def test_streaming_config_defaults_and_encoding_names():
    cfg = streaming_config(None, {"model": "tiny.en"})
    assert (cfg.encoding, cfg.sample_rate_hertz, cfg.model) == (streaming_pb2.AUDIO_ENCODING_LINEAR16, 16000, "tiny.en")
    cfg = streaming_config({"encoding": "mulaw", "sample_rate_hertz": 8000}, {"channel_roles": ["agent", "customer"]})
    assert cfg.encoding == streaming_pb2.AUDIO_ENCODING_MULAW and list(cfg.channel_roles) == ["agent", "customer"]
    with pytest.raises(ValueError, match="opus"):
        streaming_config(None, {"encoding": "opus"})


def test_addresses_and_formats():
    assert resolve_addresses(None, {"Results": "r:1"}) == {
        "Ingest": "127.0.0.1:50051", "Results": "r:1", "StreamGateway": "127.0.0.1:50051"}
    with pytest.raises(ValueError):
        resolve_addresses("a:1", {"Transcriber": "t:1"})
    assert transcript_format("srt") == transcript_pb2.TRANSCRIPT_FORMAT_SRT
    with pytest.raises(ValueError):
        transcript_format("docx")
    request = list_request("completed", {"k": "v"}, None, None, 10)
    assert request.state == jobs_pb2.JOB_STATE_COMPLETED and dict(request.labels) == {"k": "v"}


def test_transcript_from_json_and_from_the_typed_field():
    message = transcript_pb2.Transcript(job_id="j", language="en", segments=[
        transcript_pb2.Segment(text=" Hello there. "), transcript_pb2.Segment(text=" "),
        transcript_pb2.Segment(text="General Kenobi.")])
    reply = results_pb2.GetTranscriptResponse(content=json_format.MessageToJson(message).encode())
    parsed = parse_transcript(reply)
    assert Transcript(parsed).text == "Hello there. General Kenobi." and parsed.language == "en"
    # A newer server also returns the typed message (GetTranscriptResponse.transcript): used as is.
    typed = SimpleNamespace(DESCRIPTOR=SimpleNamespace(fields_by_name={"transcript": None}),
                            HasField=lambda name: name == "transcript", transcript=message, content=b"{bad")
    assert parse_transcript(typed) is message


class FakeError(grpc.RpcError):
    def __init__(self, code, message, status=None):
        self._code, self._message, self._status = code, message, status

    def code(self):
        return self._code

    def details(self):
        return self._message

    def trailing_metadata(self):
        return (("grpc-status-details-bin", self._status.SerializeToString()),) if self._status else ()


def packed(*messages):
    out = []
    for message in messages:
        any_msg = any_pb2.Any()
        any_msg.Pack(message)
        out.append(any_msg)
    return out


def test_rich_status_details_become_fields():
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="beam_size must be <= 10", details=packed(
        error_details_pb2.ErrorInfo(reason="INVALID_CONFIG", domain="scribe.dev", metadata={"max": "10"}),
        error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="config.beam_size", description="at most 10")]),
    ))
    err = from_rpc_error(FakeError(grpc.StatusCode.INVALID_ARGUMENT, "beam_size must be <= 10", status))
    assert isinstance(err, InvalidArgumentError) and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.reason, err.metadata, err.field_violations) == (
        "INVALID_CONFIG", {"max": "10"}, [("config.beam_size", "at most 10")])
    assert str(err) == "INVALID_ARGUMENT INVALID_CONFIG: beam_size must be <= 10"

    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="no job x", details=packed(
        error_details_pb2.ErrorInfo(reason="JOB_NOT_FOUND", domain="scribe.dev"),
        error_details_pb2.ResourceInfo(resource_type="job", resource_name="x")))
    err = from_rpc_error(FakeError(grpc.StatusCode.NOT_FOUND, "no job x", status))
    assert isinstance(err, NotFoundError) and err.resource == ("job", "x")

    bare = from_rpc_error(FakeError(grpc.StatusCode.CANCELLED, "cancelled by the caller"))
    assert type(bare) is ScribeError and bare.reason == "" and bare.message == "cancelled by the caller"


def test_failed_and_cancelled_jobs_raise_typed_errors():
    failed = jobs_pb2.Job(job_id="j", state=jobs_pb2.JOB_STATE_FAILED, error_reason="MAX_DELIVERIES",
                          error_message="gave up after 3 attempts")
    with pytest.raises(JobFailedError) as caught:
        _raise_unless_completed(failed)
    assert (caught.value.reason, caught.value.message, caught.value.job_id) == (
        "MAX_DELIVERIES", "gave up after 3 attempts", "j")
    with pytest.raises(JobCancelledError):
        _raise_unless_completed(jobs_pb2.Job(job_id="j", state=jobs_pb2.JOB_STATE_CANCELLED))
    _raise_unless_completed(jobs_pb2.Job(job_id="j", state=jobs_pb2.JOB_STATE_COMPLETED))
