"""Which transcriber decodes a window, and failover when one fails.

Workers advertise themselves in the ``scribe_workers`` bucket (``WorkerProfile``, TTL
``WORKER_TTL_SECONDS``; a stopped worker deletes its profile). A worker can decode streams when its
profile has ``realtime_capacity > 0`` and an ``endpoint``; it can decode a session's model when the
model is in ``models_loaded`` (or the session names none: the worker's realtime model).

Admission (:meth:`WorkerPool.admit`): a worker's ``realtime_capacity`` is the number of live
channels it carries at the latency target, measured by the worker itself at start. A new session
(one slot per audio channel) is placed on the worker with the most free slots: capacity minus the
larger of this gateway's sessions placed there and the worker's advertised ``realtime_sessions``
(which counts every gateway's sessions). When no worker has room the session is refused with
RESOURCE_EXHAUSTED ``REALTIME_CAPACITY_FULL`` and RetryInfo, before any audio is read: the calls
already running keep their latency instead of all falling behind together.

Per-key quota: one API key holds at most ``max_sessions_per_key`` sessions on this gateway at once
(0: no cap; admin keys and a gateway without auth are exempt). A session over it is refused with
RESOURCE_EXHAUSTED ``KEY_SESSION_QUOTA`` and RetryInfo before any worker slot is taken, so one
caller cannot fill ``max_sessions`` or the workers' capacity and push the other callers' latency
up. The count is per gateway replica (sessions are long-lived gRPC streams pinned to one replica);
the cluster-wide bound is replicas x ``max_sessions_per_key``.

Decode calls carry the gateway's service key (``worker_api_key``, scope ``internal``): the
transcriber's API is not a customer API (it has no session cap, quota or admission of its own).

Windows go to the session's worker first; the other candidates, most free slots first, are the
failover order.

Failover: a Decode call that fails with a transport or server error (UNAVAILABLE, DEADLINE_EXCEEDED,
INTERNAL, UNKNOWN, CANCELLED, RESOURCE_EXHAUSTED, ABORTED, FAILED_PRECONDITION) puts the worker in a
cooldown and the same window goes to the next candidate. When none is left, the call waits for a
profile to (re)appear, re-reading the bucket, until ``failover_timeout_seconds``; the session's audio
is held meanwhile (the gateway stops reading the caller's stream, so gRPC flow control pushes back),
never dropped. Only INVALID_ARGUMENT (a window the worker can never decode) is raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import grpc

from scribe.v1 import transcriber_pb2, transcriber_pb2_grpc
from scribe_libs import metrics
from scribe_libs.auth import current_api_key, current_principal
from scribe_libs.bus import WORKER_HEARTBEAT_SECONDS, Bus
from scribe_libs.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from scribe_libs.registry import WorkerRegistry
from scribe_stream_gateway.config import Settings

log = logging.getLogger(__name__)

#: How long this gateway remembers a session it sent windows for (s): the transcriber counts a
#: session live for 10 s after its last window (scribe_transcriber.decode.SESSION_IDLE_SECONDS) and
#: its profile is up to one heartbeat (5 s) plus one profile refresh old, so a session that ended
#: here is still remembered while the worker's advertised count still holds it.
SESSION_IDLE_SECONDS = 10.0 + WORKER_HEARTBEAT_SECONDS + 2.0

#: Status codes after which the same window is retried on another worker.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@dataclass(eq=False)
class Placement:
    """A session's slots on a worker (release with :meth:`WorkerPool.release`)."""

    endpoint: str
    worker_id: str
    slots: int
    key_id: str = ""
    """The API key the session counts against (``""``: not counted, exempt from the quota)."""


