"""Per-pool queue counters (scribe_libs.queue.PoolLedger): tickets, position, backlog, healing,
against a real ``nats-server -js``; and the JobStore writes that count a job out of its pool."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from scribe.v1 import jobs_pb2
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.jobs import JobStore, new_job_id
from scribe_libs.queue import PoolLedger, queue_view

S = jobs_pb2.JobState
_pools = itertools.count()


@pytest.fixture
async def bus(nats_url):
    bus = await busmod.connect(NatsSettings(url=nats_url), "test-ledger", retention_seconds=3600)
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def pool():
    return f"p{next(_pools)}"


async def _enqueue(bus, ledger, pool, audio):
    ticket = await ledger.enqueue(pool, audio)
    task = jobs_pb2.TranscribeTask(job_id=new_job_id(), audio_duration=audio, queue_ticket=ticket)
    await bus.publish(busmod.jobs_subject(pool), task)
    return ticket


async def test_tickets_are_dense_with_prefix_sums_across_two_ingest_replicas(bus, pool):
    a, b = PoolLedger(bus), PoolLedger(bus)  # two processes' ledgers: CAS decides between them
    audio = {i: float(i) for i in range(1, 41)}
    tickets = await asyncio.gather(*((a if i % 2 else b).enqueue(pool, audio[i]) for i in audio))
    by_number = sorted(tickets, key=lambda t: t.number)
    assert [t.number for t in by_number] == list(range(1, 41))
    # Each ticket's audio_seconds_before is the audio of exactly the tickets numbered before it.
    seconds = {t.number: audio[i] for t, i in zip(tickets, audio, strict=True)}
    for t in by_number:
        assert t.audio_seconds_before == pytest.approx(sum(seconds[n] for n in range(1, t.number)))
    assert (await a.counters(pool)).enqueued.audio_seconds == pytest.approx(sum(audio.values()))


async def test_position_ahead_and_running_follow_the_queue(bus, pool):
    ledger = PoolLedger(bus)
    sub = await busmod.pull_subscribe(
        bus.js, busmod.jobs_subject(pool), stream=busmod.JOBS_STREAM, durable=busmod.pool_consumer(pool),
        ack_wait_seconds=60.0, max_deliver=3, max_ack_pending=-1,
    )
    tickets = [await _enqueue(bus, ledger, pool, audio) for audio in (10.0, 20.0, 30.0, 40.0, 50.0)]
    views = [await queue_view(bus, ledger, pool, t) for t in tickets]
    assert [v.position for v in views] == [0, 1, 2, 3, 4]
    assert [v.audio_seconds_ahead for v in views] == [0.0, 10.0, 30.0, 60.0, 100.0]
    assert views[0].depth == 5 and views[0].running == 0

    # A worker takes two jobs: the rest move up, the two count as running.
    msgs = await sub.fetch(2, timeout=5)
    for msg in msgs:
        task = busmod.parse(jobs_pb2.TranscribeTask, msg.data)
        await ledger.started(pool, task.queue_ticket, task.audio_duration)
    view = await queue_view(bus, ledger, pool, tickets[4])
    assert (view.position, view.audio_seconds_ahead) == (2, 70.0)
    assert (view.running, view.running_audio_seconds, view.depth) == (2, 30.0, 3)
    # One of them ends: it leaves the backlog.
    await msgs[0].ack()
    await ledger.done(pool, 10.0)
    view = await queue_view(bus, ledger, pool, tickets[4])
    assert (view.running, view.running_audio_seconds) == (1, 20.0)
    assert await ledger.backlog_audio_seconds(pool) == pytest.approx(20.0 + 30.0 + 40.0 + 50.0)
    await sub.unsubscribe()


async def test_queue_view_costs_the_same_at_ten_and_at_two_thousand_queued_jobs(bus, pool, monkeypatch):
    ledger = PoolLedger(bus)
    requests = 0
    real_request = bus.nc.request

    async def counting(*args, **kwargs):
        nonlocal requests
        requests += 1
        return await real_request(*args, **kwargs)

    async def cost(ticket):
        nonlocal requests
        requests = 0
        monkeypatch.setattr(bus.nc, "request", counting)
        try:
            view = await queue_view(bus, ledger, pool, ticket)
        finally:
            monkeypatch.setattr(bus.nc, "request", real_request)
        return requests, view

    tickets = [await _enqueue(bus, ledger, pool, 1.0) for _ in range(10)]
    small, view = await cost(tickets[-1])
    assert view.position == 9
    tickets += await asyncio.gather(*(_enqueue(bus, ledger, pool, 1.0) for _ in range(1990)))
    last = max(tickets, key=lambda t: t.number)
    large, view = await cost(last)
    assert view.position == 1999 and view.audio_seconds_ahead == pytest.approx(1999.0)
    assert small == large <= 5  # three counters and one consumer/stream info, whatever the depth


async def test_reconcile_heals_a_lost_done_once_the_pool_is_idle(bus, pool):
    ledger = PoolLedger(bus)
    sub = await busmod.pull_subscribe(
        bus.js, busmod.jobs_subject(pool), stream=busmod.JOBS_STREAM, durable=busmod.pool_consumer(pool),
        ack_wait_seconds=60.0, max_deliver=3, max_ack_pending=-1,
    )
    await _enqueue(bus, ledger, pool, 60.0)
    await _enqueue(bus, ledger, pool, 30.0)
    (msg,) = await sub.fetch(1, timeout=5)
    await ledger.started(pool, busmod.parse(jobs_pb2.TranscribeTask, msg.data).queue_ticket, 60.0)
    await msg.ack()  # the process "dies" before ledger.done: 60 s stay in the backlog
    assert not await ledger.reconcile(pool)  # not idle: one job still waits
    assert await ledger.backlog_audio_seconds(pool) == pytest.approx(90.0)
    (msg,) = await sub.fetch(1, timeout=5)
    await ledger.started(pool, busmod.parse(jobs_pb2.TranscribeTask, msg.data).queue_ticket, 30.0)
    await msg.ack()
    await ledger.done(pool, 30.0)
    assert await ledger.backlog_audio_seconds(pool) == pytest.approx(60.0)  # the drift
    assert await ledger.reconcile(pool)
    assert await ledger.backlog_audio_seconds(pool) == 0.0
    assert not await ledger.reconcile(pool)  # nothing left to heal
    await sub.unsubscribe()


async def test_a_job_leaves_its_pool_exactly_once_whatever_ends_it(bus, pool):
    ledger = PoolLedger(bus)
    store = JobStore(bus)

    async def queued(audio):
        job = jobs_pb2.Job(job_id=new_job_id(), state=S.JOB_STATE_QUEUED, pool=pool, audio_duration=audio)
        job.queue_ticket.CopyFrom(await ledger.enqueue(pool, audio))
        await store.create(job)
        return job.job_id

    decoded, cancelled, raced = await queued(100.0), await queued(10.0), await queued(1.0)
    await store.transition(decoded, S.JOB_STATE_RUNNING)
    await store.transition(decoded, S.JOB_STATE_RUNNING)  # a redelivery: still in the pool
    assert (await ledger.counters(pool)).done.count == 0
    await store.transition(decoded, S.JOB_STATE_POSTPROCESSING)
    await store.transition(decoded, S.JOB_STATE_POSTPROCESSING)  # a re-sent hand-off: no second count
    await store.transition(decoded, S.JOB_STATE_COMPLETED)
    await store.transition(cancelled, S.JOB_STATE_CANCELLED)  # cancelled while queued
    # A cancel and a failure race for one running job: one of them ends it, it is counted once.
    await store.transition(raced, S.JOB_STATE_RUNNING)
    results = await asyncio.gather(
        store.fail(raced, "X", "failed"), store.transition(raced, S.JOB_STATE_CANCELLED), return_exceptions=True
    )
    assert any(not isinstance(r, Exception) for r in results)
    done = (await ledger.counters(pool)).done
    assert done.count == 3 and done.audio_seconds == pytest.approx(111.0)
    assert await ledger.backlog_audio_seconds(pool) == 0.0
