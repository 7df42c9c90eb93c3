"""ListJobs over the job index (scribe_libs.jobindex) on a real nats-server.

What a caller sees: every job once, newest first, across pages; the filters (state, labels,
half-open create-time range); INVALID_PAGE_TOKEN for tokens it was not given; never another
owner's jobs. And what a page costs: the JetStream API requests the servicer makes for one page
are counted at the broker (a second connection subscribed to ``$JS.API.>``), so the cost is shown
by a count, not a timing.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from scribe.v1 import jobs_pb2, results_pb2
from scribe_libs import auth, jobindex
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.errors import InvalidArgument
from scribe_libs.jobs import JobStore, new_job_id
from scribe_libs.objectstore import LocalStore
from scribe_results.config import Settings
from scribe_results.servicer import ResultsServicer

S = jobs_pb2.JobState
RETENTION = 7 * 86400


class Broker:
    """Counts the JetStream API requests (direct gets, KV gets, stream info) seen by the server."""

    def __init__(self, nc):  # noqa: ANN001 - a nats-py client
        self.nc = nc
        self.count = 0

    async def start(self) -> None:
        async def seen(_msg) -> None:  # noqa: ANN001
            self.count += 1

        await self.nc.subscribe("$JS.API.>", cb=seen)
        await self.nc.flush()

    async def settle(self) -> int:
        """The count once every request already sent has been seen."""
        await asyncio.sleep(0.05)
        await self.nc.flush()
        return self.count


@pytest.fixture
async def env(nats_url, tmp_path):
    bus = await busmod.connect(NatsSettings(url=nats_url), "test-list", retention_seconds=RETENTION)
    sniffer = await nats.connect(nats_url)
    broker = Broker(sniffer)
    await broker.start()
    servicer = ResultsServicer(Settings(), bus, LocalStore(tmp_path))
    try:
        yield servicer, JobStore(bus), broker
    finally:
        await sniffer.close()
        await bus.close()


def as_caller(owner: str, admin: bool = False) -> None:
    """Make the current task's RPC principal ``owner`` (admin or jobs:read)."""
    scopes = frozenset({"admin"} if admin else {"jobs:read"})
    auth._current.set(auth.Principal(key_id=f"key-{owner}", owner=owner, scopes=scopes))  # noqa: SLF001


async def create(store: JobStore, owner: str, labels: dict[str, str] | None = None) -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        job_id=new_job_id(), owner=owner, state=S.JOB_STATE_QUEUED, pool="cpu",
        spec=jobs_pb2.JobSpec(labels=labels or {}),
    )
    await store.create(job)
    return job


async def list_page(servicer: ResultsServicer, **request) -> results_pb2.ListJobsResponse:
    return await servicer.ListJobs(results_pb2.ListJobsRequest(**request), None)


async def list_all(servicer: ResultsServicer, **request) -> tuple[list[str], int]:
    """Every job id over every page, and the number of pages."""
    ids: list[str] = []
    token, pages = "", 0
    while True:
        reply = await list_page(servicer, page_token=token, **request)
        ids += [j.job_id for j in reply.jobs]
        pages += 1
        token = reply.next_page_token
        if not token:
            return ids, pages


def owner_name(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}.*>"  # characters no subject token may hold


async def test_pages_give_every_job_once_newest_first(env):
    servicer, store, _ = env
    owner = owner_name("alice")
    created = [(await create(store, owner)).job_id for _ in range(23)]
    as_caller(owner)
    ids, pages = await list_all(servicer, page_size=5)
    assert ids == created[::-1]
    assert pages == 5
    first = await list_page(servicer, page_size=5)
    second = await list_page(servicer, page_size=5, page_token=first.next_page_token)
    assert [j.job_id for j in second.jobs] == created[::-1][5:10]
    assert (await list_page(servicer, page_size=100)).next_page_token == ""


