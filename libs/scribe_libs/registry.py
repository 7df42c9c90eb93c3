"""The worker registry: live ``WorkerProfile`` s, kept current in memory, with per-pool totals.

Workers write their profile to the ``scribe_workers`` bucket every
:data:`~scribe_libs.bus.WORKER_HEARTBEAT_SECONDS` (key = worker id; a stopping worker deletes
it; the bucket's TTL removes a dead one's). A :class:`WorkerRegistry` follows the bucket with a
KV watch and keeps, per pool, the live profiles and running totals (live workers, sum and count
of measured real-time factors, the models loaded and how many workers hold each). So a routing
decision (:mod:`scribe_libs.scheduler`) costs O(pools), not O(workers): the totals change by
O(1) per profile write, not per decision.

Consistency:

- :meth:`WorkerRegistry.sync` gives read-your-writes: it reads the bucket stream's last sequence
  (one request) and waits, at most :data:`SYNC_WAIT_SECONDS`, until the watch has delivered it,
  else re-reads the whole bucket. Callers that must see a profile written a moment ago (the
  gateway admitting a call, a test) call it; routing calls it too (one request per decision).
- A profile whose ``update_time`` is older than ``ttl_seconds`` counts as dead: a sweep every
  :data:`SWEEP_SECONDS` drops it even if the bucket's TTL purge lags or was not announced.
- The watch lives on one connection: after the bus replaced a closed connection
  (:meth:`scribe_libs.bus.Bus.on_recovered`) the registry re-reads the bucket and watches again,
  and every :data:`RESYNC_SECONDS` it re-reads the bucket whatever happened (heals a missed update).

:func:`live_profiles` is the one-shot read (O(workers)) for callers without a registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import nats.errors
from nats.js.kv import KeyValue

from scribe.v1 import transcriber_pb2
from scribe_libs.bus import WORKER_TTL_SECONDS, WORKERS_BUCKET, Bus, parse
from scribe_libs.devices import canonical_model

log = logging.getLogger(__name__)

#: Longest :meth:`WorkerRegistry.sync` waits for the watch before re-reading the bucket, seconds.
SYNC_WAIT_SECONDS = 0.5
#: Dead-profile sweep period, seconds.
SWEEP_SECONDS = 1.0
#: Full re-read of the bucket, seconds (heals anything the watch missed).
RESYNC_SECONDS = 30.0


async def live_profiles(workers: KeyValue, pool: str | None = None) -> list[transcriber_pb2.WorkerProfile]:
    """Every profile in ``scribe_workers`` (of ``pool`` if given): one read per worker."""
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


def update_seconds(profile: transcriber_pb2.WorkerProfile) -> float | None:
    """The profile's ``update_time`` in Unix seconds, or None when unset."""
    if not profile.HasField("update_time"):
        return None
    return profile.update_time.seconds + profile.update_time.nanos / 1e9


@dataclass
class PoolTotals:
    """Running totals of one pool's live workers (changed by O(1) per profile write)."""

    workers: dict[str, transcriber_pb2.WorkerProfile] = field(default_factory=dict)
    rtf_sum: float = 0.0
    rtf_count: int = 0
    models: Counter[str] = field(default_factory=Counter)

    @property
    def live(self) -> int:
        """Live workers."""
        return len(self.workers)

    def rtf(self, default: float) -> float:
        """Mean measured real-time factor of the live workers, ``default`` when none measured."""
        return self.rtf_sum / self.rtf_count if self.rtf_count else default

    def add(self, profile: transcriber_pb2.WorkerProfile) -> None:
        """Count ``profile`` in."""
        self.workers[profile.worker_id] = profile
        if profile.real_time_factor > 0:
            self.rtf_sum += profile.real_time_factor
            self.rtf_count += 1
        self.models.update({canonical_model(m) for m in profile.models_loaded})

    def remove(self, worker_id: str) -> None:
        """Count ``worker_id``'s profile out (no-op when absent)."""
        profile = self.workers.pop(worker_id, None)
        if profile is None:
            return
        if profile.real_time_factor > 0:
            self.rtf_sum -= profile.real_time_factor
            self.rtf_count -= 1
            if self.rtf_count == 0:
                self.rtf_sum = 0.0  # no float residue once the last measured worker left
        self.models.subtract({canonical_model(m) for m in profile.models_loaded})
        self.models += Counter()  # drop models no worker holds any more


