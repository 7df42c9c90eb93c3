"""Routing simulation: jobs of known durations routed over three pools of recorded profiles.

Simulated time, no processes. Each pool drains its backlog as a fluid: its workers that are
still alive process ``alive / rtf`` audio seconds per second. Every live worker rewrites its
profile every ``heartbeat`` seconds; a pool whose workers die at ``stop_at`` keeps its last
profiles, which the router drops once older than ``ttl``. Each job is routed with
``scribe_libs.scheduler.choose_pool`` from the router's view (profiles within the TTL, backlogs).

Run: ``PYTHONPATH=libs python tools/routing_sim.py [--jobs 300] [--seed 7]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass, field

from scribe.v1 import transcriber_pb2
from scribe_libs.errors import FailedPrecondition
from scribe_libs.scheduler import choose_pool, pools_from


@dataclass(frozen=True)
class PoolSpec:
    """A pool of identical workers (as their profiles record them)."""

    name: str
    workers: int
    rtf: float
    models: tuple[str, ...]
    gpu_name: str
    stop_at: float | None = None  # when all its workers die (stop heart-beating), sim seconds


@dataclass(frozen=True)
class Job:
    """A job: arrival (sim seconds), requested model, audio duration (seconds)."""

    job_id: int
    arrival: float
    model: str
    audio_seconds: float


@dataclass
class Routed:
    """What happened to one job; ``backlogs`` is the router's input when the job arrived."""

    job: Job
    pool: str | None
    refused_reason: str = ""
    expected_wait_seconds: float = 0.0
    expected_completion_seconds: float = 0.0
    backlogs: dict[str, float] = field(default_factory=dict)


POOLS = (
    PoolSpec("a100", 2, 0.03, ("large-v3", "large-v3-turbo"), "NVIDIA A100-SXM4-80GB", stop_at=600.0),
    PoolSpec("t4", 3, 0.08, ("large-v3", "large-v3-turbo"), "Tesla T4"),
    PoolSpec("cpu", 2, 0.6, ("large-v3-turbo", "small", "base"), ""),
)
MODEL_MIX = (("large-v3", 0.4), ("large-v3-turbo", 0.4), ("small", 0.08), ("base", 0.08), ("medium.en", 0.04))
TTL_SECONDS = 15.0
HEARTBEAT_SECONDS = 5.0
DEFAULT_RTF = 1.0


def make_jobs(count: int = 300, seed: int = 7, horizon: float = 1200.0) -> list[Job]:
    """``count`` jobs with Poisson arrivals over ``horizon`` s and log-uniform 5 s - 30 min audio."""
    rng = random.Random(seed)
    models, weights = zip(*MODEL_MIX, strict=True)
    t, jobs = 0.0, []
    for job_id in range(count):
        t += rng.expovariate(count / horizon)
        seconds = round(math.exp(rng.uniform(math.log(5), math.log(1800))), 1)
        jobs.append(Job(job_id, round(t, 3), rng.choices(models, weights)[0], seconds))
    return jobs


def profiles_at(pools: tuple[PoolSpec, ...], now: float) -> list[transcriber_pb2.WorkerProfile]:
    """The bucket's content at ``now``: each worker's last heartbeat (on the heartbeat grid)."""
    out = []
    for spec in pools:
        last = min(now, spec.stop_at) if spec.stop_at is not None else now
        beat = math.floor(last / HEARTBEAT_SECONDS) * HEARTBEAT_SECONDS
        for i in range(spec.workers):
            profile = transcriber_pb2.WorkerProfile(
                worker_id=f"{spec.name}-{i}",
                pool=spec.name,
                device="cpu" if not spec.gpu_name else "cuda",
                gpu_name=spec.gpu_name,
                models_loaded=list(spec.models),
                real_time_factor=spec.rtf,
            )
            profile.update_time.FromNanoseconds(int(beat * 1e9))
            out.append(profile)
    return out


def simulate(
    jobs: list[Job],
    pools: tuple[PoolSpec, ...] = POOLS,
    configured: dict[str, list[str]] | None = None,
) -> list[Routed]:
    """Route every job in arrival order; returns one record per job."""
    configured = {p.name: list(p.models) for p in pools} if configured is None else configured
    backlog = {p.name: 0.0 for p in pools}
    now, out = 0.0, []
    for job in sorted(jobs, key=lambda j: j.arrival):
        for spec in pools:  # drain backlogs from `now` to the arrival, alive workers only
            alive_until = job.arrival if spec.stop_at is None else min(job.arrival, spec.stop_at)
            drained = max(0.0, alive_until - now) * spec.workers / spec.rtf
            backlog[spec.name] = max(0.0, backlog[spec.name] - drained)
        now = job.arrival
        views = pools_from(profiles_at(pools, now), configured, now, TTL_SECONDS, DEFAULT_RTF, backlog)
        record = Routed(job, None, backlogs=dict(backlog))
        try:
            decision = choose_pool(job.model, views, job.audio_seconds)
        except FailedPrecondition as exc:
            record.refused_reason = exc.reason
        else:
            record.pool = decision.pool
            record.expected_wait_seconds = decision.expected_wait_seconds
            record.expected_completion_seconds = decision.expected_completion_seconds
            backlog[decision.pool] += job.audio_seconds
        out.append(record)
    return out


def table(records: list[Routed], pools: tuple[PoolSpec, ...] = POOLS) -> str:
    """Per-pool figures: jobs, audio, expected wait/completion, jobs after its workers died."""
    lines = [
        f"{'pool':<8}{'workers':>8}{'rtf':>7}{'jobs':>6}{'audio h':>9}{'wait mean s':>13}{'wait p95 s':>12}"
        f"{'done mean s':>13}{'after death':>13}",
    ]
    for spec in pools:
        mine = [r for r in records if r.pool == spec.name]
        waits = sorted(r.expected_wait_seconds for r in mine) or [0.0]
        done = [r.expected_completion_seconds for r in mine] or [0.0]
        after = "-" if spec.stop_at is None else str(sum(r.job.arrival > spec.stop_at for r in mine))
        lines.append(
            f"{spec.name:<8}{spec.workers:>8}{spec.rtf:>7.2f}{len(mine):>6}"
            f"{sum(r.job.audio_seconds for r in mine) / 3600:>9.2f}{statistics.fmean(waits):>13.1f}"
            f"{waits[int(0.95 * (len(waits) - 1))]:>12.1f}{statistics.fmean(done):>13.1f}{after:>13}"
        )
    refused = [r for r in records if r.pool is None]
    reasons = sorted({r.refused_reason for r in refused})
    lines.append(f"refused: {len(refused)} ({', '.join(reasons) or 'none'})")
    for spec in pools:
        if spec.stop_at is not None:
            late = [r.job.arrival for r in records if r.pool == spec.name and r.job.arrival > spec.stop_at]
            lines.append(
                f"{spec.name} stopped heart-beating at {spec.stop_at:.0f} s (TTL {TTL_SECONDS:.0f} s): "
                f"last job routed to it arrived at {max(late, default=spec.stop_at):.1f} s"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--horizon", type=float, default=1200.0, help="seconds over which jobs arrive")
    args = parser.parse_args()
    print(table(simulate(make_jobs(args.jobs, args.seed, args.horizon))))


if __name__ == "__main__":
    main()
