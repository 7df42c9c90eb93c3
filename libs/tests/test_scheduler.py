import importlib.util
import math
import sys
from pathlib import Path

import grpc
import pytest

from scribe.v1 import transcriber_pb2
from scribe_libs.errors import FailedPrecondition
from scribe_libs.scheduler import (
    NO_LIVE_WORKER_WAIT_SECONDS,
    PoolView,
    choose_pool,
    expected_wait_seconds,
    pools_from,
)

ROOT = Path(__file__).resolve().parents[2]


def load_sim():
    spec = importlib.util.spec_from_file_location("routing_sim", ROOT / "tools" / "routing_sim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def profile(worker_id, pool, models, rtf=0.0, updated=1000.0):
    p = transcriber_pb2.WorkerProfile(worker_id=worker_id, pool=pool, models_loaded=models, real_time_factor=rtf)
    p.update_time.FromNanoseconds(int(updated * 1e9))
    return p


def test_formulas():
    assert expected_wait_seconds(600.0, 0.1, 3) == pytest.approx(20.0)
    assert expected_wait_seconds(0.0, 0.1, 3) == 0.0
    assert expected_wait_seconds(600.0, 0.1, 0) == pytest.approx(NO_LIVE_WORKER_WAIT_SECONDS + 60.0)


def test_pools_from_keeps_live_profiles_averages_rtf_and_keeps_configured_pools():
    now = 1000.0
    profiles = [
        profile("a-0", "a100", ["large-v3", "turbo"], rtf=0.02, updated=now - 1),
        profile("a-1", "a100", ["large-v3", "large-v3-turbo"], rtf=0.04, updated=now - 14.9),
        profile("a-2", "a100", ["large-v3"], rtf=0.5, updated=now - 15.1),  # dead: past the TTL
        profile("c-0", "cpu", ["base"], rtf=0.0, updated=now),  # no RTF measured yet
        profile("x-0", "", ["tiny"], updated=0.0),  # never written an update time... and stale
    ]
    pools = pools_from(profiles, {"t4": ["large-v3-turbo"], "cpu": ["tiny.en"]}, now, 15.0, 0.7, {"a100": 30.0})
    by_name = {p.name: p for p in pools}
    assert [p.name for p in pools] == ["a100", "cpu", "t4"]
    a100 = by_name["a100"]
    assert a100.live_count == 2  # a-0 and a-1
    assert a100.rtf == pytest.approx(0.03) and a100.rtf_measured
    assert a100.models == {"large-v3", "large-v3-turbo"}
    assert a100.backlog_audio_seconds == 30.0 and not a100.configured
    cpu = by_name["cpu"]
    assert cpu.rtf == 0.7 and not cpu.rtf_measured
    assert cpu.models == {"base", "tiny.en"} and cpu.configured
    t4 = by_name["t4"]
    assert t4.live_count == 0 and t4.configured and t4.models == {"large-v3-turbo"}


def test_choose_pool_prefers_least_expected_wait_and_breaks_ties_by_name():
    pools = [
        PoolView("b", frozenset({"base"}), 1, rtf=0.5, backlog_audio_seconds=100.0),
        PoolView("a", frozenset({"base"}), 1, rtf=0.5, backlog_audio_seconds=100.0),
        PoolView("c", frozenset({"base"}), 1, rtf=0.5, backlog_audio_seconds=10.0),
    ]
    decision = choose_pool("base", pools, 0.0)
    assert decision.pool == "c" and decision.expected_wait_seconds == pytest.approx(5.0)
    assert "next best a" in decision.reason
    tie = choose_pool("base", pools[:2], 0.0)
    assert tie.pool == "a"


def test_a_long_job_goes_where_it_finishes_first_not_where_it_starts_first():
    fast = PoolView("gpu", frozenset({"small"}), 1, rtf=0.05, backlog_audio_seconds=600)
    slow = PoolView("cpu", frozenset({"small"}), 1, rtf=0.6, backlog_audio_seconds=0)
    assert choose_pool("small", [fast, slow], 0.0).pool == "cpu"  # by wait alone: cpu starts now
    long_job = choose_pool("small", [fast, slow], 3600.0)
    assert long_job.pool == "gpu"  # 30 s wait + 180 s beats 0 s + 2160 s
    assert long_job.expected_completion_seconds == pytest.approx(30.0 + 180.0)


def test_a_configured_pool_with_no_live_worker_is_eligible_but_last():
    dead = PoolView("a100", frozenset({"large-v3"}), 0, rtf=0.03, configured=True)
    busy = PoolView("t4", frozenset({"large-v3"}), 1, rtf=0.1, backlog_audio_seconds=1e5)
    assert choose_pool("large-v3", [dead, busy], 60.0).pool == "t4"
    only = choose_pool("large-v3", [dead], 60.0)
    assert only.pool == "a100"  # the job waits in its queue for a worker
    assert only.expected_wait_seconds >= NO_LIVE_WORKER_WAIT_SECONDS


def test_no_pool_for_the_model_is_failed_precondition_listing_who_serves_what():
    pools = pools_from(
        [profile("a", "a100", ["large-v3"], updated=100.0)], {"cpu": ["base", "tiny.en"]}, 100.0, 15.0, 1.0
    )
    with pytest.raises(FailedPrecondition) as err:
        choose_pool("medium.en", pools, 30.0)
    error = err.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "NO_POOL_FOR_MODEL"
    assert "a100 (1 live): large-v3" in error.message
    assert "cpu (configured, no live worker): base, tiny.en" in error.message
    status = error.to_status()
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


# -- the routing simulation (tools/routing_sim.py): three pools, a few hundred jobs


def independent_choices(sim, jobs):
    """Recompute every routing choice without the scheduler: own backlog, own liveness, own ranking."""
    specs = {p.name: p for p in sim.POOLS}
    backlog = dict.fromkeys(specs, 0.0)
    previous = 0.0
    out = {}
    for job in sorted(jobs, key=lambda j: j.arrival):
        for name, spec in specs.items():
            end = job.arrival if spec.stop_at is None else min(job.arrival, spec.stop_at)
            backlog[name] = max(0.0, backlog[name] - max(0.0, end - previous) * spec.workers / spec.rtf)
        previous = job.arrival
        candidates = []
        for name, spec in specs.items():
            if job.model not in spec.models:
                continue
            last_beat = job.arrival if spec.stop_at is None else min(job.arrival, spec.stop_at)
            last_beat = math.floor(last_beat / sim.HEARTBEAT_SECONDS) * sim.HEARTBEAT_SECONDS
            live = spec.workers if job.arrival - last_beat <= sim.TTL_SECONDS else 0
            wait = backlog[name] * spec.rtf / live if live else 1e9 + backlog[name] * spec.rtf
            candidates.append((wait + job.audio_seconds * spec.rtf, name))
        if not candidates:
            out[job.job_id] = None
            continue
        best = min(candidates)[1]
        out[job.job_id] = best
        backlog[best] += job.audio_seconds
    return out


def test_routing_simulation_sends_each_job_to_the_pool_that_finishes_it_first():
    sim = load_sim()
    jobs = sim.make_jobs(300, seed=7)
    records = sim.simulate(jobs)
    assert len(records) == 300
    expected = independent_choices(sim, jobs)
    assert {r.job.job_id: r.pool for r in records} == expected
    used = {r.pool for r in records}
    assert {"a100", "t4", "cpu"} <= used  # every pool got work: the routing had real choices
    overlap = [r for r in records if r.job.model == "large-v3-turbo"]
    assert len({r.pool for r in overlap}) >= 2


def test_a_pool_that_stops_heart_beating_stops_receiving_jobs_within_its_ttl():
    sim = load_sim()
    (a100,) = [p for p in sim.POOLS if p.name == "a100"]
    records = sim.simulate(sim.make_jobs(300, seed=7))
    to_a100 = [r.job.arrival for r in records if r.pool == "a100"]
    assert any(t < a100.stop_at for t in to_a100)
    assert all(t <= a100.stop_at + sim.TTL_SECONDS for t in to_a100)
    after = [r for r in records if r.job.arrival > a100.stop_at + sim.TTL_SECONDS and r.job.model == "large-v3"]
    assert after and {r.pool for r in after} == {"t4"}  # its models now go to the live pool


def test_an_unconfigured_pool_that_dies_leaves_its_only_model_unservable():
    sim = load_sim()
    pools = (
        sim.PoolSpec("a100", 2, 0.03, ("large-v3",), "NVIDIA A100-SXM4-80GB", stop_at=100.0),
        sim.PoolSpec("cpu", 2, 0.6, ("base",), ""),
    )
    jobs = [
        sim.Job(0, 50.0, "large-v3", 60.0),
        sim.Job(1, 110.0, "large-v3", 60.0),
        sim.Job(2, 130.0, "large-v3", 60.0),
    ]
    records = sim.simulate(jobs, pools, configured={})
    assert [r.pool for r in records] == ["a100", "a100", None]  # 110 s is within the 15 s TTL, 130 s is not
    assert records[2].refused_reason == "NO_POOL_FOR_MODEL"


def test_an_impossible_model_is_refused_in_the_simulation():
    sim = load_sim()
    records = sim.simulate(sim.make_jobs(300, seed=7))
    refused = [r for r in records if r.pool is None]
    assert refused and {r.job.model for r in refused} == {"medium.en"}
    assert {r.refused_reason for r in refused} == {"NO_POOL_FOR_MODEL"}
    table = sim.table(records)
    assert f"refused: {len(refused)} (NO_POOL_FOR_MODEL)" in table
