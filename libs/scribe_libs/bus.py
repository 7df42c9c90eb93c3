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

Outages and healing. nats-py reconnects by itself after a lost connection (forever with the
default ``max_reconnect_attempts = -1``), replaying core subscriptions. It closes the connection
for good in a few cases: after a server ``-ERR`` (e.g. "maximum payload violation"), or after
``max_reconnect_attempts`` failed attempts. A :class:`Bus` then opens a new connection itself,
with backoff (:data:`RECOVER_MIN_SECONDS` doubling to :data:`RECOVER_MAX_SECONDS`), unless it is
being closed. The new connection is swapped in under the same :class:`JetStreamContext` object,
so every holder of ``bus.js`` and of the KV handles (``bus.jobs``, ``bus.workers``,
``bus.glossaries``, which act through it) uses it without knowing; ``bus.nc`` is rebound.
Subscriptions do not survive a close: :func:`consume` re-creates a pull subscription made by
:func:`pull_subscribe`, and other subscribers register :meth:`Bus.on_recovered`.

Health: the connection is a :class:`~scribe_libs.errors.Dependency` ("nats") of the service
instance, unavailable while disconnected, reconnecting or closed, so the gRPC health reports
NOT_SERVING meanwhile (scribe_libs.server); calls that hit the outage leave as UNAVAILABLE
``BROKER_UNAVAILABLE`` (scribe_libs.errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from scribe_libs.errors import Dependency, current_dependencies
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
#: Backoff of :meth:`Bus` recovery after nats-py closed the connection for good: the first
#: retry after this many seconds, doubling (with +-20 % jitter) up to RECOVER_MAX_SECONDS.
RECOVER_MIN_SECONDS = 0.5
RECOVER_MAX_SECONDS = 10.0

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
    """A NATS connection with its JetStream context and the KV buckets; heals after a close.

    See the module docstring: ``nc`` is rebound to a new connection when nats-py closed the old
    one for good; ``js`` and the KV handles stay the same objects and follow.
    """

    nc: NATS
    js: JetStreamContext
    jobs: KeyValue
    workers: KeyValue
    glossaries: KeyValue
    settings: NatsSettings | None = None
    name: str = ""
    retention_seconds: float = 0.0
    dependency: Dependency | None = None
    #: Connections re-opened after a close (for logs and tests).
    recoveries: int = 0
    _closing: bool = False
    _recovery: asyncio.Task[None] | None = None
    _recovered: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def publish(self, subject: str, message: Message, headers: dict[str, str] | None = None) -> int:
        """Publish a protobuf message to JetStream with trace context headers.

        Returns:
            The stream sequence JetStream assigned (the message is durable once this returns).
        """
        ack = await self.js.publish(subject, message.SerializeToString(), headers=inject_headers(headers))
        return int(ack.seq)

    def on_recovered(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback()`` after a new connection replaced a closed one (re-create core subscriptions)."""
        self._recovered.append(callback)

    async def close(self) -> None:
        """Drain the connection (pending publishes and acks are flushed); no recovery after this."""
        self._closing = True
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recovery
        if self.dependency is not None and self.dependency.scope is not None:
            self.dependency.scope.remove(self.dependency)  # a deliberate close is no outage
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception:  # noqa: BLE001 - drain timed out: close without waiting further
            log.info("NATS drain timed out; closing")
            await self.nc.close()

    # --- connection events (nats-py callbacks of the current client; others are stale) ---------

    def _mark(self, available: bool, detail: str = "") -> None:
        if self.dependency is not None:
            self.dependency.mark(available, detail)

    async def _disconnected(self, nc: NATS) -> None:
        if nc is self.nc and not self._closing:
            self._mark(False, "disconnected; reconnecting")

    async def _reconnected(self, nc: NATS) -> None:
        if nc is self.nc:
            self._mark(True)

    async def _closed(self, nc: NATS) -> None:
        if nc is not self.nc or self._closing:
            return
        self._mark(False, f"connection closed ({nc.last_error!r})")
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name=f"nats-recover-{self.name}")

    def _sync_state(self) -> None:
        """Take the client's state now (events before the Bus existed were not seen)."""
        if self.nc.is_closed:
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name=f"nats-recover-{self.name}")
        self._mark(self.nc.is_connected, "" if self.nc.is_connected else "not connected")

    async def _recover(self) -> None:
        """Open a new connection (backoff between tries), declare, swap it in; until :meth:`close`."""
        assert self.settings is not None
        delay = RECOVER_MIN_SECONDS
        while not self._closing:
            log.warning("NATS connection closed for good; opening a new one in %.1f s", delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, RECOVER_MAX_SECONDS)
            nc: NATS | None = None
            try:
                nc = await _open_client(self.settings, self.name, self)
                await declare(nc.jetstream(), self.retention_seconds)  # the store may be gone too
            except Exception as exc:  # noqa: BLE001 - try again after the backoff
                log.warning("opening a new NATS connection failed: %r", exc)
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
                continue
            if self._closing:
                await nc.close()
                return
            self._swap(nc)
            self.recoveries += 1
            self._mark(nc.is_connected)
            log.warning("NATS connection re-opened after a close", extra={"recoveries": self.recoveries})
            for callback in list(self._recovered):
                try:
                    await callback()
                except Exception:  # noqa: BLE001 - one subscriber's failure is its own
                    log.exception("a NATS recovery callback failed")
            return

    def _swap(self, nc: NATS) -> None:
        """Make ``nc`` the connection of ``bus.nc``, ``bus.js`` and so of the KV handles.

        nats-py's JetStreamContext (2.x) keeps its connection in ``_nc`` and builds everything
        else (its JetStreamManager, pull subscriptions, KV requests) from it at each call; the
        async-publish reply inbox belonged to the old connection and is made again on first use.
        libs/tests/test_health_server.py fails if an upgrade changes this.
        """
        self.nc = nc
        self.js._nc = nc  # noqa: SLF001 - see the docstring
        self.js._async_reply_prefix = None  # noqa: SLF001


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


async def _open_client(settings: NatsSettings, name: str, events: Bus | _Pending) -> NATS:
    """A connected nats-py client whose connection events go to ``events`` (a Bus)."""
    nc = NATS()

    async def disconnected_cb() -> None:
        await events._disconnected(nc)  # noqa: SLF001 - the Bus's own callbacks

    async def reconnected_cb() -> None:
        await events._reconnected(nc)  # noqa: SLF001

    async def closed_cb() -> None:
        await events._closed(nc)  # noqa: SLF001

    await nc.connect(
        servers=[s.strip() for s in settings.url.split(",")],
        name=name,
        connect_timeout=settings.connect_timeout,
        max_reconnect_attempts=settings.max_reconnect_attempts,
        allow_reconnect=True,
        # Pending pull requests keep a drain waiting for their expiry: bound it (close() falls back).
        drain_timeout=3,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        closed_cb=closed_cb,
    )
    return nc


class _Pending:
    """The Bus a first connection reports to, once built (events before that are read from the client)."""

    bus: Bus | None = None

    async def _disconnected(self, nc: NATS) -> None:
        if self.bus is not None:
            await self.bus._disconnected(nc)  # noqa: SLF001

    async def _reconnected(self, nc: NATS) -> None:
        if self.bus is not None:
            await self.bus._reconnected(nc)  # noqa: SLF001

    async def _closed(self, nc: NATS) -> None:
        if self.bus is not None:
            await self.bus._closed(nc)  # noqa: SLF001


async def connect(settings: NatsSettings, name: str, *, retention_seconds: float) -> Bus:
    """Connect to NATS, declare streams and buckets, and return the :class:`Bus`.

    ``retention_seconds`` is the ``scribe_jobs`` TTL every service declares; it has no default,
    since a service that left it out reset the bucket's TTL to 7 days on every start (seen: the
    stream gateway, whatever ``retentionDays`` the chart set).

    The connection becomes a dependency ("nats") of the service instance being built in this
    context (its health follows it), and the Bus re-opens it if nats-py closes it for good.

    Raises:
        nats.errors.NoServersError: no server answered within the connect timeout.
    """
    pending = _Pending()
    nc = await _open_client(settings, name, pending)
    js = nc.jetstream()
    jobs, workers, glossaries = await declare(js, retention_seconds)
    bus = Bus(
        nc=nc, js=js, jobs=jobs, workers=workers, glossaries=glossaries, settings=settings, name=name,
        retention_seconds=retention_seconds, dependency=current_dependencies().add(Dependency("nats")),
    )
    pending.bus = bus
    bus._sync_state()  # noqa: SLF001
    return bus


#: How :func:`consume` re-creates a pull subscription after its connection was replaced.
_RESUBSCRIBE: weakref.WeakKeyDictionary[Any, Callable[[], Awaitable[Any]]] = weakref.WeakKeyDictionary()


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
    sub = await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
    _RESUBSCRIBE[sub] = functools.partial(
        pull_subscribe, js, subject, stream=stream, durable=durable, ack_wait_seconds=ack_wait_seconds,
        max_deliver=max_deliver, max_ack_pending=max_ack_pending,
    )
    return sub


async def consume(
    sub: JetStreamContext.PullSubscription,
    handle: Callable[[Msg], Awaitable[None]],
    stopping: asyncio.Event,
    what: str,
) -> None:
    """Fetch one message at a time from a pull subscription and ``handle`` it, until ``stopping``.

    The loop outlives broker hiccups (a failed fetch is retried after 1 s) and a closed
    connection: a subscription made by :func:`pull_subscribe` is made again (every second) until
    the :class:`Bus` has a new connection; any other ends the loop. A handler that raises leaves
    its message unacked, so JetStream redelivers it after the ack wait. The subscription is
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
            resubscribe = _RESUBSCRIBE.get(sub)
            if resubscribe is None or stopping.is_set():
                break
            sub = await _resubscribe(resubscribe, stopping, what)
            if sub is None:
                return
            continue
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


async def _resubscribe(
    resubscribe: Callable[[], Awaitable[Any]], stopping: asyncio.Event, what: str
) -> JetStreamContext.PullSubscription | None:
    """Make the subscription again once a new connection is there; None when ``stopping`` came first."""
    log.warning("the connection of the %s subscription closed; subscribing again once it is back", what)
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=1.0)
            return None
        try:
            sub = await resubscribe()
        except Exception as exc:  # noqa: BLE001 - not back yet
            log.debug("subscribing again failed: %r", exc)
            continue
        log.info("subscribed again for %s messages", what)
        return sub
    return None


def parse(message_type: type[M], data: bytes) -> M:
    """Deserialize a protobuf payload of ``message_type``."""
    message = message_type()
    message.ParseFromString(data)
    return message
