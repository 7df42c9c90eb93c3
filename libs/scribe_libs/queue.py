"""Queue position and ETA, from JetStream itself.

``SCRIBE_JOBS`` is a work-queue stream: a job message stays in the stream until its transcriber
acks it, and the pool's durable consumer delivers in stream order. So for a job message with
sequence ``s`` on ``scribe.jobs.<pool>``:

- messages on the subject with sequence <= the consumer's ``delivered.stream_seq`` are running
  (delivered, not yet acked);
- messages with sequence in (``delivered.stream_seq``, ``s``) are waiting ahead of it: that count
  is the job's queue position (0 = next to be picked up).

Walking those messages (``next_by_subj`` direct gets) also sums their audio seconds, which with
the pool's measured real-time factor (RTF, from the live worker profiles) gives the ETA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from scribe.v1 import jobs_pb2, transcriber_pb2
from scribe_libs.bus import JOBS_STREAM, Bus, jobs_subject, parse, pool_consumer

log = logging.getLogger(__name__)

#: RTF assumed before any worker of the pool has measured one (tiny/base int8 on 2 CPU cores
#: measured 0.1-0.3 here; a conservative figure keeps early ETAs from being optimistic).
DEFAULT_RTF = 0.5
#: A running job is assumed half done when its own progress is unknown to the walker.
RUNNING_REMAINING_FRACTION = 0.5
#: Walk at most this many messages per query; deeper queues report at least this position.
MAX_WALK = 20000


@dataclass(frozen=True)
class QueueView:
    """Where a job stands in its pool's queue."""

    position: int
    """Messages waiting ahead (0 = next)."""
    audio_seconds_ahead: float
    """Audio seconds of the waiting messages ahead."""
    running: int
    """Messages delivered to workers and not yet acked."""
    running_audio_seconds: float
    depth: int
    """Messages waiting in the pool's queue in total (including this one when queued)."""


async def live_profiles(workers: KeyValue, pool: str | None = None) -> list[transcriber_pb2.WorkerProfile]:
    """Worker profiles currently in ``scribe_workers`` (expired ones are gone by TTL)."""
    try:
        keys = await workers.keys()
    except Exception:  # noqa: BLE001 - nats raises NoKeysError on an empty bucket
        return []
    out = []
    for key in keys:
        try:
            entry = await workers.get(key)
        except Exception:  # noqa: BLE001 - expired between keys() and get()
            continue
        if not entry.value:
            continue
        profile = parse(transcriber_pb2.WorkerProfile, entry.value)
        if pool is None or profile.pool == pool:
            out.append(profile)
    return out


async def queue_view(bus: Bus, pool: str, stream_seq: int | None = None) -> QueueView:
    """Count what is ahead of message ``stream_seq`` on ``pool``'s subject (or the whole queue).

    Args:
        bus: Connected bus.
        pool: Pool name.
        stream_seq: The job message's sequence; None counts the entire waiting queue as ahead.
    """
    subject = jobs_subject(pool)
    delivered = 0
    ack_floor = 0
    try:
        info = await bus.js.consumer_info(JOBS_STREAM, pool_consumer(pool))
        delivered = int(info.delivered.stream_seq or 0) if info.delivered else 0
        ack_floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
    except NotFoundError:
        pass  # no transcriber of this pool has started yet: nothing delivered
    position = running = depth = 0
    ahead_audio = running_audio = 0.0
    seq = ack_floor + 1
    for _ in range(MAX_WALK):
        try:
            msg = await bus.js.get_msg(JOBS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        msg_seq = int(msg.seq or 0)
        task = parse(jobs_pb2.TranscribeTask, msg.data or b"")
        if msg_seq <= delivered:
            running += 1
            running_audio += task.audio_duration
        else:
            depth += 1
            if stream_seq is None or msg_seq < stream_seq:
                position += 1
                ahead_audio += task.audio_duration
        seq = msg_seq + 1
    return QueueView(position, ahead_audio, running, running_audio, depth)


def pool_rtf(profiles: list[transcriber_pb2.WorkerProfile]) -> float:
    """Mean measured RTF of the pool's live workers, or DEFAULT_RTF when none has measured."""
    measured = [p.real_time_factor for p in profiles if p.real_time_factor > 0]
    return sum(measured) / len(measured) if measured else DEFAULT_RTF


def eta_queued(view: QueueView, job_audio_seconds: float, rtf: float, workers: int) -> float:
    """Seconds until a queued job's transcript exists (``Job.eta_seconds`` while QUEUED).

    ``(audio ahead + RUNNING_REMAINING_FRACTION x running audio) x RTF / max(workers, 1) + own
    audio x RTF``: the pool's live workers drain the backlog in parallel (a running job is taken
    as half done), then one of them decodes this job. With no live worker the ETA is the one a
    single worker would give once it starts (finite, so the queue order still shows), not infinity.

    Args:
        view: The job's place in its pool's queue (:func:`queue_view`).
        job_audio_seconds: The job's own audio duration, seconds.
        rtf: The pool's real-time factor (processing seconds / audio seconds; :func:`pool_rtf`).
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
    """Messages waiting (not yet delivered) on ``pool``'s subject, without walking the queue.

    From the pool consumer's ``num_pending`` when it exists, else from the stream's per-subject
    message count (nothing has been delivered yet).
    """
    try:
        info = await bus.js.consumer_info(JOBS_STREAM, pool_consumer(pool))
        return int(info.num_pending or 0)
    except NotFoundError:
        subject = jobs_subject(pool)
        info = await bus.js.stream_info(JOBS_STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
