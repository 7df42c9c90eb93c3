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

Clusters. Every stream and bucket gets ``NatsSettings.replicas`` replicas (1 embedded, 3 on the
chart's 3-node cluster); an existing one with another count is updated to it, or, when JetStream
refuses, logged with both counts and left as it is. The client is given every server's URL
(``NatsSettings.url``, comma-separated) and fails over to another when one dies. While the dead
server's RAFT groups elect new leaders (seconds), JetStream API requests of a :class:`Bus` (KV
gets, stream and consumer calls) are retried instead of failing
(:class:`_ElectionTolerantJetStream`); tests/cluster/test_nats_cluster.py kills a node mid-run.

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
import contextvars
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
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NotFoundError,
    ServiceUnavailableError,
)
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
T = TypeVar("T")


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

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called (a retry loop should give up, not wait for recovery)."""
        return self._closing

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
                # The store may be gone too.
                await declare(nc.jetstream(), self.retention_seconds, replicas=self.settings.replicas)
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


#: The replica count of the :func:`declare` in progress (None outside one): a stream or bucket
#: declared inside it without an explicit ``replicas`` gets this one (so a stream added to
#: declare() cannot miss it); outside, the config's own count stands.
_DECLARE_REPLICAS: contextvars.ContextVar[int | None] = contextvars.ContextVar("scribe_declare_replicas", default=None)
#: JetStream API calls of :func:`declare` are retried this long (seconds) while the cluster has
#: no meta leader or the asset's leader is being elected (503 "JetStream system temporarily
#: unavailable", a request timeout, no responders), about the length of a RAFT election after a
#: node loss, with headroom; then the error is raised.
DECLARE_RETRY_SECONDS = 30.0


def _replicas(explicit: int | None, configured: int | None) -> int:
    """The replica count to declare: ``explicit``, else the declare in progress's, else ``configured`` (else 1)."""
    if explicit is not None:
        return explicit
    declaring = _DECLARE_REPLICAS.get()
    return declaring if declaring is not None else int(configured or 1)


