"""A NATS node dies mid-run (issue 11): the stack on a 3-node JetStream cluster, replicas 3.

Three ``nats-server -js`` processes on loopback form one cluster (scribe_harness NatsCluster);
the services connect with every node's URL and declare their streams and buckets with 3
replicas, as the chart runs them. With jobs queued and running, the node that leads the
``SCRIBE_JOBS`` stream is SIGKILLed, and restarted on its ports and store once the survivors took
over. Nothing may be lost or doubled: every job ends COMPLETED exactly once (one transcript, one
"completed" event, no FAILED), and every service reports SERVING again without being restarted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe.v1 import ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc
from scribe_harness import FIXTURES, Stack, wait_for
from scribe_harness import submit as harness_submit
from scribe_harness.servers import NatsCluster
from scribe_libs.bus import EVENTS_STREAM, JOBS_STREAM
from scribe_libs.jobs import RESULTS_BUCKET

S = jobs_pb2.JobState
SERVICES = ("results", "ingest", "postprocess", "transcriber")
JOBS = 12
AUDIO = ("numbers_en.wav", "speech_en.wav", "terms_en.wav")
SERVING = health_pb2.HealthCheckResponse.SERVING

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"), size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def stack(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(cluster.url, tmp_path_factory.mktemp("stack"), nats_replicas=3)
    try:
        stack.start("results")
        stack.start("ingest")
        # Short ack waits: a message whose ack was lost with the node comes back quickly.
        stack.start("postprocess", ack_wait_seconds=6)
        stack.start("transcriber", ack_wait_seconds=6, batch_size=1)
        yield stack
    finally:
        stack.close()


class HealthLog:
    """Polls every service's gRPC health every 0.05 s in a thread; keeps the status changes."""

    def __init__(self, stack: Stack):
        self.channels = {name: grpc.insecure_channel(stack.addresses[name]) for name in SERVICES}
        self.changes: list[tuple[float, str, int]] = []  # (monotonic time, service, status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-log", daemon=True)

    def _run(self) -> None:
        last: dict[str, int] = {}
        stubs = {name: health_pb2_grpc.HealthStub(ch) for name, ch in self.channels.items()}
        while not self._stop.is_set():
            for name, stub in stubs.items():
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    status = -1
                if last.get(name) != status:
                    last[name] = status
                    self.changes.append((time.monotonic(), name, status))
            self._stop.wait(0.05)

    def __enter__(self) -> HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for channel in self.channels.values():
            channel.close()

    def outages(self, since: float) -> dict[str, float]:
        """Seconds each service was not SERVING after ``since`` (0 for none), until it was again."""
        out: dict[str, float] = {}
        for name in SERVICES:
            down_at = None
            total = 0.0
            for at, service, status in self.changes:
                if service != name or at < since:
                    continue
                if status != SERVING and down_at is None:
                    down_at = at
                elif status == SERVING and down_at is not None:
                    total += at - down_at
                    down_at = None
            out[name] = round(total + (time.monotonic() - down_at if down_at is not None else 0.0), 2)
        return out


def jetstream(stack: Stack, what):  # noqa: ANN001, ANN201 - an async function of a JetStreamContext; its result
    """Run ``what(js)`` on a client connection of its own to the cluster."""
    import nats

    async def run():  # noqa: ANN202
        nc = await nats.connect(stack.nats_url.split(","))
        try:
            return await what(nc.jetstream())
        finally:
            await nc.close()

    return stack.run(run(), timeout=60)


