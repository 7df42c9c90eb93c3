"""Housekeeping the results service does for everyone.

- **Poison messages.** A job message delivered ``max_deliver`` times whose last worker died
  (so nobody FAILed it) is announced by JetStream on
  ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``. The janitor reads the
  message at the advisory's stream sequence, marks its job FAILED with reason
  ``MAX_DELIVERIES_EXCEEDED``, removes the message and the job's audio. Replicas share the work
  through a queue group; compare-and-set makes a double handling harmless.
- **Retention on the local store.** MinIO/S3 expires transcripts by the bucket lifecycle rule;
  the embedded local-directory store has no such server, so the janitor sweeps it
  (``LocalStore.sweep_expired``) every ``sweep_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

from nats.aio.msg import Msg

from scribe.v1 import jobs_pb2
from scribe_libs import bus as busmod
from scribe_libs.jobs import AUDIO_BUCKET, JobNotFound, JobStore
from scribe_libs.objectstore import LocalStore, ObjectStore

log = logging.getLogger(__name__)

ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
QUEUE_GROUP = "scribe-results-janitor"


class Janitor:
    """Runs the poison-message handler and the local retention sweeper."""

    def __init__(self, bus: busmod.Bus, store: ObjectStore, sweep_interval: float):
        self.bus = bus
        self.store = store
        self.jobs = JobStore(bus)
        self.sweep_interval = sweep_interval
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._sub = None

    async def start(self) -> None:
        """Subscribe to the advisories and start the sweeper (local store only).

        A core subscription lives on one connection: after the bus replaced a closed connection
        (``Bus.on_recovered``) the janitor subscribes again on the new one.
        """
        await self._subscribe()
        self.bus.on_recovered(self._subscribe)
        if isinstance(self.store, LocalStore):
            self._tasks.append(asyncio.create_task(self._sweep_loop()))

    async def _subscribe(self) -> None:
        self._sub = await self.bus.nc.subscribe(ADVISORY, queue=QUEUE_GROUP, cb=self._on_advisory)

    async def stop(self) -> None:
        """Stop both (bounded wait)."""
        self._stop.set()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            await self.handle_max_deliveries(advisory["stream"], int(advisory["stream_seq"]),
                                             int(advisory.get("deliveries", 0)))
        except Exception:  # noqa: BLE001 - one bad advisory must not stop the subscription
            log.exception("could not handle a max-deliveries advisory")

    async def handle_max_deliveries(self, stream: str, seq: int, deliveries: int) -> None:
        """FAIL the job behind message ``seq`` of ``stream`` and drop the message."""
        try:
            raw = await self.bus.js.get_msg(stream, seq=seq)
        except Exception:  # noqa: BLE001 - already acked/removed: nothing to do
            return
        if stream == busmod.JOBS_STREAM:
            job_id = busmod.parse(jobs_pb2.TranscribeTask, raw.data or b"").job_id
        elif stream == busmod.POSTPROCESS_STREAM:
            job_id = busmod.parse(jobs_pb2.PostprocessTask, raw.data or b"").job_id
        else:
            return
        reason = f"gave up after {deliveries} deliveries of its {stream} message (workers died or timed out)"
        with contextlib.suppress(JobNotFound):
            job, failed = await self.jobs.fail(job_id, "MAX_DELIVERIES_EXCEEDED", reason)
            if failed:
                log.warning("job failed: %s", reason, extra={"job_id": job_id})
            if job.audio_key and not job.spec.retain_audio:
                await self.store.delete(AUDIO_BUCKET, job.audio_key)
        with contextlib.suppress(Exception):
            await self.bus.js.delete_msg(stream, seq)

    async def _sweep_loop(self) -> None:
        assert isinstance(self.store, LocalStore)
        while not self._stop.is_set():
            try:
                removed = await self.store.sweep_expired(datetime.now(UTC))
                if removed:
                    log.info("expired objects removed", extra={"objects": removed})
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("retention sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.sweep_interval)
