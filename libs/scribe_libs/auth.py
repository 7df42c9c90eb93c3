"""API keys with scopes: the server interceptor, the key file, and a client interceptor.

Keys travel in gRPC metadata, ``x-api-key: <key>`` or ``authorization: Bearer <key>``. The key
file holds only SHA-256 hashes (DESIGN.md, "Security")::

    {"keys": [{"id": "acme-2026-11", "owner": "acme", "sha256": "<hex>", "scopes": ["jobs:write", "jobs:read"]},
              {"id": "ops", "owner": "ops", "sha256": "<hex>", "scopes": ["admin"]}]}

Several keys may be active at once (rotation: add the new key, move callers, remove the old
one); the file is re-read when it changes, so rotation needs no restart. Keys are 256-bit random
tokens (:func:`generate_key`), so an unsalted fast hash is enough: guessing a key is as hard as
guessing the hash input (the reasoning GitHub and Stripe apply to their tokens); a slow password
hash would only add latency to every call.

A call carries one credential. Two different keys in one call (``x-api-key`` and a Bearer
token, or two ``x-api-key`` values) are UNAUTHENTICATED ``AMBIGUOUS_CREDENTIALS``: which one
"wins" must not depend on header order. The same key sent twice is accepted.

Scopes: ``jobs:write`` (create, cancel, delete jobs; create, change and delete the caller's own
glossaries), ``jobs:read`` (read jobs, transcripts, workers, glossaries), ``stream`` (live
streaming through the gateway), ``internal`` (the transcriber's own API, ``Transcriber/*``:
Decode and GetProfile, called by the stream gateway with its service key), ``admin``
(everything, every caller's jobs and glossaries). A method not listed needs ``admin`` (deny by
default). Health and reflection are always open. Callers see only jobs and glossaries whose
``owner`` is theirs (an other caller's is NOT_FOUND), unless admin.

``internal`` is for service keys only: Decode bypasses the gateway's session cap, per-key quota
and admission, so a customer key holding it could starve every live call.
:func:`generate_key` refuses it unless ``service=True``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, Field, SecretStr

from scribe_libs.errors import PermissionDenied, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

SCOPES = frozenset({"jobs:write", "jobs:read", "stream", "internal", "admin"})
#: Scopes only service keys (:func:`generate_key` with ``service=True``) may hold.
SERVICE_SCOPES = frozenset({"internal"})
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
#: Scope each RPC needs; anything else needs admin.
METHOD_SCOPES: dict[str, str] = {
    "/scribe.v1.Ingest/CreateJob": "jobs:write",
    "/scribe.v1.Results/GetJob": "jobs:read",
    "/scribe.v1.Results/ListJobs": "jobs:read",
    "/scribe.v1.Results/WatchJob": "jobs:read",
    "/scribe.v1.Results/GetTranscript": "jobs:read",
    "/scribe.v1.Results/CancelJob": "jobs:write",
    "/scribe.v1.Results/DeleteJob": "jobs:write",
    "/scribe.v1.Results/ListWorkers": "jobs:read",
    # The transcriber's API is service-to-service (the gateway's worker key), never a customer's.
    "/scribe.v1.Transcriber/GetProfile": "internal",
    "/scribe.v1.Transcriber/Decode": "internal",
    "/scribe.v1.StreamGateway/StreamingRecognize": "stream",
    "/scribe.v1.Glossaries/GetGlossary": "jobs:read",
    "/scribe.v1.Glossaries/ListGlossaries": "jobs:read",
    # Owner-scoped in scribe_libs.glossaries: a caller changes only its own glossaries.
    "/scribe.v1.Glossaries/PutGlossary": "jobs:write",
    "/scribe.v1.Glossaries/DeleteGlossary": "jobs:write",
}


class AuthSettings(BaseModel):
    """API key checking."""

    enabled: bool = Field(True, description="Require an API key on every RPC but health and reflection.")
    keys_file: str = Field("", description="JSON key file (hashes only), e.g. mounted from a Kubernetes Secret.")
    keys_json: SecretStr = Field(SecretStr(""), description="The key file's content, when given by environment.")
    requests_per_second_per_key: float = Field(
        50.0, ge=0, description="Sustained RPCs per second one customer key may start on one service instance "
        "(a token bucket; beyond it RESOURCE_EXHAUSTED KEY_RATE_LIMITED with RetryInfo); 0 = no limit. Admin and "
        "service keys are not limited. A stream counts once, when it starts.",
    )
    request_burst_per_key: int = Field(
        100, ge=1, description="RPCs a customer key may start at once above the sustained rate (bucket size).",
    )
    service_keys_file: str = Field(
        "", description="A second key file, of service keys (same layout; e.g. the stream gateway's key with "
        "scope internal, which charts/scribe generates apart from the operator's customer keys)."
    )


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id, the owner its jobs belong to, its scopes."""

    key_id: str
    owner: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        """True for the admin scope (sees every caller's jobs)."""
        return "admin" in self.scopes

    def can(self, scope: str) -> bool:
        """True if the key has ``scope`` (admin has every scope)."""
        return self.admin or scope in self.scopes


