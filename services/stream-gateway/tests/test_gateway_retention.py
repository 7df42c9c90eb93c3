"""The gateway declares the job bucket with the deployment's retention, like every service.

Before: it connected without the setting, so each gateway start reset the ``scribe_jobs`` TTL to
7 days whatever ``retentionDays`` the chart set, until the next ingest start.
"""

from __future__ import annotations

import nats

from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_stream_gateway.config import Settings
from scribe_stream_gateway.servicer import create_server

DAY = 86400.0


async def _ttl(nats_url: str) -> float:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(f"KV_{busmod.JOBS_BUCKET}")
        return float(info.config.max_age)
    finally:
        await nc.close()


async def test_gateway_start_keeps_the_configured_retention(nats_url, tmp_path):
    other = await busmod.connect(NatsSettings(url=nats_url), "ingest-like", retention_seconds=2 * DAY)
    await other.close()
    assert await _ttl(nats_url) == 2 * DAY
    settings = Settings(
        port=0, nats={"url": nats_url}, store={"kind": "local", "root": str(tmp_path / "objects")},
        retention_days=2,
    )
    server = await create_server(settings)
    try:
        assert await _ttl(nats_url) == 2 * DAY
    finally:
        await server.stop()
