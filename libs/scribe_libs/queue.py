"""Per-pool queue counters, queue position and ETA, at a cost independent of the queue's length.

Each pool has three counters in the ``scribe_pools`` KV bucket (:class:`PoolLedger`), each one
key written with compare-and-set:

- ``<pool>.enqueued`` (count, audio seconds): every job ingest put on the pool. Taking a
  :class:`~scribe.v1.jobs_pb2.QueueTicket` adds the job: its ``number`` is the new count and its
  ``audio_seconds_before`` the audio total before it (a prefix sum);
- ``<pool>.started`` (ticket number, audio seconds through that ticket): the highest ticket a
  worker has taken off the queue. JetStream delivers a pool's messages in order, so everything
  up to it has left the waiting line;
- ``<pool>.done`` (count, audio seconds): jobs that left the pool (decoded, failed, cancelled,
  from the queue or while running). :class:`scribe_libs.jobs.JobStore` adds a job when its
  record leaves QUEUED/RUNNING for another state, exactly once (the record's own
  compare-and-set decides who does it).

From these, with E, S, D the counters' audio seconds (:func:`queue_view`, 3 reads + 1 consumer
info):

- waiting audio = E - S; waiting and running (the pool's backlog, used for routing) = E - D;
  running audio = backlog - waiting;
- a queued job with ticket (n, b) has ``n - S.number - 1`` jobs and ``b - S`` audio seconds
  ahead of it, both clamped to the waiting line (the consumer's ``num_pending``).

Approximations, each bounded and self-healing:

- a job cancelled while queued stays counted ahead of later jobs until the started mark passes
  its ticket (its message is gone, so that is as soon as a worker takes a later job);
- two ingest replicas may publish tickets n and n+1 in the opposite order: the later ticket's
  job may show position 0 while the other is still waiting;
- a process killed between a record's state change and the ``done`` write leaves that job's
  audio in the backlog; :meth:`PoolLedger.reconcile` (run by the results service's queue sampler)
  sets ``done`` and ``started`` to ``enqueued`` when the pool's consumer has nothing waiting and
  nothing in flight, so a drift never outlives an idle moment.

The ETA a user sees is :func:`eta_queued` / :func:`eta_running`, with the pool's measured
real-time factor (RTF) from the live worker profiles (:mod:`scribe_libs.registry`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass

from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from scribe.v1 import jobs_pb2
from scribe_libs.bus import JOBS_STREAM, Bus, ensure_kv, jobs_subject, pool_consumer

log = logging.getLogger(__name__)

#: RTF assumed before any worker of the pool has measured one (tiny/base int8 on 2 CPU cores
#: measured 0.1-0.3 here; a conservative figure keeps early ETAs from being optimistic).
DEFAULT_RTF = 0.5
#: A running job is assumed half done when its own progress is unknown.
RUNNING_REMAINING_FRACTION = 0.5
#: KV bucket of the pools' counters.
POOLS_BUCKET = "scribe_pools"
_MAX_CAS_ATTEMPTS = 200


@dataclass(frozen=True)
class QueueView:
    """Where a job stands in its pool's queue."""

    position: int
    """Jobs waiting ahead (0 = next)."""
    audio_seconds_ahead: float
    """Audio seconds of the waiting jobs ahead."""
    running: int
    """Messages delivered to workers and not yet acked."""
    running_audio_seconds: float
    depth: int
    """Messages waiting in the pool's queue in total (including this one when queued)."""


@dataclass(frozen=True)
class Counter:
    """One counter of the ledger: a count (or ticket number) and audio seconds."""

    count: int = 0
    audio_seconds: float = 0.0

    def encode(self) -> bytes:
        """JSON bytes (readable with ``nats kv get scribe_pools <pool>.enqueued``)."""
        return json.dumps({"count": self.count, "audio_seconds": self.audio_seconds}).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Counter:
        """From :meth:`encode`'s bytes; empty or absent is zero."""
        if not data:
            return cls()
        raw = json.loads(data)
        return cls(int(raw.get("count", 0)), float(raw.get("audio_seconds", 0.0)))


@dataclass(frozen=True)
class PoolCounters:
    """The three counters of one pool at one moment."""

    enqueued: Counter
    started: Counter
    done: Counter

    @property
    def waiting_audio_seconds(self) -> float:
        """Audio seconds not yet taken by a worker."""
        return max(self.enqueued.audio_seconds - self.started.audio_seconds, 0.0)

    @property
    def backlog_audio_seconds(self) -> float:
        """Audio seconds waiting or running."""
        return max(self.enqueued.audio_seconds - self.done.audio_seconds, 0.0)