#: Used when auth is disabled (embedded development, tests of other features).
ANONYMOUS_ADMIN = Principal(key_id="", owner="", scopes=frozenset({"admin"}))
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("scribe_principal", default=ANONYMOUS_ADMIN)


_current_key: contextvars.ContextVar[str] = contextvars.ContextVar("scribe_api_key", default="")


def current_principal() -> Principal:
    """The caller of the RPC being served."""
    return _current.get()


def current_api_key() -> str:
    """The API key the caller of the RPC being served sent ("" when none).

    The stream gateway forwards it on its Transcriber.Decode calls only when it has no
    ``worker_api_key`` (development: that works only for admin callers or transcribers without
    auth, since Decode needs the ``internal`` scope).
    """
    return _current_key.get()


def can_see(principal: Principal, owner: str) -> bool:
    """True if ``principal`` may see a job owned by ``owner``."""
    return principal.admin or principal.owner == owner


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key, as stored in the key file."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key(key_id: str, owner: str, scopes: list[str], service: bool = False) -> tuple[str, dict[str, Any]]:
    """A new random key (``sk_`` + 43 url-safe characters = 256 bits) and its key-file entry.

    Args:
        key_id: The entry's id.
        owner: Whose jobs and glossaries the key sees.
        scopes: Scopes from :data:`SCOPES`.
        service: True for a service key (e.g. the stream gateway's worker key); only then may
            ``scopes`` hold a :data:`SERVICE_SCOPES` scope (``internal``).

    Raises:
        ValueError: an unknown scope, or ``internal`` for a non-service key.
    """
    unknown = set(scopes) - SCOPES
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; known: {sorted(SCOPES)}")
    reserved = set(scopes) & SERVICE_SCOPES
    if reserved and not service:
        raise ValueError(
            f"scope(s) {sorted(reserved)} are for service keys only (the stream gateway's worker key), "
            "never a customer's key; ask for a service key explicitly"
        )
    key = "sk_" + secrets.token_urlsafe(32)
    return key, {"id": key_id, "owner": owner, "sha256": hash_key(key), "scopes": sorted(scopes)}