async def _retry_unavailable(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``await call()``, again after a short backoff while JetStream is electing leaders.

    Raises:
        nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
        nats.errors.NoRespondersError: still so after :data:`DECLARE_RETRY_SECONDS`.
    """
    deadline = asyncio.get_running_loop().time() + DECLARE_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return await call()
        except (ServiceUnavailableError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            log.info("JetStream unavailable for %s (%r); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int | None = None) -> None:
    """Create the stream, or update an existing one to ``config`` (replica count included).

    Args:
        js: JetStream context.
        config: The stream's configuration; its ``num_replicas`` is replaced by ``replicas``.
        replicas: Replica count; None: the count of the :func:`declare` in progress, outside
            one ``config.num_replicas`` (None: 1).

    An existing stream with another replica count is updated to ``replicas`` (JetStream adds or
    removes peers by a stream update). If the server refuses that (e.g. fewer JetStream servers
    than replicas), the error names both counts and the rest of the configuration is still
    applied with the stream's current count, so the service runs with less redundancy rather
    than not at all.
    """
    config.num_replicas = _replicas(replicas, config.num_replicas)
    try:
        info = await _retry_unavailable(lambda: js.stream_info(config.name), f"stream {config.name}")
    except NotFoundError:
        try:
            await _retry_unavailable(lambda: js.add_stream(config), f"stream {config.name}")
            log.info("created stream", extra={"stream": config.name, "replicas": config.num_replicas})
            return
        except BadRequestError:
            info = await js.stream_info(config.name)  # created concurrently by another service
    await _update_stream(js, config, int(info.config.num_replicas or 1))


async def _update_stream(js: JetStreamContext, config: StreamConfig, current_replicas: int) -> None:
    """``update_stream(config)``; see :func:`_ensure_stream` for a refused replica change."""
    wanted = int(config.num_replicas or 1)
    if wanted != current_replicas:
        log.warning(
            "stream %s has %d replicas, the settings want %d: updating it",
            config.name, current_replicas, wanted,
            extra={"stream": config.name, "replicas": current_replicas, "wanted_replicas": wanted},
        )
    try:
        await _retry_unavailable(lambda: js.update_stream(config), f"stream {config.name}")
    except APIError as exc:
        if wanted == current_replicas:
            raise
        log.error(
            "stream %s keeps %d replicas: JetStream refused %d (%s); set SCRIBE_<SERVICE>_NATS__REPLICAS to at "
            "most the number of JetStream servers",
            config.name, current_replicas, wanted, exc.description or exc,
            extra={"stream": config.name, "replicas": current_replicas, "wanted_replicas": wanted},
        )
        config.num_replicas = current_replicas
        await _retry_unavailable(lambda: js.update_stream(config), f"stream {config.name}")


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig, replicas: int | None = None) -> KeyValue:
    """Create the KV bucket, or bring an existing one's TTL and replica count to ``config``'s.

    ``replicas`` as in :func:`_ensure_stream` (None: the count of the :func:`declare` in progress,
    outside one ``config.replicas``).
    """
    config.replicas = _replicas(replicas, config.replicas)
    what = f"bucket {config.bucket}"
    try:
        kv = await _retry_unavailable(lambda: js.key_value(config.bucket), what)
        stream = await _retry_unavailable(lambda: js.stream_info(f"KV_{config.bucket}"), what)
        wanted = float(config.ttl or 0)
        current_replicas = int(stream.config.num_replicas or 1)
        ttl_differs = abs(float(stream.config.max_age or 0) - wanted) > 1e-3
        if ttl_differs or current_replicas != config.replicas:
            stream.config.max_age = wanted
            stream.config.num_replicas = config.replicas
            await _update_stream(js, stream.config, current_replicas)
            if ttl_differs:
                log.info("updated bucket TTL", extra={"bucket": config.bucket, "ttl_seconds": wanted})
        return kv
    except BucketNotFoundError:
        try:
            return await _retry_unavailable(lambda: js.create_key_value(config), what)
        except BadRequestError:
            return await js.key_value(config.bucket)


#: Default retention of job records (DESIGN.md: results kept 7 days).
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0


async def declare(
    js: JetStreamContext, retention_seconds: float = DEFAULT_RETENTION_SECONDS, *, replicas: int = 1
) -> tuple[KeyValue, KeyValue, KeyValue]:
    """Declare the streams and KV buckets (idempotent). Returns (jobs, workers, glossaries) KV.

    Job records expire ``retention_seconds`` after their last write (the ``scribe_jobs``
    bucket's TTL), so an expired job is NOT_FOUND everywhere. Every stream and bucket gets
    ``replicas`` replicas (``NatsSettings.replicas``: 1 embedded, 3 in the chart's cluster); an
    existing one with another count is updated (see :func:`_ensure_stream`). Calls that meet a
    leader election are retried for up to :data:`DECLARE_RETRY_SECONDS`.
    """
    token = _DECLARE_REPLICAS.set(replicas)
    try:
        return await _declare(js, retention_seconds)
    finally:
        _DECLARE_REPLICAS.reset(token)


async def _declare(js: JetStreamContext, retention_seconds: float) -> tuple[KeyValue, KeyValue, KeyValue]:
    """:func:`declare`'s body: every ``_ensure_*`` here takes the replica count of the declare in progress."""
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
    # SCRIBE_JOB_INDEX (ListJobs' per-owner index, scribe_libs.jobindex): kept as long as records.
    from scribe_libs.jobindex import stream_config as job_index_config  # noqa: PLC0415 - a separate insertion

    await _ensure_stream(js, job_index_config(retention_seconds))
    jobs = await ensure_kv(
        js, KeyValueConfig(bucket=JOBS_BUCKET, history=1, ttl=retention_seconds, storage=StorageType.FILE)
    )
    workers = await ensure_kv(
        js, KeyValueConfig(bucket=WORKERS_BUCKET, history=1, ttl=WORKER_TTL_SECONDS, storage=StorageType.MEMORY)
    )
    glossaries = await ensure_kv(js, KeyValueConfig(bucket=GLOSSARIES_BUCKET, history=10, storage=StorageType.FILE))
    return jobs, workers, glossaries


#: How long (seconds) a JetStream API request of a :class:`Bus` is retried while the asset it
#: addresses has no leader (a cluster node died and its RAFT groups elect new leaders: 503 "no
#: leader", no responders, or no answer at all). nats-server's elections take a few seconds
#: (tests/cluster/test_nats_cluster.py: 5-10 s after the SIGKILL of a leader); then the error is raised and
#: a gRPC call leaves as UNAVAILABLE BROKER_UNAVAILABLE.
ELECTION_RETRY_SECONDS = 10.0
#: Per-attempt timeout (seconds) of those retries: short, so the request is re-sent soon after
#: the new leader is there instead of waiting out the context's 5 s timeout again.
ELECTION_RETRY_ATTEMPT_SECONDS = 2.0
#: JetStream API requests that change something and are not safe to send twice when the first
#: one got no answer (it may have been applied): only a 503 / no-responders reply is retried.
_NOT_IDEMPOTENT = (".DELETE.", ".PURGE.", ".MSG.DELETE.", ".LEADER.STEPDOWN", ".PEER.REMOVE")


class _ElectionTolerantJetStream(JetStreamContext):
    """A JetStreamContext whose API requests ride out a leader election of a JetStream cluster.

    Every JetStream API request (stream and consumer info and creation, KV gets, which nats-py
    sends as ``$JS.API.STREAM.MSG.GET`` requests, ...) goes through ``_api_request``; this one
    retries it for up to :data:`ELECTION_RETRY_SECONDS` when JetStream answers 503 (no leader,
    cluster not available) or nobody answers, with attempts of
    :data:`ELECTION_RETRY_ATTEMPT_SECONDS`. Requests that may have been applied although they got
    no answer (:data:`_NOT_IDEMPOTENT`) are retried on a 503 only. Publishes (KV puts, job
    messages) are not requests of this kind and are not retried: their callers decide.

    Used when the settings name a cluster (several URLs or replicas > 1). Seen without it
    (tests/cluster/test_nats_cluster.py): after the SIGKILL of the node leading
    ``KV_scribe_jobs``, ``GetJob`` and the transcriber's state transitions failed with
    ``nats: timeout`` for the ~5 s until the bucket's stream had a new leader.
    """

    async def _api_request(self, req_subject: str, req: bytes = b"", timeout: float = 5) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        idempotent = not any(part in req_subject for part in _NOT_IDEMPOTENT)
        attempt_timeout = timeout
        delay = 0.1
        while True:
            try:
                return await super()._api_request(req_subject, req, timeout=attempt_timeout)
            except ServiceUnavailableError as exc:
                error: Exception = exc
            except nats.errors.TimeoutError as exc:
                if not idempotent:
                    raise
                error = exc
            now = loop.time()
            if deadline is None:
                deadline = now + ELECTION_RETRY_SECONDS
                log.info("JetStream request %s failed (%r); retrying during a leader election", req_subject, error)
            if now + delay >= deadline or self._nc.is_closed:
                raise error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            attempt_timeout = min(timeout, ELECTION_RETRY_ATTEMPT_SECONDS, max(deadline - loop.time(), 0.1))


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
    # Elections happen in a cluster only; a lone server that does not answer is down, and callers
    # learn it after the request timeout (UNAVAILABLE), not 10 s later.
    clustered = settings.replicas > 1 or "," in settings.url
    js = _ElectionTolerantJetStream(nc) if clustered else nc.jetstream()
    jobs, workers, glossaries = await declare(js, retention_seconds, replicas=settings.replicas)
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

    ``stopping`` withdraws an idle fetch at once instead of waiting out its 1 s (a round trip,
    milliseconds): a message in hand is handled to the end; one the server sent meanwhile is
    handled too, or nakked (redelivered now, not after the ack wait).

    Args:
        sub: A durable pull subscription.
        handle: Processes one message; expected to end in ack, nak or term.
        stopping: Set to stop after the message in hand.
        what: What the messages are, for the logs (e.g. ``"job"``).
    """
    while not stopping.is_set():
        try:
            msgs = await _fetch_unless_stopping(sub, stopping)
            if msgs is None:
                break
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
        except Exception as exc:  # noqa: BLE001 - the loop outlives a broker hiccup
            # 503: the consumer has no leader (a cluster node died; its RAFT group elects one in a
            # few seconds): expected, no traceback. Anything else is worth one.
            unavailable = isinstance(exc, ServiceUnavailableError)
            log.warning("fetching %s messages failed (%r); retrying", what, exc, exc_info=not unavailable)
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


#: Seconds a stopping :func:`consume` waits for the server to confirm that its pull request is
#: withdrawn (a round trip: milliseconds) before it abandons the fetch regardless.
WITHDRAW_SECONDS = 0.5


async def _fetch_unless_stopping(
    sub: JetStreamContext.PullSubscription, stopping: asyncio.Event
) -> list[Msg] | None:
    """``sub.fetch(1, timeout=1.0)``, or None soon after ``stopping`` is set while it waits.

    The fetch's errors propagate; a fetch that completed is returned even when ``stopping`` came
    at the same time (its message is in hand). When ``stopping`` comes first, the pull request is
    withdrawn rather than waited out (:func:`_withdraw`: milliseconds), a message that arrives
    meanwhile is returned (in hand), and any left in the subscription's queue once the fetch is
    cancelled is nakked, so that it is redelivered now rather than after the ack wait. The caller
    unsubscribes after None.
    """
    fetch = asyncio.ensure_future(sub.fetch(1, timeout=1.0))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not fetch.done():
            await _withdraw(sub, fetch)
    finally:
        stop.cancel()
        if not fetch.done():
            fetch.cancel()
    if fetch.done() and not fetch.cancelled():
        return fetch.result()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await fetch  # let the cancellation land
    await _nak_pending(sub)
    return None


async def _withdraw(sub: JetStreamContext.PullSubscription, fetch: asyncio.Future[list[Msg]]) -> None:
    """Withdraw ``sub``'s interest while ``fetch`` still waits, and let what the server sent arrive.

    An UNSUB (the server delivers nothing more to the subscription's inbox; the client keeps the
    subscription, so what is on its way still lands in its queue) and a PING/PONG round trip
    after it. Returns when the round trip is done, or the fetch is (a message came), or after
    :data:`WITHDRAW_SECONDS`. Not ``Subscription.drain()``: that waits until the queue's every
    item was ``task_done()``, which nats-py's fetch does not always call (a discarded status
    message), and would then hang until its timeout.
    """
    core = getattr(sub, "_sub", None)  # the nats-py Subscription under the pull subscription
    conn = getattr(core, "_conn", None)
    if core is None or conn is None or conn.is_closed or conn.is_draining or conn.is_reconnecting:
        return
    try:
        await conn._send_unsubscribe(core._id)
        flushed = asyncio.ensure_future(conn.flush(timeout=WITHDRAW_SECONDS))
        flushed.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody else reads it
        await asyncio.wait({fetch, flushed}, timeout=WITHDRAW_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    except Exception as exc:  # noqa: BLE001 - best effort: the fetch is abandoned all the same
        log.debug("withdrawing the pull request failed: %r", exc)


async def _nak_pending(sub: JetStreamContext.PullSubscription) -> None:
    """Nak the messages left in ``sub``'s queue (nats-py's ``_pending_queue``), best effort."""
    queue: asyncio.Queue[Msg] | None = getattr(getattr(sub, "_sub", None), "_pending_queue", None)
    while queue is not None and not queue.empty():
        msg = queue.get_nowait()
        queue.task_done()
        if msg.reply and not JetStreamContext.is_status_msg(msg):
            with contextlib.suppress(Exception):
                await msg.nak()


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
