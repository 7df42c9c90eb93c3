"""The object store contract, run against both the local store and S3 (moto on loopback)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from scribe_libs import objectstore
from scribe_libs.errors import InvalidArgument, Unavailable
from scribe_libs.objectstore import (
    EXPIRY_RULE_ID,
    STALE_TEMP_SECONDS,
    TEMP_PREFIX,
    BucketNotFound,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StoreSettings,
    open_store,
    parse_uri,
)


def s3_settings(endpoint: str) -> StoreSettings:
    return StoreSettings(
        kind="s3", endpoint=endpoint, access_key=SecretStr("test"), secret_key=SecretStr("test"), region="us-east-1"
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_store(StoreSettings(kind="local", root=tmp_path / "objects"))
    return open_store(s3_settings(request.getfixturevalue("s3_endpoint")))


@pytest.fixture
def bucket() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def ready(store: ObjectStore, bucket: str) -> ObjectStore:
    await store.ensure_bucket(bucket)
    return store


# --- contract: both stores --------------------------------------------------------------------


async def test_bytes_round_trip_and_overwrite(ready: ObjectStore, bucket: str) -> None:
    await ready.put_bytes(bucket, "results/job-1/transcript.txt", "안녕하세요\n".encode(), "text/plain")
    assert await ready.get_bytes(bucket, "results/job-1/transcript.txt") == "안녕하세요\n".encode()

    await ready.put_bytes(bucket, "results/job-1/transcript.txt", b"second")
    assert await ready.get_bytes(bucket, "results/job-1/transcript.txt") == b"second"
    assert await ready.list_keys(bucket) == ["results/job-1/transcript.txt"]


async def test_empty_object(ready: ObjectStore, bucket: str) -> None:
    await ready.put_bytes(bucket, "empty", b"")
    assert await ready.get_bytes(bucket, "empty") == b""
    assert (await ready.stat(bucket, "empty")).size == 0


async def test_file_round_trip(ready: ObjectStore, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)  # more than one copy chunk
    src = tmp_path / "in.wav"
    src.write_bytes(data)

    assert await ready.put_file(bucket, "audio/job-1/original", src, "audio/wav") == len(data)

    dst = tmp_path / "out" / "nested" / "audio.wav"  # parents do not exist yet
    await ready.get_file(bucket, "audio/job-1/original", dst)
    assert dst.read_bytes() == data
    assert [p.name for p in dst.parent.iterdir()] == ["audio.wav"]  # no temp file left beside it


async def test_stat_reports_size_and_utc_time(ready: ObjectStore, bucket: str) -> None:
    before = datetime.now(UTC)
    await ready.put_bytes(bucket, "a/b.json", b"x" * 1000)
    after = datetime.now(UTC)

    info = await ready.stat(bucket, "a/b.json")

    assert (info.bucket, info.key, info.size) == (bucket, "a/b.json", 1000)
    assert info.last_modified.utcoffset() == timedelta(0)
    # S3 reports whole seconds, so allow the truncation
    assert before - timedelta(seconds=2) <= info.last_modified <= after + timedelta(seconds=2)
    assert await ready.exists(bucket, "a/b.json")


async def test_missing_object(ready: ObjectStore, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound) as err:
        await ready.get_bytes(bucket, "audio/nope/original")
    assert err.value.reason == "OBJECT_NOT_FOUND"
    assert err.value.resource_type == "object"
    assert err.value.resource_name == f"{bucket}/audio/nope/original"

    with pytest.raises(ObjectNotFound):
        await ready.stat(bucket, "audio/nope/original")
    target = tmp_path / "never.wav"
    with pytest.raises(ObjectNotFound):
        await ready.get_file(bucket, "audio/nope/original", target)
    assert not target.exists()
    assert not await ready.exists(bucket, "audio/nope/original")


async def test_missing_bucket(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get_bytes(bucket, "k")
    with pytest.raises(ObjectNotFound):
        await store.stat(bucket, "k")
    with pytest.raises(BucketNotFound) as err:
        await store.put_bytes(bucket, "k", b"data")
    assert (err.value.reason, err.value.resource_name) == ("BUCKET_NOT_FOUND", bucket)
    assert not await store.exists(bucket, "k")
    assert await store.list_keys(bucket) == []
    assert await store.delete_prefix(bucket, "") == 0
    await store.delete(bucket, "k")


async def test_delete_is_idempotent(ready: ObjectStore, bucket: str) -> None:
    await ready.put_bytes(bucket, "audio/j/original", b"1")
    await ready.put_bytes(bucket, "audio/j/other", b"2")

    await ready.delete(bucket, "audio/j/original")
    await ready.delete(bucket, "audio/j/original")

    assert not await ready.exists(bucket, "audio/j/original")
    assert await ready.list_keys(bucket) == ["audio/j/other"]


async def test_list_keys_uses_string_prefixes_and_sorts(ready: ObjectStore, bucket: str) -> None:
    keys = ["results/j2/raw.json", "audio/j1/original", "audio/j10/original", "audio/j2/original", "회의/녹음"]
    await asyncio.gather(*(ready.put_bytes(bucket, k, k.encode()) for k in keys))

    assert await ready.list_keys(bucket) == sorted(keys)
    assert await ready.list_keys(bucket, "audio/j1") == ["audio/j1/original", "audio/j10/original"]
    assert await ready.list_keys(bucket, "audio/j1/") == ["audio/j1/original"]
    assert await ready.list_keys(bucket, "aud") == ["audio/j1/original", "audio/j10/original", "audio/j2/original"]
    assert await ready.list_keys(bucket, "회") == ["회의/녹음"]
    assert await ready.list_keys(bucket, "nothing/") == []


async def test_delete_prefix_counts(ready: ObjectStore, bucket: str) -> None:
    keys = [f"audio/job-1/part-{i}" for i in range(5)] + ["audio/job-10/original", "results/job-1/raw.json"]
    await asyncio.gather(*(ready.put_bytes(bucket, k, b"x") for k in keys))

    assert await ready.delete_prefix(bucket, "audio/job-1/") == 5
    assert await ready.list_keys(bucket) == ["audio/job-10/original", "results/job-1/raw.json"]
    assert await ready.delete_prefix(bucket, "audio/job-1/") == 0


async def test_ensure_bucket_is_idempotent(ready: ObjectStore, bucket: str) -> None:
    await ready.put_bytes(bucket, "k", b"kept")
    await ready.ensure_bucket(bucket)
    await ready.ensure_bucket(bucket, expiry_days=3)
    await ready.ensure_bucket(bucket, expiry_days=3)
    assert await ready.get_bytes(bucket, "k") == b"kept"


@pytest.mark.parametrize("key", ["", "../escape", "/etc/passwd", "a/../../b", "a//b", "a/", "./a", "a/./b",
                                 f"a/{TEMP_PREFIX}x", "nul\x00byte", "k" * 1025])
async def test_bad_keys_are_rejected(ready: ObjectStore, bucket: str, key: str, tmp_path: Path) -> None:
    before = sorted(p for p in tmp_path.rglob("*"))
    for call in (
        lambda: ready.put_bytes(bucket, key, b"x"),
        lambda: ready.get_bytes(bucket, key),
        lambda: ready.stat(bucket, key),
        lambda: ready.delete(bucket, key),
    ):
        with pytest.raises(InvalidArgument) as err:
            await call()
        assert (err.value.reason, err.value.field) == ("INVALID_OBJECT_KEY", "key")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


@pytest.mark.parametrize("name", ["ab", "Upper", "under_score", "-dash", "a..b", "192.168.0.1", "x" * 64, "../x"])
async def test_bad_bucket_names_are_rejected(store: ObjectStore, name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.ensure_bucket(name)
    assert err.value.reason == "INVALID_BUCKET_NAME"


async def test_bad_prefix_is_rejected(ready: ObjectStore, bucket: str) -> None:
    for prefix in ("../", "/abs", "a/../"):
        with pytest.raises(InvalidArgument) as err:
            await ready.list_keys(bucket, prefix)
        assert err.value.reason == "INVALID_OBJECT_KEY"


async def test_expiry_must_be_positive(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.ensure_bucket(bucket, expiry_days=0)
    assert (err.value.reason, err.value.field) == ("INVALID_EXPIRY", "expiry_days")
    assert not await store.exists(bucket, "anything")


async def test_put_file_missing_source(ready: ObjectStore, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await ready.put_file(bucket, "k", tmp_path / "missing.wav")
    assert await ready.list_keys(bucket) == []


# --- S3 only ----------------------------------------------------------------------------------


def _minio(endpoint: str) -> Minio:
    return Minio(endpoint, access_key="test", secret_key="test", secure=False, region="us-east-1")


async def test_s3_lifecycle_expiry_rule(s3_endpoint: str, bucket: str) -> None:
    store = S3Store(s3_settings(s3_endpoint))
    await store.ensure_bucket(bucket, expiry_days=7)

    config = _minio(s3_endpoint).get_bucket_lifecycle(bucket)

    assert config is not None
    [rule] = config.rules
    assert (rule.rule_id, rule.status, rule.expiration.days) == (EXPIRY_RULE_ID, ENABLED, 7)


async def test_s3_lifecycle_update_keeps_other_rules(s3_endpoint: str, bucket: str) -> None:
    client = _minio(s3_endpoint)
    client.make_bucket(bucket)
    other = Rule(ENABLED, rule_filter=Filter(prefix="logs/"), rule_id="ops-logs", expiration=Expiration(days=30))
    client.set_bucket_lifecycle(bucket, LifecycleConfig([other]))
    store = S3Store(s3_settings(s3_endpoint))

    await store.ensure_bucket(bucket, expiry_days=7)
    await store.ensure_bucket(bucket, expiry_days=3)
    await store.ensure_bucket(bucket)  # None leaves the rule alone

    rules = {r.rule_id: r.expiration.days for r in client.get_bucket_lifecycle(bucket).rules}
    assert rules == {"ops-logs": 30, EXPIRY_RULE_ID: 3}


async def test_s3_unreachable_is_unavailable() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    no_retries = urllib3.PoolManager(retries=urllib3.Retry(total=0), timeout=2)
    store = S3Store(s3_settings(f"127.0.0.1:{port}"), http_client=no_retries)

    with pytest.raises(Unavailable) as err:
        await store.get_bytes("some-bucket", "k")
    assert err.value.reason == "OBJECT_STORE_UNAVAILABLE"


# --- local only -------------------------------------------------------------------------------


async def test_local_layout_is_root_bucket_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.ensure_bucket("scribe-results")
    await store.put_bytes("scribe-results", "results/j/transcript.txt", b"hello\n")
    assert (tmp_path / "scribe-results" / "results" / "j" / "transcript.txt").read_bytes() == b"hello\n"


async def test_local_failed_write_keeps_old_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    await store.ensure_bucket("b-1")
    await store.put_bytes("b-1", "dir/obj", b"old")

    def crash(*_args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(objectstore.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        await store.put_bytes("b-1", "dir/obj", b"new content")
    monkeypatch.undo()

    assert await store.get_bytes("b-1", "dir/obj") == b"old"
    assert sorted(p.name for p in (tmp_path / "b-1" / "dir").iterdir()) == ["obj"]


async def test_local_leftover_temp_file_is_invisible_and_swept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.ensure_bucket("b-1")
    await store.put_bytes("b-1", "dir/obj", b"ok")
    leftover = tmp_path / "b-1" / "dir" / f"{TEMP_PREFIX}abc123"  # what a crash mid-write leaves
    leftover.write_bytes(b"half")

    assert await store.list_keys("b-1") == ["dir/obj"]
    now = datetime.now(UTC)
    assert await store.sweep_expired(now) == 0
    assert leftover.exists()  # young: may belong to a write in flight

    assert await store.sweep_expired(now + timedelta(seconds=STALE_TEMP_SECONDS + 60)) == 0
    assert not leftover.exists()
    assert await store.get_bytes("b-1", "dir/obj") == b"ok"


async def test_local_sweep_expired(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.ensure_bucket("scribe-audio", expiry_days=7)
    await store.ensure_bucket("scribe-results")
    for bucket in ("scribe-audio", "scribe-results"):
        await store.put_bytes(bucket, "old/a", b"1")
        await store.put_bytes(bucket, "old/b", b"2")
        await store.put_bytes(bucket, "new/c", b"3")
    now = datetime.now(UTC)
    eight_days_ago = (now - timedelta(days=8)).timestamp()
    for bucket in ("scribe-audio", "scribe-results"):
        for key in ("old/a", "old/b"):
            os.utime(tmp_path / bucket / key, (eight_days_ago, eight_days_ago))

    # the expiry is on disk: another process (a fresh store on the same root) honours it
    assert await LocalStore(tmp_path).sweep_expired(now) == 2

    assert await store.list_keys("scribe-audio") == ["new/c"]
    assert not (tmp_path / "scribe-audio" / "old").exists()  # emptied directory pruned
    assert await store.list_keys("scribe-results") == ["new/c", "old/a", "old/b"]  # no expiry set
    assert await store.sweep_expired(now) == 0


async def test_local_sweep_in_slices_removes_the_same(tmp_path: Path) -> None:
    """One entry per slice: directories emptied and pruned mid-walk, the count exact."""
    store = LocalStore(tmp_path)
    await store.ensure_bucket("scribe-audio", expiry_days=1)
    now = datetime.now(UTC)
    two_days_ago = (now - timedelta(days=2)).timestamp()
    for i in range(30):
        await store.put_bytes("scribe-audio", f"job-{i}/audio.wav", b"x")
        if i % 3:
            os.utime(tmp_path / "scribe-audio" / f"job-{i}" / "audio.wav", (two_days_ago, two_days_ago))
    slices = 0
    real = store._sweep_slice

    def counting(plan, entries):  # noqa: ANN001, ANN202
        nonlocal slices
        slices += 1
        return real(plan, entries)

    store._sweep_slice = counting
    assert await store.sweep_expired(now, slice_entries=1, pause_seconds=0) == 20
    assert slices >= 60  # 30 directories and 30 files, one at a time: the walk was never one block
    assert await store.list_keys("scribe-audio") == sorted(f"job-{i}/audio.wav" for i in range(0, 30, 3))
    assert sorted(p.name for p in (tmp_path / "scribe-audio").iterdir()) == sorted(
        f"job-{i}" for i in range(0, 30, 3))


async def test_local_sweep_refuses_bad_slices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slice_entries"):
        await LocalStore(tmp_path).sweep_expired(datetime.now(UTC), slice_entries=0)


async def test_local_sweep_needs_aware_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await LocalStore(tmp_path).sweep_expired(datetime.now())  # naive on purpose


async def test_local_key_that_is_also_a_prefix(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.ensure_bucket("b-1")
    await store.put_bytes("b-1", "a/b", b"1")
    with pytest.raises(InvalidArgument) as err:
        await store.put_bytes("b-1", "a", b"2")
    assert err.value.reason == "INVALID_OBJECT_KEY"
    with pytest.raises(InvalidArgument):
        await store.put_bytes("b-1", "a/b/c", b"3")
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("b-1", "a")  # a directory is not an object
    assert await store.list_keys("b-1") == ["a/b"]


async def test_local_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.ensure_bucket("b-1")
    await store.put_bytes("b-1", "audio/job/original", b"1")
    await store.delete("b-1", "audio/job/original")
    assert list((tmp_path / "b-1").iterdir()) == []
    await store.put_bytes("b-1", "audio/job/original", b"again")  # directories come back
    assert await store.get_bytes("b-1", "audio/job/original") == b"again"


# --- URIs and settings ------------------------------------------------------------------------


def test_parse_uri() -> None:
    assert parse_uri("s3://scribe-audio/uploads/2024/call.wav") == ("scribe-audio", "uploads/2024/call.wav")
    assert parse_uri("s3://b-1/k") == ("b-1", "k")


@pytest.mark.parametrize(
    "uri",
    ["", "scribe-audio/k", "http://scribe-audio/k", "s3://scribe-audio", "s3://scribe-audio/", "s3:///k",
     "s3://Bad_Bucket/k", "s3://b-1/../k", "s3://b-1/a//b", "S3://b-1/k", "/local/file.wav"],
)
def test_parse_uri_rejects(uri: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_uri(uri)
    assert (err.value.reason, err.value.field) == ("INVALID_SOURCE_URI", "spec.source_uri")


def test_open_store_picks_the_kind(tmp_path: Path) -> None:
    assert isinstance(open_store(StoreSettings(root=tmp_path)), LocalStore)
    assert isinstance(open_store(StoreSettings(kind="s3")), S3Store)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    class ServiceSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="SCRIBE_TEST_", env_nested_delimiter="__")
        store: StoreSettings = StoreSettings()

    monkeypatch.setenv("SCRIBE_TEST_STORE__KIND", "s3")
    monkeypatch.setenv("SCRIBE_TEST_STORE__ENDPOINT", "minio.scribe.svc:9000")
    monkeypatch.setenv("SCRIBE_TEST_STORE__SECRET_KEY", "hunter2")

    settings = ServiceSettings()

    assert (settings.store.kind, settings.store.endpoint) == ("s3", "minio.scribe.svc:9000")
    assert settings.store.secret_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize("endpoint", ["http://minio:9000", "minio:9000/path", ""])
def test_settings_reject_endpoint_with_scheme(endpoint: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        StoreSettings(kind="s3", endpoint=endpoint)


def test_every_setting_is_documented() -> None:
    assert all(field.description for field in StoreSettings.model_fields.values())
