"""Samples queue depth, oldest waiting job and jobs in the queues, for the metrics gauges.

Runs in the results service every ``interval`` seconds (the gauges' callbacks only read the
cache: OpenTelemetry callbacks are synchronous and must not do I/O). Each round costs a few
requests per pool, whatever the number of jobs:

- the pools are the ones with counters in ``scribe_pools`` (every pool a job was ever put on);
- depth (QUEUED) and in flight (RUNNING) are the pool consumer's ``num_pending`` and
  ``num_ack_pending`` (:func:`scribe_libs.queue.consumer_counts`);
- the oldest waiting job's age is that of the first message after the consumer's delivered
  sequence on the pool's subject (one direct get: JetStream's timestamp of the job's enqueue).

``scribe.jobs`` therefore reports the jobs in the queues (states QUEUED and RUNNING); finished
jobs are counted by the ``scribe.jobs.finished`` counter as they end. The same round runs
:meth:`scribe_libs.queue.PoolLedger.reconcile` on each pool (a no-op unless the counters drifted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from nats.js.errors import NotFoundError

from scribe_libs import metrics
from scribe_libs.bus import JOBS_STREAM, Bus, jobs_subject, pool_consumer
from scribe_libs.queue import PoolLedger, consumer_counts

log = logging.getLogger(__name__)


async def pools_with_counters(ledger: PoolLedger) -> list[str]:
    """Pools that have a counter in ``scribe_pools``."""
    kv = await ledger.kv()
    try:
        keys = await kv.keys()
    except Exception:  # noqa: BLE001 - nats raises NoKeysError on an empty bucket
        return []
    return sorted({key.rsplit(".", 1)[0] for key in keys if key.endswith(".enqueued")})


async def oldest_waiting_age(bus: Bus, pool: str, now: float) -> float | None:
    """Seconds the first waiting message of ``pool`` has been in the stream; None when none waits."""
    try:
        info = await bus.js.consumer_info(JOBS_STREAM, pool_consumer(pool))
        after = int(info.delivered.stream_seq or 0) if info.delivered else 0
    except NotFoundError:
        after = 0
    try:
        msg = await bus.js.get_msg(JOBS_STREAM, seq=after + 1, subject=jobs_subject(pool), next=True)
    except NotFoundError:
        return None
    if not msg.time:
        return None
    return max(now - datetime.fromisoformat(str(msg.time).replace("Z", "+00:00")).timestamp(), 0.0)


async def sample_once(
    bus: Bus, ledger: PoolLedger
) -> tuple[dict[str, int], dict[str, float], dict[tuple[str, str], int]]:
    """(queue depth per pool, oldest waiting job age per pool in seconds, jobs per (pool, state))."""
    now = time.time()
    depth: dict[str, int] = {}
    oldest: dict[str, float] = {}
    by_state: dict[tuple[str, str], int] = {}
    for pool in await pools_with_counters(ledger):
        with contextlib.suppress(Exception):
            waiting, running = await consumer_counts(bus, pool)
            depth[pool] = waiting
            by_state[(pool, "QUEUED")] = waiting
            by_state[(pool, "RUNNING")] = running
            age = await oldest_waiting_age(bus, pool, now) if waiting else None
            if age is not None:
                oldest[pool] = age
            await ledger.reconcile(pool)
    return depth, oldest, by_state


class QueueSampler:
    """Background task refreshing :data:`scribe_libs.metrics.sampled`."""

    def __init__(self, bus: Bus, interval: float = 10.0, ledger: PoolLedger | None = None):
        self.bus = bus
        self.ledger = ledger or PoolLedger(bus)
        self.interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start sampling."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop (bounded wait)."""
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                metrics.sampled.set(*await sample_once(self.bus, self.ledger))
            except Exception:  # noqa: BLE001 - next round
                log.warning("metrics sampling failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
