"""The ETA users see (``Job.eta_seconds``): scribe_libs.queue.eta_queued / eta_running.

Formulas in seconds, RTF = processing seconds / audio seconds.
"""

from __future__ import annotations

import pytest

from scribe.v1 import jobs_pb2, transcriber_pb2
from scribe_libs.queue import DEFAULT_RTF, QueueView, eta_queued, eta_running
from scribe_libs.registry import PoolTotals


def view(ahead: float, running_audio: float = 0.0) -> QueueView:
    return QueueView(position=3, audio_seconds_ahead=ahead, running=1 if running_audio else 0,
                     running_audio_seconds=running_audio, depth=4)


def test_queued_eta_is_the_backlog_shared_by_the_workers_then_the_job_itself():
    assert eta_queued(view(600.0), 120.0, 0.1, 3) == pytest.approx(600 * 0.1 / 3 + 120 * 0.1)  # 20 + 12
    # a running job counts as half done: 600 + 0.5 x 120 = 660 audio seconds ahead
    assert eta_queued(view(600.0, running_audio=120.0), 120.0, 0.1, 3) == pytest.approx(660 * 0.1 / 3 + 12.0)
    assert eta_queued(view(0.0), 120.0, 0.1, 3) == pytest.approx(12.0)  # next in line: its own decode


def test_queued_eta_with_no_live_worker_is_what_one_worker_would_take():
    # Finite (users see the queue order in the ETAs while no transcriber is up yet), not infinity.
    assert eta_queued(view(600.0), 120.0, 0.1, 0) == eta_queued(view(600.0), 120.0, 0.1, 1) == pytest.approx(72.0)


def test_queued_eta_grows_with_the_audio_ahead():
    etas = [eta_queued(view(ahead), 60.0, DEFAULT_RTF, 2) for ahead in (0.0, 60.0, 120.0)]
    assert 0 < etas[0] < etas[1] < etas[2]


def _running(duration: float, processed: float, started: float | None) -> jobs_pb2.Job:
    job = jobs_pb2.Job(audio_duration=duration, processed_seconds=processed)
    if started is not None:
        job.start_time.FromNanoseconds(int(started * 1e9))
    return job


def test_running_eta_follows_the_job_s_own_rate_once_it_has_progress():
    # 25 of 100 audio seconds in 10 s: 75 remaining at 0.4 s per audio second
    assert eta_running(_running(100.0, 25.0, started=1000.0), 1010.0, rtf=0.5) == pytest.approx(30.0)
    assert eta_running(_running(100.0, 100.0, started=1000.0), 1010.0, rtf=0.5) == 0.0  # done decoding
    assert eta_running(_running(100.0, 25.0, started=2000.0), 1010.0, rtf=0.5) == 0.0  # clock skew: no time yet


def test_running_eta_before_progress_uses_the_pool_rtf():
    assert eta_running(_running(100.0, 0.0, started=1000.0), 1010.0, rtf=0.5) == pytest.approx(50.0)
    assert eta_running(_running(100.0, 25.0, started=None), 1010.0, rtf=0.5) == pytest.approx(37.5)


def test_pool_rtf_is_the_mean_measured_one_or_the_default():
    totals = PoolTotals()
    for i, r in enumerate((0.1, 0.3, 0.0)):
        totals.add(transcriber_pb2.WorkerProfile(worker_id=f"w{i}", real_time_factor=r))
    assert totals.rtf(DEFAULT_RTF) == pytest.approx(0.2)
    totals.remove("w0")
    totals.remove("w1")
    assert totals.rtf(DEFAULT_RTF) == PoolTotals().rtf(DEFAULT_RTF) == DEFAULT_RTF
    assert totals.live == 1