class WorkerRegistry:
    """Live worker profiles by pool (see the module docstring).

    Args:
        workers: The ``scribe_workers`` bucket (``bus.workers``); None for an in-memory registry
            fed only by :meth:`apply` (the routing simulation, unit tests).
        bus: For :meth:`scribe_libs.bus.Bus.on_recovered` and the bucket's stream; optional.
        ttl_seconds: A profile older than this (by ``update_time``) is a dead worker.
        clock: Unix seconds.
    """

    def __init__(
        self,
        workers: KeyValue | None = None,
        bus: Bus | None = None,
        ttl_seconds: float = WORKER_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.kv = workers
        self.bus = bus
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._pools: dict[str, PoolTotals] = {}
        self._where: dict[str, str] = {}
        """Worker id -> the pool its profile counts in."""
        self._seen = 0
        """Highest bucket stream sequence applied."""
        self._watcher = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._caught_up = asyncio.Event()

    # -- the in-memory view -------------------------------------------------------------------
    def apply(self, key: str, profile: transcriber_pb2.WorkerProfile | None) -> None:
        """Put (``profile``) or remove (None) the worker ``key``; O(models of the profile)."""
        old_pool = self._where.pop(key, None)
        if old_pool is not None:
            self._pools[old_pool].remove(key)
            if not self._pools[old_pool].workers:
                del self._pools[old_pool]
        if profile is None or self._stale(profile, self.clock()):
            return
        if not profile.worker_id:
            profile.worker_id = key
        pool = profile.pool or "default"
        self._pools.setdefault(pool, PoolTotals()).add(profile)
        self._where[key] = pool

    def _stale(self, profile: transcriber_pb2.WorkerProfile, now: float) -> bool:
        updated = update_seconds(profile)
        return updated is None or now - updated > self.ttl_seconds

    def sweep(self) -> int:
        """Drop profiles older than the TTL; returns how many. O(workers): run periodically."""
        now = self.clock()
        dead = [key for key, pool in self._where.items() if self._stale(self._pools[pool].workers[key], now)]
        for key in dead:
            self.apply(key, None)
        return len(dead)

    def pool_names(self) -> list[str]:
        """Pools with at least one live worker."""
        return sorted(self._pools)

    def totals(self, pool: str) -> PoolTotals:
        """The pool's totals (empty when it has no live worker)."""
        return self._pools.get(pool) or PoolTotals()

    def profiles(self, pool: str | None = None) -> list[transcriber_pb2.WorkerProfile]:
        """Live profiles (of ``pool`` if given); O(workers listed)."""
        pools: Iterable[PoolTotals] = [self.totals(pool)] if pool is not None else self._pools.values()
        return [p for totals in pools for p in totals.workers.values()]

    # -- following the bucket -----------------------------------------------------------------
    async def start(self) -> WorkerRegistry:
        """Read the bucket, start the watch, the sweep and the periodic re-read; returns self."""
        await self._load()
        self._tasks.append(asyncio.create_task(self._sweep_loop()))
        if self.kv is not None:
            await self._watch()
            self._tasks.append(asyncio.create_task(self._resync_loop()))
            if self.bus is not None:
                self.bus.on_recovered(self._recovered)
        return self

    async def stop(self) -> None:
        """Stop the watch and the loops."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_watch()

    async def sync(self) -> None:
        """Return once every profile write made before the call is applied (see module docstring)."""
        if self.kv is None or self.bus is None:
            return
        try:
            info = await self.bus.js.stream_info(f"KV_{WORKERS_BUCKET}")
        except Exception:  # noqa: BLE001 - no answer now: the view is as fresh as the watch
            return
        last = int(info.state.last_seq or 0)
        deadline = time.monotonic() + SYNC_WAIT_SECONDS
        while self._seen < last and time.monotonic() < deadline:
            self._caught_up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), timeout=max(deadline - time.monotonic(), 0.001))
        if self._seen < last:
            await self._load(last)

    async def _load(self, at_least: int = 0) -> None:
        """Replace the view with the bucket's content."""
        if self.kv is None:
            return
        profiles = await live_profiles(self.kv)
        for key in list(self._where):
            self.apply(key, None)
        for profile in profiles:
            self.apply(profile.worker_id, profile)
        self._seen = max(self._seen, at_least)

    async def _watch(self) -> None:
        await self._stop_watch()
        assert self.kv is not None
        self._watcher = await self.kv.watchall()
        self._tasks.append(asyncio.create_task(self._follow(self._watcher)))

    async def _stop_watch(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None

    async def _follow(self, watcher) -> None:  # noqa: ANN001 - nats KeyValue.KeyWatcher
        while not self._stopping.is_set() and watcher is self._watcher:
            try:
                entry = await watcher.updates(timeout=5.0)
            except nats.errors.TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - watch broken (connection replaced): the resync heals
                log.info("worker watch ended; re-reading the bucket", exc_info=True)
                await asyncio.sleep(SWEEP_SECONDS)
                with contextlib.suppress(Exception):
                    await self._load()
                    await self._watch()
                return
            if entry is None:
                continue  # end of the initial values
            self._seen = max(self._seen, int(entry.revision or 0))
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.apply(entry.key, None)
            else:
                try:
                    self.apply(entry.key, parse(transcriber_pb2.WorkerProfile, entry.value))
                except Exception:  # noqa: BLE001 - a malformed profile is not a live worker
                    log.warning("unreadable worker profile", extra={"key": entry.key})
            self._caught_up.set()

    async def _recovered(self) -> None:
        await self._load()
        await self._watch()

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(SWEEP_SECONDS)
            self.sweep()

    async def _resync_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                await self._load()
            except Exception:  # noqa: BLE001 - next round
                log.info("worker bucket re-read failed", exc_info=True)
