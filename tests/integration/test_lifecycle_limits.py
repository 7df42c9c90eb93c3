"""Limits, backpressure, deletion, retention and max deliveries (issue 5), as a caller sees them.

- AUDIO_TOO_LARGE / AUDIO_TOO_LONG: refused while the upload streams in (the client had not sent
  everything when the status came back) and nothing stays stored (no object, no job record, no
  spooled file);
- QUEUE_FULL: RESOURCE_EXHAUSTED with a RetryInfo delay once the pool's queue is at its maximum;
- DeleteJob: record and every object gone at once;
- retention: with a retention of a few seconds, a completed job becomes NOT_FOUND by itself;
- max deliveries: a job whose worker is SIGKILLed on every delivery ends FAILED with a reason
  (subprocess stack: only a real process can be killed abruptly).

Cancel of queued and running jobs is in test_queue_and_cancel.py; request_id in
test_batch_pipeline.py.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import wave
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES, NatsServer, Stack, wait_for
from scribe_libs.errors import error_info, status_details
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET

S = jobs_pb2.JobState
CHUNK = 64 * 1024
TERMINAL = (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest")
    stack.start("postprocess")
    return stack


class Upload:
    """A CreateJob request stream that counts how many audio chunks gRPC pulled from it.

    ``data`` is either the bytes or ``(header, total_bytes)``: a header followed by zeros made
    as they are pulled (uploads of 100+ MB without holding them in memory).
    """

    def __init__(self, spec: jobs_pb2.JobSpec, data: bytes | tuple[bytes, int]):
        self.spec = spec
        self.header, self.size = (data, len(data)) if isinstance(data, bytes) else data
        self.chunks = -(-self.size // CHUNK)
        self.sent = 0

    def __iter__(self):
        yield ingest_pb2.CreateJobRequest(spec=self.spec)
        zeros = bytes(CHUNK)
        for i in range(self.chunks):
            self.sent += 1
            start, end = i * CHUNK, min((i + 1) * CHUNK, self.size)
            head = self.header[start:end]
            yield ingest_pb2.CreateJobRequest(audio=head + zeros[: end - start - len(head)])


def wav_header(seconds: float, rate: int = 16000) -> tuple[bytes, int]:
    """A 16-bit mono PCM WAV header stating ``seconds`` of audio, and the file's total size."""
    data_bytes = int(seconds * rate) * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    return header, len(header) + data_bytes


