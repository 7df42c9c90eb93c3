"""API key checks that need no server: one credential per call, the service-only ``internal`` scope."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from scribe_libs.auth import METHOD_SCOPES, AuthSettings, KeyRing, authorize, generate_key, hash_key
from scribe_libs.errors import PermissionDenied, Unauthenticated


@pytest.fixture
def ring_and_keys():
    keys, entries = {}, []
    for name, scopes in (("alice", ["jobs:write", "jobs:read", "stream"]), ("bob", ["jobs:read"])):
        keys[name], entry = generate_key(name, name, scopes)
        entries.append(entry)
    keys["gw"] = "sk_test-gateway-service-key"  # a service key, as written by generate_key(service=True)
    entries.append({"id": "gw", "owner": "stream-gateway", "sha256": hash_key(keys["gw"]), "scopes": ["internal"]})
    return KeyRing(AuthSettings(keys_json=SecretStr(json.dumps({"keys": entries})))), keys


def test_two_different_credentials_are_ambiguous(ring_and_keys):
    ring, keys = ring_and_keys
    for metadata in (
        [("x-api-key", keys["alice"]), ("authorization", f"Bearer {keys['bob']}")],
        [("authorization", f"Bearer {keys['bob']}"), ("x-api-key", keys["alice"])],
        [("x-api-key", keys["bob"]), ("x-api-key", keys["alice"])],
        [("x-api-key", keys["alice"]), ("authorization", "Bearer sk_unknown")],
    ):
        with pytest.raises(Unauthenticated) as caught:
            authorize(ring, "/scribe.v1.Results/ListJobs", metadata)
        assert caught.value.reason == "AMBIGUOUS_CREDENTIALS"


def test_the_same_key_twice_is_one_credential(ring_and_keys):
    ring, keys = ring_and_keys
    metadata = [("x-api-key", keys["alice"]), ("authorization", f"Bearer {keys['alice']}")]
    assert authorize(ring, "/scribe.v1.Results/ListJobs", metadata).key_id == "alice"


def test_transcriber_methods_need_the_internal_scope(ring_and_keys):
    ring, keys = ring_and_keys
    assert METHOD_SCOPES["/scribe.v1.Transcriber/Decode"] == "internal"
    assert METHOD_SCOPES["/scribe.v1.Transcriber/GetProfile"] == "internal"
    for method in ("/scribe.v1.Transcriber/Decode", "/scribe.v1.Transcriber/GetProfile"):
        with pytest.raises(PermissionDenied) as caught:
            authorize(ring, method, [("x-api-key", keys["alice"])])  # a customer key with `stream`
        assert caught.value.reason == "SCOPE_MISSING"
        assert authorize(ring, method, [("x-api-key", keys["gw"])]).key_id == "gw"
    # The service key is no customer key: it cannot stream or read jobs.
    with pytest.raises(PermissionDenied):
        authorize(ring, "/scribe.v1.StreamGateway/StreamingRecognize", [("x-api-key", keys["gw"])])


def test_customer_keys_cannot_be_minted_with_internal():
    with pytest.raises(ValueError, match="service keys only"):
        generate_key("acme", "acme", ["stream", "internal"])
    _, entry = generate_key("gw", "stream-gateway", ["internal"], service=True)
    assert entry["scopes"] == ["internal"]


def test_service_keys_file_is_read_beside_the_customer_keys(tmp_path):
    """The chart mounts the gateway's service key (scope internal) as its own file."""
    import json

    from scribe_libs.auth import AuthSettings, KeyRing, generate_key

    customer, customer_entry = generate_key("acme", "acme", ["jobs:read"])
    service, service_entry = generate_key("stream-gateway", "stream-gateway", ["internal"], service=True)
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [customer_entry]}))
    (tmp_path / "service.json").write_text(json.dumps({"keys": [service_entry]}))
    ring = KeyRing(AuthSettings(keys_file=str(tmp_path / "keys.json"),
                                service_keys_file=str(tmp_path / "service.json")))
    assert ring.lookup(customer).owner == "acme"
    assert ring.lookup(service).scopes == frozenset({"internal"})
    assert KeyRing(AuthSettings(keys_file=str(tmp_path / "keys.json"))).lookup(service) is None
