"""A worker with 4 slots against a real nats-server, with a fake engine of known cost (issue 11).

The fake engine has Engine.transcribe's interface: it "decodes" a file whose text is its audio
length in seconds, sleeping ``COST`` seconds per audio second in the worker's thread, and counts
how many calls run at once. What is asserted is what JetStream and the job records show
(deliveries, acks, states), and the engine's observed concurrency, never wall time.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, JobStore, audio_key
from scribe_libs.objectstore import StoreSettings, open_store
from scribe_transcriber.config import Settings
from scribe_transcriber.worker import Worker

S = jobs_pb2.JobState
COST = 0.25  # seconds of "decoding" per audio second
SLOTS = 4
_pools = itertools.count()


class FakeEngine:
    """Engine.transcribe's interface; sleeps COST x audio seconds; records concurrency."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.calls: list[str] = []
        self.cancelled: list[str] = []

    def transcribe(self, audio_path: Path, config, *, batch_size, on_progress, cancelled):  # noqa: ANN001
        seconds = float(audio_path.read_text())
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.calls.append(config.initial_prompt)
        started, step, done, was_cancelled = time.monotonic(), 0.5, 0.0, False
        try:
            while done < seconds:
                if cancelled.is_set():
                    was_cancelled = True
                    with self.lock:
                        self.cancelled.append(config.initial_prompt)
                    break
                time.sleep(COST * min(step, seconds - done))
                done = min(seconds, done + step)
                on_progress(done, seconds)
        finally:
            with self.lock:
                self.running -= 1
        transcript = transcript_pb2.Transcript(
            language="en", duration=seconds, model="fake", compute_type="float16", device="cuda",
            processing_seconds=time.monotonic() - started,
        )
        transcript.segments.append(transcript_pb2.Segment(id=0, start=0.0, end=done, text="fake words"))
        return transcript, was_cancelled


