"""The stream gateway's per-key session quota (WorkerPool.admit), with a stubbed worker list."""

from __future__ import annotations

import asyncio

import pytest

from scribe.v1 import transcriber_pb2
from scribe_libs import auth
from scribe_libs.errors import ResourceExhausted
from scribe_stream_gateway.config import Settings
from scribe_stream_gateway.workers import WorkerPool

ALICE = auth.Principal("alice-key", "alice", frozenset({"stream"}))
BOB = auth.Principal("bob-key", "bob", frozenset({"stream"}))
ADMIN = auth.Principal("ops", "ops", frozenset({"admin"}))


def pool(**settings) -> WorkerPool:
    workers = WorkerPool(None, Settings(retry_after_seconds=3.0, **settings))  # type: ignore[arg-type]
    profile = transcriber_pb2.WorkerProfile(worker_id="w1", endpoint="127.0.0.1:1", realtime_capacity=100,
                                            models_loaded=["tiny.en"])

    async def profiles(refresh: bool = False):
        return [profile]

    workers.profiles = profiles  # type: ignore[method-assign]
    return workers


def admit_as(workers: WorkerPool, principal: auth.Principal):
    async def run():
        auth._current.set(principal)  # what AuthInterceptor does for the RPC's task
        return await workers.admit("", 1)

    return asyncio.run(run())


def test_one_key_cannot_take_more_than_its_quota():
    workers = pool(max_sessions_per_key=2)
    held = [admit_as(workers, ALICE), admit_as(workers, ALICE)]
    with pytest.raises(ResourceExhausted) as caught:
        admit_as(workers, ALICE)
    assert caught.value.reason == "KEY_SESSION_QUOTA"
    assert caught.value.retry_after == 3.0
    # Other callers are unaffected; admin keys are exempt.
    admit_as(workers, BOB)
    for _ in range(5):
        admit_as(workers, ADMIN)
    # A released session frees its place in the quota.
    workers.release(held[0])
    assert workers.sessions_of("alice-key") == 1
    admit_as(workers, ALICE)


def test_zero_disables_the_per_key_cap():
    workers = pool(max_sessions_per_key=0)
    for _ in range(10):
        admit_as(workers, ALICE)


def test_retry_info_is_sent():
    workers = pool(max_sessions_per_key=1)
    admit_as(workers, ALICE)
    with pytest.raises(ResourceExhausted) as caught:
        admit_as(workers, ALICE)
    assert any("RetryInfo" in type(d).__name__ for d in caught.value.details())
