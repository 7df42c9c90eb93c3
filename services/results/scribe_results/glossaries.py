"""scribe.v1.Glossaries: create, read, list and delete stored glossaries (served by results).

Storage, versioning and validation live in :mod:`scribe_libs.glossaries`; this module maps the
RPCs onto it. Glossaries are owned (see that module's docstring): every RPC acts as its caller
(:func:`scribe_libs.auth.current_principal`), which sees and changes its own owner's glossaries,
reads the shared ones (stored by admin keys), and, with an admin key, everything. PutGlossary
and DeleteGlossary need scope ``jobs:write``. Errors (through the shared interceptor):

- ``INVALID_ARGUMENT`` ``INVALID_GLOSSARY`` (bad id, empty term, size limits) or
  ``INVALID_RULE`` (bad regex, pattern over ``MAX_PATTERN_CHARS``, duplicate rule id, ...);
- ``NOT_FOUND`` ``GLOSSARY_NOT_FOUND`` for an unknown id or version, or another owner's glossary;
- ``PERMISSION_DENIED`` ``GLOSSARY_ID_TAKEN`` (a put on another owner's id) or
  ``GLOSSARY_READ_ONLY`` (a non-admin put or delete of a shared glossary);
- ``FAILED_PRECONDITION`` ``VERSION_CONFLICT`` when ``expected_version`` is not the stored one.
"""

from __future__ import annotations

import grpc

from scribe.v1 import glossary_pb2, glossary_pb2_grpc
from scribe_libs.auth import current_principal
from scribe_libs.errors import InvalidArgument
from scribe_libs.glossaries import GlossaryStore, check_id

__all__ = ["SERVICE_NAME", "GlossariesServicer", "GlossaryStore", "add_to_server"]

DEFAULT_PAGE = 100
MAX_PAGE = 1000
SERVICE_NAME = glossary_pb2.DESCRIPTOR.services_by_name["Glossaries"].full_name


class GlossariesServicer(glossary_pb2_grpc.GlossariesServicer):
    """Implements scribe.v1.Glossaries over a :class:`GlossaryStore`."""

    def __init__(self, store: GlossaryStore):
        self.store = store

    async def PutGlossary(  # noqa: N802 - gRPC method name
        self, request: glossary_pb2.PutGlossaryRequest, context: grpc.aio.ServicerContext
    ) -> glossary_pb2.PutGlossaryResponse:
        """Store a new version (see glossary.proto)."""
        expected = request.expected_version if request.HasField("expected_version") else None
        stored = await self.store.put(request.glossary, expected, current_principal())
        return glossary_pb2.PutGlossaryResponse(glossary=stored)

    async def GetGlossary(  # noqa: N802 - gRPC method name
        self, request: glossary_pb2.GetGlossaryRequest, context: grpc.aio.ServicerContext
    ) -> glossary_pb2.GetGlossaryResponse:
        """The latest or a given version of a glossary the caller may see."""
        check_id(request.id, "id")
        glossary = await self.store.get(request.id, request.version, current_principal())
        return glossary_pb2.GetGlossaryResponse(glossary=glossary)

    async def ListGlossaries(  # noqa: N802 - gRPC method name
        self, request: glossary_pb2.ListGlossariesRequest, context: grpc.aio.ServicerContext
    ) -> glossary_pb2.ListGlossariesResponse:
        """The caller's and shared glossaries (admin: all), latest versions by id; the token is the last id."""
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        if request.page_token:
            check_id(request.page_token, "page_token")
        glossaries = [g for g in await self.store.list(current_principal()) if g.id > request.page_token]
        page = glossaries[:size]
        token = page[-1].id if len(glossaries) > size else ""
        return glossary_pb2.ListGlossariesResponse(glossaries=page, next_page_token=token)

    async def DeleteGlossary(  # noqa: N802 - gRPC method name
        self, request: glossary_pb2.DeleteGlossaryRequest, context: grpc.aio.ServicerContext
    ) -> glossary_pb2.DeleteGlossaryResponse:
        """Remove a glossary and all its versions."""
        if not request.id:
            raise InvalidArgument("INVALID_GLOSSARY", "id is required", field="id")
        await self.store.delete(request.id, current_principal())
        return glossary_pb2.DeleteGlossaryResponse()


def add_to_server(store: GlossaryStore, server: grpc.aio.Server) -> None:
    """Register the Glossaries service on ``server``."""
    glossary_pb2_grpc.add_GlossariesServicer_to_server(GlossariesServicer(store), server)