class Rig:
    """A bus, a local store, a job store and a pool of its own on the module's nats-server."""

    def __init__(self, nats_url: str, tmp: Path):
        self.nats_url, self.tmp = nats_url, tmp
        self.pool = f"slots{next(_pools)}"
        self.engine = FakeEngine()

    async def __aenter__(self) -> Rig:
        self.bus = await busmod.connect(NatsSettings(url=self.nats_url), "slots-test", retention_seconds=3600)
        self.store = open_store(StoreSettings(kind="local", root=self.tmp / "objects"))
        await self.store.ensure_bucket(AUDIO_BUCKET)
        await self.store.ensure_bucket(RESULTS_BUCKET)
        self.jobs = JobStore(self.bus)
        self.settings = Settings(
            worker_id=f"w-{self.pool}", pool=self.pool, temp_dir=str(self.tmp / "work"), ack_wait_seconds=30.0,
            cancel_poll_seconds=0.1, progress_interval_seconds=0.2, nats=NatsSettings(url=self.nats_url),
        )
        self.worker = Worker(self.settings, self.bus, self.store, self.engine, slots=SLOTS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.stop()
        await self.bus.close()

    async def submit(self, name: str, seconds: float, *, record: bool = True) -> str:
        """Audio, then (ingest's order) the task, then the record unless ``record`` is False."""
        job_id = f"{self.pool}{name}"
        key = audio_key(job_id)
        await self.store.put_bytes(AUDIO_BUCKET, key, str(seconds).encode(), "text/plain")
        config = transcript_pb2.RecognitionConfig(model="base", initial_prompt=job_id)
        task = jobs_pb2.TranscribeTask(job_id=job_id, audio_key=key, config=config, audio_duration=seconds)
        await self.bus.publish(busmod.jobs_subject(self.pool), task)
        if record:
            await self.create_record(job_id, seconds)
        return job_id

    async def create_record(self, job_id: str, seconds: float) -> None:
        job = jobs_pb2.Job(job_id=job_id, state=S.JOB_STATE_QUEUED, pool=self.pool, audio_key=audio_key(job_id),
                           audio_duration=seconds)
        job.spec.config.CopyFrom(transcript_pb2.RecognitionConfig(model="base", initial_prompt=job_id))
        await self.jobs.create(job)

    async def states(self, job_ids: list[str]) -> dict[str, int]:
        return {j: (await self.jobs.get(j)).state for j in job_ids}

    async def wait_for(self, predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not await predicate():
            assert time.monotonic() < deadline, "condition not reached"
            await asyncio.sleep(0.05)

    async def consumer(self):  # noqa: ANN201
        return await self.bus.js.consumer_info(busmod.JOBS_STREAM, busmod.pool_consumer(self.pool))


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_eight_jobs_run_four_at_a_time_each_acked_once(nats_url, tmp_path):
    async def scenario() -> None:
        async with Rig(nats_url, tmp_path) as rig:
            ids = [await rig.submit(f"j{i}", 2.0) for i in range(8)]
            runner = asyncio.create_task(rig.worker.run())

            async def all_decoded() -> bool:
                # the record moves to POSTPROCESSING before the worker acks, so wait for the acks too
                if not all(s == S.JOB_STATE_POSTPROCESSING for s in (await rig.states(ids)).values()):
                    return False
                return (await rig.consumer()).num_ack_pending == 0

            await rig.wait_for(all_decoded)
            # two rounds of four, never more than four at once
            assert rig.engine.max_running == SLOTS
            assert sorted(rig.engine.calls) == sorted(ids)
            info = await rig.consumer()
            assert info.delivered.consumer_seq == 8 and info.num_redelivered == 0
            assert info.ack_floor.consumer_seq == 8 and info.num_ack_pending == 0 and info.num_pending == 0
            assert rig.worker.current_load == 0
            await rig.worker.stop()
            await runner

    run(scenario())


def test_cancelling_one_running_job_leaves_the_others_alone(nats_url, tmp_path):
    async def scenario() -> None:
        async with Rig(nats_url, tmp_path) as rig:
            long = await rig.submit("long", 120.0)  # 30 s of work unless cancelled
            others = [await rig.submit(f"j{i}", 2.0) for i in range(6)]
            runner = asyncio.create_task(rig.worker.run())

            async def long_running() -> bool:
                return (await rig.jobs.get(long)).state == S.JOB_STATE_RUNNING

            await rig.wait_for(long_running)

            def request_cancel(record: jobs_pb2.Job) -> None:
                record.cancel_requested = True

            await rig.jobs.update(long, request_cancel)

            async def settled() -> bool:
                states = await rig.states([long, *others])
                if not (states[long] == S.JOB_STATE_CANCELLED and all(
                    states[j] == S.JOB_STATE_POSTPROCESSING for j in others
                )):
                    return False
                # the record moves before the worker acks, so wait for the acks too
                return (await rig.consumer()).num_ack_pending == 0

            await rig.wait_for(settled)
            assert rig.engine.cancelled == [long]
            assert rig.engine.max_running <= SLOTS
            info = await rig.consumer()
            assert info.delivered.consumer_seq == 7 and info.num_redelivered == 0 and info.num_ack_pending == 0
            await rig.worker.stop()
            await runner

    run(scenario())


def test_drain_waits_for_every_job_in_hand_and_fetches_no_more(nats_url, tmp_path):
    async def scenario() -> None:
        async with Rig(nats_url, tmp_path) as rig:
            ids = [await rig.submit(f"j{i}", 6.0) for i in range(SLOTS + 2)]
            runner = asyncio.create_task(rig.worker.run())

            async def full() -> bool:
                return rig.engine.running == SLOTS

            await rig.wait_for(full)
            assert rig.worker.current_load == SLOTS
            # a full worker holds no message it cannot start: the other two wait in JetStream
            info = await rig.consumer()
            assert info.delivered.consumer_seq == SLOTS and info.num_pending == 2
            await rig.worker.stop()  # SIGTERM drain
            await runner
            states = await rig.states(ids)
            running_ones = [j for j in ids if j in rig.engine.calls]
            assert len(running_ones) == SLOTS
            assert all(states[j] == S.JOB_STATE_POSTPROCESSING for j in running_ones)
            assert all(states[j] == S.JOB_STATE_QUEUED for j in ids if j not in running_ones)
            info = await rig.consumer()
            assert info.num_ack_pending == 0 and info.ack_floor.consumer_seq == SLOTS and info.num_pending == 2

    run(scenario())


@pytest.mark.parametrize("slots", [1, 2])
def test_slots_follow_the_callable(nats_url, tmp_path, slots):
    async def scenario() -> None:
        async with Rig(nats_url, tmp_path) as rig:
            rig.worker = Worker(rig.settings, rig.bus, rig.store, rig.engine, slots=lambda: slots)
            ids = [await rig.submit(f"j{i}", 1.0) for i in range(4)]
            runner = asyncio.create_task(rig.worker.run())

            async def all_decoded() -> bool:
                # the record moves to POSTPROCESSING before the worker acks, so wait for the acks too
                if not all(s == S.JOB_STATE_POSTPROCESSING for s in (await rig.states(ids)).values()):
                    return False
                return (await rig.consumer()).num_ack_pending == 0

            await rig.wait_for(all_decoded)
            assert rig.engine.max_running == slots
            await rig.worker.stop()
            await runner

    run(scenario())


def test_a_task_that_arrives_before_its_record_waits_for_it_and_runs_once(nats_url, tmp_path):
    """Ingest publishes the task, then writes the record. Before: the worker found no record,
    dropped the task (term) as a deleted job's, and the job stayed QUEUED forever."""

    async def scenario() -> None:
        async with Rig(nats_url, tmp_path) as rig:
            runner = asyncio.create_task(rig.worker.run())
            job_id = await rig.submit("early", 1.0, record=False)

            async def in_hand() -> bool:
                try:
                    info = await rig.consumer()
                except NotFoundError:  # the worker has not declared its consumer yet
                    return False
                return info.delivered.consumer_seq == 1 and info.num_ack_pending == 1

            await rig.wait_for(in_hand)  # the worker holds the task and looks for its record
            await rig.create_record(job_id, 1.0)

            async def decoded() -> bool:
                if (await rig.jobs.get(job_id)).state != S.JOB_STATE_POSTPROCESSING:
                    return False
                return (await rig.consumer()).num_ack_pending == 0

            await rig.wait_for(decoded)
            assert rig.engine.calls == [job_id]
            info = await rig.consumer()
            assert info.delivered.consumer_seq == 1 and info.num_redelivered == 0
            await rig.worker.stop()
            await runner

    run(scenario())
