"""NATS JetStream: connection, the streams and buckets of DESIGN.md, protobuf messages.

Names (DESIGN.md, "Storage and messaging names"):

- ``SCRIBE_JOBS``: work-queue stream, subjects ``scribe.jobs.<pool>``, one durable pull consumer
  per pool (``transcriber-<pool>``).
- ``SCRIBE_POSTPROCESS``: work-queue stream, subject ``scribe.postprocess``, one durable pull
  consumer (``postprocess``).
- ``SCRIBE_EVENTS``: limits stream, ``scribe.events.>``, messages kept one day.
- KV buckets ``scribe_jobs`` (job records), ``scribe_workers`` (profiles, TTL),
  ``scribe_glossaries``.

Every service declares all of them at start (:func:`declare`), idempotently: an existing stream
with a different configuration is updated, not recreated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats
import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from scribe_libs.config import NatsSettings
from scribe_libs.telemetry import inject_headers

log = logging.getLogger(__name__)

JOBS_STREAM = "SCRIBE_JOBS"
POSTPROCESS_STREAM = "SCRIBE_POSTPROCESS"
EVENTS_STREAM = "SCRIBE_EVENTS"
POSTPROCESS_SUBJECT = "scribe.postprocess"
JOBS_BUCKET = "scribe_jobs"
WORKERS_BUCKET = "scribe_workers"
GLOSSARIES_BUCKET = "scribe_glossaries"

#: Events are kept one day (DESIGN.md); WatchJob reads state from KV, events are for consumers.
EVENTS_MAX_AGE_SECONDS = 24 * 3600
#: Worker profiles expire from ``scribe_workers`` this many seconds after their last write, so
#: a dead pod leaves routing by itself. Workers rewrite theirs every WORKER_HEARTBEAT_SECONDS.
WORKER_TTL_SECONDS = 15.0
WORKER_HEARTBEAT_SECONDS = 5.0

M = TypeVar("M", bound=Message)


def jobs_subject(pool: str) -> str:
    """Subject carrying ``pool``'s job messages."""
    return f"scribe.jobs.{pool}"


def event_subject(job_id: str, kind: str) -> str:
    """Subject of one job event, e.g. ``scribe.events.<job_id>.progress``."""
    return f"scribe.events.{job_id}.{kind}"


def pool_consumer(pool: str) -> str:
    """Durable consumer name of ``pool``'s transcribers."""
    return f"transcriber-{pool}"


#: Durable consumer name of the post-processors.
POSTPROCESS_CONSUMER = "postprocess"


@dataclass
class Bus:
    """A NATS connection with its JetStream context and the KV buckets."""

    nc: NATS
    js: JetStreamContext
    jobs: KeyValue
    workers: KeyValue
    glossaries: KeyValue

    async def publish(self, subject: str, message: Message, headers: dict[str, str] | None = None) -> int:
        """Publish a protobuf message to JetStream with trace context headers.

        Returns:
            The stream sequence JetStream assigned (the message is durable once this returns).
        """
        ack = await self.js.publish(subject, message.SerializeToString(), headers=inject_headers(headers))
        return int(ack.seq)

    async def close(self) -> None:
        """Drain the connection (pending publishes and acks are flushed)."""
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception:  # noqa: BLE001 - drain timed out: close without waiting further
            log.info("NATS drain timed out; closing")
            await self.nc.close()


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created stream", extra={"stream": config.name})
            return
        except BadRequestError:
            pass  # created concurrently by another service
    await js.update_stream(config)


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
        stream = await js.stream_info(f"KV_{config.bucket}")
        wanted = float(config.ttl or 0)
        if abs(float(stream.config.max_age or 0) - wanted) > 1e-3:
            stream.config.max_age = wanted
            await js.update_stream(stream.config)
            log.info("updated bucket TTL", extra={"bucket": config.bucket, "ttl_seconds": wanted})
        return kv
    except BucketNotFoundError:
        try:
            return await js.create_key_value(config)
        except BadRequestError:
            return await js.key_value(config.bucket)


#: Default retention of job records (DESIGN.md: results kept 7 days).
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0


