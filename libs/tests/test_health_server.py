"""Health follows the backends, and the bus heals after nats-py gave up (scribe_libs.server, .bus).

Real ``nats-server -js`` (and a moto S3 server) on loopback, each test with its own, since the
tests stop them. No fixed sleeps: health is watched, conditions are polled against a deadline.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scribe_harness import MotoServer, NatsServer

from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings, ServiceSettings
from scribe_libs.objectstore import StoreSettings, open_store
from scribe_libs.server import start_grpc_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _settings() -> ServiceSettings:
    return ServiceSettings(host="127.0.0.1", port=0, auth={"enabled": False})


async def wait_health(port: int, wanted: int, timeout: float = 30.0) -> float:
    """Watch health at ``port`` until it reports ``wanted``; returns the seconds it took."""
    start = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def watch() -> None:
            async for reply in stub.Watch(health_pb2.HealthCheckRequest()):
                if reply.status == wanted:
                    return

        await asyncio.wait_for(watch(), timeout)
    return time.monotonic() - start


async def eventually(check, timeout: float, what: str):  # noqa: ANN001, ANN201 - an async callable and its value
    """Await ``check()`` every 0.2 s until it returns without raising; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except Exception as exc:  # noqa: BLE001 - not yet
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {exc!r}") from exc
        await asyncio.sleep(0.2)


@pytest.fixture
def nats_server(tmp_path: Path):  # noqa: ANN201 - a NatsServer this test may stop
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


async def test_health_follows_the_broker(nats_server):
    bus = await busmod.connect(NatsSettings(url=nats_server.url), "health-test", retention_seconds=3600)
    server = await start_grpc_server(_settings(), lambda s: None, [])
    try:
        await server.set_serving(True)
        await wait_health(server.port, SERVING, timeout=5)
        nats_server.stop()
        down = await wait_health(server.port, NOT_SERVING, timeout=15)
        nats_server.start()
        up = await wait_health(server.port, SERVING, timeout=30)
        print(f"\nbroker down -> NOT_SERVING in {down:.2f} s; restarted -> SERVING in {up:.2f} s", file=sys.stderr)
        await bus.jobs.put("after", b"restart")  # and the bus works again
    finally:
        await server.stop()
        await bus.close()


async def test_the_bus_heals_after_the_client_closed_for_good(nats_server):
    # One reconnect attempt: nats-py gives up (CLOSED) soon after the server goes away.
    settings = NatsSettings(url=nats_server.url, max_reconnect_attempts=1, connect_timeout=1)
    bus = await busmod.connect(settings, "heal-test", retention_seconds=3600)
    jobs_kv = bus.jobs  # held the way JobStore and GlossaryStore hold their bucket
    js = bus.js
    sub = await busmod.pull_subscribe(
        js, busmod.jobs_subject("heal"), stream=busmod.JOBS_STREAM, durable=busmod.pool_consumer("heal"),
        ack_wait_seconds=5, max_deliver=5,
    )
    got: list[bytes] = []

    async def handle(msg) -> None:  # noqa: ANN001 - a nats Msg
        got.append(msg.data)
        await msg.ack()

    stopping = asyncio.Event()
    loop = asyncio.create_task(busmod.consume(sub, handle, stopping, "test"))
    server = await start_grpc_server(_settings(), lambda s: None, [])
    try:
        await server.set_serving(True)
        await js.publish(busmod.jobs_subject("heal"), b"before")
        await eventually(lambda: _assert(got == [b"before"]), 10, "the first message")
        old = bus.nc
        nats_server.stop()
        await eventually(lambda: _assert(old.is_closed), 30, "nats-py to close the connection for good")
        await wait_health(server.port, NOT_SERVING, timeout=10)
        nats_server.start()
        await wait_health(server.port, SERVING, timeout=60)
        # The handles taken before the outage work on the new connection.
        await eventually(lambda: jobs_kv.put("k", b"v"), 30, "the held KV handle to work again")
        assert (await bus.jobs.get("k")).value == b"v"
        await js.publish(busmod.jobs_subject("heal"), b"after")
        await eventually(lambda: _assert(got == [b"before", b"after"]), 30, "the consume loop to take new work")
        assert not loop.done()
    finally:
        stopping.set()
        await asyncio.wait_for(loop, 10)
        await server.stop()
        await bus.close()


async def _assert(condition: bool) -> None:
    assert condition


# --- object store --------------------------------------------------------------------------------


@pytest.fixture
def moto(tmp_path: Path) -> AsyncIterator[MotoServer]:
    server = MotoServer(tmp_path / "moto")  # restarts on the same port
    server.start()
    yield server
    server.stop()


async def test_health_follows_the_object_store(moto):
    store = open_store(StoreSettings(kind="s3", endpoint=f"127.0.0.1:{moto.port}", access_key="test",
                                     secret_key="test", region="us-east-1"))  # type: ignore[arg-type]
    await store.ensure_bucket("health-probe")
    server = await start_grpc_server(_settings(), lambda s: None, [])
    try:
        await server.set_serving(True)
        await wait_health(server.port, SERVING, timeout=5)
        moto.stop()
        down = await wait_health(server.port, NOT_SERVING, timeout=30)
        moto.start()
        up = await wait_health(server.port, SERVING, timeout=30)
        print(f"\nstore down -> NOT_SERVING in {down:.2f} s; back -> SERVING in {up:.2f} s", file=sys.stderr)
    finally:
        await server.stop()
