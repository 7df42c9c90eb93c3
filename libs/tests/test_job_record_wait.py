"""JobStore.get_published: a task may precede its record (ingest's write order), never by long.

Against a real ``nats-server -js``. No sleeps decide anything: the record is written after the
reader has looked at least once (seen in the bucket's get count), and the wait's end is checked
by the error and by the host clock's bounds, not by timing the call.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scribe.v1 import jobs_pb2
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.jobs import JobNotFound, JobStore, new_job_id

S = jobs_pb2.JobState


@pytest.fixture
async def jobs(nats_url):
    bus = await busmod.connect(NatsSettings(url=nats_url), "test-record-wait", retention_seconds=3600)
    try:
        yield JobStore(bus)
    finally:
        await bus.close()


class CountingGets:
    """Wraps JobStore.get to count the looks and signal the first miss."""

    def __init__(self, store: JobStore):
        self.store, self.inner, self.looks = store, store.get, 0
        self.missed = asyncio.Event()
        store.get = self.get  # type: ignore[method-assign]

    async def get(self, job_id: str) -> jobs_pb2.Job:
        self.looks += 1
        try:
            return await self.inner(job_id)
        except JobNotFound:
            self.missed.set()
            raise


async def test_a_record_written_after_the_first_look_is_returned(jobs):
    job_id = new_job_id()
    gets = CountingGets(jobs)
    reader = asyncio.create_task(jobs.get_published(job_id, time.time()))
    await gets.missed.wait()  # the reader looked and found nothing
    await jobs.create(jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool="p"))
    record = await asyncio.wait_for(reader, timeout=10)
    assert record.job_id == job_id and record.state == S.JOB_STATE_QUEUED
    assert gets.looks >= 2


async def test_an_old_task_without_a_record_is_not_waited_for(jobs):
    gets = CountingGets(jobs)
    with pytest.raises(JobNotFound):
        await jobs.get_published(new_job_id(), time.time() - 60, grace_seconds=10)
    assert gets.looks == 1  # one look, no retry: the task is older than the grace


async def test_a_young_orphan_is_given_up_once_the_grace_ends(jobs):
    gets = CountingGets(jobs)
    published = time.time()
    with pytest.raises(JobNotFound):
        await jobs.get_published(new_job_id(), published, grace_seconds=0.3)
    assert time.time() >= published + 0.3  # it waited out the grace
    assert gets.looks >= 3  # 5 ms, then doubling: several looks within 0.3 s


async def test_a_clock_behind_the_servers_cannot_stretch_the_wait(jobs):
    """published_at in this host's future (its clock behind the server's): the wait still ends."""
    gets = CountingGets(jobs)
    with pytest.raises(JobNotFound):  # not TimeoutError: an hour's wait would be cut off here
        await asyncio.wait_for(jobs.get_published(new_job_id(), time.time() + 3600, grace_seconds=0.3), timeout=30)
    assert gets.looks >= 2
