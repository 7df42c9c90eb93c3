"""Nothing left behind, nothing held: temp files after crashes, revoked keys, idle sessions, big pages.

- Each service clears its own temporary directory (``<temp_dir>/scribe-<service>``) at start,
  where a SIGKILLed instance's files would be (planted here), and a finished job or call leaves
  nothing in it.
- A key removed from the key file ends its open WatchJob and StreamingRecognize streams with
  UNAUTHENTICATED ``KEY_REVOKED`` within a few seconds.
- A live session that sends only keepalives ends after ``max_audio_gap_seconds``.
- ``language=ko`` on a gateway whose workers only have tiny.en is INVALID_ARGUMENT
  ``MODEL_LANGUAGE_MISMATCH``.
- ListJobs pages stay under gRPC's 4 MiB whatever the records hold; malformed page tokens are
  INVALID_ARGUMENT ``INVALID_PAGE_TOKEN``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest

from scribe.v1 import ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, streaming_pb2, streaming_pb2_grpc
from scribe_cli.stream import call_requests, load_call_audio
from scribe_harness import FIXTURES, submit
from scribe_libs.errors import error_info

S = jobs_pb2.JobState
SPEECH = FIXTURES / "speech_en.wav"
KEEPALIVE = streaming_pb2.StreamingRecognizeRequest(
    control=streaming_pb2.StreamingControl(action=streaming_pb2.CONTROL_ACTION_KEEPALIVE)
)
SERVICES = {"ingest": "upload_dir", "transcriber": "temp_dir", "stream_gateway": "temp_dir"}
OWNED = {"ingest": "scribe-ingest", "transcriber": "scribe-transcriber", "stream_gateway": "scribe-stream-gateway"}


def plant(owned: Path) -> list[Path]:
    """What a SIGKILLed instance leaves: its lock file (no longer held), its items, stray files."""
    dead = owned / "4242-deadbeef"
    (dead / "job-x").mkdir(parents=True)
    (dead / "job-x" / "audio").write_bytes(b"\0" * 1_000_000)
    (owned / "4242-deadbeef.lock").write_bytes(b"")
    (owned / "scribe-upload-old").mkdir()
    (owned / "scribe-upload-old" / "audio").write_bytes(b"\0" * 1000)
    (owned / "scribe-call-old.wav").write_bytes(b"RIFF")
    return [dead, owned / "4242-deadbeef.lock", owned / "scribe-upload-old", owned / "scribe-call-old.wav"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    out = {}
    for service in SERVICES:
        base = tmp_path_factory.mktemp(f"tmp-{service}")
        owned = base / OWNED[service]
        owned.mkdir()
        out[service] = (base, plant(owned))
    return out


@pytest.fixture(scope="module")
def stack(stack_factory, bases):
    stack = stack_factory()
    stack.start("results")
    stack.start("postprocess")
    # A pool no worker serves keeps its jobs QUEUED (a long-running watch).
    stack.start("ingest", upload_dir=str(bases["ingest"][0]), pools={"cpu": ["tiny.en"], "nobody": ["small"]})
    stack.start("transcriber", temp_dir=str(bases["transcriber"][0]))
    stack.start("stream_gateway", max_lead_seconds=-1, temp_dir=str(bases["stream_gateway"][0]))
    return stack


@pytest.fixture
def keys_file(stack):
    """The stack's key file, restored after the test (tests revoke keys by rewriting it)."""
    original = stack.keys_file.read_text()
    yield stack.keys_file
    stack.keys_file.write_text(original)
    time.sleep(1.1)  # the key rings re-read the file at most once a second


def revoke(keys_file: Path, key_id: str) -> None:
    data = json.loads(keys_file.read_text())
    data["keys"] = [k for k in data["keys"] if k["id"] != key_id]
    keys_file.write_text(json.dumps(data))


