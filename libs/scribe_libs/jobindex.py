"""The job index: which jobs an owner has, newest first, at a cost per page that does not grow.

Stream ``SCRIBE_JOB_INDEX`` (limits retention, max age = the results retention + a day, direct
gets allowed), one subject per owner: ``scribe.index.<owner token>``, the token being the first 32 hex
characters of the owner id's SHA-256 (owner ids may hold characters a subject cannot). Each
job creation appends one :class:`~scribe.v1.results_pb2.JobIndexEntry` (job id, create time,
``prev_seq``: the sequence of the previous entry on the same subject) with the header
``Nats-Expected-Last-Subject-Sequence: <prev_seq>``, so JetStream refuses an append that raced
another (``wrong last sequence``, error 10071); the writer then reads the subject's last entry
(one direct get) and tries again. The entries of one owner therefore form an exact backward
linked list, and their create times never decrease along it (an entry's create time is raised
to its predecessor's when a creator's clock is behind).

Reading (:meth:`JobIndex.scan`): an owner's page starts at the subject's last entry (or, for a
``create_time_before`` bound, at the first entry the stream stored at or after that time, found
with one direct get by ``start_time``, see :meth:`JobIndex._seek`) and follows ``prev_seq``:
O(page) direct gets whatever the number of jobs, and exact bounds whatever the clocks. An admin
(who sees every owner) walks the stream's sequence backwards instead; create times are not
ordered across owners, so that walk starts :data:`CLOCK_SLACK_SECONDS` after a "before" bound
and stops that long before an "after" bound, by the stream's own timestamps (it assumes the
creators' clocks and the NATS server's agree within that). A scan reads at most a given budget
of entries per call, then says where to resume (:class:`Resume`).

Page tokens (:func:`encode_page_token`) carry the sequence to resume at and a digest of the
caller and the filters, so a token is valid only for the listing that returned it.

Records created before the index existed are not in it, so ListJobs does not show them (they
expire with the retention period); there is no backfill. Entries whose record is gone (deleted,
expired, or never written because the creation failed after the append) are skipped by the
reader.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError
from nats.js.manager import JetStreamManager

from scribe.v1 import jobs_pb2, results_pb2

log = logging.getLogger(__name__)

INDEX_STREAM = "SCRIBE_JOB_INDEX"
INDEX_SUBJECTS = "scribe.index.>"
#: JetStream's error code for a failed ``Nats-Expected-Last-Subject-Sequence`` check.
WRONG_LAST_SEQUENCE = 10071
#: Appends tried at most per job before giving up (each failure means another creator won).
MAX_APPEND_ATTEMPTS = 100
#: Seconds the clocks of the creators and of the NATS server may disagree (plus publish latency):
#: the margin by which a walk over stream timestamps starts earlier / stops later than the bound.
CLOCK_SLACK_SECONDS = 10.0
#: Seconds index entries are kept beyond the job records' retention (see :func:`stream_config`).
INDEX_EXTRA_AGE_SECONDS = 24 * 3600.0
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


def stream_config(retention_seconds: float) -> StreamConfig:
    """The SCRIBE_JOB_INDEX stream: entries kept ``retention_seconds`` + INDEX_EXTRA_AGE_SECONDS.

    A record expires ``retention_seconds`` after its last write, which comes after its creation
    (the job ran, or waited in the queue); the extra day keeps its entry at least as long in the
    usual case. An entry that outlives its record costs a skipped read.
    """
    return StreamConfig(
        name=INDEX_STREAM,
        subjects=[INDEX_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=retention_seconds + INDEX_EXTRA_AGE_SECONDS,
        discard=DiscardPolicy.OLD,
        allow_direct=True,
    )


def owner_subject(owner: str) -> str:
    """``scribe.index.<first 32 hex of sha256(owner)>``: a valid subject token for any owner id."""
    return "scribe.index." + hashlib.sha256(owner.encode()).hexdigest()[:32]


@dataclass
class Entry:
    """One index entry as read back: its stream sequence, subject and stored time, and the entry."""

    seq: int
    subject: str
    stored_ns: int
    entry: results_pb2.JobIndexEntry
    #: Sequence of the next (older) entry of the walk that read it; 0 for none.
    next_seq: int = 0

    @property
    def create_ns(self) -> int:
        """The job's create time, nanoseconds since the epoch."""
        return self.entry.create_time.ToNanoseconds()


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(max(ns, 0), 1_000_000_000)
    base = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{rest:09d}Z"


def _parse_time_ns(text: str | None) -> int:
    """``2026-12-02T02:54:44.373534595Z`` -> ns since the epoch (0 when absent)."""
    if not text:
        return 0
    head, _, frac = text.rstrip("Z").partition(".")
    base = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


