"""What an operator relies on in the rendered charts/scribe manifests.

Rendered with helm (tools/install_helm.sh installs it) from the values sets in charts/scribe/ci
and from small bad values that must fail with a message naming the value.
"""

from __future__ import annotations

import re

import pytest
import yaml

SCRIBE_CONTAINERS = {"ingest", "results", "postprocess", "stream-gateway", "transcriber"}
STREAMING_METHODS = ["/scribe.v1.StreamGateway/StreamingRecognize", "/scribe.v1.Results/WatchJob"]


def kind(docs, k):
    return [d for d in docs if d["kind"] == k]


def pod_specs(docs):
    """(owner name, pod spec) of every Deployment and bare Pod."""
    out = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in kind(docs, "Deployment")]
    out += [(d["metadata"]["name"], d["spec"]) for d in kind(docs, "Pod")]
    return out


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def duration_s(text):
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"expected a duration in seconds, got {text!r}"
    return int(match.group(1))


def transcriber_deployments(docs):
    return [
        d
        for d in kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "transcriber"
    ]


def test_every_values_set_renders_the_services(values_sets):
    for name, docs in values_sets.items():
        components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in kind(docs, "Deployment")}
        assert {"ingest", "results", "postprocess", "stream-gateway", "transcriber"} <= components, name
        assert transcriber_deployments(docs), f"{name}: no transcriber pool rendered"


