"""Serving: uvicorn on the running (uvloop) event loop, ``create_server``, and the process main.

:func:`create_server` binds the configured port itself (0 picks a free one, so tests bind port
0), starts uvicorn on that socket and returns a :class:`GatewayServer` with the bound port, as the
gRPC services' ``create_server`` does. uvicorn's own signal handling is off: :func:`serve_main`
turns SIGTERM/SIGINT into the platform's drain (``/readyz`` 503 for ``drain_seconds``, then stop
accepting, then up to ``grace_seconds`` for requests in flight; a transcription still running
after that is cancelled, and so is its job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from scribe_http_gateway import SERVICE_NAME
from scribe_http_gateway.app import Gateway, create_app
from scribe_http_gateway.backend import Backends
from scribe_http_gateway.config import Settings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers.

    The service's main owns SIGTERM (the drain), and tests run the server off the main thread.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # noqa: D102 - see the class docstring
        yield


@dataclass
class GatewayServer:
    """A started gateway: its bound port, the uvicorn server, the handlers and the backends."""

    port: int
    server: uvicorn.Server
    gateway: Gateway
    backends: Backends
    task: asyncio.Task[None]
    sock: socket.socket
    _stopped: bool = field(default=False)

    async def stop(self, drain_seconds: float = 0.0, grace_seconds: float = 0.0) -> None:
        """Graceful stop, then close the gRPC channels.

        ``/readyz`` answers 503 at once; after ``drain_seconds`` the server stops accepting and
        gives requests in flight ``grace_seconds``.
        """
        if self._stopped:
            return
        self._stopped = True
        self.gateway.draining = True
        if drain_seconds > 0:
            await asyncio.sleep(drain_seconds)
        self.server.config.timeout_graceful_shutdown = max(grace_seconds, 0.0)
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.backends.close()
        log.info("HTTP server stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"could not bind {host}:{port}: {exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def create_server(settings: Settings) -> GatewayServer:
    """Bind, start serving HTTP, and return the running server with its bound port.

    Raises:
        RuntimeError: the port could not be bound, or uvicorn did not start.
    """
    backends = Backends(settings.ingest_address, settings.results_address)
    app, gateway = create_app(settings, backends)
    sock = _bind(settings.host, settings.port)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        loop="none",  # the running loop: uvloop in serve_main, the harness's loop in tests
        lifespan="off",
        ws="none",
        log_config=None,  # the platform's JSON logs (scribe_libs.logs) carry uvicorn's records
        access_log=settings.access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(max(settings.grace_seconds, 0)),
        # A transcription answers after the job ends, minutes later: idle keep-alive is another matter.
        timeout_keep_alive=75,
    )
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="http-server")
    while not server.started:
        if task.done():
            await backends.close()
            sock.close()
            task.result()
            raise RuntimeError("the HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    if settings.ready_file:
        path = Path(settings.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        tmp.replace(path)
    log.info(
        "HTTP server listening",
        extra={"port": port, "ingest": settings.ingest_address, "results": settings.results_address},
    )
    return GatewayServer(port=port, server=server, gateway=gateway, backends=backends, task=task, sock=sock)


def _drop_color_message(record: logging.LogRecord) -> bool:
    """Drop the terminal-coloured copy uvicorn adds to some messages (JSON logs carry the plain one)."""
    record.__dict__.pop("color_message", None)
    return True


def serve_main() -> None:
    """The process: settings from the environment, JSON logs, telemetry, serve until SIGTERM, drain."""
    from scribe_libs import __version__
    from scribe_libs.config import UnknownSetting
    from scribe_libs.logs import configure_logging
    from scribe_libs.server import run, wait_for_termination
    from scribe_libs.telemetry import setup_telemetry, shutdown_telemetry

    try:
        settings = Settings()
    except UnknownSetting as exc:
        print(f"{SERVICE_NAME}: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(SERVICE_NAME, settings.log_level)
    logging.getLogger("uvicorn.error").addFilter(_drop_color_message)
    setup_telemetry(SERVICE_NAME, __version__, settings.metrics_port)

    async def _main() -> None:
        server = await create_server(settings)
        await wait_for_termination()
        await server.stop(settings.drain_seconds, settings.grace_seconds)
        shutdown_telemetry()

    run(_main)