class JobIndex:
    """Appends to and reads SCRIBE_JOB_INDEX over a :class:`~scribe_libs.bus.Bus`.

    ``reads`` counts the direct gets this object made (tests compare it with the page size).
    """

    def __init__(self, bus):  # noqa: ANN001 - a scribe_libs.bus.Bus (import cycle: bus declares this stream)
        self.bus = bus
        self.reads = 0
        #: Last known entry per subject (seq, create ns): saves the read before an append.
        self._last: dict[str, tuple[int, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- writing ---------------------------------------------------------------------------------

    async def append(self, job: jobs_pb2.Job) -> int:
        """Append ``job`` (id, ``create_time``) to its owner's subject; returns the entry's sequence.

        ``job.create_time`` is raised to the previous entry's when it is earlier (so create times
        never decrease along a subject); the caller stores the record after this returns.

        Raises:
            RuntimeError: more than MAX_APPEND_ATTEMPTS creators raced this one in a row.
            nats.errors.Error, APIError: the broker did not take the entry.
        """
        subject = owner_subject(job.owner)
        lock = self._locks.setdefault(subject, asyncio.Lock())
        async with lock:  # appends of one process for one owner go one at a time (no self-races)
            known = self._last.get(subject)
            for attempt in range(MAX_APPEND_ATTEMPTS):
                if attempt:
                    job.create_time.GetCurrentTime()  # the time of the append that succeeds
                if known is None:
                    known = await self._last_entry(subject)
                prev_seq, prev_ns = known
                if job.create_time.ToNanoseconds() < prev_ns:
                    job.create_time.FromNanoseconds(prev_ns)
                entry = results_pb2.JobIndexEntry(job_id=job.job_id, create_time=job.create_time, prev_seq=prev_seq)
                try:
                    ack = await self.bus.js.publish(
                        subject, entry.SerializeToString(), stream=INDEX_STREAM, headers={_EXPECTED_LAST: str(prev_seq)}
                    )
                except APIError as exc:
                    if exc.err_code != WRONG_LAST_SEQUENCE:
                        raise
                    known = None  # another creator appended: read the last entry again
                    continue
                self._last[subject] = (ack.seq, job.create_time.ToNanoseconds())
                return ack.seq
            self._last.pop(subject, None)
            raise RuntimeError(f"job {job.job_id}: too many concurrent index appends for its owner")

    async def _last_entry(self, subject: str) -> tuple[int, int]:
        """(sequence, create ns) of the subject's last entry, (0, 0) for none, read from the leader.

        Not a direct get: with replicas, a direct get may be answered by a follower that has not
        seen the newest entry yet, and the append would fail again.
        """
        self.reads += 1
        try:
            raw = await self.bus.js.get_last_msg(INDEX_STREAM, subject)
        except NotFoundError:
            return 0, 0
        entry = results_pb2.JobIndexEntry()
        entry.ParseFromString(raw.data or b"")
        return int(raw.seq or 0), entry.create_time.ToNanoseconds()

    # --- reading ---------------------------------------------------------------------------------

    async def _get(self, request: dict, subject: str | None = None) -> Entry | None:
        """One direct get (``{"seq": n}``, ``{"start_time": ..}``, or last by ``subject``); None for 404."""
        prefix = self.bus.js._prefix  # noqa: SLF001 - "$JS.API" or a domain's prefix
        self.reads += 1
        if subject is not None and not request:
            reply = await self.bus.nc.request(f"{prefix}.DIRECT.GET.{INDEX_STREAM}.{subject}", b"", timeout=5)
        else:
            reply = await self.bus.nc.request(
                f"{prefix}.DIRECT.GET.{INDEX_STREAM}", json.dumps(request).encode(), timeout=5
            )
        try:
            raw = JetStreamManager._lift_msg_to_raw_msg(reply)  # noqa: SLF001 - nats-py's own decoder
        except NotFoundError:
            return None
        entry = results_pb2.JobIndexEntry()
        entry.ParseFromString(raw.data or b"")
        headers = reply.headers or {}
        return Entry(int(raw.seq or 0), raw.subject or "", _parse_time_ns(headers.get("Nats-Time-Stamp")), entry)

    async def get_seq(self, seq: int) -> Entry | None:
        """The entry at stream sequence ``seq``; None when there is none (expired, never written)."""
        return await self._get({"seq": seq})

    async def _seek(self, subject: str | None, before_ns: int, max_steps: int) -> Entry | None:
        """The newest entry a walk bounded by ``before_ns`` must start from; None: the newest of all.

        On an owner's subject this is exact, whatever the clocks: the first entry the stream
        stored at or after ``before_ns`` (one direct get by ``start_time``), then forward
        (``next_by_subj``) past entries created before the bound but stored after it (normally
        none; at most ``max_steps``, else None), since create times never decrease along the
        subject. Across owners it is the first entry stored at or after ``before_ns`` +
        CLOCK_SLACK_SECONDS.
        """
        if subject is None:
            return await self._get({"start_time": _rfc3339(before_ns + int(CLOCK_SLACK_SECONDS * 1e9))})
        entry = await self._get({"start_time": _rfc3339(before_ns), "next_by_subj": subject})
        for _ in range(max_steps):
            if entry is None or entry.create_ns >= before_ns:
                return entry
            entry = await self._get({"seq": entry.seq + 1, "next_by_subj": subject})
        return None

    async def scan(
        self,
        owner: str | None,
        start_seq: int = 0,
        before_ns: int = 0,
        after_ns: int = 0,
        budget: int = 1000,
    ) -> AsyncIterator[Entry | Resume]:
        """Entries newest first; a :class:`Resume` last when ``budget`` reads ran out first.

        The walk ends (the iterator is exhausted) at the oldest entry kept, or at ``after_ns``.
        A consumer that stops early resumes at the ``seq`` of the entry it did not take, or at
        the ``next_seq`` of the last one it took.

        Args:
            owner: Walk this owner's subject (prev links); None walks every owner (admins).
            start_seq: Resume at this sequence (from a page token); 0 starts at the newest entry
                (or near the ``before_ns`` bound).
            before_ns: Start near this bound (ns since the epoch; 0 for none), see
                :meth:`_seek`. Entries are still filtered by the caller.
            after_ns: Stop once entries are older than this (ns; 0 for none): exact on an
                owner's subject (create times never decrease along it), CLOCK_SLACK_SECONDS
                later across owners.
            budget: Direct gets at most (misses included) before yielding Resume.

        Raises:
            ForeignStart: ``start_seq`` is an entry of another owner's subject (a forged token).
        """
        subject = owner_subject(owner) if owner is not None else None
        first_seq = 1
        seq = start_seq
        reads_at_start = self.reads
        if subject is None:
            state = (await self.bus.js.stream_info(INDEX_STREAM)).state
            first_seq = max(int(state.first_seq or 1), 1)
            seq = min(seq, int(state.last_seq or 0)) if seq else int(state.last_seq or 0)
        entry: Entry | None = None
        if not start_seq and before_ns:
            entry = await self._seek(subject, before_ns, budget // 2)
            if entry is not None:
                seq = entry.seq
        if not seq and subject is not None:
            entry = await self._get({}, subject=subject)
            seq = entry.seq if entry else 0
        checked_subject = start_seq == 0
        while seq >= first_seq:
            if entry is None or entry.seq != seq:
                if self.reads - reads_at_start >= budget:
                    yield Resume(seq)
                    return
                entry = await self.get_seq(seq)
            if entry is None:
                if subject is not None:
                    return  # the rest of the list expired
                seq -= 1
                continue
            if subject is not None and entry.subject != subject:
                if not checked_subject:
                    raise ForeignStart(start_seq)
                return  # prev links stay on their subject: only a forged start can get here
            checked_subject = True
            if after_ns:
                if subject is not None and entry.create_ns < after_ns:
                    return
                if subject is None and entry.stored_ns < after_ns - int(CLOCK_SLACK_SECONDS * 1e9):
                    return
            entry.next_seq = int(entry.entry.prev_seq) if subject is not None else seq - 1
            if entry.next_seq < first_seq:
                entry.next_seq = 0
            seq = entry.next_seq
            yield entry
            entry = None


class ForeignStart(ValueError):
    """A scan asked to resume at an entry that is not on the owner's subject."""

    def __init__(self, seq: int):
        super().__init__(f"sequence {seq} is not one of this owner's index entries")
        self.seq = seq


@dataclass
class Resume:
    """The scan's read budget ran out: continue at ``seq``."""

    seq: int


# --- page tokens -----------------------------------------------------------------------------------
#
# A token is base64url (no padding) of: version byte 1, the sequence to resume at (8 bytes, big
# endian), and the first 16 bytes of the SHA-256 of the caller and the filters it was made for.
# A token from another caller or other filters, or one this code did not make, fails to decode.

_TOKEN_VERSION = 1
_DIGEST_BYTES = 16
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{34}")


def filter_digest(*parts: object) -> bytes:
    """16 bytes naming a caller and its filters (``parts`` must be JSON-serialisable)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).digest()[:_DIGEST_BYTES]


def encode_page_token(seq: int, digest: bytes) -> str:
    """The opaque page token for resuming at index sequence ``seq`` (>= 1) under ``digest``."""
    raw = bytes([_TOKEN_VERSION]) + seq.to_bytes(8, "big") + digest
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_page_token(token: str, digest: bytes) -> int:
    """The sequence a token made by :func:`encode_page_token` under ``digest`` resumes at.

    Raises:
        ValueError: not such a token (malformed, another version, another caller or filters).
    """
    if not _TOKEN_RE.fullmatch(token):
        raise ValueError("malformed page token")
    raw = base64.urlsafe_b64decode(token + "==")
    seq = int.from_bytes(raw[1:9], "big")
    if raw[0] != _TOKEN_VERSION or not hmac.compare_digest(raw[9:], digest) or seq < 1:
        raise ValueError("page token of another caller, filter or version")
    return seq