def test_gpu_pool_deployments_ask_for_exactly_one_gpu_and_carry_their_pool_label(values_sets):
    docs = values_sets["gpu-external-values"]
    pools = {d["metadata"]["labels"]["scribe.dev/pool"]: d for d in transcriber_deployments(docs)}
    assert set(pools) == {"l4", "pascal"}  # the disabled cpu pool is not rendered
    for pool, dep in pools.items():
        template = dep["spec"]["template"]
        assert dep["spec"]["selector"]["matchLabels"]["scribe.dev/pool"] == pool
        assert template["metadata"]["labels"]["scribe.dev/pool"] == pool
        (container,) = template["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1, f"pool {pool} must own exactly one GPU per pod"
        assert container["resources"]["requests"].get("nvidia.com/gpu", 1) == 1
        assert container["image"].split("/")[-1].startswith("scribe-transcriber-gpu:")
        assert env_of(container)["SCRIBE_TRANSCRIBER_POOL"] == pool
        assert env_of(container)["SCRIBE_TRANSCRIBER_DEVICE"] == "cuda"
        node_selector = template["spec"]["nodeSelector"]
        assert any(k.startswith("nvidia.com/gpu.") for k in node_selector), node_selector
        tolerations = template["spec"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        # No spare GPU to surge onto during a rollout.
        assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    assert pools["l4"]["spec"]["replicas"] == 2
    assert pools["l4"]["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-L4"


def test_cpu_pool_asks_for_no_gpu(values_sets):
    (dep,) = transcriber_deployments(values_sets["cpu-embedded-values"])
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert env_of(container)["SCRIBE_TRANSCRIBER_DEVICE"] == "cpu"
    assert container["image"].startswith("scribe-transcriber:")
    assert yaml.safe_load(env_of(container)["SCRIBE_TRANSCRIBER_MODELS"]) == ["tiny.en", "base"]


def test_every_scribe_container_has_grpc_probes_on_its_grpc_port(values_sets):
    for name, docs in values_sets.items():
        for owner, spec in pod_specs(docs):
            for c in spec["containers"]:
                if c["name"] not in SCRIBE_CONTAINERS:
                    continue
                grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert c[probe]["grpc"]["port"] == grpc_port, f"{name}/{owner}/{c['name']}: {probe}"


def test_transcriber_startup_probe_leaves_minutes_for_model_loading(values_sets):
    for dep in transcriber_deployments(values_sets["gpu-external-values"]):
        probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget >= 600, f"{dep['metadata']['name']}: {budget} s to load models"
    pascal = next(
        d for d in transcriber_deployments(values_sets["gpu-external-values"]) if "pascal" in d["metadata"]["name"]
    )
    assert pascal["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["failureThreshold"] == 180


def test_grace_period_covers_prestop_drain_and_grace_from_the_env(values_sets):
    checked = 0
    for name, docs in values_sets.items():
        for owner, spec in pod_specs(docs):
            for c in spec["containers"]:
                env = env_of(c)
                drain = [int(v) for k, v in env.items() if k.endswith("_DRAIN_SECONDS")]
                grace = [int(v) for k, v in env.items() if k.endswith("_GRACE_SECONDS")]
                if not drain:
                    continue
                pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                needed = pre_stop + drain[0] + grace[0]
                assert spec["terminationGracePeriodSeconds"] > needed, (
                    f"{name}/{owner}: grace period {spec['terminationGracePeriodSeconds']} s does not cover "
                    f"preStop {pre_stop} + drain {drain[0]} + grace {grace[0]}"
                )
                checked += 1
    assert checked >= 15


def test_pool_shutdown_override_reaches_env_and_grace_period(values_sets):
    pascal = next(
        d for d in transcriber_deployments(values_sets["gpu-external-values"]) if "pascal" in d["metadata"]["name"]
    )
    spec = pascal["spec"]["template"]["spec"]
    env = env_of(spec["containers"][0])
    assert env["SCRIBE_TRANSCRIBER_GRACE_SECONDS"] == "60"
    assert spec["terminationGracePeriodSeconds"] == 2 + 5 + 60 + 5


def test_no_container_runs_as_root_or_writes_its_root_filesystem(values_sets):
    for name, docs in values_sets.items():
        for owner, spec in pod_specs(docs):
            pod_sc = spec.get("securityContext", {})
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = {**pod_sc, **c.get("securityContext", {})}
                where = f"{name}/{owner}/{c['name']}"
                assert sc.get("runAsNonRoot") is True, where
                assert sc.get("runAsUser", 0) != 0, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
                if c["name"] in SCRIBE_CONTAINERS:
                    mounts = {m["mountPath"] for m in c["volumeMounts"]}
                    assert "/tmp" in mounts, f"{where}: /tmp must be a writable volume"


def test_transcriber_rbac_is_get_and_patch_on_pods_only(values_sets):
    docs = values_sets["cpu-embedded-values"]
    (role,) = kind(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    (binding,) = kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "scribe-transcriber", "namespace": "scribe"}]
    assert not kind(docs, "ClusterRole") and not kind(docs, "ClusterRoleBinding")
    for owner, spec in pod_specs(docs):
        is_transcriber = owner.startswith("scribe-transcriber-")
        assert spec.get("automountServiceAccountToken") is is_transcriber, owner
        if is_transcriber:
            assert spec["serviceAccountName"] == "scribe-transcriber"
            env = env_of(spec["containers"][0])
            assert {"SCRIBE_TRANSCRIBER_POD_NAME", "SCRIBE_TRANSCRIBER_POD_NAMESPACE"} <= set(env)


def test_stateless_services_get_an_hpa_and_every_workload_a_pdb(values_sets):
    docs = values_sets["cpu-embedded-values"]
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in kind(docs, "HorizontalPodAutoscaler")}
    assert hpas == {"scribe-ingest", "scribe-results", "scribe-postprocess", "scribe-stream-gateway"}
    pdb_selectors = [p["spec"]["selector"]["matchLabels"] for p in kind(docs, "PodDisruptionBudget")]
    for d in kind(docs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in pdb_selectors), d["metadata"]["name"]
    minimal = values_sets["minimal-values"]
    assert not kind(minimal, "HorizontalPodAutoscaler")
    assert all(d["spec"]["replicas"] == 1 for d in kind(minimal, "Deployment"))


def test_pods_carry_standard_labels_checksum_and_scrape_annotations(values_sets):
    docs = values_sets["cpu-embedded-values"]
    for d in kind(docs, "Deployment"):
        meta = d["spec"]["template"]["metadata"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/version",
        ):
            assert key in meta["labels"], (d["metadata"]["name"], key)
        assert re.fullmatch(r"[0-9a-f]{64}", meta["annotations"]["checksum/config"])
        assert meta["annotations"]["prometheus.io/scrape"] == "true"
    monitors = kind(docs, "ServiceMonitor")
    # every service's metrics port, and Envoy's admin /stats/prometheus
    assert {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in monitors} == (
        SCRIBE_CONTAINERS | {"http-gateway", "envoy"})


def test_config_change_changes_the_checksum_so_pods_roll(render):
    base = {"auth": {"keysFile": "{}"}}
    before = render(base)
    after = render(base, {"common": {"logLevel": "DEBUG"}})

    def checksums(docs):
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in kind(docs, "Deployment")
        }

    changed = {n for n, c in checksums(before).items() if checksums(after)[n] != c}
    assert {"scribe-ingest", "scribe-transcriber-cpu"} <= changed


def envoy_config(docs):
    (cm,) = [d for d in kind(docs, "ConfigMap") if d["metadata"]["name"] == "scribe-envoy"]
    return yaml.safe_load(cm["data"]["envoy.yaml"])


def test_envoy_routes_point_at_rendered_services(values_sets):
    for name in ("cpu-embedded-values", "gpu-external-values"):
        docs = values_sets[name]
        cfg = envoy_config(docs)
        clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
        services = {(s["metadata"]["name"], s["metadata"]["namespace"]): s for s in kind(docs, "Service")}
        listener = next(lst for lst in cfg["static_resources"]["listeners"] if lst["name"] == "grpc")
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        for r in routes:
            cluster = clusters[r["route"]["cluster"]]  # KeyError: a route to a missing cluster
            addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"
            ]
            host = addr["address"].split(".")
            svc = services[(host[0], host[1])]  # KeyError: the cluster resolves no rendered Service
            assert svc["spec"]["clusterIP"] == "None", "Envoy must see every pod (headless Service)"
            assert addr["port_value"] in {p["port"] for p in svc["spec"]["ports"]}
            protocol = cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            ]
            assert "http2_protocol_options" in protocol["explicit_http_config"], "gRPC upstreams need HTTP/2"
            assert "grpc_health_check" in cluster["health_checks"][0]
        matched = {r["match"].get("prefix") or r["match"].get("path") for r in routes}
        for prefix in (
            "/scribe.v1.Ingest/",
            "/scribe.v1.Results/",
            "/scribe.v1.StreamGateway/",
            "/scribe.v1.Glossaries/",
        ):
            assert prefix in matched, f"{name}: {prefix} is not routed"
        assert not any(m.startswith("/scribe.v1.Transcriber/") for m in matched), "the transcriber is internal"


