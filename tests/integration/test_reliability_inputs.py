"""Reliability of CreateJob against hostile or broken inputs, as a caller sees it.

- bounded inputs: megabyte strings in a JobSpec are refused with INVALID_ARGUMENT naming the field
  and its limit, and the services keep serving (a record over NATS's max payload used to cost the
  connection for good: INTERNAL forever); JobStore itself refuses a record that cannot fit;
- truncated audio: a WAV whose header states more than its bytes hold is refused at ingest; a cut
  FLAC (its header states the full length) ends FAILED with TRUNCATED_AUDIO, not COMPLETED;
- the same request_id sent by 8 callers at once makes exactly one job;
- an upload that stops sending ends with DEADLINE_EXCEEDED (UPLOAD_IDLE) and leaves no spooled file;
- a 64-channel file is refused at ingest; UNDECODABLE_AUDIO says what is wrong without server paths.
"""

from __future__ import annotations

import io
import re
import threading
import time
import wave

import av
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, streaming_pb2
from scribe_harness import FIXTURES, create_job_requests, job_spec, submit, wait_for
from scribe_libs.errors import error_info, status_details

S = jobs_pb2.JobState
TERMINAL = (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest")
    stack.start("postprocess")
    stack.start("transcriber", batch_size=1)
    return stack


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    out = []
    for detail in status_details(error):
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            out.extend(v.field for v in request.field_violations)
    return out


def finished(results, job_id: str) -> jobs_pb2.Job:
    def done():
        job = results.GetJob(results_pb2.GetJobRequest(job_id=job_id), timeout=10).job
        return job if job.state in TERMINAL else None

    return wait_for(done, 180, f"job {job_id} to finish")


def wav_of(samples: np.ndarray, rate: int = 16000) -> bytes:
    """16-bit PCM WAV of ``samples`` (frames x channels, or 1-D mono)."""
    samples = samples.reshape(len(samples), -1)
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setnchannels(samples.shape[1])
        dst.setsampwidth(2)
        dst.setframerate(rate)
        dst.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


def speech_samples(times: int) -> np.ndarray:
    with wave.open(str(FIXTURES / "numbers_en.wav")) as src:
        frames = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
    return np.tile(frames, times)


# --- 1. Bounded inputs -------------------------------------------------------------------------

HUGE = "x" * MIB

OVERSIZED = [
    ("filename", {"filename": HUGE}, "spec.filename", "1024"),
    ("label-value", {"labels": {"note": HUGE}}, "spec.labels", "1024"),
    ("label-key", {"labels": {HUGE: "v"}}, "spec.labels", "128"),
    ("request-id", {"request_id": HUGE}, "spec.request_id", "256"),
    ("source-uri", {"source_uri": "s3://calls/" + HUGE}, "spec.source_uri", "2048"),
    ("glossary-id", {"glossary_ids": [HUGE]}, "spec.glossary_ids", "128"),
    ("glossary-ids", {"glossary_ids": [f"g{i}" for i in range(1000)]}, "spec.glossary_ids", "32"),
    ("language", {"language": HUGE}, "spec.config.language", "35"),
    ("hotword", {"hotwords": [HUGE]}, "spec.config.hotwords", "4000"),
    ("hotwords", {"hotwords": [""] * 100_000}, "spec.config.hotwords", "100"),
    ("initial-prompt", {"initial_prompt": HUGE}, "spec.config.initial_prompt", "4000"),
]


@pytest.mark.parametrize(("fields", "field", "limit"), [o[1:] for o in OVERSIZED], ids=[o[0] for o in OVERSIZED])
def test_oversized_spec_field_is_refused_naming_field_and_limit(ingest, fields, field, limit):
    fields = dict(fields)
    filename = fields.pop("filename", "a.wav")
    audio = (FIXTURES / "numbers_en.wav").read_bytes()
    error = refusal(lambda: submit(ingest, audio, filename=filename, timeout=60, **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    info = error_info(error)
    assert info.reason in ("FIELD_TOO_LONG", "TOO_MANY_VALUES"), info
    assert any(f.startswith(field) for f in bad_request_fields(error)), bad_request_fields(error)
    assert info.metadata["limit"] == limit
    assert limit in error.details() and len(error.details()) < 500


def test_megabyte_filename_and_label_refused_and_service_keeps_serving(ingest, results):
    audio = (FIXTURES / "numbers_en.wav").read_bytes()
    for fields, field in (({"filename": HUGE}, "spec.filename"), ({"labels": {"note": HUGE}}, "spec.labels")):
        fields.setdefault("filename", "a.wav")
        filename = fields.pop("filename")
        for _ in range(2):  # refused the same way again: the connection to NATS is intact
            error = refusal(lambda: submit(ingest, audio, filename=filename, timeout=60, **fields))  # noqa: B023
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert any(f.startswith(field) for f in bad_request_fields(error))
    job = submit(ingest, audio, filename="numbers_en.wav", labels={"note": "fine"}, timeout=60)
    assert finished(results, job.job_id).state == S.JOB_STATE_COMPLETED


def test_streaming_config_fields_are_bounded():
    from scribe_stream_gateway.config import Settings
    from scribe_stream_gateway.options import validate_streaming_config

    settings = Settings(nats={"url": "nats://127.0.0.1:1"})
    base = {"encoding": streaming_pb2.AUDIO_ENCODING_LINEAR16, "sample_rate_hertz": 16000}
    for extra, field in (
        ({"labels": {"k": HUGE}}, "config.labels"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "config.labels"),
        ({"glossary_ids": [HUGE]}, "config.glossary_ids"),
        ({"hotwords": [""] * 100_000}, "config.hotwords"),
        ({"language": HUGE}, "config.language"),
    ):
        from scribe_libs.errors import InvalidArgument

        with pytest.raises(InvalidArgument) as caught:
            validate_streaming_config(streaming_pb2.StreamingConfig(**base, **extra), settings)
        assert caught.value.reason in ("FIELD_TOO_LONG", "TOO_MANY_VALUES"), caught.value.reason
        assert caught.value.field.startswith(field)
        assert "limit" in caught.value.message


def test_job_store_refuses_a_record_over_the_broker_max_payload(stack):
    from scribe_libs.bus import connect
    from scribe_libs.config import NatsSettings
    from scribe_libs.jobs import JobStore, new_job_id

    async def scenario():
        bus = await connect(NatsSettings(url=stack.nats_url), "test-records", retention_seconds=3600)
        try:
            store = JobStore(bus)
            outcomes = []
            # Over the payload, and just under it (the KV headers and the event envelope push it over).
            for size in (bus.nc.max_payload + 10, bus.nc.max_payload - 200):
                spec = jobs_pb2.JobSpec(filename="x" * size)
                job = jobs_pb2.Job(job_id=new_job_id(), state=S.JOB_STATE_QUEUED, spec=spec)
                try:
                    await store.create(job)
                    outcomes.append("stored")
                except Exception as exc:  # noqa: BLE001 - the test reports what happened
                    outcomes.append(getattr(exc, "reason", type(exc).__name__))
            small = jobs_pb2.Job(job_id=new_job_id(), state=S.JOB_STATE_QUEUED, spec=jobs_pb2.JobSpec(filename="ok"))
            await store.create(small)
            assert (await store.get(small.job_id)).spec.filename == "ok"
            return outcomes, bus.nc.is_connected
        finally:
            await bus.close()

    outcomes, connected = stack.run(scenario(), timeout=60)
    assert outcomes == ["JOB_RECORD_TOO_LARGE", "JOB_RECORD_TOO_LARGE"]
    assert connected


# --- 2. Truncated audio ------------------------------------------------------------------------


def test_wav_whose_header_states_more_than_present_is_refused(ingest):
    whole = wav_of(speech_samples(5))  # ~31 s
    cut = whole[: 44 + (len(whole) - 44) // 3]
    error = refusal(lambda: submit(ingest, cut, filename="cut.wav", timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "TRUNCATED_AUDIO"
    assert "10.3 s of 31.0 s" in error.details(), error.details()


def flac_of(samples: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples.astype("<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def test_cut_flac_ends_failed_truncated_not_completed(ingest, results):
    whole = flac_of(speech_samples(5))
    job = submit(ingest, whole[: len(whole) // 3], filename="cut.flac", timeout=60)
    assert job.audio_duration == pytest.approx(31.0, abs=0.2)
    last = finished(results, job.job_id)
    assert last.state == S.JOB_STATE_FAILED, (last.state, last.progress, last.processed_seconds)
    assert last.error_reason == "TRUNCATED_AUDIO"
    assert " s of 31.0 s" in last.error_message, last.error_message
    # The same file whole completes: no false positive.
    job = submit(ingest, whole, filename="whole.flac", timeout=60)
    assert finished(results, job.job_id).state == S.JOB_STATE_COMPLETED


# --- 3. One job per request_id, even at once ---------------------------------------------------


def test_same_request_id_at_once_makes_exactly_one_job(stack, results):
    audio = (FIXTURES / "numbers_en.wav").read_bytes()
    request_id = f"same-{time.time_ns()}"
    barrier = threading.Barrier(8)
    replies: list = []
    errors: list = []

    def call():
        stub = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
        spec = job_spec("a.wav", request_id=request_id)
        barrier.wait()
        try:
            replies.append(stub.CreateJob(create_job_requests(spec, audio), timeout=60))
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    assert len({r.job.job_id for r in replies}) == 1, [(r.job.job_id, r.existing) for r in replies]
    assert sorted(r.existing for r in replies) == [False] + [True] * 7
    finished(results, replies[0].job.job_id)


# --- 4. Idle uploads ---------------------------------------------------------------------------


@pytest.mark.parametrize("send_audio", [False, True], ids=["spec-only", "spec-and-one-chunk"])
def test_idle_upload_ends_with_deadline_exceeded_and_no_spooled_file(stack, send_audio):
    name = "ingest-idle"
    if name not in stack.addresses:
        stack.start("ingest", name=name, upload_idle_timeout_seconds=1.0)
    stub = ingest_pb2_grpc.IngestStub(stack.channel(name))
    release = threading.Event()
    spooled = []

    def requests():
        yield ingest_pb2.CreateJobRequest(spec=job_spec("idle.wav"))
        if send_audio:
            yield ingest_pb2.CreateJobRequest(audio=(FIXTURES / "numbers_en.wav").read_bytes()[:32768])
            time.sleep(0.3)
            spooled.extend(stack.workdir.glob("scribe-ingest/*/upload-*"))  # ingest's owned temp dir
        release.wait(30)

    started = time.monotonic()
    try:
        error = refusal(lambda: stub.CreateJob(requests(), timeout=30))
    finally:
        release.set()
    assert time.monotonic() - started < 10
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error
    assert error_info(error).reason == "UPLOAD_IDLE"
    if send_audio:
        assert spooled, "the upload was being spooled"
    wait_for(lambda: not list(stack.workdir.glob("scribe-ingest/*/upload-*")), 10,
             "the spooled upload to be removed")


# --- 5. Channels, languages, messages ----------------------------------------------------------


def test_sixty_four_channel_wav_is_refused_at_ingest(ingest):
    audio = wav_of(np.zeros((16000, 64), dtype=np.int16))
    error = refusal(lambda: submit(ingest, audio, filename="many.wav", timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "TOO_MANY_CHANNELS"
    assert "64" in error.details() and "8" in error.details()


def test_english_only_model_refuses_another_language(ingest):
    audio = (FIXTURES / "numbers_en.wav").read_bytes()
    for fields in ({"language": "ko"}, {"language": "ko", "model": "tiny.en"}):
        error = refusal(lambda: submit(ingest, audio, timeout=60, **fields))  # noqa: B023
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(error).reason == "MODEL_LANGUAGE_MISMATCH"


def test_undecodable_audio_message_has_no_path_or_errno(ingest):
    error = refusal(lambda: submit(ingest, (FIXTURES / "not_audio.wav").read_bytes(), timeout=60))
    assert error_info(error).reason == "UNDECODABLE_AUDIO"
    message = error.details()
    assert "/" not in message.replace("ogg/opus", "") and "Errno" not in message, message
    assert not re.search(r"\d{3,}", message), message  # no errno such as 1094995529
    assert "invalid data" in message.lower(), message