class KeyRing:
    """The active keys, re-read from the file when its modification time changes."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._lock = threading.Lock()
        self._by_hash: dict[str, Principal] = {}
        self._mtime: float | None = None
        self._service: dict[str, Principal] = {}
        self._service_mtime: float | None = None
        self._checked = float("-inf")
        self._load(force=True)

    def _parse(self, text: str) -> dict[str, Principal]:
        data = json.loads(text) if text.strip() else {"keys": []}
        out = {}
        for entry in data.get("keys", []):
            if entry.get("disabled"):
                continue
            scopes = frozenset(entry.get("scopes", [])) & SCOPES
            out[entry["sha256"].lower()] = Principal(entry["id"], entry.get("owner") or entry["id"], scopes)
        return out

    def _load(self, force: bool = False) -> None:
        path = self.settings.keys_file
        if not path:
            self._by_hash = self._parse(self.settings.keys_json.get_secret_value())
            self._load_service(force)
            return
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            log.error("API key file %s not found; every customer call is refused", path)
            self._by_hash = {}
            self._load_service(force)
            return
        if force or mtime != self._mtime:
            self._by_hash = self._parse(Path(path).read_text())
            self._mtime = mtime
            log.info("API keys loaded", extra={"keys": len(self._by_hash)})
        self._load_service(force)

    def _load_service(self, force: bool) -> None:
        path = self.settings.service_keys_file
        if not path:
            return
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            log.error("service key file %s not found; service calls are refused", path)
            self._service = {}
            return
        if force or mtime != self._service_mtime:
            self._service = self._parse(Path(path).read_text())
            self._service_mtime = mtime
            log.info("service keys loaded", extra={"keys": len(self._service)})

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, or None. Re-reads the key file at most once a second."""
        now = self.clock()
        with self._lock:
            if now - self._checked >= 1.0:
                self._checked = now
                try:
                    self._load()
                except (OSError, ValueError, KeyError) as exc:
                    log.error("API key file unreadable, keeping the previous keys: %s", exc)
            digest = hash_key(key)
            return self._by_hash.get(digest) or self._service.get(digest)


def _keys_from(metadata: Any) -> set[str]:
    """Every distinct key in ``x-api-key`` and ``authorization: Bearer`` metadata."""
    keys = set()
    for item in metadata or ():
        name, value = item
        text = value if isinstance(value, str) else value.decode()
        if name == "x-api-key" and text.strip():
            keys.add(text.strip())
        elif name == "authorization" and text.lower().startswith("bearer ") and text[7:].strip():
            keys.add(text[7:].strip())
    return keys


def _key_from(metadata: Any) -> str:
    """The call's one key ("" when none).

    Raises:
        Unauthenticated: ``AMBIGUOUS_CREDENTIALS`` when the call carries two different keys.
    """
    keys = _keys_from(metadata)
    if len(keys) > 1:
        raise Unauthenticated(
            "AMBIGUOUS_CREDENTIALS",
            "the call carries more than one different API key (x-api-key and/or authorization: Bearer); send one",
        )
    return next(iter(keys), "")


def authorize(keyring: KeyRing | None, method: str, metadata: Any) -> Principal:
    """The caller's principal for ``method``.

    Raises:
        Unauthenticated: ``API_KEY_MISSING``, ``API_KEY_INVALID`` or ``AMBIGUOUS_CREDENTIALS``.
        PermissionDenied: ``SCOPE_MISSING`` (the key lacks the method's scope).
    """
    if keyring is None:
        return ANONYMOUS_ADMIN
    key = _key_from(metadata)
    if not key:
        raise Unauthenticated("API_KEY_MISSING", "an API key is required (metadata x-api-key or authorization: Bearer)")
    principal = keyring.lookup(key)
    if principal is None:
        raise Unauthenticated("API_KEY_INVALID", "the API key is not valid")
    scope = METHOD_SCOPES.get(method, "admin")
    if not principal.can(scope):
        raise PermissionDenied(
            "SCOPE_MISSING", f"{method} needs scope {scope!r}; the key has {sorted(principal.scopes)}",
            {"scope": scope, "key_id": principal.key_id},
        )
    return principal