async def declare(
    js: JetStreamContext, retention_seconds: float = DEFAULT_RETENTION_SECONDS
) -> tuple[KeyValue, KeyValue, KeyValue]:
    """Declare the streams and KV buckets (idempotent). Returns (jobs, workers, glossaries) KV.

    Job records expire ``retention_seconds`` after their last write (the ``scribe_jobs``
    bucket's TTL), so an expired job is NOT_FOUND everywhere.
    """
    for name, subject in ((JOBS_STREAM, "scribe.jobs.>"), (POSTPROCESS_STREAM, POSTPROCESS_SUBJECT)):
        # Work queues: a message stays until a worker acks it (then it is gone).
        await _ensure_stream(
            js,
            StreamConfig(name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE),
        )
    await _ensure_stream(
        js,
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=["scribe.events.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=EVENTS_MAX_AGE_SECONDS,
            discard=DiscardPolicy.OLD,
        ),
    )
    jobs = await _ensure_kv(
        js, KeyValueConfig(bucket=JOBS_BUCKET, history=1, ttl=retention_seconds, storage=StorageType.FILE)
    )
    workers = await _ensure_kv(
        js, KeyValueConfig(bucket=WORKERS_BUCKET, history=1, ttl=WORKER_TTL_SECONDS, storage=StorageType.MEMORY)
    )
    glossaries = await _ensure_kv(js, KeyValueConfig(bucket=GLOSSARIES_BUCKET, history=10, storage=StorageType.FILE))
    return jobs, workers, glossaries


async def connect(settings: NatsSettings, name: str, *, retention_seconds: float) -> Bus:
    """Connect to NATS, declare streams and buckets, and return the :class:`Bus`.

    ``retention_seconds`` is the ``scribe_jobs`` TTL every service declares; it has no default,
    since a service that left it out reset the bucket's TTL to 7 days on every start (seen: the
    stream gateway, whatever ``retentionDays`` the chart set).

    Raises:
        nats.errors.NoServersError: no server answered within the connect timeout.
    """
    nc = await nats.connect(
        servers=[s.strip() for s in settings.url.split(",")],
        name=name,
        connect_timeout=settings.connect_timeout,
        max_reconnect_attempts=settings.max_reconnect_attempts,
        allow_reconnect=True,
        # Pending pull requests keep a drain waiting for their expiry: bound it (close() falls back).
        drain_timeout=3,
    )
    js = nc.jetstream()
    jobs, workers, glossaries = await declare(js, retention_seconds)
    return Bus(nc=nc, js=js, jobs=jobs, workers=workers, glossaries=glossaries)


async def pull_subscribe(
    js: JetStreamContext,
    subject: str,
    *,
    stream: str,
    durable: str,
    ack_wait_seconds: float,
    max_deliver: int,
    max_ack_pending: int | None = None,
) -> JetStreamContext.PullSubscription:
    """Bind to a work queue's durable pull consumer, creating it if it does not exist yet.

    Every worker of the queue shares the consumer (one delivery per message among them). Its
    configuration: explicit acks, delivery of everything in the stream, the message redelivered
    ``ack_wait_seconds`` after its last ack / ``in_progress()`` if the worker went silent, at
    most ``max_deliver`` deliveries (then JetStream's MAX_DELIVERIES advisory; the results
    janitor fails the job). An existing consumer keeps the configuration it was created with
    (nats-py binds to it as it is).

    Args:
        js: JetStream context.
        subject: Filter subject, e.g. ``scribe.jobs.<pool>``.
        stream: The stream, e.g. ``SCRIBE_JOBS``.
        durable: Consumer name, e.g. :func:`pool_consumer` or :data:`POSTPROCESS_CONSUMER`.
        ack_wait_seconds: Seconds without an ack or ``in_progress()`` before redelivery.
        max_deliver: Deliveries of one message at most.
        max_ack_pending: Messages delivered and not yet acked, at most; -1 for no limit, None
            for the server's default (1000).
    """
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_seconds,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)


async def consume(
    sub: JetStreamContext.PullSubscription,
    handle: Callable[[Msg], Awaitable[None]],
    stopping: asyncio.Event,
    what: str,
) -> None:
    """Fetch one message at a time from a pull subscription and ``handle`` it, until ``stopping``.

    The loop outlives broker hiccups (a failed fetch is retried after 1 s); a handler that raises
    leaves its message unacked, so JetStream redelivers it after the ack wait. The subscription is
    removed at the end, so draining the connection does not wait for a pending pull request.

    Args:
        sub: A durable pull subscription.
        handle: Processes one message; expected to end in ack, nak or term.
        stopping: Set to stop after the message in hand.
        what: What the messages are, for the logs (e.g. ``"job"``).
    """
    while not stopping.is_set():
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except nats.errors.ConnectionClosedError:
            break
        except Exception:  # noqa: BLE001 - the loop outlives a broker hiccup
            log.warning("fetching %s messages failed; retrying", what, exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=1.0)
            continue
        for msg in msgs:
            try:
                await handle(msg)
            except Exception:  # noqa: BLE001 - unacked, the message is redelivered
                log.exception("handling a %s message failed", what)
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


def parse(message_type: type[M], data: bytes) -> M:
    """Deserialize a protobuf payload of ``message_type``."""
    message = message_type()
    message.ParseFromString(data)
    return message
