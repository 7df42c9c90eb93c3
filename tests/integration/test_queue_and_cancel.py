"""Queue position, ETA and cancel, with the transcriber started late (real JetStream queue)."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES
from scribe_harness import submit as harness_submit
from scribe_libs import bus as busmod
from scribe_libs.errors import error_info
from scribe_libs.jobs import AUDIO_BUCKET

S = jobs_pb2.JobState


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest", "postprocess"):
        stack.start(service)
    return stack


def submit(stack, name: str) -> jobs_pb2.Job:
    return harness_submit(ingest_pb2_grpc.IngestStub(stack.channel("ingest")), (FIXTURES / name).read_bytes())


def get(results, job_id: str) -> jobs_pb2.Job:
    return results.GetJob(results_pb2.GetJobRequest(job_id=job_id)).job


def test_jobs_wait_with_their_position_until_a_transcriber_starts(stack):
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    jobs = [submit(stack, "speech_en.wav"), submit(stack, "numbers_en.wav"), submit(stack, "speech_en.wav")]
    views = [get(results, j.job_id) for j in jobs]
    assert [v.state for v in views] == [S.JOB_STATE_QUEUED] * 3
    assert [v.queue_position for v in views] == [0, 1, 2]
    # ETA grows with the audio ahead (default RTF before any worker measured one).
    assert 0 < views[0].eta_seconds < views[1].eta_seconds < views[2].eta_seconds

    # Cancel the middle one: it never runs, its audio is gone, the job behind it moves up.
    cancelled = results.CancelJob(results_pb2.CancelJobRequest(job_id=jobs[1].job_id)).job
    assert cancelled.state == S.JOB_STATE_CANCELLED
    assert get(results, jobs[2].job_id).queue_position == 1
    audio_dir = stack.workdir / "objects" / AUDIO_BUCKET / jobs[1].job_id
    assert not audio_dir.exists() or not any(audio_dir.iterdir())
    with pytest.raises(grpc.RpcError) as caught:
        results.CancelJob(results_pb2.CancelJobRequest(job_id=jobs[1].job_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "JOB_TERMINAL"
    with pytest.raises(grpc.RpcError) as caught:
        results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=jobs[0].job_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "JOB_NOT_COMPLETED"

    stack.start("transcriber")
    for job in (jobs[0], jobs[2]):
        final = list(results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=240))[-1].job
        assert final.state == S.JOB_STATE_COMPLETED
    assert get(results, jobs[1].job_id).state == S.JOB_STATE_CANCELLED

    workers = results.ListWorkers(results_pb2.ListWorkersRequest()).workers
    assert len(workers) == 1
    profile = workers[0]
    assert profile.pool == "cpu" and list(profile.models_loaded) == ["tiny.en"]
    assert profile.device == "cpu" and profile.compute_type_effective == "int8"
    assert profile.cpu_cores >= 1 and profile.memory_used_by_models_bytes > 0
    stack.stop("transcriber")


def test_cancel_running_job_stops_it(stack):
    """A long job (speech repeated) is cancelled while RUNNING and ends CANCELLED with nothing kept."""
    import io
    import wave

    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    with wave.open(str(FIXTURES / "speech_en.wav")) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setparams(params)
        out.writeframes(frames * 40)  # ~5 minutes: many chunk boundaries
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))

    def gen():
        yield ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec())
        yield ingest_pb2.CreateJobRequest(audio=buffer.getvalue())

    job = ingest.CreateJob(gen(), timeout=60).job
    stack.start("transcriber", batch_size=1)
    cancelled = False
    for update in results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=240):
        if update.job.state == S.JOB_STATE_RUNNING and update.job.progress > 0 and not cancelled:
            results.CancelJob(results_pb2.CancelJobRequest(job_id=job.job_id))  # once: later updates may lag
            cancelled = True
        last = update.job
    assert last.state == S.JOB_STATE_CANCELLED
    assert 0 < last.progress < 1
    for bucket in ("scribe-audio", "scribe-results"):
        folder = stack.workdir / "objects" / bucket / job.job_id
        assert not folder.exists() or not any(folder.iterdir())
    stack.stop("transcriber")



def test_a_queued_job_is_written_once_with_its_task_sequence(stack):
    """Before: CreateJob wrote the record, then wrote it again with the task's stream sequence,
    leaving half of every KV_scribe_jobs block dead (issue 11: GetJob p95 at 100,000 jobs)."""

    async def scenario() -> tuple[list[bytes], jobs_pb2.Job, jobs_pb2.TranscribeTask, int]:
        nc = await nats.connect(stack.nats_url)
        try:
            writes: list[tuple[str, bytes]] = []

            async def seen(msg) -> None:  # noqa: ANN001 - nats Msg
                writes.append((msg.subject, msg.data))

            # Every KV put is a publish on its key's subject: a plain subscription sees each one.
            sub = await nc.subscribe("$KV.scribe_jobs.>", cb=seen)
            await nc.flush()
            job = await asyncio.to_thread(submit, stack, "speech_en.wav")
            await nc.flush()
            await sub.unsubscribe()
            js = nc.jetstream()
            entry = await (await js.key_value("scribe_jobs")).get(job.job_id)
            record = jobs_pb2.Job.FromString(entry.value)
            raw = await js.get_msg(busmod.JOBS_STREAM, record.stream_seq)
            mine = [data for subject, data in writes if subject == f"$KV.scribe_jobs.{job.job_id}"]
            return mine, record, busmod.parse(jobs_pb2.TranscribeTask, raw.data), job
        finally:
            await nc.close()

    mine, record, task, created = stack.run(scenario())
    assert len(mine) == 1, f"{len(mine)} writes of the record for one CreateJob"
    assert jobs_pb2.Job.FromString(mine[0]) == record == created
    assert record.state == S.JOB_STATE_QUEUED and record.stream_seq > 0
    assert task.job_id == record.job_id and task.queue_ticket == record.queue_ticket
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    assert results.CancelJob(results_pb2.CancelJobRequest(job_id=record.job_id)).job.state == S.JOB_STATE_CANCELLED
