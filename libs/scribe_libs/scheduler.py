"""Routing of batch jobs to pools (DESIGN.md, "Device profiles and pools"). A library, no process.

Workers write their ``WorkerProfile`` to the ``scribe_workers`` bucket every few seconds; a
profile older than the TTL is a dead worker. :func:`pools_from` groups the live profiles (plus
the pools named in configuration, which stay eligible with no live worker: the job then waits in
its queue) into :class:`PoolView` s; :func:`choose_pool` sends a job to the pool that can run its
model and will finish it soonest.

Formulas (seconds; RTF = processing seconds / audio seconds, lower is faster):

* expected wait = backlog audio seconds x RTF / live workers: the pool's workers drain its
  queue in parallel. A pool with no live worker waits :data:`NO_LIVE_WORKER_WAIT_SECONDS` plus
  that, so it ranks after every live pool but keeps its order among dead ones.
* expected completion = expected wait + job audio seconds x RTF: the job itself runs on one
  worker. Pools are ranked by completion, then by name; with ``job_audio_seconds=0`` this is the
  ranking by expected wait alone.

The ETA a user is shown for a job already in a queue is :func:`scribe_libs.queue.eta_queued`
(and :func:`~scribe_libs.queue.eta_running`), from the queue itself rather than from a PoolView.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from scribe.v1 import transcriber_pb2
from scribe_libs.devices import canonical_model
from scribe_libs.errors import FailedPrecondition
from scribe_libs.queue import DEFAULT_RTF, PoolLedger
from scribe_libs.registry import WorkerRegistry

log = logging.getLogger(__name__)

#: Wait assumed for a configured pool with no live worker: larger than any real backlog.
NO_LIVE_WORKER_WAIT_SECONDS = 1e9


@dataclass(frozen=True)
class PoolView:
    """One pool as the router sees it at one moment.

    Attributes:
        name: Pool name (the ``scribe.jobs.<pool>`` subject suffix).
        models: Canonical model names the pool serves: configured ones plus those its live
            workers have loaded.
        live_count: Workers whose profile was updated within the TTL.
        rtf: Mean measured real-time factor of the live workers that have one (> 0), else the
            configured default.
        rtf_measured: Whether ``rtf`` comes from measurements.
        backlog_audio_seconds: Audio seconds queued or running in the pool (from the caller).
        configured: Named in configuration (eligible even with no live worker).
    """

    name: str
    models: frozenset[str]
    live_count: int = 0
    rtf: float = 1.0
    rtf_measured: bool = False
    backlog_audio_seconds: float = 0.0
    configured: bool = False

    def with_backlog(self, audio_seconds: float) -> PoolView:
        """A copy with another backlog."""
        return replace(self, backlog_audio_seconds=audio_seconds)


@dataclass(frozen=True)
class RoutingDecision:
    """Where a job goes.

    Attributes:
        pool: The chosen pool.
        expected_wait_seconds: Until a worker of the pool starts the job.
        expected_completion_seconds: Until the job's transcription ends (wait + own processing).
        reason: Human-readable why, naming the runner-up.
    """

    pool: str
    expected_wait_seconds: float
    expected_completion_seconds: float
    reason: str


def pool_views(
    registry: WorkerRegistry,
    configured: Mapping[str, Sequence[str]],
    default_rtf: float,
    backlog_audio_seconds: Mapping[str, float] | None = None,
) -> list[PoolView]:
    """The pools as the router sees them, from the registry's running totals: O(pools).

    Args:
        registry: Live workers by pool (:class:`scribe_libs.registry.WorkerRegistry`).
        configured: Pool name -> models it serves, from configuration.
        default_rtf: RTF of a pool none of whose live workers has measured one yet.
        backlog_audio_seconds: Pool name -> queued/running audio seconds (missing = 0).

    Returns:
        Pools sorted by name: every configured pool, and every pool with a live worker.
    """
    backlog = backlog_audio_seconds or {}
    out = []
    for name in sorted(set(configured) | set(registry.pool_names())):
        totals = registry.totals(name)
        models = {canonical_model(m) for m in configured.get(name, ())} | set(totals.models)
        out.append(
            PoolView(
                name=name,
                models=frozenset(models),
                live_count=totals.live,
                rtf=totals.rtf(default_rtf),
                rtf_measured=totals.rtf_count > 0,
                backlog_audio_seconds=float(backlog.get(name, 0.0)),
                configured=name in configured,
            )
        )
    return out


def pools_from(
    profiles: Iterable[transcriber_pb2.WorkerProfile],
    configured: Mapping[str, Sequence[str]],
    now: float,
    ttl_seconds: float,
    default_rtf: float,
    backlog_audio_seconds: Mapping[str, float] | None = None,
) -> list[PoolView]:
    """:func:`pool_views` of a list of profiles (stale ones, by ``update_time``, dropped).

    Args:
        profiles: Entries of the ``scribe_workers`` bucket.
        configured: Pool name -> models it serves, from configuration.
        now: Current time, Unix seconds.
        ttl_seconds: A profile whose ``update_time`` is older than this is a dead worker.
        default_rtf: RTF of a pool none of whose live workers has measured one yet.
        backlog_audio_seconds: Pool name -> queued/running audio seconds (missing = 0).
    """
    registry = WorkerRegistry(ttl_seconds=ttl_seconds, clock=lambda: now)
    for profile in profiles:
        registry.apply(profile.worker_id, profile)
    return pool_views(registry, configured, default_rtf, backlog_audio_seconds)


def expected_wait_seconds(backlog_audio_seconds: float, rtf: float, live_workers: int) -> float:
    """Seconds until a worker starts a job queued now: backlog x RTF / live workers.

    With no live worker: :data:`NO_LIVE_WORKER_WAIT_SECONDS` + backlog x RTF (finite, ordered).
    """
    drain = backlog_audio_seconds * rtf
    if live_workers <= 0:
        return NO_LIVE_WORKER_WAIT_SECONDS + drain
    return drain / live_workers


def _describe(pools: Sequence[PoolView]) -> str:
    parts = []
    for pool in pools:
        state = f"{pool.live_count} live" if pool.live_count else "configured, no live worker"
        parts.append(f"{pool.name} ({state}): {', '.join(sorted(pool.models)) or 'no models'}")
    return "; ".join(parts) or "no pools"


def choose_pool(model: str, pools: Sequence[PoolView], job_audio_seconds: float = 0.0) -> RoutingDecision:
    """The pool that can run ``model`` and is expected to finish the job soonest.

    Eligible: pools that serve the model and have a live worker or are configured. Ranked by
    expected completion (see the module docstring), ties broken by pool name.

    Args:
        model: Requested model (aliases such as ``"turbo"`` resolved).
        pools: From :func:`pools_from`.
        job_audio_seconds: The job's audio duration (0 ranks by expected wait alone).

    Raises:
        FailedPrecondition: reason ``NO_POOL_FOR_MODEL`` when no live or configured pool serves
            the model; the message lists which pools serve which models.
    """
    wanted = canonical_model(model)
    ranked = []
    for pool in pools:
        if wanted not in pool.models or not (pool.live_count or pool.configured):
            continue
        wait = expected_wait_seconds(pool.backlog_audio_seconds, pool.rtf, pool.live_count)
        ranked.append((wait + job_audio_seconds * pool.rtf, pool.name, wait, pool))
    if not ranked:
        raise FailedPrecondition(
            "NO_POOL_FOR_MODEL",
            f"no live or configured pool serves model {model!r}; pools: {_describe(pools)}",
            metadata={
                "model": model,
                "pools": ";".join(f"{p.name}={','.join(sorted(p.models))}" for p in pools),
            },
        )
    ranked.sort(key=lambda r: (r[0], r[1]))
    completion, name, wait, pool = ranked[0]
    reason = (
        f"{name}: expected wait {wait:.1f} s (backlog {pool.backlog_audio_seconds:.1f} s x RTF {pool.rtf:.3f} / "
        f"{pool.live_count} live), done in {completion:.1f} s"
    )
    if len(ranked) > 1:
        reason += f"; next best {ranked[1][1]} done in {ranked[1][0]:.1f} s"
    return RoutingDecision(pool=name, expected_wait_seconds=wait, expected_completion_seconds=completion, reason=reason)


async def route(
    registry: WorkerRegistry,
    ledger: PoolLedger,
    configured: Mapping[str, Sequence[str]],
    model: str,
    audio_seconds: float = 0.0,
    default_rtf: float = DEFAULT_RTF,
) -> RoutingDecision:
    """Route a batch job: :func:`choose_pool` on the live registry and the pools' ledgers.

    Cost: one registry sync (one request), then two counter reads per pool that serves the model
    (:meth:`scribe_libs.queue.PoolLedger.backlog_audio_seconds`): independent of the number of
    workers and of queued jobs.

    Args:
        registry: Live workers (started :class:`~scribe_libs.registry.WorkerRegistry`).
        ledger: The pools' queue counters.
        configured: Pool name -> models it serves (eligible with no live worker).
        model: Requested model (aliases such as ``"turbo"`` resolved).
        audio_seconds: The job's audio duration, seconds (0 when not known yet: ranks by wait).
        default_rtf: RTF of a pool that has not measured one.

    Raises:
        FailedPrecondition: ``NO_POOL_FOR_MODEL`` (see :func:`choose_pool`).
    """
    await registry.sync()
    wanted = canonical_model(model)
    pools = pool_views(registry, configured, default_rtf)
    backlog = {p.name: await ledger.backlog_audio_seconds(p.name) for p in pools if wanted in p.models}
    decision = choose_pool(model, [p.with_backlog(backlog.get(p.name, 0.0)) for p in pools], audio_seconds)
    log.info("job routed", extra={"model": model, "pool": decision.pool, "reason": decision.reason})
    return decision
