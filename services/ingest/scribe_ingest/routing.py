"""Which pool gets a batch job: the routing library (scribe_libs.scheduler) on live inputs.

Inputs: the live worker profiles (``scribe_workers``: a profile older than the bucket's TTL is
gone, and :func:`scribe_libs.scheduler.pools_from` drops any older than
``WORKER_TTL_SECONDS`` by its ``update_time`` too), the configured pools (``Settings.pools``:
eligible even with no live worker, the job then waits in that pool's queue), and each pool's
backlog in audio seconds (waiting + running messages of ``scribe.jobs.<pool>``,
:func:`scribe_libs.queue.queue_view`). :func:`scribe_libs.scheduler.choose_pool` picks the pool
with the least expected completion (backlog x pool RTF / live workers + the job's own audio x RTF).
"""

from __future__ import annotations

import logging
import time

from scribe_ingest.config import Settings
from scribe_libs.bus import WORKER_TTL_SECONDS, Bus
from scribe_libs.queue import DEFAULT_RTF, live_profiles, queue_view
from scribe_libs.scheduler import choose_pool, pools_from

log = logging.getLogger(__name__)


async def route(bus: Bus, settings: Settings, model: str, audio_seconds: float = 0.0) -> str:
    """The pool that can run ``model`` soonest.

    Args:
        bus: Connected bus.
        settings: ``pools`` (configured pool -> models).
        model: Requested model (aliases such as ``"turbo"`` resolved).
        audio_seconds: The job's audio duration when known (0 ranks by expected wait alone).

    Raises:
        FailedPrecondition: ``NO_POOL_FOR_MODEL`` when no live or configured pool serves it
            (the message lists which pools serve which models).
    """
    profiles = await live_profiles(bus.workers)
    pools = pools_from(profiles, settings.pools, time.time(), WORKER_TTL_SECONDS, DEFAULT_RTF)
    backlog: dict[str, float] = {}
    for pool in pools:
        view = await queue_view(bus, pool.name)
        backlog[pool.name] = view.audio_seconds_ahead + view.running_audio_seconds
    pools = [pool.with_backlog(backlog[pool.name]) for pool in pools]
    decision = choose_pool(model, pools, audio_seconds)
    log.info("job routed", extra={"model": model, "pool": decision.pool, "reason": decision.reason})
    return decision.pool