class PoolLedger:
    """The pools' counters in the ``scribe_pools`` bucket (see the module docstring).

    Args:
        bus: Connected bus (the bucket is opened, or created, on first use).
    """

    def __init__(self, bus: Bus):
        self.bus = bus
        self._kv: KeyValue | None = None
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def kv(self) -> KeyValue:
        """The bucket (declared idempotently on first use)."""
        if self._kv is None:
            replicas = self.bus.settings.replicas if self.bus.settings is not None else 1
            self._kv = await ensure_kv(
                self.bus.js,
                KeyValueConfig(bucket=POOLS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas),
            )
        return self._kv

    async def _get(self, key: str) -> tuple[Counter, int]:
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return Counter(), 0
        return Counter.decode(entry.value), int(entry.revision or 0)

    async def _change(self, key: str, change) -> Counter:  # noqa: ANN001 - Callable[[Counter], Counter | None]
        """Apply ``change`` with compare-and-set (None: leave as is); returns the counter written/read."""
        kv = await self.kv()
        async with self._locks[key]:  # one writer per key per process: CAS conflicts only across processes
            for _ in range(_MAX_CAS_ATTEMPTS):
                current, revision = await self._get(key)
                new = change(current)
                if new is None:
                    return current
                try:
                    if revision:
                        await kv.update(key, new.encode(), last=revision)
                    else:
                        await kv.create(key, new.encode())
                except KeyWrongLastSequenceError:
                    continue
                except Exception as exc:  # noqa: BLE001 - nats-py raises BadRequestError on a create race
                    if "wrong last sequence" in str(exc).lower() or "key exists" in str(exc).lower():
                        continue
                    raise
                return new
        raise RuntimeError(f"pool counter {key}: too many concurrent writers")

    async def enqueue(self, pool: str, audio_seconds: float) -> jobs_pb2.QueueTicket:
        """Count a job in; returns its ticket (number, audio seconds before it)."""
        before: list[Counter] = []

        def add(current: Counter) -> Counter:
            before[:] = [current]
            return Counter(current.count + 1, current.audio_seconds + audio_seconds)

        new = await self._change(f"{pool}.enqueued", add)
        return jobs_pb2.QueueTicket(number=new.count, audio_seconds_before=before[0].audio_seconds)

    async def started(self, pool: str, ticket: jobs_pb2.QueueTicket, audio_seconds: float) -> None:
        """A worker took the job with ``ticket`` off the queue: move the started mark up to it."""
        if not ticket.number:
            return
        through = ticket.audio_seconds_before + audio_seconds

        def raise_mark(current: Counter) -> Counter | None:
            return Counter(ticket.number, through) if ticket.number > current.count else None

        await self._change(f"{pool}.started", raise_mark)

    async def done(self, pool: str, audio_seconds: float) -> None:
        """A job left the pool (decoded, failed or cancelled)."""
        await self._change(f"{pool}.done", lambda c: Counter(c.count + 1, c.audio_seconds + audio_seconds))

    async def counters(self, pool: str) -> PoolCounters:
        """The pool's three counters (three reads)."""
        enqueued, _ = await self._get(f"{pool}.enqueued")
        started, _ = await self._get(f"{pool}.started")
        done, _ = await self._get(f"{pool}.done")
        return PoolCounters(enqueued, started, done)

    async def backlog_audio_seconds(self, pool: str) -> float:
        """Audio seconds waiting or running on ``pool`` (two reads)."""
        enqueued, _ = await self._get(f"{pool}.enqueued")
        done, _ = await self._get(f"{pool}.done")
        return max(enqueued.audio_seconds - done.audio_seconds, 0.0)

    async def reconcile(self, pool: str) -> bool:
        """When the pool is idle (nothing waiting, nothing in flight), set done and started to enqueued.

        Returns:
            True if a counter had drifted and was corrected.
        """
        enqueued, revision = await self._get(f"{pool}.enqueued")
        counters = await self.counters(pool)
        if counters.done == enqueued and counters.started.count >= enqueued.count:
            return False
        waiting, running = await consumer_counts(self.bus, pool)
        if waiting or running:
            return False
        again, revision_again = await self._get(f"{pool}.enqueued")
        if revision_again != revision:
            return False  # a job arrived meanwhile: next time
        log.warning(
            "pool counters drifted; reset at an idle moment",
            extra={"pool": pool, "enqueued": again.count, "done": counters.done.count,
                   "backlog_audio_seconds": round(counters.backlog_audio_seconds, 1)},
        )
        await self._change(f"{pool}.done", lambda _: again)
        await self._change(f"{pool}.started", lambda c: again if again.count >= c.count else None)
        return True


