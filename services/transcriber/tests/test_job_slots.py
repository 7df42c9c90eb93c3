"""Concurrent batch jobs of a running worker: the decision's batch capacity, as advertised (issue 11).

The rule itself (scribe_libs.devices.job_slots, applied by decide) is tested in
libs/tests/test_job_slots.py; here: what the worker passes in, what it runs and advertises, the
``max_concurrent_jobs`` override, and tools/routing_sim.py built on the same number.
"""

from __future__ import annotations

import dataclasses

import pytest

from scribe_libs.devices import MAX_JOB_SLOTS, RecordedProbe, decide, load_recorded
from scribe_transcriber.config import Settings
from scribe_transcriber.device import decide_and_load
from scribe_transcriber.engine import ModelLoader

LARGE_AND_TURBO = ["large-v3", "large-v3-turbo"]


@pytest.fixture(autouse=True)
def fake_gauge(monkeypatch, fake_device):
    # The loaders decide_and_load builds measure through the fake device's gauge.
    original = ModelLoader.__post_init__

    def post_init(self):
        self.gauge = fake_device.gauge()
        original(self)

    monkeypatch.setattr(ModelLoader, "__post_init__", post_init)


def start(fake_device, settings: Settings, card: str = "l4"):
    device = decide_and_load(settings, RecordedProbe([load_recorded(card)]), fake_device.resolve, fake_device.factory)
    assert device.ready, device.not_ready_reason
    return device


def test_profile_batch_capacity_is_the_decision_s_and_the_worker_s_job_slots(fake_device):
    settings = Settings(worker_id="w-slots", pool="gpu-l4", models=LARGE_AND_TURBO)
    device = start(fake_device, settings)
    # the memory the models took (fake gauge) was not yet taken when the decision was made
    device.facts = dataclasses.replace(device.facts, memory_free_bytes=device.facts.memory_free_bytes // 2)
    profile = device.profile(settings, endpoint="x:1", start_time=0.0)
    assert profile.batch_capacity == device.job_slots(settings) == device.decision.batch_capacity == 4
    # the same number the decision makes without loading anything (what `scribe detect` prints)
    assert decide(load_recorded("l4"), LARGE_AND_TURBO).batch_capacity == 4
    # each concurrent job gets its own CTranslate2 replica on the GPU
    assert device.engine.loader.num_workers > MAX_JOB_SLOTS


def test_the_worker_s_batch_size_sizes_its_jobs(fake_device):
    settings = Settings(worker_id="w-slots", pool="gpu-l4", models=LARGE_AND_TURBO, batch_size=4)
    device = start(fake_device, settings)
    assert device.job_slots(settings) == decide(load_recorded("l4"), LARGE_AND_TURBO, batch_size=4).batch_capacity > 4


def test_max_concurrent_jobs_replaces_the_derived_number(fake_device):
    settings = Settings(worker_id="w-slots", pool="gpu-l4", models=LARGE_AND_TURBO, max_concurrent_jobs=12)
    device = start(fake_device, settings)
    assert device.decision.batch_capacity == 4
    assert device.job_slots(settings) == device.profile(settings, endpoint="", start_time=0.0).batch_capacity == 12
    assert device.engine.loader.num_workers == 13  # one replica per job, plus one for Decode


def test_a_worker_that_is_not_ready_runs_no_jobs(fake_device):
    settings = Settings(worker_id="w-slots", pool="cpu", models=["large-v3"])
    small_cpu = dataclasses.replace(load_recorded("cpu-only"), memory_total_bytes=2**30, memory_free_bytes=2**29)
    device = decide_and_load(settings, RecordedProbe([small_cpu]), fake_device.resolve, fake_device.factory)
    assert not device.ready and device.job_slots(settings) == 0
    assert device.profile(settings, endpoint="", start_time=0.0).batch_capacity == 0


def _routing_sim():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "tools" / "routing_sim.py"
    spec = importlib.util.spec_from_file_location("routing_sim", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_routing_sim_throughput_per_worker_follows_slots_and_what_the_device_absorbs():
    sim = _routing_sim()
    audio = [60.0] * 16
    one, _ = sim.drain_one_worker(audio, 1, rtf_alone=0.1, absorbs=8.0)
    four, span = sim.drain_one_worker(audio, 4, rtf_alone=0.1, absorbs=8.0)
    assert one / four == pytest.approx(4.0) and span == pytest.approx(6.0)  # 4x, jobs not slower
    saturated, span = sim.drain_one_worker(audio, 4, rtf_alone=0.1, absorbs=1.0)
    assert saturated == pytest.approx(one) and span == pytest.approx(24.0)  # no gain, each job 4x slower
    h100 = next(m for m in sim.DEVICE_MODELS if m.facts == "h100-80gb")
    assert sim.slots_for(h100) == MAX_JOB_SLOTS
    assert "h100-80gb" in sim.throughput_table(sim.make_jobs(50, seed=1))