def leftovers(owned: Path) -> list[str]:
    """Files under the owned directory other than the live instances' locks and (empty) directories."""
    return sorted(str(p.relative_to(owned)) for p in owned.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# --- 1. temporary files -------------------------------------------------------------------------


@pytest.mark.parametrize("service", list(SERVICES))
def test_start_clears_what_a_killed_instance_left(stack, bases, service):
    base, planted = bases[service]
    for path in planted:
        assert not path.exists(), f"{service} left {path.name} from a killed instance"
    # What remains is the running instance's own directory and its (held) lock.
    entries = list((base / OWNED[service]).iterdir())
    assert any(p.is_dir() for p in entries) and any(p.name.endswith(".lock") for p in entries), entries
    assert leftovers(base / OWNED[service]) == []


def test_a_finished_job_leaves_no_temp_files(stack, bases):
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    job = submit(ingest, FIXTURES / "numbers_en.wav")
    last = list(results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=120))[-1].job
    assert last.state == S.JOB_STATE_COMPLETED
    for service in ("ingest", "transcriber"):
        owned = bases[service][0] / OWNED[service]
        assert leftovers(owned) == [], service
        instance_dirs = [p for p in owned.iterdir() if p.is_dir()]
        assert instance_dirs and all(not any(d.iterdir()) for d in instance_dirs), service


def test_a_finished_retained_call_leaves_no_temp_files(stack, bases):
    gateway = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))
    data, enum, rate = load_call_audio(SPEECH)
    cfg = streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate, retain_audio=True)
    responses = list(gateway.StreamingRecognize(call_requests(cfg, data), timeout=120))
    assert responses[-1].summary.job_id
    owned = bases["stream_gateway"][0] / OWNED["stream_gateway"]
    assert leftovers(owned) == []


# --- 2. revoked keys ----------------------------------------------------------------------------


def ended(call) -> tuple[threading.Thread, dict]:
    """Drain a response stream in a thread; the dict gets its error and the time it ended."""
    box: dict = {}

    def drain():
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            box["error"] = exc
        box["at"] = time.monotonic()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return thread, box


def test_revoking_a_key_ends_its_open_watch(stack, keys_file):
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest", "bob"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results", "bob"))
    job = submit(ingest, FIXTURES / "numbers_en.wav", model="small")  # pool "nobody": stays QUEUED
    call = results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=30)
    thread, box = ended(call)
    time.sleep(1.5)
    assert thread.is_alive(), "the watch of a queued job ended on its own"
    revoked_at = time.monotonic()
    revoke(keys_file, "bob")
    thread.join(25)
    error = box.get("error")
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert error_info(error).reason == "KEY_REVOKED"
    assert box["at"] - revoked_at < 5, box["at"] - revoked_at
    admin = results_pb2_grpc.ResultsStub(stack.channel("results"))
    admin.CancelJob(results_pb2.CancelJobRequest(job_id=job.job_id), timeout=10)


def test_revoking_a_key_ends_its_open_stream(stack, keys_file):
    gateway = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway", "alice"))
    data, enum, rate = load_call_audio(SPEECH)
    stop = threading.Event()

    def requests():
        yield streaming_pb2.StreamingRecognizeRequest(
            config=streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate)
        )
        yield streaming_pb2.StreamingRecognizeRequest(audio=data[:16000])
        while not stop.wait(0.25):  # a quiet caller: keepalives only
            yield KEEPALIVE

    call = gateway.StreamingRecognize(requests(), timeout=30)
    thread, box = ended(call)
    time.sleep(2.0)
    assert thread.is_alive(), "the session ended on its own"
    revoked_at = time.monotonic()
    revoke(keys_file, "alice")
    thread.join(25)
    stop.set()
    error = box.get("error")
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert error_info(error).reason == "KEY_REVOKED"
    assert box["at"] - revoked_at < 5, box["at"] - revoked_at


# --- 3. keepalive-only sessions -----------------------------------------------------------------


