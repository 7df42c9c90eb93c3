"""Job records in the ``scribe_jobs`` bucket: create, read, compare-and-set updates, events.

Every change is a compare-and-set on the KV revision (``kv.update(..., last=revision)``), retried
on conflict with the fresh record, so two writers (a transcriber reporting progress and a caller
cancelling) never lose an update. State changes follow DESIGN.md:
``QUEUED -> RUNNING -> POSTPROCESSING -> COMPLETED``, or FAILED / CANCELLED from any
non-terminal state; a redelivered job may go RUNNING -> RUNNING or POSTPROCESSING ->
POSTPROCESSING. Each state change is also published on ``scribe.events.<job_id>.<kind>``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from scribe.v1 import jobs_pb2
from scribe_libs import metrics
from scribe_libs.bus import Bus, event_subject
from scribe_libs.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

S = jobs_pb2.JobState
TERMINAL_STATES = frozenset({S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})
_ALLOWED: dict[int, frozenset[int]] = {
    S.JOB_STATE_QUEUED: frozenset({S.JOB_STATE_RUNNING, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED}),
    S.JOB_STATE_RUNNING: frozenset(
        {S.JOB_STATE_RUNNING, S.JOB_STATE_POSTPROCESSING, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED}
    ),
    S.JOB_STATE_POSTPROCESSING: frozenset(
        {S.JOB_STATE_POSTPROCESSING, S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED}
    ),
}
#: Object store buckets (DESIGN.md, "Storage and messaging names").
AUDIO_BUCKET = "scribe-audio"
RESULTS_BUCKET = "scribe-results"
#: Results are kept this many days by default (bucket lifecycle expiry).
DEFAULT_RETENTION_DAYS = 7
_MAX_CAS_ATTEMPTS = 50
_REQUEST_PREFIX = "request."

#: Event kind published for each state.
EVENT_KINDS = {
    S.JOB_STATE_QUEUED: "queued",
    S.JOB_STATE_RUNNING: "running",
    S.JOB_STATE_POSTPROCESSING: "postprocessing",
    S.JOB_STATE_COMPLETED: "completed",
    S.JOB_STATE_FAILED: "failed",
    S.JOB_STATE_CANCELLED: "cancelled",
}


def audio_key(job_id: str) -> str:
    """Key of a job's original audio in AUDIO_BUCKET: ``<job_id>/original``."""
    return f"{job_id}/original"


def raw_transcript_key(job_id: str, extension: str = "json") -> str:
    """Key of the raw (as decoded) transcript in one format in RESULTS_BUCKET: ``<job_id>/raw.<extension>``.

    ``raw.json`` is what the transcriber (or the stream gateway) writes; postprocess renders it
    beside it as ``raw.txt``, ``raw.srt`` and ``raw.vtt`` (``GetTranscript(raw=true)``).
    """
    return f"{job_id}/raw.{extension}"


def transcript_key(job_id: str, extension: str) -> str:
    """Key of the final transcript in one format in RESULTS_BUCKET: ``<job_id>/transcript.<extension>``.

    ``extension`` is a format name of :data:`scribe_libs.formats.FORMAT_NAMES` (``json``, ``txt``,
    ``srt``, ``vtt``).
    """
    return f"{job_id}/transcript.{extension}"


def new_job_id() -> str:
    """A new job id: 32 lowercase hex characters (a UUID4), valid as a KV key and a subject token."""
    return uuid.uuid4().hex


def now_timestamp() -> Timestamp:
    """The current time as a protobuf Timestamp."""
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def state_name(state: int) -> str:
    """``JOB_STATE_RUNNING`` -> ``"RUNNING"``."""
    return S.Name(state).removeprefix("JOB_STATE_")


def is_terminal(job: jobs_pb2.Job) -> bool:
    """True for COMPLETED, FAILED and CANCELLED."""
    return job.state in TERMINAL_STATES


