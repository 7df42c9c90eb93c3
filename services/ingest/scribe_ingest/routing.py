"""Which pool gets a batch job.

Uses the live worker profiles (``scribe_workers``) and the configured pools. The choice among
pools that can run the model is the routing library's (least expected wait); this module only
gathers its inputs.
"""

from __future__ import annotations

from scribe_ingest.config import Settings
from scribe_libs.bus import Bus
from scribe_libs.errors import FailedPrecondition
from scribe_libs.queue import live_profiles, pool_rtf, queue_view


async def route(bus: Bus, settings: Settings, model: str) -> str:
    """The pool that can run ``model`` with the least expected wait.

    Expected wait = backlog audio seconds x pool RTF / live workers (a configured pool with no
    live worker counts as one worker).

    Raises:
        FailedPrecondition: ``NO_POOL_FOR_MODEL`` when no live or configured pool serves it.
    """
    profiles = await live_profiles(bus.workers)
    serving: dict[str, list] = {}
    for profile in profiles:
        if model in profile.models_loaded:
            serving.setdefault(profile.pool, []).append(profile)
    for pool, models in settings.pools.items():
        if model in models:
            serving.setdefault(pool, [])
    if not serving:
        offered = {p.pool: list(p.models_loaded) for p in profiles}
        offered.update({k: v for k, v in settings.pools.items() if k not in offered})
        raise FailedPrecondition(
            "NO_POOL_FOR_MODEL",
            f"no pool serves model {model!r}; pools: "
            + (", ".join(f"{k}: {', '.join(v)}" for k, v in sorted(offered.items())) or "none"),
            {"model": model},
        )
    best: tuple[float, str] | None = None
    for pool, workers in sorted(serving.items()):
        view = await queue_view(bus, pool)
        backlog = view.audio_seconds_ahead + view.running_audio_seconds
        wait = backlog * pool_rtf(workers) / max(len(workers), 1)
        if best is None or wait < best[0]:
            best = (wait, pool)
    assert best is not None
    return best[1]
