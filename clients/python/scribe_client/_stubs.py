"""Which generated ``scribe.v1`` modules the client uses: scribe-libs' when installed, else its own.

The package bundles stubs generated at build time from protos/scribe/v1 (setup.py) under
``scribe_client._proto.scribe.v1``, a namespace of its own, so installing scribe-client beside
scribe-libs never puts two distributions' files at the same path.

Both copies register the same proto files (``scribe/v1/jobs.proto``, ...) in protobuf's default
descriptor pool, which holds one definition per file and per message name. So one process uses
one copy: when ``scribe.v1`` is importable (scribe-libs is installed, as in the CLI and the
services) the client uses it, and the messages it takes and returns are the very classes the
caller's code uses (a ``scribe.v1.jobs_pb2.JobSpec`` the CLI builds is accepted as is; the
bundled copy is never imported, so a newer or older contract in scribe-libs cannot clash with
it). Otherwise the bundled copy is used. ``SCRIBE_CLIENT_STUBS=bundled`` forces the bundled copy
(for tests of the package alone). Were both copies imported, identical protos would give the
same classes (the pool accepts an identical file twice), but differing ones fail at import
("duplicate file name"): which is why the shared copy, when present, is the only one imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import TYPE_CHECKING

_NAMES = (
    "transcript_pb2",
    "jobs_pb2",
    "ingest_pb2",
    "ingest_pb2_grpc",
    "results_pb2",
    "results_pb2_grpc",
    "streaming_pb2",
    "streaming_pb2_grpc",
    "transcriber_pb2",
)


def _shared_available() -> bool:
    if os.environ.get("SCRIBE_CLIENT_STUBS", "") == "bundled":
        return False
    try:
        return importlib.util.find_spec("scribe.v1.jobs_pb2") is not None
    except ImportError:  # no top-level ``scribe`` package
        return False


#: The package the stubs come from: ``"scribe.v1"`` (scribe-libs) or ``"scribe_client._proto.scribe.v1"``.
SOURCE = "scribe.v1" if _shared_available() else "scribe_client._proto.scribe.v1"


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"{SOURCE}.{name}")


if TYPE_CHECKING:
    # Messages are typed by the bundled .pyi files; the *_grpc modules have no types (grpcio-tools
    # writes none), so they are Any.
    from typing import Any

    from scribe_client._proto.scribe.v1 import ingest_pb2 as ingest_pb2
    from scribe_client._proto.scribe.v1 import jobs_pb2 as jobs_pb2
    from scribe_client._proto.scribe.v1 import results_pb2 as results_pb2
    from scribe_client._proto.scribe.v1 import streaming_pb2 as streaming_pb2
    from scribe_client._proto.scribe.v1 import transcriber_pb2 as transcriber_pb2
    from scribe_client._proto.scribe.v1 import transcript_pb2 as transcript_pb2

    ingest_pb2_grpc: Any
    results_pb2_grpc: Any
    streaming_pb2_grpc: Any
else:
    transcript_pb2 = _load("transcript_pb2")
    jobs_pb2 = _load("jobs_pb2")
    ingest_pb2 = _load("ingest_pb2")
    ingest_pb2_grpc = _load("ingest_pb2_grpc")
    results_pb2 = _load("results_pb2")
    results_pb2_grpc = _load("results_pb2_grpc")
    streaming_pb2 = _load("streaming_pb2")
    streaming_pb2_grpc = _load("streaming_pb2_grpc")
    transcriber_pb2 = _load("transcriber_pb2")

__all__ = [
    "SOURCE",
    "ingest_pb2",
    "ingest_pb2_grpc",
    "jobs_pb2",
    "results_pb2",
    "results_pb2_grpc",
    "streaming_pb2",
    "streaming_pb2_grpc",
    "transcriber_pb2",
    "transcript_pb2",
]