def test_envoy_streaming_routes_have_stream_friendly_timeouts(values_sets):
    cfg = envoy_config(values_sets["cpu-embedded-values"])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    for method in STREAMING_METHODS:
        first = next(
            r for r in routes if r["match"].get("path") == method or method.startswith(r["match"].get("prefix", "\0"))
        )
        assert first["match"].get("path") == method, f"{method} is shadowed by a prefix route before it"
        action = first["route"]
        assert duration_s(action["timeout"]) == 0, f"{method}: a whole-call timeout would cut the stream"
        assert duration_s(action["idle_timeout"]) >= 60
        assert duration_s(action["max_stream_duration"]["max_stream_duration"]) >= 3600
    unary = next(r for r in routes if r["match"].get("prefix") == "/scribe.v1.Results/")
    assert 0 < duration_s(unary["route"]["timeout"]) <= 300


def test_helm_test_pod_checks_health_through_envoy(values_sets):
    docs = values_sets["cpu-embedded-values"]
    pods = [p for p in kind(docs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    (pod,) = pods
    script = pod["spec"]["containers"][0]["args"][0]
    for upstream in ("ingest", "results", "stream-gateway"):
        assert f"x-scribe-upstream: {upstream}" in script
    assert "scribe-envoy.scribe.svc:8080" in script
    assert "scribe-postprocess.scribe.svc:50054" in script and "scribe-transcriber.scribe.svc:50053" in script
    assert re.search(r":v\d+\.\d+\.\d+", pod["spec"]["containers"][0]["image"]), "pin the test image"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "transcriber": {
                    "pools": {"a100": {"gpu": True, "models": ["large-v3"], "resources": {"limits": {"memory": "8Gi"}}}}
                }
            },
            'transcriber.pools.a100: gpu is true but resources.limits."nvidia.com/gpu" is missing; set it to 1',
        ),
        (
            {
                "transcriber": {
                    "pools": {
                        "a100": {"gpu": True, "models": ["large-v3"], "resources": {"limits": {"nvidia.com/gpu": 2}}}
                    }
                }
            },
            'transcriber.pools.a100: resources.limits."nvidia.com/gpu" is 2; a transcriber pod owns exactly one GPU',
        ),
        (
            {"transcriber": {"pools": {"cpu": {"models": ["base"], "resources": {"limits": {"nvidia.com/gpu": 1}}}}}},
            "transcriber.pools.cpu: asks for nvidia.com/gpu but gpu is false",
        ),
        ({"nats": {"enabled": False, "url": ""}}, "nats.enabled is false but nats.url is empty; set nats.url"),
        ({"objectStore": {"endpoint": ""}}, "minio.enabled is false but objectStore.endpoint is empty"),
        (
            {"objectStore": {"endpoint": "https://s3.example.com"}},
            'objectStore.endpoint "https://s3.example.com" must be host:port',
        ),
        ({"ingest": {"enabled": False}}, 'upstream "ingest" is disabled (ingest.enabled=false)'),
        ({"transcriber": {"pools": {"cpu": {"enabled": False}}}}, "no pool in transcriber.pools is enabled"),
        (
            {"results": {"resources": {"requests": {"cpu": None}}}},
            "results.autoscaling.enabled is true but results.resources.requests.cpu is not set",
        ),
    ],
)
def test_validate_values_fails_with_a_readable_message(render, values, message):
    with pytest.raises(render.error) as err:
        render({"auth": {"keysFile": "{}"}}, values)
    assert "scribe: invalid values:" in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"transcriber": {"pools": {"cpu": {"computeType": "fp8"}}}}, "/transcriber/pools/cpu/computeType"),
        (
            {"transcriber": {"pools": {"GPU_Pool": {"models": ["base"], "resources": {}}}}},
            "invalid propertyName 'GPU_Pool'",
        ),
        (
            {"containerSecurityContext": {"readOnlyRootFilesystem": False}},
            "/containerSecurityContext/readOnlyRootFilesystem",
        ),
        (
            {"envoy": {"routes": [{"name": "t", "prefix": "/scribe.v1.Transcriber/", "upstream": "transcriber"}]}},
            "/envoy/routes/0/upstream",
        ),
        ({"ingest": {"replica": 3}}, "/ingest"),
    ],
)
def test_schema_rejects_bad_values(render, values, where):
    with pytest.raises(render.error) as err:
        render({"auth": {"keysFile": "{}"}}, values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert where in str(err.value)


def test_default_install_generates_an_admin_key_the_services_accept(render):
    """No auth.existingSecret, no auth.keysFile: a generated admin key, its hash in the keys file."""
    import base64
    import hashlib
    import json

    from scribe_libs.auth import AuthSettings, KeyRing

    docs = render({"auth": {"keysFile": "", "existingSecret": ""}})
    secrets = [d for d in kind(docs, "Secret") if "admin-api-key" in (d.get("data") or {})]
    assert len(secrets) == 1
    secret = secrets[0]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["admin-api-key"]).decode()
    keys_file = json.loads(base64.b64decode(secret["data"]["api-keys.json"]))
    (entry,) = keys_file["keys"]
    assert entry["scopes"] == ["admin"] and entry["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in json.dumps(keys_file)  # only the hash reaches the pods
    for d in kind(docs, "Deployment"):  # the pods mount the keys files only, never a plain key
        for volume in d["spec"]["template"]["spec"]["volumes"]:
            if volume["name"] == "api-keys":
                items = [i["key"] for src in volume["projected"]["sources"] for i in src["secret"]["items"]]
                assert items == ["api-keys.json", "service-keys.json"]
    principal = KeyRing(AuthSettings(keys_json=json.dumps(keys_file))).lookup(key)
    assert principal is not None and "admin" in principal.scopes


def test_gateway_gets_a_service_key_with_scope_internal(render):
    """Transcriber.Decode needs scope internal; the chart generates the gateway's key for it."""
    import base64
    import hashlib
    import json

    docs = render()
    (secret,) = [d for d in kind(docs, "Secret") if d["metadata"]["name"].endswith("-service-keys")]
    key = base64.b64decode(secret["data"]["stream-gateway-key"]).decode()
    (entry,) = json.loads(base64.b64decode(secret["data"]["service-keys.json"]))["keys"]
    assert entry["scopes"] == ["internal"] and entry["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    gateway = next(d for d in kind(docs, "Deployment") if d["metadata"]["name"].endswith("stream-gateway"))
    env = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["SCRIBE_STREAM_GATEWAY_WORKER_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "stream-gateway-key"}
    assert env["SCRIBE_STREAM_GATEWAY_AUTH__SERVICE_KEYS_FILE"]["value"].endswith("/service-keys.json")
