"""TLS with a private CA (``ca_cert`` as a path or as bytes), against a loopback TLS server."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest

from scribe_client import AsyncClient, Client, UnavailableError


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for ``localhost``: (cert path, key bytes)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key.read_bytes()


def test_tls_with_a_private_ca(fake_server, certificate):
    cert, key = certificate
    server = fake_server(credentials=grpc.ssl_server_credentials([(key, cert.read_bytes())]))
    address = f"localhost:{server.port}"
    with Client(address, ca_cert=cert) as client:
        assert client.get("j1").job_id == "j1"
    with Client(address, ca_cert=cert.read_bytes()) as client:
        assert client.get("j2").job_id == "j2"
    # Without the CA the server's certificate is not trusted: the call never gets through.
    with Client(address, tls=True, max_attempts=2, timeout=10) as client, pytest.raises(UnavailableError):
        client.get("j3")
    assert server.script.calls["GetJob"] == 2


async def test_async_tls(fake_server, certificate):
    cert, key = certificate
    server = fake_server(credentials=grpc.ssl_server_credentials([(key, cert.read_bytes())]))
    async with AsyncClient(f"localhost:{server.port}", ca_cert=cert) as client:
        assert (await client.get("j1")).job_id == "j1"
