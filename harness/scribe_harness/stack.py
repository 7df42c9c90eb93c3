"""The scribe services' real gRPC servers in one background event loop (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path


class Stack:
    """The services' real gRPC servers (port 0) on a background asyncio loop.

    Tests talk to them with ordinary synchronous gRPC stubs. ``start(name, **settings)`` starts one
    more service instance (e.g. a transcriber after jobs were queued); ``stop(name)`` drains it.
    """

    #: API keys the stack knows: name -> (owner, scopes).
    KEYS = {
        "admin": ("ops", ["admin"]),
        "alice": ("alice", ["jobs:write", "jobs:read", "stream"]),
        "bob": ("bob", ["jobs:write", "jobs:read"]),
        "alice-reader": ("alice", ["jobs:read"]),
        # The gateway's service key for Transcriber.Decode (scope internal: no customer key has it).
        "stream-gateway": ("stream-gateway", ["internal"]),
    }

    def __init__(self, nats_url: str, workdir: Path, auth: bool = True, nats_replicas: int = 1):
        """A stack over the NATS at ``nats_url``, keeping its files under ``workdir``.

        Args:
            nats_url: One server's URL, or several comma-separated (a cluster, e.g.
                :attr:`scribe_harness.servers.NatsCluster.url`).
            workdir: Keys file, local object store, model cache.
            auth: Services require API keys.
            nats_replicas: Replicas of the streams and buckets the services declare
                (``NatsSettings.replicas``; 3 on a 3-node cluster).
        """
        import asyncio
        import json
        import threading

        from scribe_libs.auth import generate_key

        self.auth = auth
        self.keys: dict[str, str] = {}
        entries = []
        for name, (owner, scopes) in self.KEYS.items():
            self.keys[name], entry = generate_key(name, owner, scopes, service="internal" in scopes)
            entries.append(entry)
        self.keys_file = workdir / "api-keys.json"
        self.keys_file.write_text(json.dumps({"keys": entries}))

        self.nats_url = nats_url
        self.nats_replicas = nats_replicas
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stack-loop", daemon=True)
        self.thread.start()
        self.servers: dict[str, object] = {}
        self.addresses: dict[str, str] = {}

    def run(self, coro, timeout: float = 300.0):  # noqa: ANN001, ANN201 - a coroutine and its result
        """Run ``coro`` on the stack's loop and return its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def settings(self, service: str, **overrides):  # noqa: ANN201 - the service's Settings
        """The service's Settings for this stack (port 0, local store in the workdir, no drain)."""
        import importlib

        module = importlib.import_module(f"scribe_{service}.config")
        values = {
            "host": "127.0.0.1",
            "port": 0,
            "drain_seconds": 0,
            "grace_seconds": 2,
            "nats": {"url": self.nats_url, "replicas": self.nats_replicas},
            "store": {"kind": "local", "root": str(self.workdir / "objects")},
            # No per-key rate limit: the fuzz and load tests send hundreds of calls a second with one
            # customer key (the limiter has its own tests, which set it).
            "auth": {"enabled": self.auth, "keys_file": str(self.keys_file), "requests_per_second_per_key": 0},
        }
        if service == "transcriber":
            values.update(
                pool="cpu", models=["tiny.en"], ack_wait_seconds=30, advertise_host="127.0.0.1",
                progress_interval_seconds=0.2, cancel_poll_seconds=0.1,
                # Functional tests are not about capacity: a fixed one (the admission tests and the
                # streaming benchmark set 0 = measured, or their own).
                realtime_capacity=16,
                model_store={"cache_dir": str(self.workdir / "models"), "allow_download": False},
            )
        if service == "ingest":
            values.update(pools={"cpu": ["tiny.en"]}, default_model="tiny.en", upload_dir=str(self.workdir))
        if service == "results":
            values.update(watch_poll_seconds=0.2)
        if service == "stream_gateway" and self.auth:
            values.update(worker_api_key=self.keys["stream-gateway"])
        values.update(overrides)
        return module.Settings(**values)

    def start(self, service: str, name: str | None = None, **overrides) -> str:  # noqa: ANN003
        """Start a service instance; returns its ``host:port`` once it reports SERVING."""
        import importlib

        from scribe_libs.errors import new_dependency_scope

        create_server = importlib.import_module(f"scribe_{service}.servicer").create_server

        async def create(settings):  # noqa: ANN001, ANN202 - the service's Settings and server
            new_dependency_scope()  # this instance's backends only, whatever ran before
            return await create_server(settings)

        server = self.run(create(self.settings(service, **overrides)))
        name = name or service
        self.servers[name] = server
        self.addresses[name] = f"127.0.0.1:{server.port}"
        wait_serving(self.addresses[name])
        return self.addresses[name]

    def stop(self, name: str) -> None:
        """Gracefully stop one instance."""
        server = self.servers.pop(name)
        self.addresses.pop(name)
        self.run(server.stop(0, 2))

    def close(self) -> None:
        """Stop every instance and the loop."""
        for name in list(self.servers):
            self.stop(name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def channel(self, name: str, key: str | None = "admin"):  # noqa: ANN201 - grpc.Channel
        """A new channel to an instance that sends the API key named ``key`` (None: no key)."""
        import grpc

        from scribe_libs.auth import ApiKeyClientInterceptor

        channel = grpc.insecure_channel(self.addresses[name])
        if key is None:
            return channel
        return grpc.intercept_channel(channel, ApiKeyClientInterceptor(self.keys[key]))


def wait_serving(address: str, timeout: float = 300.0) -> None:
    """Block until gRPC health at ``address`` says SERVING (watching, not sleeping)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for reply in stub.Watch(health_pb2.HealthCheckRequest(), timeout=timeout):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
