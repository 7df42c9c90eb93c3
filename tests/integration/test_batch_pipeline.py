"""The batch pipeline end to end: CreateJob -> transcriber -> postprocess -> Results, all real.

nats-server with JetStream, the four services' gRPC servers on port 0, the local object store,
and the tiny.en model from its package. Assertions are what a caller sees: states, text, formats,
status codes and reasons.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from scribe.v1 import ingest_pb2, jobs_pb2, results_pb2, transcript_pb2
from scribe_harness import FIXTURES, SHARED_DATA, create_job_requests, wer
from scribe_harness import submit as harness_submit
from scribe_libs.errors import error_info
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET

S = jobs_pb2.JobState
CHUNK = 64 * 1024


def requests(spec: jobs_pb2.JobSpec, data: bytes | None):
    return create_job_requests(spec, data or b"", CHUNK)




@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest", "postprocess", "transcriber"):
        stack.start(service)
    return stack


def submit(ingest, path: Path | None, data: bytes | None = None, **fields) -> jobs_pb2.Job:
    return harness_submit(ingest, path if path is not None else data, **fields)


def watch(results, job_id: str, timeout: float = 240) -> list[jobs_pb2.Job]:
    return [u.job for u in results.WatchJob(results_pb2.WatchJobRequest(job_id=job_id), timeout=timeout)]


def transcript_text(results, job_id: str, fmt=transcript_pb2.TRANSCRIPT_FORMAT_TXT) -> str:
    reply = results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job_id, format=fmt))
    return reply.content.decode()


def object_keys(stack, bucket: str) -> list[str]:
    root = stack.workdir / "objects" / bucket
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_transcribes_speech_and_writes_every_format(stack, ingest, results):
    job = submit(ingest, FIXTURES / "speech_en.wav", word_timestamps=True)
    # The reply is the record as it stands; an idle worker may already have picked the job up.
    assert job.state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_POSTPROCESSING, S.JOB_STATE_COMPLETED)
    assert job.audio_duration == pytest.approx(7.76, abs=0.05)

    updates = watch(results, job.job_id)
    states = [u.state for u in updates]
    assert states[-1] == S.JOB_STATE_COMPLETED, updates[-1]
    # Lifecycle order holds in what the watcher saw (it may skip fast states, never reorder).
    order = [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_POSTPROCESSING, S.JOB_STATE_COMPLETED]
    seen = [order.index(s) for s in states]
    assert seen == sorted(seen)
    assert updates[-1].progress == pytest.approx(1.0)

    text = transcript_text(results, job.job_id)
    reference = (FIXTURES / "speech_en.txt").read_text()
    assert wer(reference, text) <= 0.2, text

    srt = transcript_text(results, job.job_id, transcript_pb2.TRANSCRIPT_FORMAT_SRT)
    assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n\S", srt), srt
    vtt = transcript_text(results, job.job_id, transcript_pb2.TRANSCRIPT_FORMAT_VTT)
    assert vtt.startswith("WEBVTT\n\n") and re.search(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", vtt)
    data = transcript_text(results, job.job_id, transcript_pb2.TRANSCRIPT_FORMAT_JSON)
    transcript = json_format.Parse(data, transcript_pb2.Transcript())
    assert transcript.language == "en" and transcript.model == "tiny.en" and transcript.compute_type == "int8"
    assert transcript.worker_id and transcript.duration == pytest.approx(7.76, abs=0.05)
    words = [w for s in transcript.segments for w in s.words]
    assert len(words) >= 10
    assert all(0 <= w.start <= w.end <= transcript.duration + 0.5 for w in words)

    # Privacy: the original audio is gone once the raw transcript is durable.
    assert not [k for k in object_keys(stack, AUDIO_BUCKET) if k.startswith(job.job_id)]
    assert {f"{job.job_id}/transcript.{ext}" for ext in ("json", "txt", "srt", "vtt")} <= set(
        object_keys(stack, RESULTS_BUCKET)
    )
    final = results.GetJob(results_pb2.GetJobRequest(job_id=job.job_id)).job
    assert final.state == S.JOB_STATE_COMPLETED and final.audio_key == "" and final.language == "en"


@pytest.mark.skipif(not (SHARED_DATA / "jfk.flac").exists(), reason="../shared/data is not beside this checkout")
def test_jfk_reference_recording_wer(ingest, results):
    job = submit(ingest, SHARED_DATA / "jfk.flac")
    assert watch(results, job.job_id)[-1].state == S.JOB_STATE_COMPLETED
    text = transcript_text(results, job.job_id)
    reference = (
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    )
    assert wer(reference, text) <= 0.05, text


def test_mulaw_call_audio(ingest, results):
    job = submit(ingest, FIXTURES / "speech_en_8k_mulaw.wav")
    assert watch(results, job.job_id)[-1].state == S.JOB_STATE_COMPLETED
    assert wer((FIXTURES / "speech_en.txt").read_text(), transcript_text(results, job.job_id)) <= 0.3


def test_request_id_makes_create_job_idempotent(ingest, results):
    first = submit(ingest, FIXTURES / "numbers_en.wav", request_id="caller-req-42")
    again = ingest.CreateJob(
        requests(jobs_pb2.JobSpec(request_id="caller-req-42"), (FIXTURES / "numbers_en.wav").read_bytes())
    )
    assert again.existing and again.job.job_id == first.job_id
    watch(results, first.job_id)
    listed = results.ListJobs(results_pb2.ListJobsRequest(page_size=1000)).jobs
    assert sum(1 for j in listed if j.spec.request_id == "caller-req-42") == 1


def test_source_uri_in_object_store(stack, ingest, results):
    from scribe_libs.objectstore import LocalStore

    store = LocalStore(stack.workdir / "objects")
    stack.run(store.ensure_bucket("calls"))
    stack.run(store.put_file("calls", "2026/11/speech.wav", FIXTURES / "speech_en.wav"))
    job = submit(ingest, None, source_uri="s3://calls/2026/11/speech.wav")
    assert watch(results, job.job_id)[-1].state == S.JOB_STATE_COMPLETED
    assert "quick" in transcript_text(results, job.job_id).lower()
    # The caller's object is theirs: scribe deletes only its own copy.
    assert stack.run(store.exists("calls", "2026/11/speech.wav"))


def _error(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    info = error_info(caught.value)
    assert info is not None and info.domain == "scribe.dev", caught.value
    return caught.value.code(), info.reason


BAD_INPUTS = [
    ("undecodable", lambda: (jobs_pb2.JobSpec(), (FIXTURES / "not_audio.wav").read_bytes()),
     grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_AUDIO"),
    ("truncated-header", lambda: (jobs_pb2.JobSpec(), (FIXTURES / "speech_en.wav").read_bytes()[:30]),
     grpc.StatusCode.INVALID_ARGUMENT, "UNDECODABLE_AUDIO"),
    ("empty", lambda: (jobs_pb2.JobSpec(), b""), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_AUDIO"),
    ("unknown-model", lambda: (jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(model="whisper-9000")), b"x"),
     grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_MODEL"),
    ("unknown-language", lambda: (jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(language="xx")), b"x"),
     grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_LANGUAGE"),
    ("english-model-korean", lambda: (jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(language="ko")), b"x"),
     grpc.StatusCode.INVALID_ARGUMENT, "MODEL_LANGUAGE_MISMATCH"),
    ("no-pool", lambda: (jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(model="large-v3")), b"x"),
     grpc.StatusCode.FAILED_PRECONDITION, "NO_POOL_FOR_MODEL"),
    ("missing-source", lambda: (jobs_pb2.JobSpec(source_uri="s3://calls/nope.wav"), None),
     grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND"),
    ("bad-source-uri", lambda: (jobs_pb2.JobSpec(source_uri="ftp://x/y"), None),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SOURCE_URI"),
    ("absurd-beam", lambda: (jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(beam_size=10**6)), b"x"),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BEAM_SIZE"),
]


@pytest.mark.parametrize(
    ("spec_and_data", "code", "reason"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_status_and_leaves_nothing(stack, ingest, results, spec_and_data, code, reason):
    before_jobs = len(results.ListJobs(results_pb2.ListJobsRequest(page_size=1000)).jobs)
    before_audio = object_keys(stack, AUDIO_BUCKET)
    spec, data = spec_and_data()
    assert _error(lambda: ingest.CreateJob(requests(spec, data), timeout=30)) == (code, reason)
    assert len(results.ListJobs(results_pb2.ListJobsRequest(page_size=1000)).jobs) == before_jobs
    assert object_keys(stack, AUDIO_BUCKET) == before_audio
    # Still healthy: a good job goes through afterwards (checked once at the end of the module too).


def test_first_message_must_be_the_spec(ingest):
    assert _error(
        lambda: ingest.CreateJob(iter([ingest_pb2.CreateJobRequest(audio=b"RIFF")]), timeout=30)
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "SPEC_REQUIRED")


def test_unknown_job_is_not_found(results):
    for call in (
        lambda: results.GetJob(results_pb2.GetJobRequest(job_id="0" * 32)),
        lambda: results.GetTranscript(results_pb2.GetTranscriptRequest(job_id="nope")),
        lambda: list(results.WatchJob(results_pb2.WatchJobRequest(job_id="0" * 32))),
        lambda: results.CancelJob(results_pb2.CancelJobRequest(job_id="../etc")),
    ):
        assert _error(call) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")


def test_services_still_serve_after_bad_input(ingest, results):
    job = submit(ingest, FIXTURES / "numbers_en.wav")
    assert watch(results, job.job_id)[-1].state == S.JOB_STATE_COMPLETED
    with pytest.raises(grpc.RpcError) as caught:
        results.DeleteJob(results_pb2.DeleteJobRequest(job_id=job.job_id))
        results.GetJob(results_pb2.GetJobRequest(job_id=job.job_id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