def test_keepalives_alone_do_not_hold_a_session(stack):
    stack.start("stream_gateway", name="gw-gap", max_lead_seconds=-1, max_audio_gap_seconds=2.0)
    try:
        gateway = streaming_pb2_grpc.StreamGatewayStub(stack.channel("gw-gap"))
        data, enum, rate = load_call_audio(SPEECH)

        def requests():
            yield streaming_pb2.StreamingRecognizeRequest(
                config=streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate)
            )
            for _ in range(80):  # 20 s of keepalives, no audio
                time.sleep(0.25)
                yield KEEPALIVE

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            list(gateway.StreamingRecognize(requests(), timeout=60))
        took = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "SESSION_IDLE"
        assert took < 8, took
    finally:
        stack.stop("gw-gap")


# --- 4. the realtime model's language -----------------------------------------------------------


def test_non_english_on_an_english_only_realtime_model_is_refused(stack):
    gateway = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))
    data, enum, rate = load_call_audio(SPEECH)
    cfg = streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate, language="ko")
    with pytest.raises(grpc.RpcError) as caught:
        list(gateway.StreamingRecognize(call_requests(cfg, data[:32000]), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "MODEL_LANGUAGE_MISMATCH"
    # English (and auto) still work on it.
    cfg = streaming_pb2.StreamingConfig(encoding=enum, sample_rate_hertz=rate, language="en")
    assert list(gateway.StreamingRecognize(call_requests(cfg, data[:32000]), timeout=60))[-1].summary


# --- 5. ListJobs --------------------------------------------------------------------------------


def test_list_pages_stay_under_the_message_limit(stack):
    """Records from before the filename limit (900 KB names, three owners) page instead of failing."""
    from scribe_libs import bus as busmod
    from scribe_libs.jobs import JobStore, new_job_id

    settings = stack.settings("results")
    ids = []

    async def plant_records():
        bus = await busmod.connect(settings.nats, "test-plant", retention_seconds=settings.retention_days * 86400)
        try:
            store = JobStore(bus)
            for owner in ("alice", "bob", "carol"):
                for _ in range(2):
                    job_id = new_job_id()
                    await store.create(jobs_pb2.Job(
                        job_id=job_id, owner=owner, state=S.JOB_STATE_FAILED, error_reason="X", pool="cpu",
                        spec=jobs_pb2.JobSpec(filename="n" * 900_000),
                    ))
                    ids.append(job_id)
        finally:
            await bus.close()

    stack.run(plant_records())
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    seen, token, pages = [], "", 0
    while True:
        reply = results.ListJobs(results_pb2.ListJobsRequest(page_size=100, page_token=token), timeout=30)
        assert reply.ByteSize() <= 1024 * 1024 + 1024
        seen += [j.job_id for j in reply.jobs]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    assert pages >= 6
    for job_id in ids:
        results.DeleteJob(results_pb2.DeleteJobRequest(job_id=job_id), timeout=30)


@pytest.mark.parametrize("token", ["-5", "-1", "abc", "1e3", " 5", "+5", "٣", "99999999999999999999999"])
def test_malformed_page_tokens_are_refused(stack, token):
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    with pytest.raises(grpc.RpcError) as caught:
        results.ListJobs(results_pb2.ListJobsRequest(page_token=token), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "INVALID_PAGE_TOKEN"


def test_list_pages_continue_with_their_token(stack):
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    every = [j.job_id for j in results.ListJobs(results_pb2.ListJobsRequest(page_size=1000), timeout=10).jobs]
    first = results.ListJobs(results_pb2.ListJobsRequest(page_size=1), timeout=10)
    assert [j.job_id for j in first.jobs] == every[:1]
    if len(every) > 1:
        assert first.next_page_token and first.next_page_token != "1"  # opaque, not an offset
        second = results.ListJobs(results_pb2.ListJobsRequest(page_size=1, page_token=first.next_page_token),
                                  timeout=10)
        assert [j.job_id for j in second.jobs] == every[1:2]
