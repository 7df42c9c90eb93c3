"""The gateway in front of the real batch pipeline, called with the official ``openai`` client.

nats-server with JetStream, ingest, transcriber (tiny.en), postprocess and results on port 0
(the repository's harness), and the gateway on port 0 on the same loop. Assertions are what an
OpenAI user sees: the text, the response shapes, the exception classes and status codes.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from scribe_harness import FIXTURES, SHARED_DATA, wer
from scribe_http_gateway.config import Settings
from scribe_http_gateway.server import create_server

JFK = SHARED_DATA / "jfk.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
SPEECH_TEXT = (FIXTURES / "speech_en.txt").read_text()


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest", "postprocess", "transcriber"):
        stack.start(service)
    return stack


@pytest.fixture(scope="module")
def gateway(stack):
    settings = Settings(
        host="127.0.0.1", port=0, ingest_address=stack.addresses["ingest"],
        results_address=stack.addresses["results"], models=["tiny.en", "base"], drain_seconds=0, grace_seconds=2,
        request_timeout_seconds=300, access_log=False,
    )
    server = stack.run(create_server(settings))
    yield f"http://127.0.0.1:{server.port}"
    stack.run(server.stop(0, 2))


@pytest.fixture(scope="module")
def client(stack, gateway):
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=stack.keys["alice"], max_retries=0, timeout=300)


def test_transcribes_committed_fixture_as_json(client):
    with (FIXTURES / "speech_en.wav").open("rb") as f:
        result = client.audio.transcriptions.create(model="tiny.en", file=f)
    assert wer(SPEECH_TEXT, result.text) <= 0.2, result.text
    assert result.usage is not None and result.usage.type == "duration" and result.usage.seconds == 8


@pytest.mark.skipif(not JFK.exists(), reason="../shared/data is not beside this checkout")
def test_transcribes_jfk(client):
    with JFK.open("rb") as f:
        result = client.audio.transcriptions.create(model="tiny.en", file=f, language="en-US")
    assert wer(JFK_TEXT, result.text) <= 0.05, result.text


def test_whisper_1_is_the_default_model(client):
    with (FIXTURES / "numbers_en.wav").open("rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and text.endswith("\n")
    # tiny.en writes the digits as numerals; the words around them are the check.
    assert "before noon tomorrow" in text.lower(), text


def test_srt_and_vtt_are_the_platform_renderings(client):
    with (FIXTURES / "speech_en.wav").open("rb") as f:
        srt = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="srt")
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt), srt
    with (FIXTURES / "speech_en.wav").open("rb") as f:
        vtt = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", vtt), vtt


def test_verbose_json_with_word_and_segment_timestamps(client):
    with (FIXTURES / "speech_en.wav").open("rb") as f:
        result = client.audio.transcriptions.create(
            model="tiny.en", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"],
            temperature=0.0, prompt="A platform test.",
        )
    assert result.language == "en" and result.duration == pytest.approx(7.76, abs=0.05)
    assert wer(SPEECH_TEXT, result.text) <= 0.2, result.text
    assert result.segments and result.segments[0].id == 0
    for segment in result.segments:
        assert 0 <= segment.start <= segment.end <= result.duration + 0.5
        assert segment.tokens == [] and segment.avg_logprob <= 0
    assert result.words and len(result.words) >= 10
    assert all(w.word == w.word.strip() and w.start <= w.end for w in result.words)
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)


def test_verbose_json_default_is_segments_only(client):
    with (FIXTURES / "numbers_en.wav").open("rb") as f:
        result = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="verbose_json")
    assert result.segments and result.words is None


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert {"tiny.en", "base", "whisper-1"} <= set(ids)
    assert client.models.retrieve("tiny.en").id == "tiny.en"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_bad_key_is_authentication_error(gateway):
    bad = openai.OpenAI(base_url=f"{gateway}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught, (FIXTURES / "numbers_en.wav").open("rb") as f:
        bad.audio.transcriptions.create(model="tiny.en", file=f)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught, (FIXTURES / "numbers_en.wav").open("rb") as f:
        client.audio.transcriptions.create(model="whisper-9000", file=f)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_undecodable_file_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught, (FIXTURES / "not_audio.wav").open("rb") as f:
        client.audio.transcriptions.create(model="tiny.en", file=f)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["message"]
    assert "/tmp" not in caught.value.body["message"]


def test_bad_fields_are_bad_requests(client):
    for kwargs in ({"language": "not a language"}, {"response_format": "xml"}, {"temperature": 3}):
        with pytest.raises(openai.BadRequestError), (FIXTURES / "numbers_en.wav").open("rb") as f:
            client.audio.transcriptions.create(model="tiny.en", file=f, **kwargs)


def test_missing_file_and_errors_shape(stack, gateway):
    headers = {"Authorization": f"Bearer {stack.keys['alice']}"}
    reply = httpx.post(f"{gateway}/v1/audio/transcriptions", data={"model": "tiny.en"}, files={"x": ("a", b"1")},
                       headers=headers)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == "file"
    assert httpx.get(f"{gateway}/v1/nothing-here", headers=headers).status_code == 404


def test_health_and_readiness(gateway):
    assert httpx.get(f"{gateway}/healthz").status_code == 200
    ready = httpx.get(f"{gateway}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["backends"] == {"ingest": "SERVING", "results": "SERVING"}


def test_readiness_follows_the_backends(stack):
    settings = Settings(host="127.0.0.1", port=0, ingest_address=stack.addresses["ingest"],
                        results_address="127.0.0.1:1", backend_check_timeout_seconds=0.5, access_log=False)
    server = stack.run(create_server(settings))
    try:
        ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        assert ready.status_code == 503 and ready.json()["backends"]["results"] != "SERVING"
    finally:
        stack.run(server.stop(0, 1))


def _gateway(stack, **overrides):
    values = dict(host="127.0.0.1", port=0, ingest_address=stack.addresses["ingest"],
                  results_address=stack.addresses["results"], access_log=False)
    values.update(overrides)
    return stack.run(create_server(Settings(**values)))


def test_too_large_upload_is_413(stack):
    server = _gateway(stack, max_upload_bytes=10_000)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=stack.keys["alice"],
                               max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught, (FIXTURES / "speech_en.wav").open("rb") as f:
            client.audio.transcriptions.create(model="tiny.en", file=f)
        assert caught.value.status_code == 413 and caught.value.code == "audio_too_large"
    finally:
        stack.run(server.stop(0, 1))


def test_rate_limited_key_is_429_with_retry_after(stack):
    # A Results instance whose per-key bucket holds one call, refilled every 100 s.
    address = stack.start("results", name="results-limited", auth={
        "enabled": True, "keys_file": str(stack.keys_file), "requests_per_second_per_key": 0.01,
        "request_burst_per_key": 1,
    })
    server = _gateway(stack, results_address=address)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=stack.keys["bob"],
                               max_retries=0)
        client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            client.models.list()
        assert caught.value.code == "rate_limit_exceeded"
        assert int(caught.value.response.headers["retry-after"]) >= 1
    finally:
        stack.run(server.stop(0, 1))
        stack.stop("results-limited")


def test_request_timeout_is_504(stack):
    server = _gateway(stack, request_timeout_seconds=0.3)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=stack.keys["alice"],
                               max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught, (FIXTURES / "speech_en.wav").open("rb") as f:
            client.audio.transcriptions.create(model="tiny.en", file=f)
        assert caught.value.status_code == 504 and caught.value.code == "timeout"
    finally:
        stack.run(server.stop(0, 1))


def test_too_large_chunked_upload_is_413_while_read(stack):
    server = _gateway(stack, max_upload_bytes=10_000)
    boundary = "scribe-boundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ntiny.en\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        for _ in range(64):  # 2 MiB with no Content-Length: counted as it arrives
            yield b"\0" * 32768
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        reply = httpx.post(
            f"http://127.0.0.1:{server.port}/v1/audio/transcriptions", content=body(),
            headers={"Authorization": f"Bearer {stack.keys['alice']}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert reply.status_code == 413 and reply.json()["error"]["code"] == "audio_too_large"
    finally:
        stack.run(server.stop(0, 1))


def test_caller_disconnect_cancels_the_job(stack, gateway, tmp_path):
    import io
    import wave

    from scribe.v1 import jobs_pb2, results_pb2, results_pb2_grpc

    with wave.open(str(FIXTURES / "speech_en.wav"), "rb") as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:  # about 2 minutes of speech: far longer than the client waits
        out.setparams(params)
        out.writeframes(frames * 16)
    files = {"file": ("disconnect-test.wav", buffer.getvalue(), "audio/wav")}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway}/v1/audio/transcriptions", data={"model": "tiny.en"}, files=files,
                   headers={"Authorization": f"Bearer {stack.keys['alice']}"}, timeout=httpx.Timeout(10, read=1.5))
    results = results_pb2_grpc.ResultsStub(stack.channel("results", key="alice"))
    jobs = results.ListJobs(results_pb2.ListJobsRequest(page_size=50)).jobs
    job = next(j for j in jobs if j.spec.filename == "disconnect-test.wav")
    updates = [u.job for u in results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=120)]
    assert updates[-1].state == jobs_pb2.JOB_STATE_CANCELLED, updates[-1]
