"""Control-plane cost against queue depth: CreateJob, GetJob and ListJobs at 10 ... 100,000 queued jobs.

Starts ``nats-server -js`` and the ingest and results services (their real gRPC servers, in a
child process, on a local-directory object store) with no transcriber, so the queue only grows.
Jobs are created by ``source_uri`` pointing at one small object (1 s of 8 kHz audio), from
``--threads`` client threads, each with its own channel. At each level (``--levels``), after
``--settle-seconds`` of rest (the CPU seconds nats-server and the services used meanwhile go to
stderr: what the fill's burst left behind):

- CreateJob: the latencies of the next ``--samples`` creates (the queue grows by that many);
- GetJob: ``--samples`` calls on queued jobs spread over the whole queue (the deepest included;
  drawn with replacement, so every level has as many), each answer carrying queue position and ETA;
- ListJobs: ``--samples`` first pages (``page_size=10``, newest first) of the admin caller.

It prints p50/p95 per call and level (milliseconds) and the ratio of each (p50 and p95) at the
deepest level to the same at the shallowest: the target of issue 11 is every ratio <= 2. Run::

    .venv/bin/python tools/bench_scale.py                       # 10, 1,000, 10,000, 100,000
    .venv/bin/python tools/bench_scale.py --levels 10,1000      # a quick look

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bench-source"
KEY = "one-second.wav"


def _tiny_wav(path: Path) -> None:
    """1 s of 8 kHz 16-bit mono tone (16 KB)."""
    import math
    import struct
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(i / 8))) for i in range(8000)))


def _serve(nats_url: str, workdir: str, conn) -> None:  # noqa: ANN001 - a multiprocessing Connection
    """Child process: ingest + results on one loop; sends (addresses, admin key), waits for 'stop'."""
    import logging

    logging.disable(logging.WARNING)
    from scribe_harness.stack import Stack
    from scribe_libs.objectstore import LocalStore

    work = Path(workdir)
    stack = Stack(nats_url, work, auth=True)
    source = work / "source.wav"
    _tiny_wav(source)
    store = LocalStore(work / "objects")
    stack.run(store.ensure_bucket(BUCKET))
    stack.run(store.put_file(BUCKET, KEY, source))
    stack.start("ingest", max_queue_depth=10_000_000)
    stack.start("results", metrics_sample_seconds=10.0)
    conn.send((dict(stack.addresses), stack.keys["admin"]))
    conn.recv()
    stack.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stream_blocks(store_dir: Path, stream: str) -> tuple[int, int]:
    """(message blocks, bytes) of ``stream`` in a nats-server store directory (its ``*.blk`` files).

    The first GetJob from a block after nats-server's 10 s cache expiry reads the whole block
    (``filestore.go``), so the number of blocks the records span bounds the cold reads.
    """
    blocks = [path for path in store_dir.rglob("*.blk") if path.parent.parent.name == stream]
    return len(blocks), sum(path.stat().st_size for path in blocks)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


class Bench:
    """Client side: channels per thread, the calls, and their timings."""

    def __init__(self, addresses: dict[str, str], key: str, threads: int):
        import grpc

        from scribe.v1 import ingest_pb2_grpc, results_pb2_grpc
        from scribe_libs.auth import ApiKeyClientInterceptor

        self.threads = threads
        self.local = threading.local()
        self._make = lambda: (
            ingest_pb2_grpc.IngestStub(grpc.intercept_channel(
                grpc.insecure_channel(addresses["ingest"]), ApiKeyClientInterceptor(key))),
            results_pb2_grpc.ResultsStub(grpc.intercept_channel(
                grpc.insecure_channel(addresses["results"]), ApiKeyClientInterceptor(key))),
        )
        self.job_ids: list[str] = []
        self.lock = threading.Lock()

    def stubs(self):  # noqa: ANN201 - (IngestStub, ResultsStub) of this thread
        """This thread's stubs (one channel per thread)."""
        if not hasattr(self.local, "stubs"):
            self.local.stubs = self._make()
        return self.local.stubs

    def create(self) -> float:
        """One CreateJob by source_uri; returns its seconds."""
        from scribe.v1 import ingest_pb2, jobs_pb2, transcript_pb2

        ingest, _ = self.stubs()
        spec = jobs_pb2.JobSpec(
            source_uri=f"s3://{BUCKET}/{KEY}", config=transcript_pb2.RecognitionConfig(model="tiny.en")
        )
        start = time.perf_counter()
        job = ingest.CreateJob(iter([ingest_pb2.CreateJobRequest(spec=spec)]), timeout=60).job
        elapsed = time.perf_counter() - start
        with self.lock:
            self.job_ids.append(job.job_id)
        return elapsed

    def fill(self, count: int) -> list[float]:
        """Create ``count`` jobs from the threads; returns each create's seconds."""
        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(lambda _: self.create(), range(count)))

    def get_job(self, job_id: str) -> tuple[float, int]:
        """One GetJob; returns (seconds, queue position)."""
        from scribe.v1 import results_pb2

        _, results = self.stubs()
        start = time.perf_counter()
        job = results.GetJob(results_pb2.GetJobRequest(job_id=job_id), timeout=60).job
        return time.perf_counter() - start, job.queue_position

    def list_first_page(self) -> float:
        """One ListJobs first page of 10; returns its seconds."""
        from scribe.v1 import results_pb2

        _, results = self.stubs()
        start = time.perf_counter()
        reply = results.ListJobs(results_pb2.ListJobsRequest(page_size=10), timeout=60)
        elapsed = time.perf_counter() - start
        assert len(reply.jobs) == 10, len(reply.jobs)
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--levels", default="10,1000,10000,100000", help="queued-job counts to measure at")
    parser.add_argument("--samples", type=int, default=200, help="calls measured per kind and level")
    parser.add_argument("--threads", type=int, default=8, help="client threads creating jobs")
    parser.add_argument("--settle-seconds", type=float, default=10.0,
                        help="pause after filling, before measuring, at every level (0: measure the fill's tail)")
    args = parser.parse_args()
    levels = sorted(int(x) for x in args.levels.split(","))

    from scribe_harness.servers import NatsServer

    rows: dict[int, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        nats = NatsServer(Path(tmp) / "nats")
        nats.start()
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=_serve, args=(nats.url, str(Path(tmp) / "stack"), child))
        (Path(tmp) / "stack").mkdir()
        proc.start()
        try:
            addresses, key = parent.recv()
            bench = Bench(addresses, key, args.threads)
            began = time.monotonic()
            for level in levels:
                missing = level - len(bench.job_ids)
                if missing > 0:
                    t0 = time.monotonic()
                    bench.fill(missing)
                    print(f"filled to {len(bench.job_ids)} jobs ({missing / (time.monotonic() - t0):.0f} jobs/s)",
                          file=sys.stderr, flush=True)
                # Measure the queue at rest, not the tail of the fill's burst; the CPU the servers
                # used meanwhile is printed.
                cpu = [_cpu_seconds(pid) for pid in (nats.proc.pid, proc.pid)]
                time.sleep(args.settle_seconds)
                used = [_cpu_seconds(pid) - before for pid, before in zip((nats.proc.pid, proc.pid), cpu, strict=True)]
                blocks, size = _stream_blocks(nats.store, "KV_scribe_jobs")
                print(f"settled {args.settle_seconds:.0f} s: nats-server used {used[0]:.2f} CPU s, "
                      f"the services {used[1]:.2f}; the job records span {blocks} blocks, "
                      f"{size / 1e6:.1f} MB", file=sys.stderr, flush=True)
                depth = len(bench.job_ids)
                # GetJob over the whole queue, the deepest job included (it has the most ahead); the
                # same number of calls at every level (drawn with replacement where jobs are few).
                ids = [bench.job_ids[-1]] + random.Random(level).choices(bench.job_ids, k=args.samples - 1)
                gets = [bench.get_job(job_id) for job_id in ids]
                deepest = gets[0][1]
                lists = [bench.list_first_page() for _ in range(args.samples)]
                creates = bench.fill(args.samples)
                rows[level] = {
                    "CreateJob": (statistics.median(creates), _pct(creates, 0.95)),
                    "GetJob": (statistics.median(g for g, _ in gets), _pct([g for g, _ in gets], 0.95)),
                    "ListJobs first page": (statistics.median(lists), _pct(lists, 0.95)),
                }
                print(f"level {level}: measured at {depth} queued (deepest position {deepest}), "
                      f"{time.monotonic() - began:.0f} s so far", file=sys.stderr, flush=True)
        finally:
            parent.send("stop")
            proc.join(timeout=60)
            nats.stop()

    low, high = levels[0], levels[-1]
    header = ("| call | " + " | ".join(f"{lvl:,} p50 / p95 ms" for lvl in levels)
              + f" | ratio {high:,}/{low:,} p50 / p95 |")
    print(header)
    print("|" + "---|" * (len(levels) + 2))
    worst = 0.0
    for call in rows[low]:
        cells = [f"{rows[lvl][call][0] * 1e3:.1f} / {rows[lvl][call][1] * 1e3:.1f}" for lvl in levels]
        ratios = [rows[high][call][i] / rows[low][call][i] for i in (0, 1)]
        worst = max(worst, *ratios)
        print(f"| {call} | " + " | ".join(cells) + f" | {ratios[0]:.2f} / {ratios[1]:.2f} |")
    print(f"\nworst ratio {worst:.2f} (target <= 2)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
