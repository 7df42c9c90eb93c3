"""The live worker registry (scribe_libs.registry): running totals per pool, TTL, read-your-writes
on a real ``scribe_workers`` bucket, and routing from it (scribe_libs.scheduler.route)."""

from __future__ import annotations

import time

import pytest

from scribe.v1 import transcriber_pb2
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.errors import FailedPrecondition
from scribe_libs.queue import PoolLedger
from scribe_libs.registry import WorkerRegistry
from scribe_libs.scheduler import pool_views, route


def profile(worker_id, pool, models, rtf=0.0, updated=None):
    p = transcriber_pb2.WorkerProfile(worker_id=worker_id, pool=pool, models_loaded=models, real_time_factor=rtf)
    p.update_time.FromNanoseconds(int((time.time() if updated is None else updated) * 1e9))
    return p


def test_totals_follow_puts_moves_and_removals():
    now = 1000.0
    registry = WorkerRegistry(clock=lambda: now)
    registry.apply("a", profile("a", "gpu", ["large-v3"], rtf=0.1, updated=now))
    registry.apply("b", profile("b", "gpu", ["large-v3", "turbo"], rtf=0.3, updated=now))
    registry.apply("c", profile("c", "cpu", ["base"], updated=now))
    gpu = registry.totals("gpu")
    assert gpu.live == 2 and gpu.rtf(0.5) == pytest.approx(0.2)
    assert set(gpu.models) == {"large-v3", "large-v3-turbo"}
    # b re-registers in another pool with another model: it leaves gpu's totals entirely.
    registry.apply("b", profile("b", "cpu", ["tiny.en"], rtf=0.6, updated=now))
    assert registry.totals("gpu").live == 1 and set(registry.totals("gpu").models) == {"large-v3"}
    assert registry.totals("cpu").rtf(0.5) == pytest.approx(0.6)
    registry.apply("a", None)
    assert registry.pool_names() == ["cpu"]
    assert registry.totals("gpu").rtf(0.5) == 0.5  # no measured worker left: the default


def test_a_profile_past_its_ttl_is_swept_and_a_stale_one_is_never_counted():
    now = [1000.0]
    registry = WorkerRegistry(ttl_seconds=15.0, clock=lambda: now[0])
    registry.apply("a", profile("a", "gpu", ["base"], updated=1000.0))
    registry.apply("old", profile("old", "gpu", ["base"], updated=900.0))  # already dead
    assert registry.totals("gpu").live == 1
    now[0] = 1015.5
    assert registry.sweep() == 1
    assert registry.pool_names() == []


def test_pool_views_come_from_totals_with_configured_pools():
    registry = WorkerRegistry()
    for i in range(1000):  # 1,000 workers in 10 pools
        registry.apply(f"w{i}", profile(f"w{i}", f"pool{i % 10}", ["base"], rtf=0.1 + (i % 10) / 100))
    views = pool_views(registry, {"pool0": ["large-v3"], "spare": ["tiny.en"]}, 0.5, {"pool3": 60.0})
    by_name = {v.name: v for v in views}
    assert len(views) == 11 and by_name["spare"].live_count == 0 and by_name["spare"].configured
    assert by_name["pool0"].live_count == 100 and by_name["pool0"].models == {"base", "large-v3"}
    assert by_name["pool3"].rtf == pytest.approx(0.13) and by_name["pool3"].backlog_audio_seconds == 60.0


async def test_sync_sees_every_profile_written_before_it(nats_url):
    bus = await busmod.connect(NatsSettings(url=nats_url), "test-registry", retention_seconds=3600)
    registry = await WorkerRegistry(bus.workers, bus).start()
    try:
        for i in range(20):
            await bus.workers.put(f"r{i}", profile(f"r{i}", "reg", ["base"]).SerializeToString())
            await registry.sync()
            assert registry.totals("reg").live == i + 1
        await bus.workers.delete("r0")
        await registry.sync()
        assert registry.totals("reg").live == 19
        ledger = PoolLedger(bus)
        await ledger.enqueue("reg", 3600.0)
        decision = await route(registry, ledger, {"idle": ["base"]}, "base", 60.0)
        # 19 live workers drain an hour of backlog sooner than a pool with no live worker starts.
        assert decision.pool == "reg"
        with pytest.raises(FailedPrecondition) as err:
            await route(registry, ledger, {}, "large-v3", 60.0)
        assert err.value.reason == "NO_POOL_FOR_MODEL"
    finally:
        for i in range(20):
            await bus.workers.delete(f"r{i}")
        await registry.stop()
        await bus.close()
