"""The client against the real services (nats-server, ingest, results, postprocess, transcriber
with tiny.en, stream gateway), started by the repository's harness on free ports.

There is no front door in the harness yet, so the client is given each service's address
(``addresses=``); against ``scribe up`` one address does. Jobs wait in the queue until the
transcriber starts (the ``transcriber`` fixture), which the cancel test relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from scribe_cli.stream import load_call_audio

import scribe_client
from scribe_client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    JobCancelledError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from scribe_client.types import jobs_pb2
from scribe_harness import FIXTURES, stream_speech, wer

S = jobs_pb2.JobState
SPEECH = FIXTURES / "speech_en.wav"
SPEECH_TEXT = (FIXTURES / "speech_en.txt").read_text().strip()
TIMEOUT = 240


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest", "postprocess"):
        stack.start(service)
    return stack


@pytest.fixture(scope="module")
def transcriber(stack):
    """Starts the transcriber (jobs submitted before it wait QUEUED) and the stream gateway."""
    stack.start("transcriber")
    stack.start("stream_gateway", max_lead_seconds=-1)
    return stack


def addresses(stack) -> dict[str, str]:
    out = {"Ingest": stack.addresses["ingest"], "Results": stack.addresses["results"]}
    if "stream_gateway" in stack.addresses:
        out["StreamGateway"] = stack.addresses["stream_gateway"]
    return out


def client(stack, key: str | None = "admin") -> Client:
    return Client(api_key=stack.keys[key] if key else "", addresses=addresses(stack), timeout=30)


# --- before the transcriber: queue, cancel, errors --------------------------------------------


def test_submit_get_watch_cancel_a_queued_job(stack):
    with client(stack, "alice") as c:
        job = c.submit(SPEECH, labels={"case": "cancel"})
        assert job.state == S.JOB_STATE_QUEUED and job.spec.filename == "speech_en.wav"
        assert job.spec.request_id  # always sent: CreateJob is idempotent, so retried safely
        got = c.get(job.job_id)
        assert got.state == S.JOB_STATE_QUEUED and got.audio_duration == pytest.approx(7.76, abs=0.05)
        assert c.cancel(job.job_id).state == S.JOB_STATE_CANCELLED
        states = [j.state for j in c.watch(job.job_id, timeout=30)]
        assert states[-1] == S.JOB_STATE_CANCELLED
        with pytest.raises(FailedPreconditionError) as caught:
            c.cancel(job.job_id)
        assert caught.value.reason == "JOB_TERMINAL" and caught.value.metadata.get("state")
        with pytest.raises(FailedPreconditionError) as caught:
            c.get_transcript(job.job_id)
        assert caught.value.reason == "JOB_NOT_COMPLETED"
        listed = [j.job_id for j in c.list_jobs(labels={"case": "cancel"}, page_size=1)]
        assert listed == [job.job_id]


def test_request_id_makes_submit_idempotent(stack):
    with client(stack) as c:
        first = c.submit(FIXTURES / "numbers_en.wav", request_id="client-req-1")
        again = c.submit(FIXTURES / "numbers_en.wav", request_id="client-req-1")
        assert again.job_id == first.job_id
        c.cancel(first.job_id)


def test_bad_api_key_is_unauthenticated_with_its_reason(stack):
    with Client(api_key="sk_not-a-key", addresses=addresses(stack)) as c, pytest.raises(UnauthenticatedError) as caught:
        c.get("some-job")
    assert caught.value.reason == "API_KEY_INVALID" and caught.value.domain == "scribe.dev"
    assert caught.value.code.name == "UNAUTHENTICATED"
    with client(stack, None) as c, pytest.raises(UnauthenticatedError) as caught:
        c.submit(SPEECH)
    assert caught.value.reason == "API_KEY_MISSING"


def test_missing_scope_is_permission_denied(stack):
    with client(stack, "alice-reader") as c, pytest.raises(PermissionDeniedError) as caught:
        c.submit(SPEECH)
    assert caught.value.reason == "SCOPE_MISSING" and caught.value.metadata["scope"] == "jobs:write"


def test_unknown_job_and_undecodable_audio_are_typed(stack):
    with client(stack) as c:
        with pytest.raises(NotFoundError) as caught:
            c.get("no-such-job")
        assert caught.value.reason == "JOB_NOT_FOUND", caught.value
        with pytest.raises(InvalidArgumentError) as caught:
            c.submit(FIXTURES / "not_audio.wav")
        assert caught.value.reason == "UNDECODABLE_AUDIO"
        with pytest.raises(FileNotFoundError):
            c.submit(FIXTURES / "missing.wav")


async def test_transcribe_of_a_cancelled_job_raises_job_cancelled(stack):
    async with AsyncClient(api_key=stack.keys["alice"], addresses=addresses(stack)) as c:
        task = asyncio.ensure_future(c.transcribe(SPEECH, labels={"case": "async-cancel"}, timeout=60))
        for _ in range(200):  # the job appears once the upload is done (no transcriber yet: it waits)
            jobs = [j async for j in c.list_jobs(labels={"case": "async-cancel"})]
            if jobs:
                break
            await asyncio.sleep(0.05)
        assert jobs, "the job never appeared"
        await c.cancel(jobs[0].job_id)
        with pytest.raises(JobCancelledError) as caught:
            await task
        assert caught.value.job.state == S.JOB_STATE_CANCELLED and caught.value.job_id == jobs[0].job_id


# --- with the transcriber ------------------------------------------------------------------------


def test_transcribe_a_file_in_three_lines(transcriber):
    c = Client(api_key=transcriber.keys["alice"], addresses=addresses(transcriber))
    transcript = c.transcribe(SPEECH, language="en", word_timestamps=True, timeout=TIMEOUT)
    assert wer(SPEECH_TEXT, transcript.text) <= 0.2, transcript.text
    assert transcript.language == "en" and transcript.message.model == "tiny.en"
    assert transcript.duration == pytest.approx(7.76, abs=0.05) and len(transcript.words) >= 10
    assert transcript.job is not None and transcript.job.state == S.JOB_STATE_COMPLETED
    # The same job in the other formats, and typed by id.
    assert c.get_transcript(transcript.job_id, "srt").startswith("1\n")
    assert c.transcript(transcript.job_id).text == transcript.text
    c.close()


def test_transcribe_bytes_and_watch_progress(transcriber):
    with client(transcriber) as c:
        job = c.submit((FIXTURES / "numbers_en.wav").read_bytes())
        updates = list(c.watch(job.job_id, timeout=TIMEOUT))
        assert updates[-1].state == S.JOB_STATE_COMPLETED and updates[-1].progress == pytest.approx(1.0)
        order = [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_POSTPROCESSING, S.JOB_STATE_COMPLETED]
        seen = [order.index(u.state) for u in updates]
        assert seen == sorted(seen)
        # tiny.en writes the numbers as digits ("5 5 5"), so not a WER against the spelled reference.
        assert "noon tomorrow" in c.get_transcript(job.job_id, "txt").lower()
        assert any(w.pool == "cpu" for w in c.workers())


async def test_async_client_transcribes(transcriber):
    async with AsyncClient(api_key=transcriber.keys["alice"], addresses=addresses(transcriber)) as c:
        transcript = await c.transcribe(SPEECH, language="en", timeout=TIMEOUT)
        assert wer(SPEECH_TEXT, transcript.text) <= 0.2, transcript.text
        jobs = [j async for j in c.list_jobs(state="COMPLETED")]
        assert transcript.job_id in {j.job_id for j in jobs}


def test_transcribe_audio_already_in_object_storage(transcriber):
    from scribe_libs.objectstore import LocalStore

    store = LocalStore(transcriber.workdir / "objects")
    transcriber.run(store.ensure_bucket("calls"))
    transcriber.run(store.put_file("calls", "2026/12/speech.wav", SPEECH))
    with client(transcriber) as c:
        transcript = c.transcribe("s3://calls/2026/12/speech.wav", timeout=TIMEOUT)
    assert wer(SPEECH_TEXT, transcript.text) <= 0.2, transcript.text
    assert transcript.job.spec.source_uri == "s3://calls/2026/12/speech.wav"


def linear16_chunks(path: Path, seconds: float = 0.1) -> Iterator[bytes]:
    """The file as 16 kHz mono LINEAR16 (the client's stream default), ``seconds`` per chunk."""
    data, _, rate = load_call_audio(path)
    step = int(rate * seconds) * 2
    for i in range(0, len(data), step):
        yield data[i : i + step]


def test_stream_gives_final_results(transcriber):
    speech = stream_speech()  # JFK, or the espeak-ng clip with a looser bound (scribe_harness.speech)
    with client(transcriber, "alice") as c:
        responses = list(c.stream(linear16_chunks(speech.path), model="tiny.en", interim_results=True,
                                  timeout=TIMEOUT))
    finals = [r.result for r in responses if r.WhichOneof("response") == "result" and r.result.is_final]
    text = " ".join(f.text for f in finals)
    assert finals and wer(speech.text, text) <= speech.stream_wer, text
    assert responses[-1].WhichOneof("response") == "summary" and responses[-1].summary.final_results == len(finals)


async def test_async_stream_gives_final_results(transcriber):
    speech = stream_speech()
    async with AsyncClient(api_key=transcriber.keys["alice"], addresses=addresses(transcriber)) as c:
        responses = [r async for r in c.stream(linear16_chunks(speech.path), model="tiny.en", timeout=TIMEOUT)]
    text = " ".join(r.result.text for r in responses if r.WhichOneof("response") == "result" and r.result.is_final)
    assert wer(speech.text, text) <= speech.stream_wer, text


def test_client_uses_the_callers_scribe_v1_messages(transcriber):
    # Beside scribe-libs (the CLI), the client's messages are scribe.v1's own classes.
    from scribe.v1 import jobs_pb2 as shared

    assert scribe_client.types.SOURCE == "scribe.v1" and scribe_client.types.JobSpec is shared.JobSpec
