"""Fixtures every test directory shares: real servers on loopback, never a fixed port or sleep.

- ``s3_endpoint``: a moto S3 server (the MinIO adapter's counterpart), port 0, read from its log;
- ``nats_url``: ``nats-server -js`` with a temporary store, port -1 (random), read from its
  ports file;
- ``stack_factory``: the scribe services' gRPC servers (port 0) in a background event loop, over
  that NATS and a local-directory object store, started and stopped per test module.

The servers and the stack are the harness package (harness/scribe_harness), which the tools
share; this file only turns them into fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from scribe_harness import FIXTURES, SHARED_DATA, MotoServer, NatsServer, Stack, wer  # noqa: F401 - re-exported


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a moto S3 server on loopback, started once per session."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A fresh JetStream server per test module."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_url(nats_server: NatsServer) -> str:
    """Client URL of the module's JetStream server."""
    return nats_server.url


@pytest.fixture(scope="module")
def stack_factory(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Builds a :class:`Stack` (no service started yet); closed at the end of the module."""
    stacks: list[Stack] = []

    def make(auth: bool = True) -> Stack:
        stack = Stack(nats_url, tmp_path_factory.mktemp("stack"), auth=auth)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture(scope="module")
def ingest(stack):  # noqa: ANN001, ANN201 - the module's Stack; an Ingest stub
    """An Ingest stub (admin key) on the module's ``stack`` fixture."""
    from scribe.v1 import ingest_pb2_grpc

    return ingest_pb2_grpc.IngestStub(stack.channel("ingest"))


@pytest.fixture(scope="module")
def results(stack):  # noqa: ANN001, ANN201 - the module's Stack; a Results stub
    """A Results stub (admin key) on the module's ``stack`` fixture."""
    from scribe.v1 import results_pb2_grpc

    return results_pb2_grpc.ResultsStub(stack.channel("results"))
