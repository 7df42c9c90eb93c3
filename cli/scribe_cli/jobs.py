"""Submit, follow and fetch many batch jobs with bounded concurrency (``scribe transcribe DIR``, bench, export).

The same three calls as ``scribe transcribe FILE``: ``Ingest.CreateJob`` (a client stream: the
JobSpec first, then the audio in 1 MiB chunks, or the JobSpec alone when it names a
``source_uri``), ``Results.WatchJob`` until a terminal state, ``Results.GetTranscript``. At most
``concurrency`` jobs are between their upload and their transcript at once, each followed by a
thread of a pool (the sync gRPC stubs are thread-safe and share one channel per service).

A job that the platform refuses or that fails is an :class:`Outcome` with ``error`` set, never an
exception; only an error no other job could escape (the stack unreachable, the API key refused)
is raised: no task starts after it, and the jobs in flight are followed to their end (so
are they after Ctrl-C).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2
from scribe_cli import stack

CHUNK_BYTES = 1024 * 1024
"""Audio bytes per CreateJobRequest after the spec (1 MiB: well under gRPC's 4 MiB message limit)."""

S = jobs_pb2.JobState

#: Status codes that no other job would escape either: raised instead of recorded.
FATAL_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED})


def state_name(job: jobs_pb2.Job) -> str:
    """``COMPLETED``, ``FAILED``, ... (the JobState name without its prefix)."""
    return S.Name(job.state).removeprefix("JOB_STATE_")


def create_requests(path: Path | None, spec: jobs_pb2.JobSpec) -> Iterator[ingest_pb2.CreateJobRequest]:
    """The CreateJob stream: ``spec``, then ``path``'s bytes in :data:`CHUNK_BYTES` chunks (none for None)."""
    yield ingest_pb2.CreateJobRequest(spec=spec)
    if path is None:
        return
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield ingest_pb2.CreateJobRequest(audio=chunk)


def ingest_stub() -> ingest_pb2_grpc.IngestStub:
    """An Ingest stub on the stack's channel (``scribe up``, or ``SCRIBE_INGEST_ADDR``)."""
    return ingest_pb2_grpc.IngestStub(stack.channel("ingest"))


def results_stub() -> results_pb2_grpc.ResultsStub:
    """A Results stub on the stack's channel (``scribe up``, or ``SCRIBE_RESULTS_ADDR``)."""
    return results_pb2_grpc.ResultsStub(stack.channel("results"))


def wait(results: results_pb2_grpc.ResultsStub, job_id: str) -> jobs_pb2.Job:
    """Follow ``WatchJob`` to its end; returns the last (terminal) job record."""
    job = jobs_pb2.Job(job_id=job_id)
    for update in results.WatchJob(results_pb2.WatchJobRequest(job_id=job_id)):
        job = update.job
    return job


def job_error(job: jobs_pb2.Job) -> str:
    """``FAILED: UNDECODABLE_AUDIO the audio could not be decoded ...`` for a job that did not complete."""
    return f"{state_name(job)}: {job.error_reason} {job.error_message}".strip()


@dataclass
class Task:
    """One job to run.

    Attributes:
        key: the caller's name for it (a path, an object key), echoed in its Outcome.
        spec: the JobSpec; its ``source_uri`` is set for an object-store input.
        path: the local audio to upload, or None with ``spec.source_uri``.
    """

    key: str
    spec: jobs_pb2.JobSpec
    path: Path | None = None


@dataclass
class Outcome:
    """What became of a Task: the job, its transcript when it completed, or why not."""

    task: Task
    job: jobs_pb2.Job | None = None
    transcript: results_pb2.GetTranscriptResponse | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """The job completed (and its transcript was fetched, when one was asked for)."""
        return not self.error


def run_one(task: Task, ingest: ingest_pb2_grpc.IngestStub, results: results_pb2_grpc.ResultsStub,
            fmt: transcript_pb2.TranscriptFormat | None = transcript_pb2.TRANSCRIPT_FORMAT_TXT,
            wait_for_result: bool = True) -> Outcome:
    """Submit ``task``, follow its job, fetch its transcript in ``fmt`` (None: don't fetch).

    Raises:
        grpc.RpcError: with a code in :data:`FATAL_CODES`; other errors are the Outcome's ``error``.
        OSError: ``task.path`` cannot be read (recorded too: only FATAL_CODES escape).
    """
    outcome = Outcome(task)
    try:
        outcome.job = ingest.CreateJob(create_requests(task.path, task.spec)).job
        if not wait_for_result:
            return outcome
        outcome.job = wait(results, outcome.job.job_id)
        if outcome.job.state != S.JOB_STATE_COMPLETED:
            outcome.error = job_error(outcome.job)
        elif fmt is not None:
            request = results_pb2.GetTranscriptRequest(job_id=outcome.job.job_id, format=fmt)
            outcome.transcript = results.GetTranscript(request)
    except grpc.RpcError as exc:
        if exc.code() in FATAL_CODES:
            raise
        from scribe_libs.errors import error_info

        info = error_info(exc)
        outcome.error = f"{exc.code().name}{f' {info.reason}' if info else ''}: {exc.details()}"
    except OSError as exc:
        outcome.error = f"cannot read {task.path}: {exc.strerror or exc}"
    return outcome


def run_many(tasks: Iterable[Task], concurrency: int = 4,
             fmt: transcript_pb2.TranscriptFormat | None = transcript_pb2.TRANSCRIPT_FORMAT_TXT,
             on_done: Callable[[Outcome], None] | None = None, wait_for_result: bool = True) -> list[Outcome]:
    """Run every task with at most ``concurrency`` (>= 1) in flight; Outcomes in the tasks' order.

    ``on_done`` is called once per task as it finishes (from one thread at a time, in finishing
    order): where a progress bar advances or an output is written.

    Raises:
        grpc.RpcError: the first error in :data:`FATAL_CODES`; no new task starts after it.
    """
    tasks = list(tasks)
    ingest, results = ingest_stub(), results_stub()
    lock = threading.Lock()
    stop = threading.Event()

    def one(task: Task) -> Outcome | None:
        if stop.is_set():
            return None
        try:
            outcome = run_one(task, ingest, results, fmt, wait_for_result)
        except grpc.RpcError:
            stop.set()
            raise
        if on_done is not None:
            with lock:
                on_done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="scribe-job") as pool:
        futures = [pool.submit(one, task) for task in tasks]
        try:
            outcomes = [f.result() for f in futures]
        except BaseException:  # a fatal RpcError, or Ctrl-C: start nothing more; jobs in flight finish
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [o for o in outcomes if o is not None]
