"""Client-side helpers the integration tests and tools share: upload a job, wait for a condition.

``submit`` streams ``CreateJobRequest`` messages as every client does (the spec first, then the
audio in chunks); ``wait_for`` polls a predicate against a deadline (bounded interval, never a
bare sleep in the test).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

#: Audio bytes per CreateJobRequest (the CLI's chunk size).
CHUNK_BYTES = 64 * 1024

T = TypeVar("T")


def create_job_requests(spec, data: bytes, chunk: int = CHUNK_BYTES) -> Iterator:  # noqa: ANN001 - a JobSpec
    """``CreateJobRequest(spec=spec)``, then ``data`` in ``chunk``-byte audio messages."""
    from scribe.v1 import ingest_pb2

    yield ingest_pb2.CreateJobRequest(spec=spec)
    for i in range(0, len(data), chunk):
        yield ingest_pb2.CreateJobRequest(audio=data[i : i + chunk])


def job_spec(filename: str = "", **fields):  # noqa: ANN003, ANN201 - JobSpec fields and RecognitionConfig fields
    """A ``JobSpec`` from keyword fields, each put where it belongs.

    JobSpec's own fields (request_id, labels, source_uri, ...) go to the spec, the rest to its
    ``RecognitionConfig`` (model, language, word_timestamps, ...).

    Raises:
        ValueError: a name that is a field of neither message.
    """
    from scribe.v1 import jobs_pb2, transcript_pb2

    spec_names = set(jobs_pb2.JobSpec.DESCRIPTOR.fields_by_name) - {"config"}
    config_names = set(transcript_pb2.RecognitionConfig.DESCRIPTOR.fields_by_name)
    unknown = set(fields) - spec_names - config_names
    if unknown:
        raise ValueError(f"not a JobSpec or RecognitionConfig field: {sorted(unknown)}")
    config = transcript_pb2.RecognitionConfig(**{k: v for k, v in fields.items() if k in config_names})
    spec = {k: v for k, v in fields.items() if k in spec_names}
    return jobs_pb2.JobSpec(filename=filename, config=config, **spec)


def submit(ingest, source: Path | bytes | None = None, *, filename: str | None = None,  # noqa: ANN001, ANN201
           timeout: float = 60, chunk: int = CHUNK_BYTES, **fields):
    """``Ingest.CreateJob`` of ``source`` (a file, or bytes; None for a ``source_uri`` job); the ``Job``.

    ``fields`` are JobSpec and RecognitionConfig fields (see :func:`job_spec`); the filename
    defaults to the file's name. Raises ``grpc.RpcError`` as the call does.
    """
    if isinstance(source, Path):
        data, name = source.read_bytes(), source.name
    else:
        data, name = source or b"", ""
    spec = job_spec(filename if filename is not None else name, **fields)
    return ingest.CreateJob(create_job_requests(spec, data, chunk), timeout=timeout).job


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` every ``interval`` seconds until it returns something truthy; return it.

    Raises:
        AssertionError: ``timeout`` seconds passed (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
