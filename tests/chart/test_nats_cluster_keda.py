"""The chart's NATS cluster wiring and the optional KEDA ScaledObjects (issue 11).

The NATS chart itself cannot be fetched here (see conftest.py): what is checked offline is what
this chart renders (the services' URL list and replica count, the ScaledObjects) and the values
it hands to the NATS chart. With a copy of the official NATS chart (``SCRIBE_NATS_CHART``: its
directory or .tgz, e.g. from ``helm pull nats/nats``), the NATS StatefulSet, its routes, PVCs,
PodDisruptionBudget and monitoring port are rendered and checked too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scribe_libs.bus import JOBS_STREAM, pool_consumer

CHART = Path(__file__).resolve().parents[2] / "charts" / "scribe"
SCRIBE_PREFIXES = ("SCRIBE_INGEST_", "SCRIBE_RESULTS_", "SCRIBE_POSTPROCESS_", "SCRIBE_STREAM_GATEWAY_",
                   "SCRIBE_TRANSCRIBER_")
#: Stand-ins for the embedded MinIO only (NATS stays embedded).
NO_MINIO = {
    "minio": {"enabled": False},
    "objectStore": {"endpoint": "minio.ci.svc:9000", "secure": False, "existingSecret": "ci-s3"},
}
#: KEDA's documented ScaledObject spec fields (keda.sh/docs/latest/reference/scaledobject-spec/).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
    "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}
#: The nats-jetstream trigger's metadata (keda.sh/docs/latest/scalers/nats-jetstream/): all, and required.
NATS_JETSTREAM_METADATA = {
    "natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold", "activationLagThreshold",
    "useHttps",
}
NATS_JETSTREAM_REQUIRED = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}


def kind(docs, k):
    return [d for d in docs if d["kind"] == k]


def nats_env(docs) -> dict[str, tuple[str, str]]:
    """Deployment/container -> (NATS__URL, NATS__REPLICAS) of every scribe container."""
    out = {}
    for d in kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            prefix = next((p for p in SCRIBE_PREFIXES if f"{p}NATS__URL" in env), None)
            if prefix:
                name = f"{d['metadata']['name']}/{c['name']}"
                out[name] = (env[f"{prefix}NATS__URL"], env[f"{prefix}NATS__REPLICAS"])
    return out


def test_default_install_connects_to_every_server_of_the_3_node_cluster_with_3_replicas(render):
    docs = render(NO_MINIO, no_deps=False)
    env = nats_env(docs)
    assert len(env) >= 5
    expected = ",".join(f"nats://scribe-nats-{i}.scribe-nats-headless.scribe.svc:4222" for i in range(3))
    assert set(env.values()) == {(expected, "3")}, env


def test_the_values_make_the_nats_chart_run_a_3_node_jetstream_cluster():
    nats = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]
    config = nats["config"]
    assert nats["enabled"] is True
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True and config["jetstream"]["fileStore"]["pvc"]["size"]
    assert config["monitor"] == {"enabled": True, "port": 8222}  # KEDA's scaler reads it
    assert nats["podDisruptionBudget"]["enabled"] is True  # the NATS chart's: maxUnavailable 1
    (term,) = nats["podTemplate"]["merge"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert "nats.selectorLabels" in term["podAffinityTerm"]["labelSelector"]["matchLabels"]["$tplYaml"]


def test_a_single_embedded_server_gets_its_service_and_one_replica(render):
    docs = render(NO_MINIO, {"nats": {"config": {"cluster": {"enabled": False}}}}, no_deps=False)
    assert set(nats_env(docs).values()) == {("nats://scribe-nats.scribe.svc:4222", "1")}


def test_external_nats_keeps_its_url_and_takes_a_replica_count(render):
    assert set(nats_env(render()).values()) == {("nats://nats.ci.svc:4222", "1")}  # conftest NO_DEPS
    urls = "nats://a.messaging:4222,nats://b.messaging:4222,nats://c.messaging:4222"
    docs = render({"nats": {"enabled": False, "url": urls, "jetstreamReplicas": 3}})
    assert set(nats_env(docs).values()) == {(urls, "3")}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nats": {"jetstreamReplicas": 5}},
         "nats.jetstreamReplicas is 5 but the embedded NATS has 3 JetStream server(s)"),
        ({"nats": {"enabled": False, "url": "nats://a:4222,b:4222"}}, 'nats.url "b:4222" must start with nats://'),
        ({"nats": {"enabled": False, "url": "nats://a:4222"},
          "transcriber": {"autoscaling": {"keda": {"enabled": True}}}},
         "transcriber.pools.cpu: KEDA autoscaling with external NATS needs"),
        ({"transcriber": {"autoscaling": {"keda": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}}},
         "transcriber.pools.cpu: KEDA minReplicas 3 is above maxReplicas 2"),
    ],
)
def test_nats_and_keda_values_fail_with_a_readable_message(render, values, message):
    with pytest.raises(render.error) as failed:
        render(NO_MINIO, values, no_deps=False)
    assert message in str(failed.value)


@pytest.mark.parametrize(
    "values",
    [
        {"nats": {"jetstreamReplicas": 6}},
        {"transcriber": {"autoscaling": {"keda": {"enabled": True, "minReplicas": -1}}}},
        {"transcriber": {"autoscaling": {"keda": {"enabled": True, "scaleToZero": True}}}},
        {"transcriber": {"pools": {"cpu": {"autoscaling": {"maxReplicas": 0}}}}},
    ],
)
def test_schema_rejects_bad_nats_and_keda_values(render, values):
    with pytest.raises(render.error):
        render(NO_MINIO, values, no_deps=False)


def test_keda_is_off_by_default_and_pools_keep_their_replicas(render, values_sets):
    for name, docs in list(values_sets.items()) + [("defaults", render(NO_MINIO, no_deps=False))]:
        if name == "gpu-external-values":
            continue  # its pascal pool turns KEDA on
        assert not kind(docs, "ScaledObject"), name
        for d in kind(docs, "Deployment"):
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "transcriber":
                assert isinstance(d["spec"].get("replicas"), int), (name, d["metadata"]["name"])


def check_scaled_object(so, deployments) -> dict:
    """Assert ``so`` is a ScaledObject KEDA accepts, on a rendered Deployment; returns its trigger metadata."""
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC, set(spec) - SCALED_OBJECT_SPEC
    target = spec["scaleTargetRef"]
    assert target["apiVersion"] == "apps/v1" and target["kind"] == "Deployment"
    assert target["name"] in deployments and target["name"] == so["metadata"]["name"]
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec[key], int) and spec[key] >= 0, key
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert NATS_JETSTREAM_REQUIRED <= set(metadata) <= NATS_JETSTREAM_METADATA, set(metadata)
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA trigger metadata is a map of strings"
    assert re.fullmatch(r"[^:/\s]+:\d+", metadata["natsServerMonitoringEndpoint"]), "host:port, no scheme"
    assert int(metadata["lagThreshold"]) >= 1 and int(metadata.get("activationLagThreshold", "0")) >= 0
    assert metadata.get("useHttps", "false") in ("true", "false")
    # The durable consumer the pool's transcribers share (scribe_libs.bus), on the job stream.
    pool = deployments[target["name"]]["metadata"]["labels"]["scribe.dev/pool"]
    assert (metadata["stream"], metadata["consumer"]) == (JOBS_STREAM, pool_consumer(pool))
    # KEDA owns the count: a fixed replicas would fight it on every apply.
    assert "replicas" not in deployments[target["name"]]["spec"]
    return metadata


def test_a_keda_pool_gets_a_scaled_object_on_its_consumer_and_no_fixed_replicas(values_sets):
    docs = values_sets["gpu-external-values"]
    deployments = {d["metadata"]["name"]: d for d in kind(docs, "Deployment")}
    (so,) = kind(docs, "ScaledObject")  # pascal only: the pool turns it on, l4 keeps the default (off)
    metadata = check_scaled_object(so, deployments)
    assert so["spec"]["minReplicaCount"] == 0  # a GPU pool may scale to zero
    assert so["spec"]["maxReplicaCount"] == 3 and metadata["lagThreshold"] == "2"
    assert metadata["natsServerMonitoringEndpoint"] == "nats-headless.messaging.svc.cluster.local:8222"
    assert deployments["scribe-transcriber-l4"]["spec"]["replicas"] == 2


def test_keda_on_the_embedded_cluster_reads_its_headless_monitoring_port(render):
    values = {"transcriber": {"autoscaling": {"keda": {"enabled": True, "behavior": {"scaleDown": {
        "stabilizationWindowSeconds": 600}}}}, "pools": {"l4": {"gpu": True, "models": ["large-v3"],
                                                              "autoscaling": {"minReplicas": 0, "maxReplicas": 8}}}}}
    docs = render(NO_MINIO, values, no_deps=False)
    deployments = {d["metadata"]["name"]: d for d in kind(docs, "Deployment")}
    objects = {so["metadata"]["name"]: so for so in kind(docs, "ScaledObject")}
    assert set(objects) == {"scribe-transcriber-cpu", "scribe-transcriber-l4"}
    for so in objects.values():
        metadata = check_scaled_object(so, deployments)
        assert metadata["natsServerMonitoringEndpoint"] == "scribe-nats-headless.scribe.svc.cluster.local:8222"
        assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
            "stabilizationWindowSeconds": 600}
    assert objects["scribe-transcriber-l4"]["spec"]["minReplicaCount"] == 0
    assert objects["scribe-transcriber-cpu"]["spec"]["minReplicaCount"] == 1


# --- with the official NATS chart, when a copy is at hand ----------------------------------------


@pytest.fixture(scope="module")
def nats_chart_render(helm: Path, chart_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    source = os.environ.get("SCRIBE_NATS_CHART", "")
    if not source or not Path(source).exists():
        pytest.skip("SCRIBE_NATS_CHART (a copy of the official NATS chart) is not set; the NATS manifests are "
                    "not rendered offline")
    work = tmp_path_factory.mktemp("with-nats") / "scribe"
    shutil.copytree(chart_dir, work)
    (work / "charts").mkdir(exist_ok=True)
    if Path(source).is_dir():
        shutil.copytree(source, work / "charts" / "nats")
    else:
        shutil.copy(source, work / "charts")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    chart["dependencies"] = [d for d in chart["dependencies"] if d["name"] == "nats"]
    (work / "Chart.yaml").write_text(yaml.safe_dump(chart, sort_keys=False))
    values = work.parent / "no-minio.yaml"
    values.write_text(yaml.safe_dump(NO_MINIO))
    proc = subprocess.run([str(helm), "template", "scribe", str(work), "--namespace", "scribe", "-f", str(values)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_the_nats_chart_renders_a_routed_statefulset_with_pvcs_pdb_and_monitoring(nats_chart_render):
    docs = nats_chart_render
    (sts,) = kind(docs, "StatefulSet")
    assert sts["metadata"]["name"] == "scribe-nats" and sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "scribe-nats-headless"
    assert [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]] == ["scribe-nats-js"]
    affinity = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    config = next(d for d in kind(docs, "ConfigMap") if d["metadata"]["name"] == "scribe-nats-config")
    text = config["data"]["nats.conf"]
    for i in range(3):
        assert f"nats://scribe-nats-{i}.scribe-nats-headless:6222" in text
    (pdb,) = [d for d in kind(docs, "PodDisruptionBudget") if d["metadata"]["name"] == "scribe-nats"]
    assert pdb["spec"]["maxUnavailable"] == 1
    headless = next(d for d in kind(docs, "Service") if d["metadata"]["name"] == "scribe-nats-headless")
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]}["monitor"] == 8222