async def test_filters_by_state_labels_and_half_open_create_time(env):
    servicer, store, _ = env
    owner = owner_name("carol")
    jobs = [await create(store, owner, {"team": "a" if i % 2 else "b", "n": str(i)}) for i in range(12)]
    for job in jobs[:4]:
        await store.transition(job.job_id, S.JOB_STATE_CANCELLED)
    as_caller(owner)
    newest_first = [j.job_id for j in jobs[::-1]]

    cancelled, _ = await list_all(servicer, page_size=3, state=S.JOB_STATE_CANCELLED)
    assert cancelled == [j.job_id for j in jobs[:4]][::-1]
    team_a, _ = await list_all(servicer, page_size=2, labels={"team": "a"})
    assert team_a == [j for j in newest_first if int(jobs[[x.job_id for x in jobs].index(j)].spec.labels["n"]) % 2]
    both, _ = await list_all(servicer, labels={"team": "a", "n": "3"}, state=S.JOB_STATE_CANCELLED)
    assert both == [jobs[3].job_id]
    assert (await list_all(servicer, labels={"team": "c"}))[0] == []
    assert (await list_all(servicer, labels={"nope": ""}))[0] == []

    after, before = jobs[3].create_time, jobs[9].create_time
    ranged, _ = await list_all(servicer, page_size=2, create_time_after=after, create_time_before=before)
    assert ranged == [j.job_id for j in jobs[3:9]][::-1]  # after inclusive, before exclusive
    only_after, _ = await list_all(servicer, create_time_after=jobs[10].create_time)
    assert only_after == [jobs[11].job_id, jobs[10].job_id]
    only_before, _ = await list_all(servicer, page_size=1, create_time_before=jobs[2].create_time)
    assert only_before == [jobs[1].job_id, jobs[0].job_id]
    assert (await list_all(servicer, create_time_after=before, create_time_before=after))[0] == []
    future = Timestamp(seconds=253402300799)  # 9999-12-31T23:59:59Z, the last valid one
    assert (await list_all(servicer, create_time_before=future))[0] == newest_first
    with pytest.raises(InvalidArgument) as caught:
        await list_page(servicer, create_time_before=Timestamp(seconds=2**40))
    assert (caught.value.reason, caught.value.field) == ("INVALID_TIMESTAMP", "create_time_before")


@pytest.mark.parametrize("token", ["-5", "-1", "0", "1", "5", "abc", "garbage!", " 5", "٣", "x" * 34, "A" * 34])
async def test_tokens_it_did_not_return_are_refused(env, token):
    servicer, _, _ = env
    as_caller(owner_name("dave"))
    with pytest.raises(InvalidArgument) as caught:
        await list_page(servicer, page_token=token)
    assert (caught.value.reason, caught.value.field) == ("INVALID_PAGE_TOKEN", "page_token")


