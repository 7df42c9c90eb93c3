"""Streaming at capacity: admission by the workers' realtime capacity, live redaction, live glossaries.

Real nats-server, a real transcriber (tiny.en) with a fixed ``realtime_capacity=2``, postprocess,
results and the stream gateway (pacing off). What a caller sees: RESOURCE_EXHAUSTED
``REALTIME_CAPACITY_FULL`` with RetryInfo for one session too many, the sessions already running
unharmed, no clear digits in any result of a redacted call nor in the store, and the worker's
measured capacity in its profile.
"""

from __future__ import annotations

import re
import threading
import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from scribe.v1 import (
    jobs_pb2,
    results_pb2,
    results_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
    transcriber_pb2,
    transcriber_pb2_grpc,
    transcript_pb2,
)
from scribe_cli.stream import call_requests, load_call_audio
from scribe_harness import FIXTURES, stream_speech, wer
from scribe_libs.callaudio import encode_linear16
from scribe_libs.errors import error_info, status_details

S = jobs_pb2.JobState
NUMBERS = FIXTURES / "numbers_en.wav"
TIMEOUT = 240
CAPACITY = 2
CHUNK = 3200  # bytes: 0.1 s of 16 kHz LINEAR16


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "postprocess"):
        stack.start(service)
    stack.start("transcriber", worker_id="rt-2", realtime_capacity=CAPACITY)
    # Only the pool of the capacity-2 worker decodes streams here (the measured worker of
    # test_measured_capacity_is_in_the_profile joins another pool, so it adds no slots).
    stack.start("stream_gateway", max_lead_seconds=-1, worker_pool="cpu", retry_after_seconds=2.0)
    return stack


@pytest.fixture(scope="module")
def gateway(stack):
    return streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))


def config(encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, rate=16000, **fields) -> streaming_pb2.StreamingConfig:
    fields.setdefault("interim_results", True)
    fields.setdefault("word_timestamps", True)
    return streaming_pb2.StreamingConfig(encoding=encoding, sample_rate_hertz=rate, **fields)


def finals(responses):
    return [r.result for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]


def final_text(responses) -> str:
    return " ".join(f.text for f in finals(responses))


def summary(responses) -> streaming_pb2.StreamSummary:
    assert responses[-1].WhichOneof("response") == "summary"
    return responses[-1].summary


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


class HeldSession:
    """A session that sends its config and the first ``held_bytes`` of audio, then waits for
    ``release`` before sending the rest and half-closing; its responses are collected in a thread."""

    def __init__(self, stub, data: bytes, cfg: streaming_pb2.StreamingConfig, held_bytes: int):
        self.release = threading.Event()
        self.responses: list = []
        self.error: grpc.RpcError | None = None

        def requests():
            yield streaming_pb2.StreamingRecognizeRequest(config=cfg)
            for i in range(0, held_bytes, CHUNK):
                yield streaming_pb2.StreamingRecognizeRequest(audio=data[i : min(i + CHUNK, held_bytes)])
            self.release.wait(TIMEOUT)
            for i in range(held_bytes, len(data), CHUNK):
                yield streaming_pb2.StreamingRecognizeRequest(audio=data[i : i + CHUNK])

        self.call = stub.StreamingRecognize(requests(), timeout=TIMEOUT)
        self.responses.append(next(self.call))  # admitted and running: its first response arrived
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        try:
            self.responses.extend(self.call)
        except grpc.RpcError as exc:
            self.error = exc

    def finish(self) -> list:
        self.release.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        return self.responses


