"""Stored, versioned glossaries in the ``scribe_glossaries`` KV bucket, and decoding bias.

Layout of the bucket (one key per version, so a job that pinned ``id@3`` still reads version 3
after later puts; the bucket's own KV history, 10 revisions, would lose it):

- ``g.<id>``: the latest version (a serialized ``scribe.v1.Glossary``). Every put is a
  compare-and-set on this key's KV revision, so two concurrent puts never get the same version:
  the loser sees ``VERSION_CONFLICT`` (when it gave ``expected_version``) or retries on the
  fresh record (when it did not).
- ``v.<id>.<version>``: an immutable copy of each version, written right after the latest key.
  If a writer dies between the two writes, the version is still readable from ``g.<id>``.
- ``t.<id>``: after a delete, the last version number, so re-creating the id continues the
  numbering and ``id@N`` never names two different glossaries.
- ``o.<id>``: the id's owner, JSON ``{"owner": "acme"}``, created (compare-and-set) before the
  first version. It outlives a delete, like ``t.<id>``: an id stays its owner's, so another
  owner can never take over a name that an owner's streams or scripts still refer to.

Ownership (the caller is :func:`scribe_libs.auth.current_principal`, or the ``principal``
argument):

- A glossary belongs to the owner of the key that first stored it. Ids are one namespace for
  every owner (a pinned ``id@version`` must name one glossary for post-processing, which runs
  with no caller).
- Owner ``""`` means *shared*: readable and usable by every owner, changed only by admin keys.
  Glossaries stored by an admin key are shared, and so are glossaries stored before owners
  existed (no ``o.<id>``; only admin keys could store them then). This is the one way to
  share: ``scribe.v1.Glossary`` has no owner or ``shared_with`` field to name owners with
  (adding ``owner`` and ``repeated string shared_with`` to the proto is the way to finer
  sharing, and to let an admin store a glossary *for* an owner).
- A caller sees (List, Get, and refers to in a job's or stream's ``glossary_ids``) its own
  owner's glossaries and the shared ones; an admin sees every glossary. Another owner's
  glossary is ``NOT_FOUND`` ``GLOSSARY_NOT_FOUND``, the same answer as a missing one, so ids
  and contents do not leak through reads.
- Put and Delete: an owner changes only its own glossaries (scope ``jobs:write``); an admin
  changes every glossary (an admin's update keeps the owner). PutGlossary on an id held by
  another owner is PERMISSION_DENIED ``GLOSSARY_ID_TAKEN`` and on a shared one (by a non-admin)
  PERMISSION_DENIED ``GLOSSARY_READ_ONLY``: a create must say why it failed, so a put reveals
  that an id is taken, never what it holds. Prefix ids with the owner ("acme-terms") to avoid
  collisions.

Ids: 1-64 characters from ``A-Z a-z 0-9 _ -``, starting with a letter or digit (valid KV key
tokens). A job refers to a glossary as ``id`` (latest at submission) or ``id@version``; ingest
resolves both to ``id@version`` (:func:`apply_glossaries`) so post-processing applies exactly the
versions decoding was biased with.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from scribe.v1 import glossary_pb2, jobs_pb2, transcript_pb2
from scribe_libs.auth import Principal, current_principal
from scribe_libs.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from scribe_libs.textproc import MAX_PROMPT_BYTES, Glossary, bias_terms, glossary_from_proto, validate_glossary

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
#: Limits of one glossary. They keep a glossary well inside NATS' default 1 MiB message size and
#: keep matching cheap: every alias becomes an alternative of one regex per term.
MAX_TERMS = 2000
MAX_ALIASES_PER_TERM = 50
MAX_TERM_CHARS = 100
MAX_RULES = 200
#: Longest REGEX rule pattern, characters. A cap on size, not a guarantee against catastrophic
#: backtracking (Python ``re`` has no timeout); glossaries are an admin-scope API.
MAX_PATTERN_CHARS = 500
MAX_GLOSSARY_BYTES = 512 * 1024
#: Glossaries one job may use.
MAX_GLOSSARIES_PER_JOB = 10
_CAS_ATTEMPTS = 20


class GlossaryNotFound(NotFound):
    """NOT_FOUND (reason ``GLOSSARY_NOT_FOUND``) for an unknown id or version."""

    def __init__(self, ref: str):
        super().__init__("GLOSSARY_NOT_FOUND", f"glossary {ref!r} not found", "glossary", ref)


def check_id(glossary_id: str, field: str = "glossary.id") -> str:
    """Return ``glossary_id`` if valid. Raises InvalidArgument ``INVALID_GLOSSARY``."""
    if not ID_PATTERN.fullmatch(glossary_id or ""):
        raise InvalidArgument(
            "INVALID_GLOSSARY",
            f"glossary id {glossary_id!r} must be 1-64 characters of A-Z a-z 0-9 _ - starting with a letter or digit",
            field=field,
        )
    return glossary_id


def parse_ref(ref: str, field: str = "spec.glossary_ids") -> tuple[str, int]:
    """``"id"`` -> ``(id, 0)`` (latest); ``"id@3"`` -> ``(id, 3)``. Raises InvalidArgument."""
    glossary_id, _, version = ref.strip().partition("@")
    check_id(glossary_id, field)
    if not version:
        return glossary_id, 0
    if not version.isdigit() or int(version) < 1:
        raise InvalidArgument("INVALID_GLOSSARY", f"bad glossary version in {ref!r}", field=field)
    return glossary_id, int(version)


def validate_message(message: glossary_pb2.Glossary) -> None:
    """Everything PutGlossary checks before storing.

    Raises:
        InvalidArgument: ``INVALID_GLOSSARY`` (id, sizes, empty term) or ``INVALID_RULE`` (rule
            id, kind, regex, pattern length), with the field named.
    """
    check_id(message.id)
    if len(message.terms) > MAX_TERMS:
        raise InvalidArgument("INVALID_GLOSSARY", f"at most {MAX_TERMS} terms", field="glossary.terms")
    for term in message.terms:
        if len(term.term) > MAX_TERM_CHARS or any(len(a) > MAX_TERM_CHARS for a in term.aliases):
            raise InvalidArgument(
                "INVALID_GLOSSARY", f"terms and aliases are at most {MAX_TERM_CHARS} characters", field="glossary.terms"
            )
        if len(term.aliases) > MAX_ALIASES_PER_TERM:
            raise InvalidArgument(
                "INVALID_GLOSSARY", f"term {term.term!r} has more than {MAX_ALIASES_PER_TERM} aliases",
                field="glossary.terms",
            )
    if len(message.rules) > MAX_RULES:
        raise InvalidArgument("INVALID_RULE", f"at most {MAX_RULES} rules", field="glossary.rules")
    for rule in message.rules:
        if len(rule.pattern) > MAX_PATTERN_CHARS:
            raise InvalidArgument(
                "INVALID_RULE", f"rule {rule.id!r}: pattern longer than {MAX_PATTERN_CHARS} characters",
                field="glossary.rules",
            )
    if message.ByteSize() > MAX_GLOSSARY_BYTES:
        raise InvalidArgument("INVALID_GLOSSARY", f"glossary exceeds {MAX_GLOSSARY_BYTES} bytes", field="glossary")
    validate_glossary(glossary_from_proto(message))


#: Owner of shared glossaries (stored by admin keys, or before owners existed).
SHARED = ""


def visible(principal: Principal, owner: str) -> bool:
    """True if ``principal`` may read and use a glossary owned by ``owner`` (own, shared, or admin)."""
    return principal.admin or owner == SHARED or owner == principal.owner


def writable(principal: Principal, owner: str) -> bool:
    """True if ``principal`` may change or delete a glossary owned by ``owner`` (own, or admin)."""
    return principal.admin or (owner != SHARED and owner == principal.owner)


def _parse(data: bytes) -> glossary_pb2.Glossary:
    message = glossary_pb2.Glossary()
    message.ParseFromString(data)
    return message


class GlossaryStore:
    """Glossaries over a KV bucket (``Bus.glossaries``); see the module docstring for the layout."""

    def __init__(self, kv: KeyValue):
        self.kv = kv

    async def _latest(self, glossary_id: str) -> tuple[glossary_pb2.Glossary | None, int]:
        """The latest version and the KV revision of ``g.<id>`` (``(None, 0)`` if absent)."""
        try:
            entry = await self.kv.get(f"g.{glossary_id}")
        except KeyNotFoundError:
            return None, 0
        if not entry.value:
            return None, int(entry.revision or 0)
        return _parse(entry.value), int(entry.revision or 0)

    async def owner(self, glossary_id: str) -> str | None:
        """The id's owner, or None for an id never stored.

        The ``o.<id>`` record; ``SHARED`` for a glossary stored before owners existed (no record).
        """
        try:
            entry = await self.kv.get(f"o.{glossary_id}")
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            return str(json.loads(entry.value)["owner"])
        latest, _ = await self._latest(glossary_id)
        return SHARED if latest is not None else None

    async def _claim(self, glossary_id: str, principal: Principal) -> str:
        """The id's owner, recording ``principal``'s (``SHARED`` for an admin) if it has none."""
        owner = await self.owner(glossary_id)
        if owner is not None:
            return owner
        claimed = SHARED if principal.admin else principal.owner
        try:
            await self.kv.create(f"o.{glossary_id}", json.dumps({"owner": claimed}).encode())
        except KeyWrongLastSequenceError:
            again = await self.owner(glossary_id)  # a concurrent first put won
            return claimed if again is None else again
        return claimed

    async def _tombstone(self, glossary_id: str) -> int:
        try:
            entry = await self.kv.get(f"t.{glossary_id}")
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def put(
        self, message: glossary_pb2.Glossary, expected_version: int | None = None, principal: Principal | None = None
    ) -> glossary_pb2.Glossary:
        """Validate and store ``message`` as a new version, owned as the module docstring says.

        Args:
            message: The glossary; its version and times are ignored.
            expected_version: If given, the stored version must equal it (0: must not exist).
            principal: The caller (default: the RPC's, :func:`~scribe_libs.auth.current_principal`).

        Returns:
            The glossary as stored (version 1 on first put, then +1; create/update times set).

        Raises:
            InvalidArgument: see :func:`validate_message`.
            FailedPrecondition: ``VERSION_CONFLICT`` when ``expected_version`` differs from the
                stored version (also when a concurrent put won the race).
            PermissionDenied: ``GLOSSARY_ID_TAKEN`` (the id is another owner's) or
                ``GLOSSARY_READ_ONLY`` (a shared glossary, for a non-admin caller).
        """
        validate_message(message)
        principal = principal or current_principal()
        owner = await self._claim(message.id, principal)
        if not writable(principal, owner):
            if visible(principal, owner):
                raise PermissionDenied(
                    "GLOSSARY_READ_ONLY", f"glossary {message.id!r} is shared; only an admin key changes it",
                    {"id": message.id},
                )
            raise PermissionDenied(
                "GLOSSARY_ID_TAKEN", f"glossary id {message.id!r} is taken; choose another id (e.g. prefix your owner)",
                {"id": message.id},
            )
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self._latest(message.id)
            current_version = current.version if current else 0
            if expected_version is not None and expected_version != current_version:
                raise FailedPrecondition(
                    "VERSION_CONFLICT",
                    f"glossary {message.id!r} is at version {current_version}, not {expected_version}",
                    {"id": message.id, "version": str(current_version)},
                )
            stored = glossary_pb2.Glossary()
            stored.CopyFrom(message)
            now = datetime.now(UTC)
            if current is None:
                stored.version = await self._tombstone(message.id) + 1
                stored.create_time.FromDatetime(now)
            else:
                stored.version = current.version + 1
                stored.create_time.CopyFrom(current.create_time)
            stored.update_time.FromDatetime(now)
            data = stored.SerializeToString()
            try:
                if revision:
                    await self.kv.update(f"g.{message.id}", data, last=revision)
                else:
                    await self.kv.create(f"g.{message.id}", data)
            except KeyWrongLastSequenceError:
                continue  # a concurrent put or delete: re-read and decide again
            await self.kv.put(f"v.{message.id}.{stored.version}", data)
            log.info("glossary stored", extra={"glossary_id": message.id, "version": stored.version})
            return stored
        raise FailedPrecondition("VERSION_CONFLICT", f"glossary {message.id!r} is being changed concurrently")

    async def get(
        self, glossary_id: str, version: int = 0, principal: Principal | None = None
    ) -> glossary_pb2.Glossary:
        """The latest version (``version`` 0) or a given one, if ``principal`` may see it.

        Raises:
            InvalidArgument: ``INVALID_GLOSSARY`` for a malformed id.
            GlossaryNotFound: an unknown id or version, or another owner's glossary.
        """
        check_id(glossary_id)
        ref = f"{glossary_id}@{version}" if version else glossary_id
        owner = await self.owner(glossary_id)
        if owner is None or not visible(principal or current_principal(), owner):
            raise GlossaryNotFound(ref)
        latest, _ = await self._latest(glossary_id)
        if latest is None:
            raise GlossaryNotFound(ref)
        if version == 0 or latest.version == version:
            return latest
        if version > latest.version:
            raise GlossaryNotFound(ref)
        try:
            entry = await self.kv.get(f"v.{glossary_id}.{version}")
        except KeyNotFoundError as exc:
            raise GlossaryNotFound(ref) from exc
        if not entry.value:
            raise GlossaryNotFound(ref)
        return _parse(entry.value)

    async def list(self, principal: Principal | None = None) -> list[glossary_pb2.Glossary]:
        """Latest version of every glossary ``principal`` may see, ordered by id."""
        principal = principal or current_principal()
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return []
        out = []
        for key in sorted(k for k in keys if k.startswith("g.")):
            glossary_id = key.removeprefix("g.")
            owner = await self.owner(glossary_id)
            if owner is None or not visible(principal, owner):
                continue
            latest, _ = await self._latest(glossary_id)
            if latest is not None:
                out.append(latest)
        return out

    async def delete(self, glossary_id: str, principal: Principal | None = None) -> None:
        """Remove a glossary and all its versions (the id stays its owner's, see the module docstring).

        Jobs that pinned a version of it and were not post-processed yet complete without it,
        with a note in their transcript.

        Raises:
            GlossaryNotFound: an unknown id, or another owner's glossary.
            PermissionDenied: ``GLOSSARY_READ_ONLY`` for a shared glossary and a non-admin caller.
        """
        principal = principal or current_principal()
        owner = await self.owner(check_id(glossary_id))
        if owner is None or not visible(principal, owner):
            raise GlossaryNotFound(glossary_id)
        if not writable(principal, owner):
            raise PermissionDenied(
                "GLOSSARY_READ_ONLY", f"glossary {glossary_id!r} is shared; only an admin key deletes it",
                {"id": glossary_id},
            )
        latest, _ = await self._latest(glossary_id)
        if latest is None:
            raise GlossaryNotFound(glossary_id)
        await self.kv.put(f"t.{glossary_id}", str(latest.version).encode())
        await self.kv.purge(f"g.{glossary_id}")
        for version in range(1, latest.version + 1):
            try:
                await self.kv.purge(f"v.{glossary_id}.{version}")
            except KeyNotFoundError:
                pass
        log.info("glossary deleted", extra={"glossary_id": glossary_id, "version": latest.version})

    async def resolve(
        self, refs: Sequence[str], field: str = "spec.glossary_ids", principal: Principal | None = None
    ) -> list[glossary_pb2.Glossary]:
        """Fetch ``id`` / ``id@version`` references in order (duplicates ignored), as ``principal`` sees them.

        Ingest (CreateJob) and the stream gateway (a session's config) call this inside the
        caller's RPC, so a job or stream can use only glossaries its caller may see.

        Raises:
            InvalidArgument: a malformed reference or more than MAX_GLOSSARIES_PER_JOB.
            GlossaryNotFound: an unknown id or version, or another owner's glossary.
        """
        principal = principal or current_principal()
        parsed: list[tuple[str, int]] = []
        for ref in refs:
            item = parse_ref(ref, field)
            if item[0] not in [p[0] for p in parsed]:
                parsed.append(item)
        if len(parsed) > MAX_GLOSSARIES_PER_JOB:
            raise InvalidArgument(
                "TOO_MANY_GLOSSARIES", f"at most {MAX_GLOSSARIES_PER_JOB} glossaries per job", field=field
            )
        return [await self.get(glossary_id, version, principal) for glossary_id, version in parsed]


def _fit(existing: list[str], extra: list[str], max_bytes: int) -> list[str]:
    out = list(existing)
    for term in extra:
        if term in out:
            continue
        if len(" ".join([*out, term]).encode()) > max_bytes:
            break
        out.append(term)
    return out


def biased(
    config: transcript_pb2.RecognitionConfig, glossaries: Sequence[Glossary]
) -> transcript_pb2.RecognitionConfig:
    """A copy of ``config`` with the glossaries' terms added to hotwords and the initial prompt.

    Terms come from :func:`scribe_libs.textproc.bias_terms` (verbatim terms only, whole terms,
    at most :data:`~scribe_libs.textproc.MAX_PROMPT_BYTES` UTF-8 bytes each for hotwords and
    prompt). The caller's hotwords are kept and come first; glossary terms are appended while the
    space-joined hotwords stay within the byte budget. The glossary prompt ("vLLM, Kubernetes.")
    becomes the initial prompt, or is appended after the caller's prompt: Whisper keeps the
    *last* 223 prompt tokens, so the terms survive a long caller prompt.
    """
    out = transcript_pb2.RecognitionConfig()
    out.CopyFrom(config)
    hotwords, prompt = bias_terms(list(glossaries))
    if not hotwords:
        return out
    merged = _fit(list(out.hotwords), hotwords, max(MAX_PROMPT_BYTES, len(" ".join(out.hotwords).encode())))
    del out.hotwords[:]
    out.hotwords.extend(merged)
    out.initial_prompt = f"{out.initial_prompt.rstrip()} {prompt}" if out.initial_prompt.strip() else prompt
    return out


async def bias_config(
    store: GlossaryStore, config: transcript_pb2.RecognitionConfig, glossary_ids: Sequence[str]
) -> transcript_pb2.RecognitionConfig:
    """``config`` biased towards the referenced glossaries (see :func:`biased`).

    Raises:
        GlossaryNotFound: ``NOT_FOUND`` with reason ``GLOSSARY_NOT_FOUND`` for an unknown id.
        InvalidArgument: a malformed reference.
    """
    messages = await store.resolve(glossary_ids)
    return biased(config, [glossary_from_proto(m) for m in messages])


async def apply_glossaries(store: GlossaryStore, spec: jobs_pb2.JobSpec) -> None:
    """Ingest's step: bias ``spec.config`` and pin ``spec.glossary_ids`` to ``id@version``, in place.

    Post-processing reads the pinned versions, so the same glossary versions bias decoding and
    correct the text even if a glossary changes while the job waits in the queue.

    Raises:
        GlossaryNotFound: an unknown id or version (before anything is stored).
        InvalidArgument: a malformed reference or too many glossaries.
    """
    if not spec.glossary_ids:
        return
    messages = await store.resolve(spec.glossary_ids)
    spec.config.CopyFrom(biased(spec.config, [glossary_from_proto(m) for m in messages]))
    del spec.glossary_ids[:]
    spec.glossary_ids.extend(f"{m.id}@{m.version}" for m in messages)