def connected_services(cluster: NatsCluster, index: int) -> list[str]:
    """Names of the service connections (nats-py ``name``) node ``index`` serves."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.monitor_ports[index]}/connz", timeout=5) as reply:
        conns = json.loads(reply.read()).get("connections") or []
    return sorted(c["name"] for c in conns if c.get("name"))


async def move_leaders(js, streams: list[str], server: str) -> None:  # noqa: ANN001 - a JetStreamContext
    """Make ``server`` the leader of each stream (JetStream stepdown with a preferred placement)."""
    import asyncio
    import json

    for stream in streams:
        for _ in range(50):
            if (await js.stream_info(stream)).cluster.leader == server:
                break
            with contextlib.suppress(Exception):  # refused while a previous stepdown settles
                await js._nc.request(  # noqa: SLF001 - nats-py has no stepdown call
                    f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                    json.dumps({"placement": {"preferred": server}}).encode(), timeout=5,
                )
            await asyncio.sleep(0.2)
        assert (await js.stream_info(stream)).cluster.leader == server, f"{stream} leader did not move to {server}"


def get(results, job_id: str) -> jobs_pb2.Job:  # noqa: ANN001 - a Results stub
    return results.GetJob(results_pb2.GetJobRequest(job_id=job_id), timeout=10).job


#: (monotonic time, code) of every GetJob that failed during the outage: what a polling client saw.
REFUSED: list[tuple[float, str]] = []


def counts(results, jobs) -> dict[str, int] | None:  # noqa: ANN001
    """Jobs per state; None when a GetJob failed with UNAVAILABLE or DEADLINE_EXCEEDED (kept in REFUSED).

    While a stream of the job records elects a leader, a read waits for it (the Bus retries for up to
    scribe_libs.bus.ELECTION_RETRY_SECONDS) and may outlive the call's 10 s deadline: a client retries.
    """
    states: dict[str, int] = {}
    for job in jobs:
        try:
            name = S.Name(get(results, job.job_id).state)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            REFUSED.append((time.monotonic(), exc.code().name))
            return None
        states[name] = states.get(name, 0) + 1
    return states


def test_every_job_completes_once_when_a_nats_node_is_killed_and_restarted(stack: Stack, cluster: NatsCluster):
    t0 = time.monotonic()
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))

    async def replicas(js):  # noqa: ANN001, ANN202
        info = await js.stream_info(JOBS_STREAM)
        kv = await js.stream_info("KV_scribe_jobs")
        return info.config.num_replicas, kv.config.num_replicas, info.cluster.leader

    jobs_replicas, kv_replicas, _ = jetstream(stack, replicas)
    assert (jobs_replicas, kv_replicas) == (3, 3), "the services declare 3 replicas on the cluster"
    # The victim: the node most services are connected to (their clients must fail over), made
    # the leader of the job queue, of the job records and of the job events (their RAFT groups
    # must elect anew; a state change's event is retried through the election, scribe_libs.jobs).
    clients = {i: connected_services(cluster, i) for i in range(len(cluster.nodes))}
    victim = max(clients, key=lambda i: len(clients[i]))
    jetstream(stack, lambda js: move_leaders(js, [JOBS_STREAM, "KV_scribe_jobs", EVENTS_STREAM], f"n{victim}"))

    jobs = [harness_submit(ingest, FIXTURES / AUDIO[i % len(AUDIO)], model="tiny.en") for i in range(JOBS)]
    wait_for(lambda: any(get(results, j.job_id).state == S.JOB_STATE_RUNNING for j in jobs), 60, "a job to run")
    before = counts(results, jobs)
    assert before is not None
    assert before.get("JOB_STATE_QUEUED", 0) >= 4, before  # the kill meets a queue, not an idle stack

    with HealthLog(stack) as health:
        killed_at = time.monotonic()
        cluster.kill(victim)
        # The survivors elect leaders and the work goes on on two nodes, then the node comes back.
        cluster.wait_ready()
        elected_s = time.monotonic() - killed_at

        def one_more_completed():  # noqa: ANN202
            now = counts(results, jobs)
            return now if now and now.get("JOB_STATE_COMPLETED", 0) > before.get("JOB_STATE_COMPLETED", 0) else None

        done_on_two = wait_for(one_more_completed, 60, "a job to complete on the two surviving nodes", interval=0.3)
        done_on_two_s = time.monotonic() - killed_at
        restarted_at = time.monotonic()
        cluster.restart(victim)
        rejoined_s = time.monotonic() - restarted_at

        def all_terminal():  # noqa: ANN202
            try:
                views = [get(results, j.job_id) for j in jobs]
            except grpc.RpcError as exc:
                REFUSED.append((time.monotonic(), exc.code().name))
                return None
            ended = (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
            return views if all(v.state in ended for v in views) else None

        views = wait_for(all_terminal, 90, "every job to finish", interval=0.3)
        finished_s = time.monotonic() - killed_at
        for name in SERVICES:  # SERVING again, without a restart of any service
            wait_for(lambda name=name: health.changes and _serving(stack, name), 30, f"{name} to be SERVING")
        outages = health.outages(killed_at)

    summary = [(v.job_id[:8], S.Name(v.state), v.delivery_count, v.error_reason) for v in views]
    print(
        f"\nkilled n{victim} (leader of SCRIBE_JOBS, KV_scribe_jobs and SCRIBE_EVENTS, clients {clients[victim]}) with"
        f" {before}; survivors ready after {elected_s:.1f} s; a job completed on two nodes"
        f" {done_on_two_s:.1f} s after the kill ({done_on_two}); n{victim} rejoined in {rejoined_s:.1f} s;"
        f" GetJob refused {len(REFUSED)}x {sorted({c for _, c in REFUSED})} over"
        f" {(REFUSED[-1][0] - killed_at) if REFUSED else 0:.1f} s after the kill;"
        f" all {len(jobs)} jobs ended {finished_s:.1f} s after the kill; not SERVING (s): {outages};"
        f" test {time.monotonic() - t0:.1f} s\njobs: {summary}"
    )
    assert [v.state for v in views] == [S.JOB_STATE_COMPLETED] * len(jobs), summary

    results_dir = stack.workdir / "objects" / RESULTS_BUCKET
    for job in jobs:
        assert (results_dir / job.job_id / "transcript.json").is_file(), job.job_id
        assert results.GetTranscript(results_pb2.GetTranscriptRequest(job_id=job.job_id), timeout=10).content

    async def completed(js):  # noqa: ANN001, ANN202
        info = await js.stream_info(EVENTS_STREAM, subjects_filter="scribe.events.*.completed")
        return {s.split(".")[2]: int(n) for s, n in (info.state.subjects or {}).items()}

    events = jetstream(stack, completed)
    assert {j.job_id: events.get(j.job_id, 0) for j in jobs} == {j.job_id: 1 for j in jobs}
    listed = results.ListJobs(results_pb2.ListJobsRequest(page_size=1000), timeout=30).jobs
    assert len(listed) == len(jobs)

    # New work after the storm, on the healed cluster.
    late = harness_submit(ingest, FIXTURES / "numbers_en.wav", model="tiny.en")
    wait_for(lambda: get(results, late.job_id).state == S.JOB_STATE_COMPLETED, 60, "a job after the restart")


def _serving(stack: Stack, name: str) -> bool:
    with grpc.insecure_channel(stack.addresses[name]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
    return reply.status == SERVING
