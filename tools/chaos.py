"""Kill test: jobs through the embedded stack while one transcriber is SIGKILLed and restarted.

Issue 5, "Proof": 100 short jobs through the local stack (``scribe up`` with 2 transcriber
processes); one transcriber is SIGKILLed at random moments and restarted, again and again,
while the jobs run. Expected: every job COMPLETED, one transcript per job, no duplicate.

What is counted, from what a user (or operator) can see:

- ``completed``: jobs whose record (Results.ListJobs) says COMPLETED;
- ``transcripts``: jobs with a ``transcript.json`` in the local object store
  (``$SCRIBE_HOME/objects/scribe-results/<job_id>/``);
- ``duplicates``: "completed" events beyond the first per job on the SCRIBE_EVENTS stream
  (subject ``scribe.events.<job_id>.completed``), plus completed events and job records of jobs
  that were never submitted;
- ``kills``: SIGKILLs sent; ``kills_mid_job``: of those, how many hit the victim while it held a
  RUNNING job;
- ``redeliveries``: jobs whose ``delivery_count`` > 1 (their message went to a second worker or
  a second time to a restarted one).

The ack wait is short (``--ack-wait``, default 6 s) so that a killed worker's job is redelivered
quickly; the kill interval is drawn uniformly from ``--kill-every MIN MAX`` seconds after the
restarted worker is SERVING again.

Usage::

    python tools/chaos.py --jobs 100 --workers 2 --ack-wait 6 --max-deliver 10 --kill-every 2 6

Exit code 0 when jobs == completed == transcripts and duplicates == 0, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "libs", REPO / "cli", *sorted((REPO / "services").glob("*"))):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import grpc  # noqa: E402

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc  # noqa: E402
from scribe_cli import stack  # noqa: E402
from scribe_libs.bus import EVENTS_STREAM  # noqa: E402
from scribe_libs.jobs import RESULTS_BUCKET, is_terminal, state_name  # noqa: E402

DEFAULT_AUDIO = REPO / "tests" / "fixtures" / "numbers_en.wav"
_CHUNK = 64 * 1024
S = jobs_pb2.JobState


@dataclass
class ChaosReport:
    """The figures of one run."""

    jobs: int = 0
    completed: int = 0
    transcripts: int = 0
    duplicates: int = 0
    kills: int = 0
    kills_mid_job: int = 0
    redeliveries: int = 0
    wall_seconds: float = 0.0
    #: Final state name -> count (COMPLETED, FAILED, ... and "MISSING" for a record that vanished).
    states: dict[str, int] = field(default_factory=dict)
    #: error_reason -> count for FAILED jobs.
    failures: dict[str, int] = field(default_factory=dict)
    #: Highest delivery_count seen.
    max_delivery_count: int = 0
    #: Job records that exist beyond the submitted jobs (should be 0).
    extra_records: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was lost or duplicated."""
        return self.jobs == self.completed == self.transcripts and self.duplicates == 0 and self.extra_records == 0

    def lines(self) -> list[str]:
        """The figures as ``name: value`` lines (for the issue note)."""
        out = [
            f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}"
            for k, v in asdict(self).items()
            if k not in ("states", "failures")
        ]
        out.append("states: " + ", ".join(f"{k}={v}" for k, v in sorted(self.states.items())))
        if self.failures:
            out.append("failures: " + ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())))
        return out


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (stack.up copies os.environ into each service)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _submit(data: bytes, filename: str) -> jobs_pb2.Job:
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))

    def requests() -> Iterator[ingest_pb2.CreateJobRequest]:
        yield ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec(filename=filename))
        for i in range(0, len(data), _CHUNK):
            yield ingest_pb2.CreateJobRequest(audio=data[i : i + _CHUNK])

    return ingest.CreateJob(requests(), timeout=60).job


def _list_jobs(results: results_pb2_grpc.ResultsStub, state: int = 0) -> list[jobs_pb2.Job]:
    jobs: list[jobs_pb2.Job] = []
    token = ""
    while True:
        reply = results.ListJobs(results_pb2.ListJobsRequest(page_size=1000, page_token=token, state=state), timeout=30)
        jobs.extend(reply.jobs)
        token = reply.next_page_token
        if not token:
            return jobs