def wav_bytes(name: str, times: int = 1) -> bytes:
    with wave.open(str(FIXTURES / name)) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    out = io.BytesIO()
    with wave.open(out, "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames * times)
    return out.getvalue()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def job_ids(results) -> set[str]:
    return {j.job_id for j in results.ListJobs(results_pb2.ListJobsRequest(page_size=1000), timeout=30).jobs}




def refused_while_streaming(stack, ingest_name: str, data: bytes, reason: str) -> None:
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    before_jobs = job_ids(results)
    before_objects = files_under(stack.workdir / "objects" / AUDIO_BUCKET)
    upload = Upload(jobs_pb2.JobSpec(filename="big.wav"), data)
    ingest = ingest_pb2_grpc.IngestStub(stack.channel(ingest_name))
    with pytest.raises(grpc.RpcError) as caught:
        ingest.CreateJob(iter(upload), timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == reason
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status_details(caught.value))
    # Nothing stays stored: no audio object, no job record, no spooled upload.
    assert files_under(stack.workdir / "objects" / AUDIO_BUCKET) == before_objects
    assert job_ids(results) == before_jobs
    assert not list(stack.workdir.glob("scribe-ingest/*/upload-*"))  # ingest's owned temp dir
    # Refused while streaming in: gRPC buffers a few MB ahead of what the server has read; the
    # rest of the upload was never sent.
    assert upload.sent < upload.chunks / 2, f"refused only after {upload.sent}/{upload.chunks} chunks"


def test_audio_too_large_is_refused_while_it_streams_in(stack):
    stack.start("ingest", name="ingest-small", max_audio_bytes=256 * 1024)
    # 128 MiB of a (short) WAV: the size limit, not the duration, refuses it.
    refused_while_streaming(stack, "ingest-small", (wav_bytes("numbers_en.wav"), 128 * 1024**2), "AUDIO_TOO_LARGE")
    stack.stop("ingest-small")


def test_audio_too_long_is_refused_while_it_streams_in(stack):
    stack.start("ingest", name="ingest-short", max_audio_seconds=60)
    # 1 h of 16 kHz PCM (115 MB) whose header states the duration in its first 44 bytes.
    refused_while_streaming(stack, "ingest-short", wav_header(3600), "AUDIO_TOO_LONG")
    stack.stop("ingest-short")


def test_full_queue_refuses_with_a_retry_delay(stack):
    # A pool of its own with no worker: its queue only grows.
    stack.start("ingest", name="ingest-q", pools={"quiet": ["tiny.en"]}, max_queue_depth=2)
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest-q"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    audio = (FIXTURES / "numbers_en.wav").read_bytes()
    queued = [ingest.CreateJob(iter(Upload(jobs_pb2.JobSpec(), audio)), timeout=60).job for _ in range(2)]
    assert {j.pool for j in queued} == {"quiet"}
    before = job_ids(results)
    with pytest.raises(grpc.RpcError) as caught:
        ingest.CreateJob(iter(Upload(jobs_pb2.JobSpec(), audio)), timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "QUEUE_FULL"
    retry = [d for d in status_details(caught.value) if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() > 0
    assert job_ids(results) == before

    # A queued job cannot be deleted (cancel it first); once cancelled, the queue has room again.
    with pytest.raises(grpc.RpcError) as caught:
        results.DeleteJob(results_pb2.DeleteJobRequest(job_id=queued[0].job_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "JOB_NOT_TERMINAL"
    results.CancelJob(results_pb2.CancelJobRequest(job_id=queued[0].job_id))
    third = ingest.CreateJob(iter(Upload(jobs_pb2.JobSpec(), audio)), timeout=60).job
    for job in (queued[1], third):
        results.CancelJob(results_pb2.CancelJobRequest(job_id=job.job_id))
    stack.stop("ingest-q")


def test_delete_job_removes_record_and_every_object(stack):
    stack.start("transcriber", batch_size=1)
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    spec = jobs_pb2.JobSpec(retain_audio=True)  # audio kept: Delete must remove it too
    job = ingest.CreateJob(iter(Upload(spec, (FIXTURES / "numbers_en.wav").read_bytes())), timeout=60).job
    last = list(results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=120))[-1].job
    assert last.state == S.JOB_STATE_COMPLETED
    objects = stack.workdir / "objects"
    assert files_under(objects / AUDIO_BUCKET / job.job_id) and files_under(objects / RESULTS_BUCKET / job.job_id)

    results.DeleteJob(results_pb2.DeleteJobRequest(job_id=job.job_id))
    for call, request in (
        (results.GetJob, results_pb2.GetJobRequest(job_id=job.job_id)),
        (results.GetTranscript, results_pb2.GetTranscriptRequest(job_id=job.job_id)),
        (results.DeleteJob, results_pb2.DeleteJobRequest(job_id=job.job_id)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason == "JOB_NOT_FOUND"
    assert files_under(objects / AUDIO_BUCKET / job.job_id) == []
    assert files_under(objects / RESULTS_BUCKET / job.job_id) == []
    assert job.job_id not in job_ids(results)
    stack.stop("transcriber")


# --- Retention: its own broker, since the KV TTL is per bucket and would shorten every job's life.

RETENTION_SECONDS = 5.0


@pytest.fixture
def short_retention_stack(tmp_path):
    server = NatsServer(tmp_path / "nats")
    server.start()
    stack = Stack(server.url, tmp_path, auth=False)
    days = RETENTION_SECONDS / 86400
    try:
        stack.start("results", retention_days=days, sweep_interval_seconds=0.5)
        stack.start("ingest", retention_days=days)
        stack.start("postprocess", retention_days=days)
        stack.start("transcriber", retention_days=days, batch_size=1)
        yield stack
    finally:
        stack.close()
        server.stop()


def test_completed_job_expires_after_the_retention_period(short_retention_stack):
    stack = short_retention_stack
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    job = ingest.CreateJob(iter(Upload(jobs_pb2.JobSpec(), (FIXTURES / "terms_en.wav").read_bytes())), timeout=60).job
    last = list(results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=120))[-1].job
    assert last.state == S.JOB_STATE_COMPLETED
    completed_at = time.monotonic()
    assert results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job.job_id), timeout=10).content

    def expired():
        try:
            results.GetJob(results_pb2.GetJobRequest(job_id=job.job_id), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            assert error_info(exc).reason == "JOB_NOT_FOUND"
            return True
        return False

    wait_for(expired, RETENTION_SECONDS * 6, "the job to expire")
    assert time.monotonic() - completed_at > RETENTION_SECONDS * 0.5  # not gone at once: it expired
    with pytest.raises(grpc.RpcError) as caught:
        results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job.job_id), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert job.job_id not in job_ids(results)
    # The local store's sweeper removes the transcripts too.
    wait_for(lambda: not files_under(stack.workdir / "objects" / RESULTS_BUCKET / job.job_id),
             RETENTION_SECONDS * 6, "the transcripts to be swept")


# --- Max deliveries: the worker dies on every delivery ------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_job_killing_its_worker_every_time_ends_failed(tmp_path, monkeypatch):
    from scribe_cli import stack as embedded

    monkeypatch.setenv("SCRIBE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SCRIBE_API_KEY", "")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MAX_DELIVER", "2")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_ACK_WAIT_SECONDS", "3")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_BATCH_SIZE", "1")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODEL_STORE__CACHE_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODEL_STORE__ALLOW_DOWNLOAD", "false")
    # Free ports only (no fixed front door, metrics or HTTP port): runs beside a user's `scribe up`.
    embedded.up(embedded.UpOptions(models=["tiny.en"], workers=1, port=0, metrics_port=0, http_port=0))
    try:
        ingest = ingest_pb2_grpc.IngestStub(embedded.channel("ingest"))
        results = results_pb2_grpc.ResultsStub(embedded.channel("results"))
        data = wav_bytes("speech_en.wav", 20)  # ~2.6 min: still running when its worker is killed
        job = ingest.CreateJob(iter(Upload(jobs_pb2.JobSpec(), data)), timeout=60).job

        def get():
            return results.GetJob(results_pb2.GetJobRequest(job_id=job.job_id), timeout=10).job

        for delivery in (1, 2):
            wait_for(lambda d=delivery: (j := get()).state == S.JOB_STATE_RUNNING and j.delivery_count == d,
                     120, f"delivery {delivery} to run")
            os.kill(embedded.load_state()["services"]["transcriber-0"]["pid"], signal.SIGKILL)
            # A live worker of the pool pulls again: the broker does not deliver the job a third
            # time but announces MAX_DELIVERIES (it only does so while someone pulls).
            embedded.restart("transcriber-0")
        # Nobody FAILed it (its worker died each time); the max-deliveries advisory handler must.
        final = wait_for(lambda: (j := get()).state in TERMINAL and j, 60, "the job to end")
        assert final.state == S.JOB_STATE_FAILED, final
        assert final.error_reason and final.error_message, final
        assert final.delivery_count == 2
        print(f"\nmax deliveries: FAILED with {final.error_reason}: {final.error_message}")
        home = Path(os.environ["SCRIBE_HOME"])
        assert not files_under(home / "objects" / AUDIO_BUCKET / job.job_id)
    finally:
        embedded.down()
