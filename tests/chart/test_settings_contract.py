"""The settings contract between the chart and the services.

Every ``SCRIBE_<SERVICE>_*`` variable the chart renders, in every values set of charts/scribe/ci
and with default values, must name a field of that service's settings (the service refuses to
start otherwise: ``scribe_libs.config.UnknownSetting``), and the whole environment must build the
settings (a malformed JSON pool table fails here, not in a pod).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scribe_http_gateway.config import Settings as HttpGatewaySettings
from scribe_ingest.config import Settings as IngestSettings
from scribe_libs.config import UnknownSetting, unknown_variables
from scribe_postprocess.config import Settings as PostprocessSettings
from scribe_results.config import Settings as ResultsSettings
from scribe_stream_gateway.config import Settings as GatewaySettings
from scribe_transcriber.config import Settings as TranscriberSettings

ROOT = Path(__file__).resolve().parents[2]

SETTINGS = {
    "SCRIBE_INGEST_": IngestSettings,
    "SCRIBE_RESULTS_": ResultsSettings,
    "SCRIBE_POSTPROCESS_": PostprocessSettings,
    "SCRIBE_STREAM_GATEWAY_": GatewaySettings,
    "SCRIBE_TRANSCRIBER_": TranscriberSettings,
    "SCRIBE_HTTP_GATEWAY_": HttpGatewaySettings,
}

#: What the downward API and secrets would put into a pod, for building the settings.
FIELD_REFS = {"status.podIP": "10.0.0.7", "metadata.name": "pod-0", "metadata.namespace": "scribe",
              "spec.nodeName": "node-0"}


def _containers(manifests: list[dict]):
    for doc in manifests:
        if doc.get("kind") not in ("Deployment", "StatefulSet", "Job", "Pod"):
            continue
        spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            yield f"{doc['kind']}/{doc['metadata']['name']}/{container['name']}", container


def _env(container: dict) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = FIELD_REFS[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = "2"
        else:
            env[var["name"]] = "secret-value"
    return env


def _check(name: str, manifests: list[dict], monkeypatch: pytest.MonkeyPatch) -> int:
    checked = 0
    for where, container in _containers(manifests):
        env = _env(container)
        scribe = [k for k in env if k.startswith("SCRIBE_")]
        if not scribe:
            continue
        prefixes = {p for k in scribe for p in SETTINGS if k.startswith(p)}
        orphans = [k for k in scribe if not any(k.startswith(p) for p in SETTINGS)]
        assert not orphans, f"{name} {where}: {orphans} match no service's prefix"
        assert len(prefixes) == 1, f"{name} {where}: variables of several services {sorted(prefixes)}"
        settings_type = SETTINGS[prefixes.pop()]
        assert unknown_variables(settings_type, env) == [], f"{name} {where}: unknown settings"
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("SCRIBE_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            settings_type()  # builds: types and JSON parse
        checked += 1
    return checked


def test_every_rendered_scribe_variable_names_a_setting(values_sets, monkeypatch):
    total = 0
    for name, manifests in values_sets.items():
        total += _check(name, manifests, monkeypatch)
    # ingest, results, postprocess, stream gateway, http gateway, at least one transcriber pool, in every set
    assert total >= 6 * len(values_sets)


def test_default_values_render_settings_the_services_accept(render, monkeypatch):
    assert _check("defaults", render(), monkeypatch) >= 6


def test_the_chart_sets_where_the_transcriber_advertises_and_caches(values_sets):
    for name, manifests in values_sets.items():
        for where, container in _containers(manifests):
            if container["name"] != "transcriber":
                continue
            env = {v["name"]: v for v in container["env"]}
            advertise = env["SCRIBE_TRANSCRIBER_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
            assert advertise == "status.podIP", f"{name} {where}"
            assert env["SCRIBE_TRANSCRIBER_MODEL_STORE__CACHE_DIR"]["value"].startswith("/"), f"{name} {where}"
            assert "SCRIBE_TRANSCRIBER_MODEL_STORE__MODELS_DIR" in env, f"{name} {where}"


def test_ingest_routes_default_jobs_to_a_configured_pool(render):
    """A GPU-only install: no 'cpu' pool, so ingest must know the chart's pools and default model."""
    import json

    manifests = render({"transcriber": {"pools": {
        "cpu": {"enabled": False},
        "gpu": {"gpu": True, "models": ["large-v3"]},
    }}})
    ingest = next(c for w, c in _containers(manifests) if c["name"] == "ingest")
    env = {v["name"]: v.get("value") for v in ingest["env"]}
    pools = json.loads(env["SCRIBE_INGEST_POOLS"])
    assert "cpu" not in pools and pools["gpu"] == ["large-v3"]
    assert env["SCRIBE_INGEST_DEFAULT_MODEL"] == "large-v3"


def test_unknown_variable_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODELS_DIR", "/models")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODEL_STORE__NOPE", "1")
    with pytest.raises(UnknownSetting) as err:
        TranscriberSettings()
    assert err.value.names == ["SCRIBE_TRANSCRIBER_MODELS_DIR", "SCRIBE_TRANSCRIBER_MODEL_STORE__NOPE"]
    monkeypatch.delenv("SCRIBE_TRANSCRIBER_MODELS_DIR")
    monkeypatch.delenv("SCRIBE_TRANSCRIBER_MODEL_STORE__NOPE")
    monkeypatch.setenv("SCRIBE_TRANSCRIBER_MODEL_STORE__MODELS_DIR", "/models")
    monkeypatch.setenv("SCRIBE_INGEST_POOLS__GPU", '["large-v3"]')  # a dict field takes any key
    assert str(TranscriberSettings().model_store.models_dir) == "/models"
    assert unknown_variables(IngestSettings) == []


def test_service_with_a_typo_exits_at_start_naming_the_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIBE_")}
    env["SCRIBE_RESULTS_RETENTION_DAY"] = "3"
    proc = subprocess.run([sys.executable, "-m", "scribe_results"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "SCRIBE_RESULTS_RETENTION_DAY" in proc.stderr and "refusing to start" in proc.stderr


def test_kubernetes_service_links_are_not_settings():
    """The kubelet injects SCRIBE_INGEST_SERVICE_HOST etc. for a Service named scribe-ingest
    (seen in the chart rehearsal: four services exited 2 on them)."""
    env = {
        "SCRIBE_INGEST_SERVICE_HOST": "10.0.0.1", "SCRIBE_INGEST_SERVICE_PORT": "50051",
        "SCRIBE_INGEST_SERVICE_PORT_GRPC": "50051", "SCRIBE_INGEST_PORT_50051_TCP": "tcp://10.0.0.1:50051",
        "SCRIBE_INGEST_PORT_9464_TCP_ADDR": "10.0.0.1", "SCRIBE_INGEST_PORT_9464_TCP_PROTO": "tcp",
    }
    assert unknown_variables(IngestSettings, env) == []
    assert unknown_variables(IngestSettings, {"SCRIBE_INGEST_SERVICE_HOSTS": "x"}) == ["SCRIBE_INGEST_SERVICE_HOSTS"]


def test_pods_turn_service_links_off(values_sets):
    for name, manifests in values_sets.items():
        for doc in manifests:
            if doc.get("kind") == "Deployment":
                spec = doc["spec"]["template"]["spec"]
                assert spec.get("enableServiceLinks") is False, f"{name} {doc['metadata']['name']}"