class JobNotFound(NotFound):
    """NOT_FOUND for an unknown (or expired, or deleted) job id."""

    def __init__(self, job_id: str):
        super().__init__("JOB_NOT_FOUND", f"job {job_id!r} not found", "job", job_id)


class InvalidTransition(FailedPrecondition):
    """A state change that the lifecycle does not allow (e.g. COMPLETED -> RUNNING)."""

    def __init__(self, job_id: str, current: int, wanted: int):
        super().__init__(
            "INVALID_STATE_TRANSITION",
            f"job {job_id} is {state_name(current)}; cannot become {state_name(wanted)}",
            {"job_id": job_id, "state": state_name(current)},
        )
        self.current = current


class JobStore:
    """Job records over the ``scribe_jobs`` KV bucket of a :class:`Bus`."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self.kv = bus.jobs

    async def create(self, job: jobs_pb2.Job) -> None:
        """Store a new job record; raises FailedPrecondition if the id exists."""
        job.create_time.CopyFrom(now_timestamp())
        job.update_time.CopyFrom(job.create_time)
        try:
            await self.kv.create(job.job_id, job.SerializeToString())
        except KeyWrongLastSequenceError as exc:
            raise FailedPrecondition("JOB_EXISTS", f"job {job.job_id} already exists") from exc
        await self._event(job, EVENT_KINDS[job.state])

    async def get_with_revision(self, job_id: str) -> tuple[jobs_pb2.Job, int]:
        """The job record and its KV revision. Raises JobNotFound."""
        if not job_id or not job_id.isalnum():
            raise JobNotFound(job_id)
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError as exc:
            raise JobNotFound(job_id) from exc
        if not entry.value:
            raise JobNotFound(job_id)
        job = jobs_pb2.Job()
        job.ParseFromString(entry.value)
        return job, int(entry.revision or 0)

    async def get(self, job_id: str) -> jobs_pb2.Job:
        """The job record. Raises JobNotFound."""
        return (await self.get_with_revision(job_id))[0]

    async def update(
        self,
        job_id: str,
        mutate: Callable[[jobs_pb2.Job], bool | None],
        event: str | None = None,
    ) -> jobs_pb2.Job:
        """Apply ``mutate`` to the current record and write it with compare-and-set.

        ``mutate`` edits the job in place; returning ``False`` skips the write (nothing to do).
        It may raise to abort. On a concurrent write it runs again on the fresh record.

        Args:
            job_id: The job.
            mutate: Edits the record in place.
            event: Event kind to publish after the write (e.g. ``"progress"``); None for none.

        Returns:
            The record as written (or as read, when ``mutate`` returned False).

        Raises:
            JobNotFound: no such job.
            RuntimeError: more than 50 conflicting writers in a row.
        """
        for _ in range(_MAX_CAS_ATTEMPTS):
            job, revision = await self.get_with_revision(job_id)
            if mutate(job) is False:
                return job
            job.update_time.CopyFrom(now_timestamp())
            try:
                await self.kv.update(job_id, job.SerializeToString(), last=revision)
            except KeyWrongLastSequenceError:
                continue
            if event:
                await self._event(job, event)
            return job
        raise RuntimeError(f"job {job_id}: too many concurrent updates")

    async def transition(
        self,
        job_id: str,
        state: int,
        edit: Callable[[jobs_pb2.Job], None] | None = None,
    ) -> jobs_pb2.Job:
        """Move the job to ``state`` (compare-and-set), applying ``edit`` in the same write.

        Raises:
            InvalidTransition: the lifecycle does not allow it from the current state.
            JobNotFound: no such job.
        """

        def mutate(job: jobs_pb2.Job) -> None:
            if state not in _ALLOWED.get(job.state, frozenset()):
                raise InvalidTransition(job_id, job.state, state)
            job.state = state
            now = now_timestamp()
            if state == S.JOB_STATE_RUNNING and not job.HasField("start_time"):
                job.start_time.CopyFrom(now)
            if state in TERMINAL_STATES:
                job.end_time.CopyFrom(now)
                job.cancel_requested = job.cancel_requested and state == S.JOB_STATE_CANCELLED
            if edit is not None:
                edit(job)

        job = await self.update(job_id, mutate, event=EVENT_KINDS[state])
        if state in TERMINAL_STATES:
            metrics.jobs_finished.add(1, {"state": state_name(state), "pool": job.pool})
        return job

    async def fail(self, job_id: str, reason: str, message: str) -> tuple[jobs_pb2.Job, bool]:
        """Mark the job FAILED with ``reason`` unless it already ended (checked in the same CAS write).

        Returns:
            (the record, True if this call failed it); a job already terminal is left as it is.

        Raises:
            JobNotFound: no such job.
        """
        failed = False

        def mutate(job: jobs_pb2.Job) -> bool:
            nonlocal failed
            failed = job.state not in TERMINAL_STATES
            if not failed:
                return False
            job.state = S.JOB_STATE_FAILED
            job.end_time.CopyFrom(now_timestamp())
            job.cancel_requested = False
            job.error_reason = reason
            job.error_message = message
            return True

        job = await self.update(job_id, mutate, event=EVENT_KINDS[S.JOB_STATE_FAILED])
        if failed:
            metrics.jobs_finished.add(1, {"state": state_name(S.JOB_STATE_FAILED), "pool": job.pool})
        return job, failed

    async def delete(self, job_id: str) -> None:
        """Remove the record (purge: no tombstone history kept)."""
        await self.kv.purge(job_id)

    async def list(self) -> list[jobs_pb2.Job]:
        """Every job record (order unspecified)."""
        # The stream's per-subject index, not KeyValue.keys(): nats-py's keys() watcher was seen
        # to end early on a busy bucket (an empty list while 100 records existed).
        prefix = f"$KV.{self.kv._name}."  # noqa: SLF001 - the bucket name nats-py keeps
        info = await self.bus.js.stream_info(f"KV_{self.kv._name}", subjects_filter=prefix + ">")  # noqa: SLF001
        keys = [subject.removeprefix(prefix) for subject in (info.state.subjects or {})]
        jobs = []
        for key in keys:
            if key.startswith(_REQUEST_PREFIX):
                continue
            try:
                jobs.append(await self.get(key))
            except JobNotFound:
                continue
        return jobs

    async def claim_request(self, request_id: str, job_id: str) -> str | None:
        """Bind ``request_id`` to ``job_id`` unless it is already bound.

        Returns:
            None when the claim succeeded, else the job id the request id already names.
        """
        key = _REQUEST_PREFIX + hashlib.sha256(request_id.encode()).hexdigest()
        for _ in range(_MAX_CAS_ATTEMPTS):
            try:
                await self.kv.create(key, job_id.encode())
                return None
            except KeyWrongLastSequenceError:
                try:
                    entry = await self.kv.get(key)
                except KeyNotFoundError:
                    continue
                if entry.value:
                    return entry.value.decode()
        raise RuntimeError("request id claim did not settle")

    async def release_request(self, request_id: str) -> None:
        """Forget a request id (its job was not created after all)."""
        await self.kv.purge(_REQUEST_PREFIX + hashlib.sha256(request_id.encode()).hexdigest())

    async def _event(self, job: jobs_pb2.Job, kind: str) -> None:
        event = jobs_pb2.JobEvent(kind=kind, job=job, time=now_timestamp())
        try:
            await self.bus.publish(event_subject(job.job_id, kind), event)
        except Exception:  # noqa: BLE001 - the KV record is the truth; an event is a notification
            log.warning("could not publish job event", extra={"job_id": job.job_id, "kind": kind}, exc_info=True)


class ProgressThrottle:
    """Lets a progress update through at most once per ``interval`` seconds (DESIGN.md: >= 1 s)."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")

    def ready(self) -> bool:
        """True (and the clock restarts) when ``interval`` has passed since the last True."""
        now = self.clock()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False
