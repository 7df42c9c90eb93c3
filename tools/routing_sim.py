"""Routing simulation: jobs of known durations routed over three pools of recorded profiles.

Simulated time, no processes. Each pool drains its backlog as a fluid: its workers that are
still alive process ``alive / rtf`` audio seconds per second. Every live worker rewrites its
profile every ``heartbeat`` seconds; a pool whose workers die at ``stop_at`` keeps its last
profiles, which the router drops once older than ``ttl``. Each job is routed with
``scribe_libs.scheduler.choose_pool`` from the router's view (profiles within the TTL, backlogs).

Throughput per worker (issue 11): for each recorded GPU profile (scribe_libs/device_facts) the
worker's concurrent jobs are the batch capacity of the decision a transcriber makes there
(``scribe_libs.devices.decide`` at the transcriber's default batch size,
``scribe_libs.devices.job_slots``), and one worker
drains the same job mix with 1 slot and with that many (processor sharing, see
:func:`drain_one_worker`); the table gives audio hours per hour and jobs per hour per worker.

Decision cost (issue 11): 10 pools with 10 and with 1,000 live workers in a
:class:`scribe_libs.registry.WorkerRegistry` (running totals per pool, updated per profile write),
each routing decision timed (``scheduler.pool_views`` + ``choose_pool``, what
``scheduler.route`` does after its one sync request); side by side with the same decisions built
from the profile list each time (``pools_from``, O(workers)). Target: 1,000 workers within 2x of 10.

Run: ``PYTHONPATH=libs python tools/routing_sim.py [--jobs 300] [--seed 7]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
from dataclasses import dataclass, field

from scribe.v1 import transcriber_pb2
from scribe_libs.devices import decide, load_recorded
from scribe_libs.errors import FailedPrecondition
from scribe_libs.registry import WorkerRegistry
from scribe_libs.scheduler import choose_pool, pool_views, pools_from


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


# ---------------------------------------------------------------------------------------------
# Throughput per worker with concurrent jobs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceModel:
    """How fast one worker on a recorded device runs jobs.

    Attributes:
        facts: Name in scribe_libs/device_facts.
        rtf_alone: Real-time factor of one large-v3 batch-8 job alone on the device. ASSUMED
            (not measured here, no GPU): the T4 and A100 figures are the pools' above; the others
            scaled from them.
        absorbs: Concurrent jobs the device runs before each job slows down (a job alone
            leaves the rest of the device idle). MODEL: the smaller of the card's fp16 tensor
            TFLOPS and memory bandwidth, each as a ratio to the T4's (65 TFLOPS, 320 GB/s; vendor
            spec sheets: L4 121/300, A100-40GB 312/1555, A100-80GB 312/2039, H100 SXM 989/3350),
            i.e. a batch-8 large-v3 job is assumed to saturate a T4.
    """

    facts: str
    rtf_alone: float
    absorbs: float
    models: tuple[str, ...] = ("large-v3", "large-v3-turbo")
    compute_type: str = "auto"


DEVICE_MODELS = (
    DeviceModel("gtx-1050", 0.35, 1.0),
    DeviceModel("t4", 0.08, 1.0),
    DeviceModel("l4", 0.07, 1.0),
    DeviceModel("a100-40gb", 0.03, 4.8),
    DeviceModel("a100-80gb", 0.03, 4.8),
    DeviceModel("h100-80gb", 0.02, 10.5),
    DeviceModel("h100-80gb", 0.02, 10.5, compute_type="int8"),
    DeviceModel("cpu-only", 0.6, 1.0, models=("base",)),
)
BATCH_SIZE = 8


def slots_for(model: DeviceModel, batch_size: int = BATCH_SIZE) -> int:
    """The transcriber's concurrent jobs on this device: the real decision's ``batch_capacity``."""
    decision = decide(load_recorded(model.facts), list(model.models), model.compute_type, batch_size=batch_size)
    return decision.batch_capacity


def drain_one_worker(audio_seconds: list[float], slots: int, rtf_alone: float, absorbs: float) -> tuple[float, float]:
    """Simulate one worker draining ``audio_seconds`` (all queued at 0), in order, ``slots`` at once.

    Processor sharing: with k jobs in hand each advances at ``min(1, absorbs / k) / rtf_alone``
    audio seconds per second, so the device's throughput is ``min(k, absorbs) / rtf_alone``.

    Returns:
        (makespan seconds, mean seconds from a job's start to its end).
    """
    queue = list(audio_seconds)
    running: list[list[float]] = []  # [remaining audio s, start time]
    now, spans = 0.0, []
    while queue or running:
        while queue and len(running) < slots:
            running.append([queue.pop(0), now])
        rate = min(1.0, absorbs / len(running)) / rtf_alone
        step = min(r[0] for r in running) / rate
        now += step
        for r in running:
            r[0] -= step * rate
        for r in [r for r in running if r[0] <= 1e-9]:
            spans.append(now - r[1])
            running.remove(r)
    return now, statistics.fmean(spans)


def throughput_table(jobs: list[Job], models: tuple[DeviceModel, ...] = DEVICE_MODELS) -> str:
    """Per recorded device: slots, and one worker's throughput on ``jobs``' durations with 1 slot vs its slots."""
    audio = [j.audio_seconds for j in jobs]
    hours = sum(audio) / 3600
    lines = [
        f"throughput per worker: {len(jobs)} jobs, {hours:.1f} audio h queued at once; large-v3 batch {BATCH_SIZE} "
        "(cpu: base); rtf and absorbs are assumptions (see DeviceModel)",
        f"{'device':<16}{'ct':>9}{'slots':>6}{'absorbs':>8}{'rtf 1':>7}"
        f"{'audio h/h 1':>12}{'audio h/h n':>12}{'jobs/h 1':>10}{'jobs/h n':>10}{'x':>6}{'job s 1':>9}{'job s n':>9}",
    ]
    for model in models:
        decision = decide(load_recorded(model.facts), list(model.models), model.compute_type)
        n = slots_for(model)
        one, one_span = drain_one_worker(audio, 1, model.rtf_alone, model.absorbs)
        many, many_span = drain_one_worker(audio, n, model.rtf_alone, model.absorbs)
        lines.append(
            f"{model.facts:<16}{decision.compute_type_effective:>9}{n:>6}{model.absorbs:>8.1f}{model.rtf_alone:>7.2f}"
            f"{hours / (one / 3600):>12.1f}{hours / (many / 3600):>12.1f}"
            f"{len(jobs) / (one / 3600):>10.0f}{len(jobs) / (many / 3600):>10.0f}{one / many:>6.2f}"
            f"{one_span:>9.1f}{many_span:>9.1f}"
        )
    lines.append("job s: mean seconds a job takes once started (each job is slower when it shares the device)")
    return "\n".join(lines)


def pools_with_slots(pools: tuple[PoolSpec, ...] = POOLS) -> tuple[PoolSpec, ...]:
    """The pools with each worker running its slots (a100: a100-80gb, t4: t4, cpu: cpu-only).

    The RTF a worker advertises becomes ``rtf / min(slots, absorbs)``: the worker loop divides
    a job's RTF by the jobs that shared the device meanwhile.
    """
    by_gpu = {"NVIDIA A100-SXM4-80GB": "a100-80gb", "Tesla T4": "t4", "": "cpu-only"}
    models = {m.facts: m for m in DEVICE_MODELS if m.compute_type == "auto"}
    out = []
    for pool in pools:
        model = models[by_gpu[pool.gpu_name]]
        out.append(dataclasses.replace(pool, rtf=round(pool.rtf / min(slots_for(model), model.absorbs), 4)))
    return tuple(out)


def decision_cost(workers: int, pools: int = 10, decisions: int = 2000, seed: int = 3) -> tuple[float, float, float]:
    """(µs per decision from the registry, µs per decision from the profile list, µs per profile write).

    ``workers`` live workers spread over ``pools`` pools (RTFs 0.02-0.6, models base/large-v3);
    between decisions one worker's heartbeat is applied (as the KV watch would), so the registry
    works as it does in a service. Times are the median of 5 rounds of ``decisions`` decisions.
    """
    import time as _time

    rng = random.Random(seed)
    now = 1_000_000.0
    profiles = []
    for i in range(workers):
        pool = f"pool{i % pools}"
        profile = transcriber_pb2.WorkerProfile(
            worker_id=f"w{i}", pool=pool, models_loaded=["base", "large-v3"] if i % 3 else ["base"],
            real_time_factor=0.02 + (i % pools) * 0.06,
        )
        profile.update_time.FromNanoseconds(int(now * 1e9))
        profiles.append(profile)
    registry = WorkerRegistry(clock=lambda: now)
    for profile in profiles:
        registry.apply(profile.worker_id, profile)
    configured = {f"pool{p}": ["base"] for p in range(pools)}
    backlog = {f"pool{p}": rng.uniform(0, 3600) for p in range(pools)}
    jobs = [(rng.choice(["base", "large-v3"]), rng.uniform(5, 600)) for _ in range(decisions)]

    def rounds(decide_one) -> float:  # noqa: ANN001 - (model, seconds) -> None
        times = []
        for _ in range(5):
            started = _time.perf_counter()
            for k, (model, seconds) in enumerate(jobs):
                beat = profiles[k % workers]
                registry.apply(beat.worker_id, beat)  # a heartbeat between decisions (both sides)
                decide_one(model, seconds)
            times.append((_time.perf_counter() - started) / len(jobs))
        return statistics.median(times) * 1e6

    def from_registry(model: str, seconds: float) -> None:
        choose_pool(model, pool_views(registry, configured, DEFAULT_RTF, backlog), seconds)

    def from_list(model: str, seconds: float) -> None:
        choose_pool(model, pools_from(profiles, configured, now, TTL_SECONDS, DEFAULT_RTF, backlog), seconds)

    started = _time.perf_counter()
    for profile in profiles:
        registry.apply(profile.worker_id, profile)
    per_write = (_time.perf_counter() - started) / workers * 1e6
    return rounds(from_registry), rounds(from_list), per_write


def decision_cost_table() -> str:
    """Decision cost at 10 and 1,000 workers in 10 pools, from the registry and from the list."""
    small, large = decision_cost(10), decision_cost(1000, decisions=400)
    lines = [
        "routing decision cost, 10 pools (median of 5 rounds; a heartbeat applied between decisions):",
        f"{'workers':>8} {'registry us':>12} {'list us':>10} {'write us':>9}",
        f"{10:>8} {small[0]:>12.1f} {small[1]:>10.1f} {small[2]:>9.2f}",
        f"{1000:>8} {large[0]:>12.1f} {large[1]:>10.1f} {large[2]:>9.2f}",
        f"ratio 1000/10: registry {large[0] / small[0]:.2f} (target <= 2), list {large[1] / small[1]:.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--horizon", type=float, default=1200.0, help="seconds over which jobs arrive")
    args = parser.parse_args()
    jobs = make_jobs(args.jobs, args.seed, args.horizon)
    print(table(simulate(jobs)))
    print()
    print(throughput_table(jobs))
    print()
    with_slots = pools_with_slots()
    print("the same routing with every worker running its slots (worker RTF = rtf / min(slots, absorbs)):")
    print(table(simulate(jobs, with_slots), with_slots))
    print()
    print(decision_cost_table())


if __name__ == "__main__":
    main()
