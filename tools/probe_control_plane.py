"""The NATS side of GetJob at queue depth: KV get, queue_view, consumer counts, ledger counters.

Starts ``nats-server -js`` in a temp dir, writes N job records to ``scribe_jobs`` and N tasks to
the ``cpu`` pool's subject (no consumer, as in ``tools/bench_scale.py`` with no transcriber), and at
each level times ``--samples`` sequential calls of each kind (random jobs), printing p50/p95/max in
milliseconds to stdout. It isolates the per-call work of issue 11's GetJob from the services and
the client: if these stay flat while bench_scale's GetJob p95 grows, the tail is elsewhere. Run::

    .venv/bin/python tools/probe_control_plane.py --levels 10,10000,100000
    .venv/bin/python tools/probe_control_plane.py --levels 10,100000 --idle-seconds 15   # cold reads

``kv get again`` repeats the ``kv get`` pass on the same jobs right after it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def _main(levels: list[int], samples: int, idle_seconds: float) -> None:
    from scribe.v1 import jobs_pb2, transcript_pb2
    from scribe_harness.servers import NatsServer
    from scribe_libs import bus as busmod
    from scribe_libs.config import NatsSettings
    from scribe_libs.jobs import JobStore
    from scribe_libs.queue import PoolLedger, consumer_counts, queue_view

    with tempfile.TemporaryDirectory(prefix="probe-cp-") as tmp:
        nats = NatsServer(Path(tmp))
        nats.start()
        bus = await busmod.connect(NatsSettings(url=nats.url), "probe", retention_seconds=7 * 86400)
        jobs, ledger, ids = JobStore(bus), PoolLedger(bus), []
        try:
            for level in levels:
                while len(ids) < level:
                    batch = []
                    for _ in range(min(500, level - len(ids))):
                        job_id = f"job{len(ids) + len(batch):07d}"
                        job = jobs_pb2.Job(job_id=job_id, state=jobs_pb2.JobState.JOB_STATE_QUEUED, pool="cpu",
                                           owner="tenant-a", audio_key=f"audio/{job_id}", audio_duration=1.0)
                        job.spec.config.CopyFrom(transcript_pb2.RecognitionConfig(model="tiny.en"))
                        job.spec.source_uri = "s3://bench-source/one-second.wav"
                        batch.append(job)
                    await asyncio.gather(*(jobs.create(j) for j in batch))
                    await asyncio.gather(*(bus.publish(busmod.jobs_subject("cpu"),
                                                       jobs_pb2.TranscribeTask(job_id=j.job_id)) for j in batch))
                    ids += [j.job_id for j in batch]
                sample = random.Random(level).sample(ids, min(samples, len(ids)))
                if idle_seconds:  # let nats-server's block cache go cold (it drops idle blocks)
                    await asyncio.sleep(idle_seconds)
                calls = {
                    "kv get": lambda j: jobs.get(j),
                    "kv get again": lambda j: jobs.get(j),
                    "queue_view": lambda j: queue_view(bus, ledger, "cpu", None),
                    "consumer_counts": lambda j: consumer_counts(bus, "cpu"),
                    "ledger.counters": lambda j: ledger.counters("cpu"),
                }
                for name, call in calls.items():
                    took = []
                    for job_id in sample:
                        start = time.perf_counter()
                        await call(job_id)
                        took.append(time.perf_counter() - start)
                    print(f"{level:>7} {name:16} p50 {statistics.median(took) * 1e3:6.2f} "
                          f"p95 {_pct(took, 0.95) * 1e3:6.2f} max {max(took) * 1e3:6.2f} ms", flush=True)
        finally:
            await bus.close()
            nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--levels", default="10,10000,100000", help="job counts to measure at")
    parser.add_argument("--samples", type=int, default=300, help="calls per kind and level")
    parser.add_argument("--idle-seconds", type=float, default=0.0,
                        help="pause before each level's calls (the first 'kv get' pass then reads cold blocks)")
    args = parser.parse_args()
    asyncio.run(_main(sorted(int(x) for x in args.levels.split(",")), args.samples, args.idle_seconds))


if __name__ == "__main__":
    main()
