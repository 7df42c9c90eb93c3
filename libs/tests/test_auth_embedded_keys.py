"""`scribe up` keeps the embedded stack's key file: user keys survive `scribe down` + `scribe up`."""

from __future__ import annotations

import json

from scribe_cli import stack
from scribe_libs.auth import generate_key, hash_key


def test_up_keeps_user_keys_and_its_own_admin_key(tmp_path):
    keys_file, admin, gateway = stack.prepare_keys(tmp_path)  # first `scribe up`
    assert (tmp_path / "api-key").read_text().strip() == admin
    # `scribe keys create --file ~/.scribe/api-keys.json --id acme ...`
    data = json.loads(keys_file.read_text())
    acme_key, acme = generate_key("acme", "acme", ["jobs:write", "jobs:read"])
    data["keys"].append(acme)
    keys_file.write_text(json.dumps(data))

    _, admin_again, gateway_again = stack.prepare_keys(tmp_path)  # `scribe down` + `scribe up`
    entries = {e["id"]: e for e in json.loads(keys_file.read_text())["keys"]}
    assert entries["acme"] == acme
    assert entries["acme"]["sha256"] == hash_key(acme_key)
    assert admin_again == admin and entries[stack.ADMIN_KEY_ID]["sha256"] == hash_key(admin)
    assert gateway_again != gateway and entries[stack.GATEWAY_KEY_ID]["sha256"] == hash_key(gateway_again)
    assert entries[stack.GATEWAY_KEY_ID]["scopes"] == ["internal"]
    assert sorted(entries) == sorted(["acme", stack.ADMIN_KEY_ID, stack.GATEWAY_KEY_ID])
    assert (tmp_path / "api-key").stat().st_mode & 0o777 == 0o600


def test_a_lost_admin_key_is_replaced_without_dropping_others(tmp_path):
    _, acme = generate_key("acme", "acme", ["jobs:read"])
    (tmp_path / "api-keys.json").write_text(json.dumps({"keys": [acme]}))
    keys_file, admin, _ = stack.prepare_keys(tmp_path)
    entries = {e["id"]: e for e in json.loads(keys_file.read_text())["keys"]}
    assert entries["acme"] == acme
    assert entries[stack.ADMIN_KEY_ID]["sha256"] == hash_key(admin)