class KeyRateLimiter:
    """A token bucket per customer key: ``rate`` RPCs per second sustained, ``burst`` at once.

    One tenant's flood cannot take a service instance's capacity from the others (reliability
    review: 40 Decode windows pushed another caller's live latency from 0.5 s to 16 s). Admin and
    service keys are not limited. Buckets of keys idle for a minute are dropped, so the table
    stays bounded by the keys active in the last minute.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._swept = clock()

    def take(self, principal: Principal) -> None:
        """Count one RPC of ``principal``.

        Raises:
            ResourceExhausted: ``KEY_RATE_LIMITED``, with the seconds until a token is back.
        """
        if self.rate <= 0 or principal.admin or principal.scopes & SERVICE_SCOPES:
            return
        now = self.clock()
        if now - self._swept > 60:
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            self._swept = now
        tokens, last = self._buckets.get(principal.key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1 - 1e-9:  # (a refill of exactly 1/rate seconds must give the token back)
            self._buckets[principal.key_id] = (tokens, now)
            wait = (1 - tokens) / self.rate
            raise ResourceExhausted(
                "KEY_RATE_LIMITED",
                f"key {principal.key_id} started more than {self.rate:g} calls per second (burst {self.burst}); "
                f"retry in {wait:.2f} s",
                subject=f"key:{principal.key_id}", retry_after=wait,
            )
        self._buckets[principal.key_id] = (tokens - 1, now)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the API key of every RPC but health and reflection; exposes the caller to servicers.

    Each RPC of a customer key also counts against the key's rate (:class:`KeyRateLimiter`).
    """

    def __init__(self, keyring: KeyRing | None, limiter: KeyRateLimiter | None = None):
        self.keyring = keyring
        self.limiter = limiter

    async def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        """Wrap the handler so the check and the principal run inside the handler's own task."""
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        keyring, method, metadata, limiter = self.keyring, details.method, details.invocation_metadata, self.limiter

        def admit() -> None:
            principal = authorize(keyring, method, metadata)
            if limiter is not None and keyring is not None:
                limiter.take(principal)
            _current.set(principal)
            _current_key.set(_key_from(metadata))

        def wrap(behavior: Callable[..., Any], streaming_response: bool) -> Callable[..., Any]:
            if streaming_response:
                async def stream_wrapper(request: Any, context: Any) -> Any:
                    admit()
                    async for item in behavior(request, context):
                        yield item

                return stream_wrapper

            async def unary_wrapper(request: Any, context: Any) -> Any:
                admit()
                return await behavior(request, context)

            return unary_wrapper

        for kind, factory, streaming in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
            ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
            ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
            ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
        ):
            behavior = getattr(handler, kind)
            if behavior:
                return factory(wrap(behavior, streaming), handler.request_deserializer, handler.response_serializer)
        return handler


def server_keyring(settings: AuthSettings) -> KeyRing | None:
    """The key ring for a server, or None when auth is disabled (logged as a warning)."""
    if not settings.enabled:
        log.warning("API key checking is DISABLED; every caller is admin")
        return None
    return KeyRing(settings)


class ApiKeyClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``x-api-key`` to every call of a (synchronous) channel: ``grpc.intercept_channel(ch, it)``."""

    def __init__(self, key: str):
        self.key = key

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or []), ("x-api-key", self.key)]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201, D102
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201, D102
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201, D102
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201, D102
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]):
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def check_not_revoked(keyring: KeyRing | None, what: str = "stream") -> None:
    """End a long call whose key was revoked since it began (open streams outlive the first check).

    Args:
        keyring: The service's keys (None: auth off, nothing to check).
        what: Named in the message, e.g. ``"watch"``, ``"session"``.

    Raises:
        Unauthenticated: ``KEY_REVOKED`` when the caller's key is no longer in the key files
            (:meth:`KeyRing.lookup` re-reads them at most once a second).
    """
    if keyring is not None and keyring.lookup(current_api_key()) is None:
        log.info("API key revoked; ending the %s", what, extra={"key_id": current_principal().key_id})
        raise Unauthenticated("KEY_REVOKED", f"the API key was revoked while the {what} was open")