async def consumer_counts(bus: Bus, pool: str) -> tuple[int, int]:
    """(waiting, in flight) messages of ``pool``: JetStream's own counters, one request.

    From the pool consumer's ``num_pending`` and ``num_ack_pending``; before any transcriber of
    the pool created the consumer, waiting is the stream's message count on the pool's subject.
    """
    try:
        info = await bus.js.consumer_info(JOBS_STREAM, pool_consumer(pool))
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
    except NotFoundError:
        subject = jobs_subject(pool)
        info = await bus.js.stream_info(JOBS_STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0)), 0


async def queue_view(
    bus: Bus, ledger: PoolLedger, pool: str, ticket: jobs_pb2.QueueTicket | None = None
) -> QueueView:
    """Where a job with ``ticket`` stands on ``pool`` (no ticket: the whole waiting line is ahead).

    Cost: three counter reads and one consumer info, whatever the queue's length.
    """
    counters = await ledger.counters(pool)
    waiting, running = await consumer_counts(bus, pool)
    waiting_audio = counters.waiting_audio_seconds
    running_audio = max(counters.backlog_audio_seconds - waiting_audio, 0.0)
    if ticket is not None and ticket.number:
        position = min(max(int(ticket.number) - counters.started.count - 1, 0), max(waiting - 1, 0))
        ahead = min(max(ticket.audio_seconds_before - counters.started.audio_seconds, 0.0), waiting_audio)
    else:
        position, ahead = waiting, waiting_audio
    return QueueView(position, ahead, running, running_audio, waiting)


def eta_queued(view: QueueView, job_audio_seconds: float, rtf: float, workers: int) -> float:
    """Seconds until a queued job's transcript exists (``Job.eta_seconds`` while QUEUED).

    ``(audio ahead + RUNNING_REMAINING_FRACTION x running audio) x RTF / max(workers, 1) + own
    audio x RTF``: the pool's live workers drain the backlog in parallel (a running job is taken
    as half done), then one of them decodes this job. With no live worker the ETA is the one a
    single worker would give once it starts (finite, so the queue order still shows), not infinity.

    Args:
        view: The job's place in its pool's queue (:func:`queue_view`).
        job_audio_seconds: The job's own audio duration, seconds.
        rtf: The pool's real-time factor (processing seconds / audio seconds;
            :meth:`scribe_libs.registry.PoolTotals.rtf`).
        workers: Live workers of the pool (0 counts as 1).

    Returns:
        Seconds, >= 0 for non-negative inputs.
    """
    backlog = view.audio_seconds_ahead + RUNNING_REMAINING_FRACTION * view.running_audio_seconds
    return (backlog * rtf) / max(workers, 1) + job_audio_seconds * rtf


def eta_running(job: jobs_pb2.Job, now_seconds: float, rtf: float) -> float:
    """Seconds until a running job finishes decoding (``Job.eta_seconds`` while RUNNING).

    From the job's own observed rate once it has progress (elapsed / processed seconds x
    remaining audio seconds), else remaining audio seconds x the pool's RTF.

    Args:
        job: The record: ``audio_duration`` and ``processed_seconds`` (seconds), ``start_time``.
        now_seconds: Current time, Unix seconds (a start time after it counts as no time elapsed).
        rtf: The pool's real-time factor, used before the job has progress.

    Returns:
        Seconds, >= 0.
    """
    remaining = max(job.audio_duration - job.processed_seconds, 0.0)
    if job.processed_seconds > 0 and job.HasField("start_time"):
        elapsed = max(now_seconds - job.start_time.ToNanoseconds() / 1e9, 0.0)
        return elapsed / job.processed_seconds * remaining
    return remaining * rtf


async def queue_depth(bus: Bus, pool: str) -> int:
    """Messages waiting (not yet delivered) on ``pool``'s subject (:func:`consumer_counts`)."""
    return (await consumer_counts(bus, pool))[0]
