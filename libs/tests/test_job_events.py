"""Job events (``scribe.events.<job_id>.<kind>``) are published once per state change, through a
broker outage too: the CI run of the NATS cluster kill test lost 3 of 12 ``completed`` events to a
stream leader election (NoRespondersError, one try, logged and dropped).

Against a real ``nats-server -js``. The outage is the events stream being absent (JetStream has no
responder for the subject: what a publish meets while a stream elects its leader); the test makes
the stream come back only after the first publish has failed, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio

import pytest

from scribe.v1 import jobs_pb2
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.errors import is_broker_outage
from scribe_libs.jobs import JobStore, new_job_id

S = jobs_pb2.JobState


@pytest.fixture
async def bus(nats_url):
    bus = await busmod.connect(NatsSettings(url=nats_url), "test-job-events", retention_seconds=3600)
    try:
        yield bus
    finally:
        await bus.close()


class Publishes:
    """Wraps Bus.publish: counts the attempts per subject and signals the first failed one."""

    def __init__(self, bus: busmod.Bus):
        self.inner, self.attempts, self.failures = bus.publish, {}, []
        self.failed = asyncio.Event()
        bus.publish = self.publish  # type: ignore[method-assign]

    async def publish(self, subject, message, headers=None):  # noqa: ANN001, ANN201
        self.attempts[subject] = self.attempts.get(subject, 0) + 1
        try:
            return await self.inner(subject, message, headers)
        except Exception as exc:
            self.failures.append(exc)
            self.failed.set()
            raise


async def stored_events(bus: busmod.Bus, job_id: str) -> dict[str, int]:
    """Messages in SCRIBE_EVENTS per kind for one job."""
    info = await bus.js.stream_info(busmod.EVENTS_STREAM, subjects_filter=f"scribe.events.{job_id}.*")
    return {subject.rsplit(".", 1)[1]: int(n) for subject, n in (info.state.subjects or {}).items()}


async def test_a_state_change_event_is_retried_until_the_stream_answers(bus):
    publishes = Publishes(bus)
    await bus.js.delete_stream(busmod.EVENTS_STREAM)  # no responder for scribe.events.>
    jobs = JobStore(bus)
    job_id = new_job_id()
    create = asyncio.create_task(jobs.create(jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool="p")))
    await asyncio.wait_for(publishes.failed.wait(), timeout=30)
    assert is_broker_outage(publishes.failures[0]), publishes.failures
    assert not create.done(), "the event was dropped after one failed publish"
    await busmod.declare(bus.js, 3600)  # the stream is back
    await asyncio.wait_for(create, timeout=30)
    assert await stored_events(bus, job_id) == {"queued": 1}
    assert publishes.attempts[f"scribe.events.{job_id}.queued"] >= 2
    assert (await jobs.get(job_id)).state == S.JOB_STATE_QUEUED


async def test_a_retried_publish_that_was_stored_is_stored_once(bus):
    """The ack of a stored event may be lost (NoStreamResponseError): its retry is a duplicate."""
    jobs = JobStore(bus)
    job_id = new_job_id()
    await jobs.create(jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool="p"))
    job = await jobs.get(job_id)
    await jobs._event(job, "queued")  # the same write's event again (same Nats-Msg-Id)
    assert await stored_events(bus, job_id) == {"queued": 1}
    job = await jobs.update(job_id, lambda j: setattr(j, "progress", 0.5), event="progress")
    await jobs.update(job_id, lambda j: setattr(j, "progress", 0.6), event="progress")
    assert await stored_events(bus, job_id) == {"queued": 1, "progress": 2}  # distinct writes, distinct ids


async def test_a_progress_event_gets_one_try_and_the_write_stands(bus):
    jobs = JobStore(bus)
    job_id = new_job_id()
    await jobs.create(jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool="p"))
    publishes = Publishes(bus)
    await bus.js.delete_stream(busmod.EVENTS_STREAM)
    job = await jobs.update(job_id, lambda j: setattr(j, "progress", 0.5), event="progress")
    assert publishes.attempts == {f"scribe.events.{job_id}.progress": 1}  # superseded by the next one
    assert job.progress == pytest.approx(0.5) and (await jobs.get(job_id)).progress == pytest.approx(0.5)


async def test_an_outage_longer_than_the_retry_budget_is_given_up(bus):
    jobs = JobStore(bus, event_retry_seconds=2.5)
    publishes = Publishes(bus)
    await bus.js.delete_stream(busmod.EVENTS_STREAM)
    job_id = new_job_id()
    await asyncio.wait_for(jobs.create(jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool="p")), timeout=30)
    # A retry every BROKER_RETRY_SECONDS (1 s) while one more still fits in 2.5 s: 2 or 3 tries.
    assert publishes.attempts[f"scribe.events.{job_id}.queued"] in (2, 3), publishes.attempts
    assert (await jobs.get(job_id)).state == S.JOB_STATE_QUEUED


async def test_a_closing_bus_is_not_waited_on(nats_url):
    """A service stopping during an outage gives the event up at once (no 30 s stop)."""
    bus = await busmod.connect(NatsSettings(url=nats_url), "test-job-events-close", retention_seconds=3600)
    jobs = JobStore(bus)
    job_id = new_job_id()
    await jobs.create(jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool="p"))
    job = await jobs.get(job_id)
    publishes = Publishes(bus)
    await bus.close()
    await asyncio.wait_for(jobs._event(job, "completed"), timeout=jobs.event_retry_seconds / 2)
    assert publishes.attempts == {f"scribe.events.{job_id}.completed": 1}
