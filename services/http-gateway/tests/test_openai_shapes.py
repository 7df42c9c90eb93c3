"""Pure code: request-field parsing, transcript -> OpenAI objects, gRPC status -> HTTP error."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from scribe.v1 import transcript_pb2
from scribe_http_gateway.errors import HttpError, from_failed_job, from_rpc_error
from scribe_http_gateway.openai_api import (
    json_object,
    normalize_language,
    parse_granularities,
    parse_temperature,
    verbose_json_object,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("en", "en"), ("EN", "en"), ("en-US", "en"), ("ko-KR", "ko"), ("zh-Hant-TW", "zh"), ("pt_BR", "pt"),
     ("", ""), ("auto", ""), ("haw", "haw")],
)
def test_language_tags(given, expected):
    assert normalize_language(given) == expected


@pytest.mark.parametrize("bad", ["english", "e", "en--US", "1a", "en US"])
def test_bad_language_is_400_on_param_language(bad):
    with pytest.raises(HttpError) as caught:
        normalize_language(bad)
    assert caught.value.status == 400 and caught.value.param == "language"


def test_granularities_and_temperature():
    assert parse_granularities([]) == {"segment"}
    assert parse_granularities(["word"]) == {"word"}
    assert parse_granularities(["word", "segment"]) == {"word", "segment"}
    assert parse_granularities(["word,segment"]) == {"word", "segment"}
    with pytest.raises(HttpError):
        parse_granularities(["char"])
    assert parse_temperature("0.2") == 0.2 and parse_temperature(None) == 0.0
    for bad in ("2", "-0.1", "hot", "nan"):
        with pytest.raises(HttpError) as caught:
            parse_temperature(bad)
        assert caught.value.param == "temperature"


def _transcript() -> transcript_pb2.Transcript:
    t = transcript_pb2.Transcript(language="en", duration=3.2)
    s = t.segments.add(id=1, start=0.0, end=1.5, text=" Hello there.", avg_logprob=-0.25, no_speech_prob=0.01,
                       compression_ratio=0.9)
    s.words.add(word=" Hello", start=0.0, end=0.6, probability=0.9)
    s.words.add(word=" there.", start=0.6, end=1.5, probability=0.8)
    t.segments.add(id=2, start=1.6, end=3.1, text=" General Kenobi.")
    return t


def test_json_and_verbose_json_shapes():
    t = _transcript()
    assert json_object(t) == {"text": "Hello there. General Kenobi.", "usage": {"type": "duration", "seconds": 4}}
    verbose = verbose_json_object(t, {"segment"})
    assert verbose["task"] == "transcribe" and verbose["language"] == "en" and verbose["duration"] == 3.2
    assert "words" not in verbose
    first = verbose["segments"][0]
    assert set(first) == {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                          "compression_ratio", "no_speech_prob"}
    assert first["id"] == 0 and first["text"] == "Hello there." and first["avg_logprob"] == -0.25
    assert verbose["segments"][1]["seek"] == 160
    words = verbose_json_object(t, {"word"})
    assert "segments" not in words
    assert words["words"][0] == {"word": "Hello", "start": 0.0, "end": 0.6, "probability": 0.9}
    both = verbose_json_object(t, {"word", "segment"})
    assert len(both["segments"]) == 2 and len(both["words"]) == 2


class _FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, reason: str, *details):
        info = error_details_pb2.ErrorInfo(reason=reason, domain="scribe.dev")
        packed = []
        for detail in (info, *details):
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        status = rpc_status.to_status(status_pb2.Status(code=code.value[0], message=f"msg {reason}", details=packed))
        self._code, self._details, self._trailing = code, status.details, status.trailing_metadata

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def _retry(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


@pytest.mark.parametrize(
    ("code", "reason", "status", "openai_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_AUDIO", 400, "undecodable_audio"),
        (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_MODEL", 404, "model_not_found"),
        (grpc.StatusCode.FAILED_PRECONDITION, "NO_POOL_FOR_MODEL", 404, "model_not_found"),
        (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_UNKNOWN", 401, "invalid_api_key"),
        (grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE", 403, "missing_scope"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUDIO_TOO_LARGE", 413, "audio_too_large"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "KEY_RATE_LIMITED", 429, "rate_limit_exceeded"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", 429, "queue_full"),
        (grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", 503, "broker_unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_IDLE", 504, "timeout"),
        (grpc.StatusCode.INTERNAL, "INTERNAL", 500, "internal"),
    ],
)
def test_grpc_status_to_http(code, reason, status, openai_code):
    error = from_rpc_error(_FakeError(code, reason, _retry(1.2)))
    assert (error.status, error.code) == (status, openai_code)
    response = error.response()
    assert response.status_code == status
    if status in (429, 503):
        assert response.headers["retry-after"] == "2"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_bad_request_field_becomes_param():
    violation = error_details_pb2.BadRequest.FieldViolation(field="spec.config.language", description="x")
    error = from_rpc_error(
        _FakeError(grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_LANGUAGE",
                   error_details_pb2.BadRequest(field_violations=[violation]))
    )
    assert (error.status, error.param, error.code) == (400, "language", "unknown_language")
    assert error.message == "msg UNKNOWN_LANGUAGE"


def test_failed_job():
    assert from_failed_job("UNDECODABLE_AUDIO", "bad").status == 400
    assert from_failed_job("MAX_DELIVERIES", "worker died").status == 500
