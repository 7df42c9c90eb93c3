"""Per-key request quota: a token bucket per customer key (scribe_libs.auth.KeyRateLimiter)."""

from __future__ import annotations

import grpc
import pytest

from scribe_libs.auth import KeyRateLimiter, Principal
from scribe_libs.errors import ResourceExhausted

ALICE = Principal("alice-1", "alice", frozenset({"jobs:read"}))
BOB = Principal("bob-1", "bob", frozenset({"jobs:read"}))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_then_its_rate_and_others_are_untouched():
    clock = Clock()
    limiter = KeyRateLimiter(rate=10, burst=5, clock=clock)
    for _ in range(5):
        limiter.take(ALICE)
    with pytest.raises(ResourceExhausted) as refused:
        limiter.take(ALICE)
    assert refused.value.reason == "KEY_RATE_LIMITED" and refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.retry_after == pytest.approx(0.1, abs=1e-6)
    for _ in range(5):
        limiter.take(BOB)  # another tenant is not slowed
    clock.now += 0.1
    limiter.take(ALICE)  # one token back after 1/rate seconds
    with pytest.raises(ResourceExhausted):
        limiter.take(ALICE)


def test_admin_and_service_keys_and_a_zero_rate_are_not_limited():
    limiter = KeyRateLimiter(rate=1, burst=1, clock=Clock())
    for _ in range(50):
        limiter.take(Principal("ops", "ops", frozenset({"admin"})))
        limiter.take(Principal("gw", "stream-gateway", frozenset({"internal"})))
    off = KeyRateLimiter(rate=0, burst=1, clock=Clock())
    for _ in range(50):
        off.take(ALICE)


def test_idle_buckets_are_dropped():
    clock = Clock()
    limiter = KeyRateLimiter(rate=1, burst=1, clock=clock)
    for i in range(1000):
        limiter.take(Principal(f"k{i}", "o", frozenset({"jobs:read"})))
    clock.now += 61
    limiter.take(ALICE)
    assert len(limiter._buckets) == 1