def _completed_events(nats_url: str) -> dict[str, int]:
    """job_id -> number of messages on ``scribe.events.<job_id>.completed`` in SCRIBE_EVENTS."""
    import nats

    async def read() -> dict[str, int]:
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
        try:
            info = await nc.jetstream().stream_info(EVENTS_STREAM, subjects_filter="scribe.events.*.completed")
            return {subject.split(".")[2]: int(count) for subject, count in (info.state.subjects or {}).items()}
        finally:
            await nc.close()

    return asyncio.run(read())


class _Chaos(threading.Thread):
    """SIGKILLs ``victim`` at random moments and restarts it, until ``stop`` is set."""

    def __init__(self, victim: str, interval: tuple[float, float], rng: random.Random):
        super().__init__(name="chaos", daemon=True)
        self.victim = victim
        self.interval = interval
        self.rng = rng
        self.stop = threading.Event()
        self.kills = 0
        self.kills_mid_job = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            results = results_pb2_grpc.ResultsStub(stack.channel("results"))
            worker_id = stack.load_state()["services"][self.victim]["env"]["SCRIBE_TRANSCRIBER_WORKER_ID"]
            while not self.stop.wait(self.rng.uniform(*self.interval)):
                running = _list_jobs(results, S.JOB_STATE_RUNNING)
                pid = stack.load_state()["services"][self.victim]["pid"]
                os.kill(pid, signal.SIGKILL)
                self.kills += 1
                self.kills_mid_job += any(j.worker_id == worker_id for j in running)
                if self.stop.is_set():
                    stack.restart(self.victim)  # leave the stack whole for `down`
                    return
                stack.restart(self.victim)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def run_chaos(
    jobs: int = 100,
    workers: int = 2,
    victim: str = "transcriber-1",
    kill_every: tuple[float, float] = (2.0, 6.0),
    ack_wait: float = 6.0,
    max_deliver: int = 10,
    audio: Path = DEFAULT_AUDIO,
    timeout: float = 900.0,
    seed: int | None = None,
    home: Path | None = None,
    log: bool = True,
) -> ChaosReport:
    """Start a stack, run ``jobs`` jobs of ``audio`` while killing ``victim``; count what came out.

    Args:
        jobs: Jobs submitted (all at once, sequentially, right after start-up).
        workers: Transcriber processes (``scribe up --workers``).
        victim: Instance SIGKILLed and restarted (``transcriber-<i>``).
        kill_every: Seconds between a restart being SERVING and the next kill, drawn uniformly.
        ack_wait: JetStream ack wait of the job consumer, seconds (a dead worker's job is
            redelivered after it).
        max_deliver: Deliveries of a job message before the job is FAILED. Higher than the
            product default (3) because the kill moments are random: the same job may be hit
            more than twice, and that FAILED path is proven on its own
            (tests/integration/test_lifecycle_limits.py); this run is about loss and duplicates.
        audio: Audio file of every job.
        timeout: Seconds allowed for all jobs to reach a terminal state.
        seed: Random seed of the kill moments (None: from the clock).
        home: ``$SCRIBE_HOME`` of the stack (None: a new temporary directory).
        log: Print progress to stderr.

    Returns:
        The figures (see :class:`ChaosReport`); the stack is stopped before returning.

    Raises:
        stack.StackError: the stack did not start.
        TimeoutError: jobs still not terminal after ``timeout``.
    """
    rng = random.Random(seed)
    tmp = None
    if home is None:
        tmp = tempfile.TemporaryDirectory(prefix="scribe-chaos-")
        home = Path(tmp.name)
    env = {
        "SCRIBE_HOME": str(home),
        "SCRIBE_TRANSCRIBER_ACK_WAIT_SECONDS": str(ack_wait),
        "SCRIBE_TRANSCRIBER_MAX_DELIVER": str(max_deliver),
        # Two workers share the machine's cores: one decoding thread each avoids oversubscription.
        "SCRIBE_TRANSCRIBER_CPU_THREADS": "1",
        "SCRIBE_TRANSCRIBER_BATCH_SIZE": "1",
        "SCRIBE_TRANSCRIBER_MODEL_STORE__CACHE_DIR": str(home / "models"),
        "SCRIBE_TRANSCRIBER_MODEL_STORE__ALLOW_DOWNLOAD": "false",
        "SCRIBE_API_KEY": "",
    }
    report = ChaosReport(jobs=jobs)
    data = audio.read_bytes()

    def say(message: str) -> None:
        if log:
            print(f"[chaos {time.monotonic() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    start = time.monotonic()
    try:
        with _environment(env):
            # Free ports only: chaos runs beside a user's `scribe up` and beside the test suite.
            state = stack.up(stack.UpOptions(models=["tiny.en"], workers=workers, port=0, metrics_port=0,
                                             http_port=0))
            try:
                say(f"stack up: {', '.join(state['services'])}")
                start = time.monotonic()
                submitted = [_submit(data, audio.name).job_id for _ in range(jobs)]
                say(f"{len(submitted)} jobs submitted")
                chaos = _Chaos(victim, kill_every, rng)
                chaos.start()
                results = results_pb2_grpc.ResultsStub(stack.channel("results"))
                deadline = time.monotonic() + timeout
                wanted = set(submitted)
                last_report = 0.0
                while True:
                    listed = {j.job_id: j for j in _list_jobs(results)}
                    done = sum(1 for i in wanted if i in listed and is_terminal(listed[i]))
                    if time.monotonic() - last_report > 10:
                        say(f"{done}/{jobs} terminal, {chaos.kills} kills")
                        last_report = time.monotonic()
                    if done == jobs or chaos.error is not None:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{jobs - done} jobs not terminal after {timeout:.0f} s")
                    chaos.stop.wait(0.5)  # poll interval of the progress view
                report.wall_seconds = time.monotonic() - start
                chaos.stop.set()
                chaos.join(timeout=120)
                if chaos.error is not None:
                    raise chaos.error
                report.kills, report.kills_mid_job = chaos.kills, chaos.kills_mid_job

                # States from GetJob (the record itself); ListJobs only to find records beyond the
                # submitted ones (it has been seen to come back empty once under load: retried).
                for _ in range(5):
                    listed = {j.job_id: j for j in _list_jobs(results)}
                    if wanted <= set(listed):
                        break
                for job_id in submitted:
                    try:
                        job = results.GetJob(results_pb2.GetJobRequest(job_id=job_id), timeout=10).job
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.NOT_FOUND:
                            raise
                        job = None
                    name = state_name(job.state) if job is not None else "MISSING"
                    report.states[name] = report.states.get(name, 0) + 1
                    if job is None:
                        continue
                    report.completed += job.state == S.JOB_STATE_COMPLETED
                    report.redeliveries += job.delivery_count > 1
                    report.max_delivery_count = max(report.max_delivery_count, job.delivery_count)
                    if job.state == S.JOB_STATE_FAILED:
                        report.failures[job.error_reason] = report.failures.get(job.error_reason, 0) + 1
                report.extra_records = len(set(listed) - wanted)
                results_dir = home / "objects" / RESULTS_BUCKET
                report.transcripts = sum(1 for i in submitted if (results_dir / i / "transcript.json").is_file())
                events = _completed_events(state["nats"]["url"])
                report.duplicates = sum(n - 1 for n in events.values() if n > 1)
                report.duplicates += sum(n for i, n in events.items() if i not in wanted)
            finally:
                stack.down()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: run the kill test and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--victim", default="transcriber-1")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN", "MAX"))
    parser.add_argument("--ack-wait", type=float, default=6.0)
    parser.add_argument("--max-deliver", type=int, default=10)
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--home", type=Path, default=None, help="SCRIBE_HOME (default: a temporary directory)")
    args = parser.parse_args(argv)
    report = run_chaos(
        jobs=args.jobs, workers=args.workers, victim=args.victim, kill_every=tuple(args.kill_every),
        ack_wait=args.ack_wait, max_deliver=args.max_deliver, audio=args.audio, timeout=args.timeout,
        seed=args.seed, home=args.home,
    )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