def assert_capacity_full(err: grpc.RpcError) -> None:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert error_info(err).reason == "REALTIME_CAPACITY_FULL"
    details = status_details(err)
    retry = [d for d in details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "RESOURCE_EXHAUSTED carries RetryInfo"
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.seconds + info.retry_delay.nanos / 1e9 == pytest.approx(2.0)
    reasons = []
    for d in details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            e = error_details_pb2.ErrorInfo()
            d.Unpack(e)
            reasons.append(e.reason)
    assert reasons == ["REALTIME_CAPACITY_FULL"]


def short_call(gateway, data: bytes, cfg=None) -> list:
    return list(gateway.StreamingRecognize(call_requests(cfg or config(), data[:CHUNK]), timeout=60))


# --- admission -----------------------------------------------------------------------------------


def test_one_session_more_than_capacity_is_refused_and_the_others_are_unharmed(gateway):
    speech = stream_speech()  # JFK, or the espeak-ng clip with a looser bound (scribe_harness.speech)
    data, enum, rate = load_call_audio(speech.path)
    held = [HeldSession(gateway, data, config(enum, rate), 3 * 16000 * 2) for _ in range(CAPACITY)]
    try:
        err = rpc_error(lambda: short_call(gateway, data))
        assert_capacity_full(err)
    finally:
        done = [h.finish() for h in held]
    for responses in done:
        text = final_text(responses)
        assert wer(speech.text, text) <= speech.stream_wer, text
        assert summary(responses).audio_seconds == pytest.approx(speech.seconds, abs=0.01)
    # their slots are back: a new session is admitted
    responses = short_call(gateway, data)
    assert summary(responses).audio_seconds == pytest.approx(0.1, abs=0.01)


def test_a_two_channel_session_takes_two_slots(gateway):
    speech = stream_speech()
    mono, enum, rate = load_call_audio(speech.path)
    samples = np.frombuffer(mono, "<i2").astype(np.float32) / 32768
    stereo = encode_linear16(np.stack([samples, samples], axis=1))
    held = HeldSession(gateway, stereo, config(enum, rate, audio_channel_count=2), 3 * 16000 * 2 * 2)
    try:
        assert_capacity_full(rpc_error(lambda: short_call(gateway, mono)))
    finally:
        responses = held.finish()
    for channel in (0, 1):
        text = " ".join(f.text for f in finals(responses) if f.channel == channel)
        assert wer(speech.text, text) <= speech.stream_wer, (channel, text)
    assert summary(short_call(gateway, mono)).audio_seconds == pytest.approx(0.1, abs=0.01)


def test_measured_capacity_is_in_the_profile(stack):
    address = stack.start("transcriber", name="measured", worker_id="rt-measured", realtime_capacity=0,
                          pool="measured")
    try:
        stub = transcriber_pb2_grpc.TranscriberStub(stack.channel("measured"))
        profile = stub.GetProfile(transcriber_pb2.GetProfileRequest(), timeout=30)
        profile = getattr(profile, "profile", profile)
        print(f"{address}: realtime_capacity {profile.realtime_capacity}, "
              f"window cost {profile.realtime_window_cost_seconds:.3f} s; decisions {list(profile.decisions)}")
        assert profile.realtime_capacity >= 1
        assert profile.realtime_window_cost_seconds > 0
        assert any("realtime capacity" in line for line in profile.decisions), list(profile.decisions)
    finally:
        stack.stop("measured")


# --- live text -----------------------------------------------------------------------------------


def digit_forms(text: str) -> set[str]:
    """Each digit run of ``text`` as written and with its separators removed (>= 4 digits)."""
    forms = set()
    for match in re.finditer(r"\d(?:[\d\-., ]*\d)?", text):
        digits = re.sub(r"\D", "", match.group())
        if len(digits) >= 4:
            forms |= {match.group().strip(), digits}
    return forms


def wait_job(stack, job_id: str) -> jobs_pb2.Job:
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    updates = [u.job for u in results.WatchJob(results_pb2.WatchJobRequest(job_id=job_id), timeout=120)]
    assert updates[-1].state == S.JOB_STATE_COMPLETED, updates[-1]
    return updates[-1]


@pytest.mark.parametrize(
    "paced",
    [
        False,
        True,
    ],
    ids=["accelerated", "real-time"],
)
def test_redacted_session_sends_and_stores_no_clear_digits(stack, gateway, paced):
    data, enum, rate = load_call_audio(NUMBERS)
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    # What the streaming decoder writes for the spoken phone number, learned from a clear run.
    clear = list(gateway.StreamingRecognize(call_requests(config(enum, rate), data), timeout=TIMEOUT))
    forms = digit_forms(final_text(clear))
    print("clear finals:", final_text(clear), "digit forms:", forms)
    assert forms, f"expected a number in {final_text(clear)!r}"
    wait_job(stack, summary(clear).job_id)
    results.DeleteJob(results_pb2.DeleteJobRequest(job_id=summary(clear).job_id))

    cfg = config(enum, rate, redact=True)
    if paced:
        # In real time (a paced gateway), so interims are decoded while the number is spoken.
        stack.start("stream_gateway", name="gw-paced", max_lead_seconds=0.0, worker_pool="cpu")
        try:
            stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("gw-paced"))
            # A second gateway sees the worker's advertised live sessions, which still count the first
            # gateway's calls for up to 10 s after their last window (plus a 5 s heartbeat): it may
            # refuse with RetryInfo, and a client retries after the delay it gives, as here.
            deadline = time.monotonic() + 90
            while True:
                try:
                    responses = list(stub.StreamingRecognize(call_requests(cfg, data), timeout=TIMEOUT))
                    break
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                        raise
                    packed = next(d for d in status_details(err) if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR))
                    retry = error_details_pb2.RetryInfo()
                    packed.Unpack(retry)
                    time.sleep(retry.retry_delay.ToTimedelta().total_seconds())  # the server's RetryInfo
        finally:
            stack.stop("gw-paced")
    else:
        responses = list(gateway.StreamingRecognize(call_requests(cfg, data), timeout=TIMEOUT))
    results_sent = [r.result for r in responses if r.WhichOneof("response") == "result"]
    interims = [r for r in results_sent if not r.is_final]
    print("redacted finals:", [f.text for f in finals(responses)], "| interims:", [r.text for r in interims])
    assert interims and finals(responses)
    for r in interims:  # half a number cannot be classified yet: every digit is masked
        texts = [r.text, *(w.word for w in r.words)]
        assert not any(re.search(r"\d", t) for t in texts), r
    leaked = set().union(*(digit_forms(" ".join([r.text, *(w.word for w in r.words)])) for r in finals(responses)))
    forms |= leaked
    assert not leaked, [f.text for f in finals(responses)]
    assert "[PHONE]" in final_text(responses) or "[NUMBER]" in final_text(responses), final_text(responses)

    job_id = summary(responses).job_id
    wait_job(stack, job_id)
    stored = results.GetTranscript(
        results_pb2.GetTranscriptRequest(job_id=job_id, format=transcript_pb2.TRANSCRIPT_FORMAT_TXT), timeout=30
    ).content.decode()
    assert "[PHONE]" in stored and not digit_forms(stored), stored
    files = [p for p in (stack.workdir / "objects").rglob("*") if p.is_file()]
    assert any(job_id in str(p) for p in files)
    for path in files:
        content = path.read_bytes().decode("utf-8", "replace")
        leaked = [f for f in forms if f in content]
        assert not leaked, (path, leaked)


def test_unknown_glossary_is_refused_before_audio(gateway):
    def requests():
        yield streaming_pb2.StreamingRecognizeRequest(config=config(glossary_ids=["no-such-glossary"]))

    err = rpc_error(lambda: list(gateway.StreamingRecognize(requests(), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).reason == "GLOSSARY_NOT_FOUND"
    fields = []
    for d in status_details(err):
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    assert fields == ["config.glossary_ids"]
