"""Job records in the ``scribe_jobs`` bucket: create, read, compare-and-set updates, events.

Every change is a compare-and-set on the KV revision (``kv.update(..., last=revision)``), retried
on conflict with the fresh record, so two writers (a transcriber reporting progress and a caller
cancelling) never lose an update. State changes follow DESIGN.md:
``QUEUED -> RUNNING -> POSTPROCESSING -> COMPLETED``, or FAILED / CANCELLED from any
non-terminal state; a redelivered job may go RUNNING -> RUNNING or POSTPROCESSING ->
POSTPROCESSING. Each state change is also published on ``scribe.events.<job_id>.<kind>``,
once: through a broker outage (a stream leader's election) it is retried for up to
:data:`EVENT_RETRY_SECONDS` under a ``Nats-Msg-Id`` that JetStream deduplicates, so a publish
whose ack was lost and then retried is stored once. Progress events are not retried (the next
one supersedes them).

A record is one NATS message: one that would exceed the server's ``max_payload`` (from its INFO,
1 MiB by default) less :data:`RECORD_HEADROOM_BYTES` is refused with :class:`RecordTooLarge`
before anything is sent (a message over it makes the server drop the connection). The caller's
inputs are bounded far below that by :mod:`scribe_libs.limits`.

Request ids (idempotency keys) are claimed in the same bucket, under ``request.<sha256>``, in two
steps: ``creating:<job_id>`` while the job is being created (the creator refreshes it every
:data:`CLAIM_REFRESH_SECONDS`), then ``<job_id>`` once the record and the job message exist. A
second CreateJob with the same key waits while the claim is ``creating`` and returns the job once
it exists; a ``creating`` claim not refreshed for :data:`CLAIM_STALE_SECONDS` (its creator died)
and a done claim whose job is gone (deleted, expired) are taken over with compare-and-set, so
exactly one caller wins.

A job's TranscribeTask is published before its record is written (scribe_ingest's CreateJob), so
the record is written once, complete, with the task's stream sequence (what CancelJob deletes);
a second write for the sequence would leave the first as a dead half of every KV block, and
nats-server reads a whole 4 MB block on the first get from it after its 10 s cache expiry
(nats-server ``filestore.go``: ``defaultKVBlockSize``, ``defaultCacheBufferExpiration``). A
worker may therefore get a task a few milliseconds before its record exists:
:meth:`JobStore.get_published` waits up to :data:`RECORD_GRACE_SECONDS` for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError

from scribe.v1 import jobs_pb2
from scribe_libs import metrics
from scribe_libs.bus import Bus, event_subject
from scribe_libs.errors import BROKER_RETRY_SECONDS, FailedPrecondition, InvalidArgument, NotFound, is_broker_outage
from scribe_libs.jobindex import JobIndex
from scribe_libs.queue import PoolLedger

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
#: States in which a job counts in its pool's backlog (scribe_libs.queue): leaving them is ``done``.
_IN_POOL = frozenset({S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING})
#: Object store buckets (DESIGN.md, "Storage and messaging names").
AUDIO_BUCKET = "scribe-audio"
RESULTS_BUCKET = "scribe-results"
#: Results are kept this many days by default (bucket lifecycle expiry).
DEFAULT_RETENTION_DAYS = 7
_MAX_CAS_ATTEMPTS = 50
_REQUEST_PREFIX = "request."
_CLAIM_CREATING = "creating:"
#: A creator rewrites its ``creating`` claim this often, seconds.
CLAIM_REFRESH_SECONDS = 2.0
#: A ``creating`` claim unchanged this long (seen by the waiter's own clock) is abandoned, seconds.
CLAIM_STALE_SECONDS = 15.0
#: How often a waiting duplicate looks at the claim again, seconds.
CLAIM_POLL_SECONDS = 0.05
#: Bytes kept free below ``max_payload`` for what travels with a record: KV/JetStream headers,
#: trace context headers, and the JobEvent envelope (kind, time) around the record.
RECORD_HEADROOM_BYTES = 8 * 1024
#: How long after its task was published a job's record may still be missing, seconds: ingest
#: writes the record right after the task (one KV round trip, milliseconds). A task older than
#: this without a record is an orphan (its job was deleted, or ingest stopped between the writes).
RECORD_GRACE_SECONDS = 10.0
#: First and longest pause between looks at a record not written yet, seconds.
_RECORD_POLL_FIRST_SECONDS = 0.005
_RECORD_POLL_MAX_SECONDS = 0.5

#: How long a state-change event is retried through a broker outage, seconds. The record is
#: already written; the event is what integrators subscribe to (DESIGN.md: "KV state=COMPLETED +
#: scribe.events.<job_id>.completed"). A JetStream stream whose leader was SIGKILLed has a new
#: one within seconds (tests/cluster/test_nats_cluster.py: survivors ready 0-7.6 s), and
#: retries stay well inside the stream's duplicate window (nats-server default: 2 min).
EVENT_RETRY_SECONDS = 30.0

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


class RecordTooLarge(InvalidArgument):
    """A job record that would not fit in one NATS message (``JOB_RECORD_TOO_LARGE``)."""

    def __init__(self, job_id: str, size: int, limit: int):
        super().__init__(
            "JOB_RECORD_TOO_LARGE",
            f"job {job_id}: the record would be {size} bytes; the broker takes at most {limit} "
            "(shorten the spec's labels, filename or hotwords)",
            field="spec",
            metadata={"size": str(size), "limit": str(limit)},
        )


class RequestClaim:
    """This caller's hold on a request id while it creates the job (see the module docstring)."""

    def __init__(self, kv, key: str, job_id: str, revision: int):  # noqa: ANN001 - a KeyValue
        self.kv = kv
        self.key = key
        self.job_id = job_id
        self.revision = revision

    async def refresh(self) -> None:
        """Rewrite the ``creating`` claim (a liveness sign for waiting duplicates)."""
        self.revision = await self.kv.update(self.key, (_CLAIM_CREATING + self.job_id).encode(), last=self.revision)

    async def keep_alive(self) -> None:
        """Refresh every CLAIM_REFRESH_SECONDS until cancelled (run as a task beside the creation)."""
        while True:
            await asyncio.sleep(CLAIM_REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a missed refresh only risks a takeover after CLAIM_STALE_SECONDS
                log.warning("could not refresh request claim", exc_info=True)

    async def confirm(self) -> None:
        """Mark the claim done: the job exists (record and job message)."""
        try:
            self.revision = await self.kv.update(self.key, self.job_id.encode(), last=self.revision)
        except KeyWrongLastSequenceError:
            await self.kv.put(self.key, self.job_id.encode())

    async def release(self) -> None:
        """Give the request id up (the job was not created), unless another caller took it over."""
        try:
            await self.kv.delete(self.key, last=self.revision)
        except APIError:  # wrong last sequence: taken over; that caller's claim stays
            log.info("request claim was taken over; left to its new holder")


class JobStore:
    """Job records over the ``scribe_jobs`` KV bucket of a :class:`Bus`."""

    def __init__(self, bus: Bus, event_retry_seconds: float = EVENT_RETRY_SECONDS):
        self.bus = bus
        self.event_retry_seconds = event_retry_seconds
        self.kv = bus.jobs
        self._ledger = PoolLedger(bus)
        self.index = JobIndex(bus)

    def _serialize(self, job: jobs_pb2.Job) -> bytes:
        """The record's bytes; raises RecordTooLarge when they would not fit in a NATS message."""
        data = job.SerializeToString()
        limit = int(getattr(self.bus.nc, "max_payload", 0) or 1024 * 1024) - RECORD_HEADROOM_BYTES
        if len(data) > limit:
            raise RecordTooLarge(job.job_id, len(data), limit)
        return data

    async def create(self, job: jobs_pb2.Job) -> None:
        """Store a new job record and append it to its owner's index (scribe_libs.jobindex).

        Raises:
            FailedPrecondition: ``JOB_EXISTS``.
            RecordTooLarge: the record would exceed the broker's max payload (nothing is sent).
        """
        job.create_time.CopyFrom(now_timestamp())
        job.update_time.CopyFrom(job.create_time)
        self._serialize(job)  # too large: refused before the index entry is written
        # Index first (ListJobs reads it): an entry whose record never got written is skipped by
        # the reader, a record without an entry would never be listed. The append may raise
        # create_time to the owner's previous entry's (create times never decrease per owner).
        await self.index.append(job)
        job.update_time.CopyFrom(job.create_time)
        if not job.HasField("expire_time") and self.bus.retention_seconds > 0:
            # When the record and transcripts go (the proto's create_time + retention period).
            job.expire_time.FromNanoseconds(job.create_time.ToNanoseconds() + int(self.bus.retention_seconds * 1e9))
        data = self._serialize(job)
        try:
            await self.kv.create(job.job_id, data)
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

    async def get_published(
        self, job_id: str, published_at: float, *, grace_seconds: float = RECORD_GRACE_SECONDS
    ) -> jobs_pb2.Job:
        """The record of a job whose task was published at ``published_at``, waiting while it is young.

        Ingest publishes the task before it writes the record (module docstring), so a missing
        record is looked for again, 5 ms then doubling up to 0.5 s apart, until the task is
        ``grace_seconds`` old by this host's clock, and for at most ``grace_seconds`` of waiting
        (a clock behind the server's cannot make it wait longer).

        Args:
            job_id: The job.
            published_at: When the task was stored in JetStream, Unix seconds (the message's
                timestamp).
            grace_seconds: How long a task may precede its record, seconds.

        Raises:
            JobNotFound: no record, and the task is older than ``grace_seconds`` (or the wait
                ran out).
        """
        deadline = time.monotonic() + grace_seconds
        pause = _RECORD_POLL_FIRST_SECONDS
        while True:
            try:
                return await self.get(job_id)
            except JobNotFound:
                left = min(published_at + grace_seconds - time.time(), deadline - time.monotonic())
                if left <= 0:
                    raise
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _RECORD_POLL_MAX_SECONDS)

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
            RecordTooLarge: the new record would exceed the broker's max payload (nothing is sent).
        """
        for _ in range(_MAX_CAS_ATTEMPTS):
            job, revision = await self.get_with_revision(job_id)
            before = job.state
            if mutate(job) is False:
                return job
            job.update_time.CopyFrom(now_timestamp())
            data = self._serialize(job)
            try:
                await self.kv.update(job_id, data, last=revision)
            except KeyWrongLastSequenceError:
                continue
            if before in _IN_POOL and job.state not in _IN_POOL and job.queue_ticket.number:
                # This write took the job out of its pool: exactly one writer gets here.
                await self._ledger.done(job.pool, job.audio_duration)
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
        """Every job record (order unspecified); reads the whole bucket (ListJobs reads the index instead)."""
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

    async def claim_request(self, request_id: str, job_id: str) -> RequestClaim | str:
        """Claim ``request_id`` for ``job_id``, or find the job another call created with it.

        Waits while another call is creating its job (until that job exists, that call gives the
        request id up, or its claim goes stale). The caller bounds the wait with its deadline.

        Returns:
            A :class:`RequestClaim` when this call must create the job (then ``confirm()`` it once
            the job exists, or ``release()`` it), else the existing job's id.
        """
        key = _REQUEST_PREFIX + hashlib.sha256(request_id.encode()).hexdigest()
        mine = (_CLAIM_CREATING + job_id).encode()
        seen: tuple[int, float] | None = None  # (revision of a creating claim, when first seen)
        loop = asyncio.get_running_loop()
        while True:
            try:
                return RequestClaim(self.kv, key, job_id, await self.kv.create(key, mine))
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                continue  # released meanwhile: try to claim it
            value = (entry.value or b"").decode()
            revision = int(entry.revision or 0)
            takeover = False
            if not value.startswith(_CLAIM_CREATING):
                try:
                    await self.get(value)
                    return value
                except JobNotFound:
                    takeover = True  # the job was deleted or expired: the request id is free again
            elif seen is None or seen[0] != revision:
                seen = (revision, loop.time())
            elif loop.time() - seen[1] > CLAIM_STALE_SECONDS:
                log.warning("request claim of %s went stale; taking it over", value.removeprefix(_CLAIM_CREATING))
                takeover = True
            if takeover:
                try:
                    return RequestClaim(self.kv, key, job_id, await self.kv.update(key, mine, last=revision))
                except KeyWrongLastSequenceError:
                    seen = None
                    continue
            await asyncio.sleep(CLAIM_POLL_SECONDS)

    async def _event(self, job: jobs_pb2.Job, kind: str) -> None:
        """Publish ``scribe.events.<job_id>.<kind>`` for the write just made; never raises.

        A state change is retried every :data:`~scribe_libs.errors.BROKER_RETRY_SECONDS` through a
        broker outage for up to ``event_retry_seconds`` (not once the bus is closing); its
        ``Nats-Msg-Id`` (job id, kind and the record's ``update_time`` in ns) makes a retry of a
        publish that was stored, but whose ack was lost, a duplicate JetStream drops. A progress
        event gets one try.
        """
        event = jobs_pb2.JobEvent(kind=kind, job=job, time=now_timestamp())
        headers = {"Nats-Msg-Id": f"{job.job_id}.{kind}.{job.update_time.ToNanoseconds()}"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0.0 if kind == "progress" else self.event_retry_seconds)
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.bus.publish(event_subject(job.job_id, kind), event, headers=headers)
                if attempts > 1:
                    log.info(
                        "job event published after %d attempts", attempts, extra={"job_id": job.job_id, "kind": kind}
                    )
                return
            except Exception as exc:  # noqa: BLE001 - the KV record is the truth; an event is a notification
                if is_broker_outage(exc) and not self.bus.closing and loop.time() + BROKER_RETRY_SECONDS < deadline:
                    await asyncio.sleep(BROKER_RETRY_SECONDS)
                    continue
                log.warning(
                    "could not publish job event (%d attempts)",
                    attempts,
                    extra={"job_id": job.job_id, "kind": kind},
                    exc_info=True,
                )
                return


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