async def test_a_token_of_another_filter_or_owner_is_refused(env):
    servicer, store, _ = env
    erin, frank = owner_name("erin"), owner_name("frank")
    for _ in range(3):
        await create(store, erin)
        await create(store, frank)
    as_caller(erin)
    token = (await list_page(servicer, page_size=1)).next_page_token
    assert token
    assert len((await list_page(servicer, page_size=1, page_token=token)).jobs) == 1
    for other in ({"state": S.JOB_STATE_QUEUED}, {"labels": {"a": "b"}}, {"create_time_after": Timestamp(seconds=1)}):
        with pytest.raises(InvalidArgument) as caught:
            await list_page(servicer, page_size=1, page_token=token, **other)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
    as_caller(frank)
    with pytest.raises(InvalidArgument) as caught:
        await list_page(servicer, page_size=1, page_token=token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    as_caller(erin, admin=True)
    with pytest.raises(InvalidArgument):
        await list_page(servicer, page_size=1, page_token=token)


async def test_a_forged_token_pointing_at_another_owners_entry_is_refused(env):
    servicer, store, _ = env
    gina, hank = owner_name("gina"), owner_name("hank")
    await create(store, gina)
    hanks = await create(store, hank)
    seq = (await store.index._get({}, subject=jobindex.owner_subject(hank))).seq  # noqa: SLF001
    digest = jobindex.filter_digest("list-jobs/1", gina, False, 0, [], None, None)
    as_caller(gina)
    with pytest.raises(InvalidArgument) as caught:
        await list_page(servicer, page_token=jobindex.encode_page_token(seq, digest))
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert hanks.job_id not in [j.job_id for j in (await list_page(servicer, page_size=1000)).jobs]


async def test_another_owners_jobs_are_never_listed_but_an_admin_sees_all(env):
    servicer, store, _ = env
    ivy, jack = owner_name("ivy"), owner_name("jack")
    mark = {"run": uuid.uuid4().hex}
    ivys = [(await create(store, ivy, mark)).job_id for _ in range(4)]
    jacks = [(await create(store, jack, mark)).job_id for _ in range(3)]
    as_caller(ivy)
    assert (await list_all(servicer, page_size=2))[0] == ivys[::-1]
    as_caller(jack)
    assert (await list_all(servicer, page_size=2))[0] == jacks[::-1]
    as_caller(owner_name("nobody"))
    assert (await list_all(servicer))[0] == []
    as_caller("root", admin=True)
    everyone, _ = await list_all(servicer, page_size=2, labels=mark)
    assert everyone == (ivys + jacks)[::-1]
    by_id = {j.job_id: j for j in [await store.get(i) for i in ivys + jacks]}
    ranged, _ = await list_all(
        servicer, page_size=2, labels=mark,
        create_time_after=by_id[ivys[1]].create_time, create_time_before=by_id[jacks[2]].create_time,
    )
    assert ranged == (ivys[1:] + jacks[:2])[::-1]


async def test_deleted_records_are_skipped(env):
    servicer, store, _ = env
    owner = owner_name("kim")
    ids = [(await create(store, owner)).job_id for _ in range(5)]
    await store.delete(ids[2])
    as_caller(owner)
    assert (await list_all(servicer, page_size=2))[0] == [ids[4], ids[3], ids[1], ids[0]]


async def test_concurrent_creates_of_one_owner_all_land_in_the_index(env):
    servicer, store, _ = env
    owner = owner_name("lee")
    stores = [store] + [JobStore(store.bus) for _ in range(3)]  # four writers: like four ingest replicas
    jobs = await asyncio.gather(*(create(stores[i % 4], owner) for i in range(60)))
    as_caller(owner)
    listed, _ = await list_all(servicer, page_size=7)
    assert sorted(listed) == sorted(j.job_id for j in jobs) and len(listed) == 60
    by_id = {j.job_id: j.create_time.ToNanoseconds() for j in jobs}
    times = [by_id[i] for i in listed]
    assert times == sorted(times, reverse=True)  # newest first by create_time


async def test_a_page_short_of_matches_still_gives_a_token(env):
    """AIP-158: the scan budget (10 x page_size + 100 entries) ends a page early, with a token."""
    servicer, store, _ = env
    owner = owner_name("max")
    oldest = await create(store, owner)
    await store.transition(oldest.job_id, S.JOB_STATE_CANCELLED)
    await asyncio.gather(*(create(store, owner) for _ in range(150)))
    as_caller(owner)
    first = await list_page(servicer, page_size=1, state=S.JOB_STATE_CANCELLED)
    assert first.jobs == [] and first.next_page_token
    ids, pages = await list_all(servicer, page_size=1, state=S.JOB_STATE_CANCELLED)
    assert ids == [oldest.job_id] and pages == 2


async def test_first_page_cost_does_not_grow_with_the_number_of_jobs(env):
    servicer, store, broker = env
    small, big = owner_name("nia"), owner_name("oz")
    for _ in range(10):
        await create(store, small)
    big_jobs: list[jobs_pb2.Job] = []
    for _ in range(20):
        big_jobs += await asyncio.gather(*(create(store, big) for _ in range(100)))
    big_jobs.sort(key=lambda j: j.create_time.ToNanoseconds())

    async def cost(**request) -> tuple[int, int]:
        before = await broker.settle()
        reply = await list_page(servicer, page_size=10, **request)
        return await broker.settle() - before, len(reply.jobs)

    as_caller(small)
    small_cost, n = await cost()
    assert n == 10
    as_caller(big)
    big_cost, n = await cost()
    assert n == 10
    # One read of the subject's last entry, then one entry and one record per job.
    assert small_cost <= 2 * 10 + 1 and big_cost <= 2 * 10 + 1, (small_cost, big_cost)
    middle = big_jobs[1000].create_time
    deep_cost, n = await cost(create_time_before=middle)
    assert n == 10 and deep_cost <= 2 * 10 + 2, deep_cost
    as_caller("root", admin=True)
    admin_cost, n = await cost()
    assert n == 10 and admin_cost <= 2 * 10 + 2, admin_cost
    print(f"first page reads: 10 jobs {small_cost}, 2,000 jobs {big_cost}, "
          f"2,000 jobs from the middle {deep_cost}, admin over all {admin_cost}")