class WorkerPool:
    """Live realtime workers, their gRPC channels, and Decode with failover.

    Args:
        bus: For the ``scribe_workers`` bucket.
        settings: Timeouts, cooldown, pool filter.
        registry: The live worker registry (started by the caller); default: one on ``bus``
            that is never started (each :meth:`profiles` with ``refresh`` re-reads the bucket).
    """

    def __init__(self, bus: Bus, settings: Settings, registry: WorkerRegistry | None = None):
        self.bus = bus
        self.settings = settings
        self.registry = registry or WorkerRegistry(bus.workers if bus is not None else None, bus)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._in_flight: dict[str, int] = defaultdict(int)
        self._cooldown_until: dict[str, float] = {}
        self._placed: dict[str, int] = defaultdict(int)
        """Slots (channels) of this gateway's sessions per worker endpoint."""
        self._recent: dict[str, dict[str, float]] = defaultdict(dict)
        """Per worker endpoint: session ids this gateway sent windows for, and when last."""
        self._per_key: dict[str, int] = defaultdict(int)
        """Admitted sessions per API key id (quota-counted keys only)."""

    async def profiles(self, refresh: bool = False) -> list[transcriber_pb2.WorkerProfile]:
        """Realtime-capable live profiles from the registry.

        With ``refresh``, first waits for every profile written before the call
        (:meth:`scribe_libs.registry.WorkerRegistry.sync`).
        """
        if refresh:
            await self.registry.sync()
        profiles = self.registry.profiles(self.settings.worker_pool or None)
        return [p for p in profiles if p.realtime_capacity > 0 and p.endpoint]

    async def check_model(self, model: str) -> None:
        """Refuse a session no live worker could decode.

        Raises:
            Unavailable: ``NO_REALTIME_WORKER`` when no worker serves Decode now (retry later).
            FailedPrecondition: ``MODEL_NOT_SERVED`` when workers exist but none has ``model`` loaded.
        """
        profiles = await self.profiles(refresh=True)
        if not profiles:
            raise Unavailable("NO_REALTIME_WORKER", "no transcriber serving streaming decode is live")
        if model and not any(model in p.models_loaded for p in profiles):
            loaded = sorted({m for p in profiles for m in p.models_loaded})
            raise FailedPrecondition(
                "MODEL_NOT_SERVED", f"no live streaming worker has model {model!r} loaded (loaded: {', '.join(loaded)})"
            )

    def candidates(
        self, profiles: list[transcriber_pb2.WorkerProfile], model: str
    ) -> list[transcriber_pb2.WorkerProfile]:
        """Profiles able to decode ``model``, not cooling down, least loaded first."""
        now = time.monotonic()
        usable = [
            p for p in profiles
            if (not model or model in p.models_loaded) and self._cooldown_until.get(p.endpoint, 0.0) <= now
        ]
        return sorted(usable, key=lambda p: (-self.free_slots(p), self._in_flight[p.endpoint], p.worker_id))

    def free_slots(self, profile: transcriber_pb2.WorkerProfile) -> int:
        """Live channels ``profile``'s worker can still take (may be negative after a failover).

        Capacity minus this gateway's placed channels minus the other gateways' live channels on
        it: the worker's advertised ``realtime_sessions`` less the channels this gateway sent it
        windows for lately (``SESSION_IDLE_SECONDS``), so a call that just ended here is not
        counted twice while the worker's profile still holds it.
        """
        cutoff = time.monotonic() - SESSION_IDLE_SECONDS
        recent = self._recent[profile.endpoint]
        for key in [k for k, t in recent.items() if t < cutoff]:
            del recent[key]
        others = max(profile.realtime_sessions - len(recent), 0)
        return profile.realtime_capacity - self._placed[profile.endpoint] - others

    def sessions_of(self, key_id: str) -> int:
        """Sessions of API key ``key_id`` admitted here and not released yet."""
        return self._per_key.get(key_id, 0)

    def _quota_key(self) -> str:
        """The caller's key id when its sessions count against ``max_sessions_per_key``, else ""."""
        principal = current_principal()
        if self.settings.max_sessions_per_key <= 0 or principal.admin or not principal.key_id:
            return ""
        return principal.key_id

    async def admit(self, model: str, slots: int) -> Placement:
        """Place a new session of ``slots`` channels on the worker with the most free slots.

        Called inside the caller's StreamingRecognize, whose key (:func:`current_principal`)
        the session counts against.

        Raises:
            Unavailable: ``NO_REALTIME_WORKER`` (see :meth:`check_model`).
            FailedPrecondition: ``MODEL_NOT_SERVED``.
            ResourceExhausted: ``KEY_SESSION_QUOTA`` with RetryInfo when the caller's key already
                holds ``max_sessions_per_key`` sessions; ``REALTIME_CAPACITY_FULL`` with RetryInfo
                when no worker has room.
        """
        key_id = self._quota_key()
        self._check_quota(key_id)
        await self.check_model(model)
        candidates = self.candidates(await self.profiles(), model)
        # Checked again with no await before the count is taken: concurrent admits of one key.
        self._check_quota(key_id)
        best = candidates[0] if candidates else None
        if best is None or self.free_slots(best) < slots:
            total = sum(p.realtime_capacity for p in candidates)
            raise ResourceExhausted(
                "REALTIME_CAPACITY_FULL",
                f"every streaming worker is at its measured capacity ({total} live channels in all); "
                "retry later",
                subject="stream-gateway:realtime-capacity", retry_after=self.settings.retry_after_seconds,
            )
        self._placed[best.endpoint] += slots
        if key_id:
            self._per_key[key_id] += 1
        metrics.realtime_sessions_placed.add(slots, {"worker_id": best.worker_id})
        return Placement(best.endpoint, best.worker_id, slots, key_id)

    def _check_quota(self, key_id: str) -> None:
        limit = self.settings.max_sessions_per_key
        if key_id and self._per_key.get(key_id, 0) >= limit:
            raise ResourceExhausted(
                "KEY_SESSION_QUOTA",
                f"API key {key_id!r} already holds its maximum of {limit} concurrent streaming sessions on this "
                "gateway; end one or retry later",
                subject=f"stream-gateway:key-sessions:{key_id}", retry_after=self.settings.retry_after_seconds,
            )

    def release(self, placement: Placement) -> None:
        """Give a session's slots (and its place in its key's quota) back."""
        if placement.key_id:
            left = self._per_key.get(placement.key_id, 0) - 1
            if left > 0:
                self._per_key[placement.key_id] = left
            else:
                self._per_key.pop(placement.key_id, None)
        self._placed[placement.endpoint] = max(self._placed[placement.endpoint] - placement.slots, 0)
        metrics.realtime_sessions_placed.add(-placement.slots, {"worker_id": placement.worker_id})

    async def decode(
        self, request: transcriber_pb2.DecodeRequest, placement: Placement | None = None
    ) -> tuple[transcriber_pb2.DecodeResponse, int]:
        """Decode one window on the session's worker (else the best one), failing over until one answers.

        Returns:
            (response, retries): retries counts the failed attempts before the answer.

        Raises:
            InvalidArgument: the worker rejected the window itself.
            Unavailable: ``NO_REALTIME_WORKER`` after ``failover_timeout_seconds`` without any answer.
        """
        deadline = time.monotonic() + self.settings.failover_timeout_seconds
        retries = 0
        wait = 0.1
        refresh = False
        while True:
            candidates = self.candidates(await self.profiles(refresh=refresh), request.model)
            if placement is not None:
                candidates.sort(key=lambda p: p.endpoint != placement.endpoint)  # stable: the rest keep their order
            for profile in candidates:
                try:
                    return await self._call(profile, request), retries
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise InvalidArgument("DECODE_REJECTED", exc.details() or "window rejected") from exc
                    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                        raise FailedPrecondition(
                            "WORKER_AUTH_FAILED",
                            f"the transcriber refused the gateway's Decode credential ({exc.code().name}): "
                            "SCRIBE_STREAM_GATEWAY_WORKER_API_KEY must be a service key with scope 'internal'",
                        ) from exc
                    if exc.code() not in RETRYABLE:
                        raise
                    retries += 1
                    self._cooldown_until[profile.endpoint] = time.monotonic() + self.settings.worker_cooldown_seconds
                    log.warning(
                        "decode failed on %s (%s); trying another worker", profile.endpoint, exc.code().name,
                        extra={"worker_id": profile.worker_id},
                    )
            if time.monotonic() >= deadline:
                raise Unavailable(
                    "NO_REALTIME_WORKER",
                    f"no worker decoded the window within {self.settings.failover_timeout_seconds:.0f} s",
                )
            # Nobody left: wait for a profile to (re)appear or a cooldown to end, re-reading the bucket.
            await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0.0)))
            wait = min(wait * 2, 1.0)
            refresh = True
            self._expire_cooldowns()

    async def _call(
        self, profile: transcriber_pb2.WorkerProfile, request: transcriber_pb2.DecodeRequest
    ) -> transcriber_pb2.DecodeResponse:
        channel = self._channels.get(profile.endpoint)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                profile.endpoint,
                options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
            )
            self._channels[profile.endpoint] = channel
        stub = transcriber_pb2_grpc.TranscriberStub(channel)
        self._in_flight[profile.endpoint] += 1
        if request.session_id:
            self._recent[profile.endpoint][request.session_id] = time.monotonic()
        try:
            # The gateway's service key (scope `internal`); without one, the caller's own key, which
            # passes only for admin callers or transcribers without auth (development).
            key = self.settings.worker_api_key.get_secret_value() or current_api_key()
            metadata = ((("x-api-key", key),) if key else None)
            return await stub.Decode(request, timeout=self.settings.decode_timeout_seconds, metadata=metadata)
        finally:
            self._in_flight[profile.endpoint] -= 1

    def _expire_cooldowns(self) -> None:
        """When every worker is cooling down, let them be tried again (the bucket says who is live)."""
        now = time.monotonic()
        live = {p.endpoint for p in self.registry.profiles(self.settings.worker_pool or None) if p.endpoint}
        if live and all(self._cooldown_until.get(e, 0.0) > now for e in live):
            for endpoint in live:
                self._cooldown_until[endpoint] = min(self._cooldown_until[endpoint], now + 0.5)

    async def close(self) -> None:
        """Close the worker channels."""
        for channel in self._channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()
