"""Samples queue depth, oldest waiting job and jobs by state for the metrics gauges.

Runs in the results service every ``interval`` seconds (the gauges' callbacks only read the
cache: OpenTelemetry callbacks are synchronous and must not do I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from scribe.v1 import jobs_pb2
from scribe_libs import metrics
from scribe_libs.bus import Bus
from scribe_libs.jobs import JobStore, state_name
from scribe_libs.queue import queue_depth

log = logging.getLogger(__name__)


async def sample_once(bus: Bus) -> tuple[dict[str, int], dict[str, float], dict[tuple[str, str], int]]:
    """(queue depth per pool, oldest queued job age per pool in seconds, jobs per (pool, state))."""
    jobs = await JobStore(bus).list()
    now = time.time()
    by_state: dict[tuple[str, str], int] = {}
    oldest: dict[str, float] = {}
    for job in jobs:
        key = (job.pool, state_name(job.state))
        by_state[key] = by_state.get(key, 0) + 1
        if job.state == jobs_pb2.JOB_STATE_QUEUED:
            age = now - job.create_time.ToNanoseconds() / 1e9
            oldest[job.pool] = max(oldest.get(job.pool, 0.0), age)
    depth = {}
    for pool in {job.pool for job in jobs if job.pool}:
        with contextlib.suppress(Exception):
            depth[pool] = await queue_depth(bus, pool)
    return depth, oldest, by_state


class QueueSampler:
    """Background task refreshing :data:`scribe_libs.metrics.sampled`."""

    def __init__(self, bus: Bus, interval: float = 10.0):
        self.bus = bus
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
                metrics.sampled.set(*await sample_once(self.bus))
            except Exception:  # noqa: BLE001 - next round
                log.warning("metrics sampling failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
