"""A session survives its worker: one of two transcribers is stopped mid-stream.

The gateway prefers the least loaded worker, ties going to the lower worker id, so the session
starts on ``t-a``; ``t-a`` is stopped once the first interim came back. The session must end
normally with every word (the windows in flight are decoded again on ``t-b``).
"""

from __future__ import annotations

import threading

import pytest

from scribe.v1 import streaming_pb2, streaming_pb2_grpc
from scribe_cli.stream import call_requests, load_call_audio
from scribe_harness import FIXTURES, JFK, JFK_TEXT, wer

SPEECH = FIXTURES / "speech_en.wav"
SPEECH_TEXT = (FIXTURES / "speech_en.txt").read_text().strip()




@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("transcriber", name="t-a", worker_id="t-a")
    stack.start("transcriber", name="t-b", worker_id="t-b")
    # Real-time pace: the worker is stopped while the call is still being spoken.
    stack.start("stream_gateway", max_lead_seconds=0.5, worker_cooldown_seconds=30)
    return stack


def test_session_survives_a_worker_stopped_mid_stream(stack):
    path, reference, limit = (JFK, JFK_TEXT, 0.05) if JFK.exists() else (SPEECH, SPEECH_TEXT, 0.4)
    data, enum, rate = load_call_audio(path)
    cfg = streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate, interim_results=True)
    stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))
    stopped = threading.Event()
    responses = []

    def stop_worker() -> None:
        stack.stop("t-a")
        stopped.set()

    stopper = None
    for response in stub.StreamingRecognize(call_requests(cfg, data), timeout=240):
        responses.append(response)
        if stopper is None and response.WhichOneof("response") == "result":
            stopper = threading.Thread(target=stop_worker)
            stopper.start()
    stopper.join(30)
    assert stopped.is_set(), "t-a was stopped during the call"
    finals = [r.result.text for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]
    text = " ".join(finals)
    assert wer(reference, text) <= limit, text
    summary = responses[-1].summary
    assert responses[-1].WhichOneof("response") == "summary" and summary.job_id
    assert summary.audio_seconds == pytest.approx(data.__len__() / 2 / 16000, abs=0.01)
