"""The HTTP gateway in the chart, the transcriber's memory settings and post-correction.

- http-gateway: a Deployment with HTTP probes and its own Service (Envoy fronts gRPC only); its
  gRPC goes through Envoy when Envoy is plaintext, else straight to ingest and results; the
  NetworkPolicies let exactly that traffic through; it needs ingest and results.
- transcriber: SCRIBE_TRANSCRIBER_PIECE_SECONDS, _MAX_CONCURRENT_JOBS per pool, and glibc's
  MALLOC_MMAP_THRESHOLD_.
- post-correction: one values key gives ingest and postprocess the same allowed modes; the default
  must be allowed and a mode beyond "off" needs an LLM endpoint.
"""

from __future__ import annotations

import json

import pytest

KEYS = {"auth": {"keysFile": "{}"}}


def kind(docs, k):
    return [d for d in docs if d["kind"] == k]


def named(docs, k, name):
    (doc,) = [d for d in kind(docs, k) if d["metadata"]["name"] == name]
    return doc


def container(docs, deployment):
    return named(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


def env(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# --- http-gateway ---------------------------------------------------------------------------


def test_gateway_runs_by_default_with_http_probes_and_its_own_service(render):
    docs = render(KEYS)
    c = container(docs, "scribe-http-gateway")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    e = env(c)
    # Through the plaintext Envoy: per-call balancing over the pods of both services.
    assert e["SCRIBE_HTTP_GATEWAY_INGEST_ADDRESS"] == e["SCRIBE_HTTP_GATEWAY_RESULTS_ADDRESS"] == "scribe-envoy:8080"
    assert json.loads(e["SCRIBE_HTTP_GATEWAY_MODELS"]) == ["base", "tiny.en"]
    assert not any(k.startswith(("SCRIBE_HTTP_GATEWAY_NATS", "SCRIBE_HTTP_GATEWAY_STORE")) for k in e)
    svc = named(docs, "Service", "scribe-http-gateway")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8080, "metrics": 9464}
    envoy = json.dumps(named(docs, "ConfigMap", "scribe-envoy")["data"])
    assert "/v1/" not in envoy, "Envoy fronts gRPC only; the HTTP API has its own Service"
    assert named(docs, "PodDisruptionBudget", "scribe-http-gateway")


def test_gateway_dials_the_services_directly_when_envoy_speaks_tls_or_is_off(render):
    for values in ({"envoy": {"tls": {"secretName": "front-tls"}}}, {"envoy": {"enabled": False}}):
        e = env(container(render(KEYS, values), "scribe-http-gateway"))
        assert e["SCRIBE_HTTP_GATEWAY_INGEST_ADDRESS"] == "scribe-ingest:50051", values
        assert e["SCRIBE_HTTP_GATEWAY_RESULTS_ADDRESS"] == "scribe-results:50052", values


def _policy(docs, name):
    return named(docs, "NetworkPolicy", name)["spec"]


def test_network_policies_let_the_gateway_reach_its_backends(render):
    front = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    gateway_pods = {"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "scribe", "app.kubernetes.io/instance": "scribe",
        "app.kubernetes.io/component": "http-gateway"}}}
    docs = render(KEYS, {"networkPolicy": {"enabled": True, "frontDoorFrom": front}})
    gw = _policy(docs, "scribe-http-gateway")
    assert gw["ingress"][0]["from"][0] == front[0] and gw["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert any(r.get("ports") == [{"port": 8080, "protocol": "TCP"}] and "to" in r for r in gw["egress"])  # Envoy
    assert gateway_pods in _policy(docs, "scribe-envoy")["ingress"][0]["from"]
    # Direct (Envoy with TLS): ingest and results accept the gateway, the gateway may dial them.
    docs = render(KEYS, {"networkPolicy": {"enabled": True}, "envoy": {"tls": {"secretName": "t"}}})
    for name, port in (("scribe-ingest", 50051), ("scribe-results", 50052)):
        assert gateway_pods in _policy(docs, name)["ingress"][0]["from"], name
        assert any(r.get("ports") == [{"port": port, "protocol": "TCP"}] for r in _policy(docs, "scribe-http-gateway")[
            "egress"]), name
    assert gateway_pods not in _policy(docs, "scribe-stream-gateway")["ingress"][0]["from"]


def test_helm_test_checks_the_gateway_readiness(render):
    (pod,) = [p for p in kind(render(KEYS), "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert "http://scribe-http-gateway.scribe.svc:8080/readyz" in pod["spec"]["containers"][0]["args"][0]


def test_gateway_can_be_turned_off(render):
    docs = render(KEYS, {"httpGateway": {"enabled": False}})
    assert not [d for d in docs if "http-gateway" in d["metadata"]["name"]]


# --- transcriber ----------------------------------------------------------------------------


def test_transcriber_gets_piece_seconds_job_slots_and_the_malloc_threshold(render):
    docs = render(KEYS, {"transcriber": {"pieceSeconds": 300, "pools": {
        "cpu": {"maxConcurrentJobs": 2},
        "l4": {"gpu": True, "models": ["large-v3"]},
    }}})
    cpu = env(container(docs, "scribe-transcriber-cpu"))
    gpu = env(container(docs, "scribe-transcriber-l4"))
    assert cpu["SCRIBE_TRANSCRIBER_PIECE_SECONDS"] == gpu["SCRIBE_TRANSCRIBER_PIECE_SECONDS"] == "300"
    assert cpu["SCRIBE_TRANSCRIBER_MAX_CONCURRENT_JOBS"] == "2"
    assert gpu["SCRIBE_TRANSCRIBER_MAX_CONCURRENT_JOBS"] == "0"  # derived from the device's memory
    assert cpu["MALLOC_MMAP_THRESHOLD_"] == gpu["MALLOC_MMAP_THRESHOLD_"] == "65536"
    default = env(container(render(KEYS), "scribe-transcriber-cpu"))
    assert default["SCRIBE_TRANSCRIBER_PIECE_SECONDS"] == "600"
    off = env(container(render(KEYS, {"transcriber": {"mallocMmapThreshold": 0}}), "scribe-transcriber-cpu"))
    assert "MALLOC_MMAP_THRESHOLD_" not in off


# --- post-correction ------------------------------------------------------------------------


def test_ingest_and_postprocess_get_the_same_allowed_modes(render):
    docs = render(KEYS, {"postCorrection": {"allowed": ["off", "flagged"], "default": "flagged", "llm": {
        "endpoint": "http://ollama.llm.svc:11434/v1", "existingSecret": "llm", "secretKey": "token"}}})
    ingest = env(container(docs, "scribe-ingest"))
    post = env(container(docs, "scribe-postprocess"))
    assert json.loads(ingest["SCRIBE_INGEST_POST_CORRECTION_ALLOWED"]) == ["off", "flagged"]
    assert json.loads(post["SCRIBE_POSTPROCESS_POST_CORRECTION_ALLOWED"]) == ["off", "flagged"]
    assert post["SCRIBE_POSTPROCESS_POST_CORRECTION_DEFAULT"] == "flagged"
    assert post["SCRIBE_POSTPROCESS_LLM__ENABLED"] == "true"
    assert json.loads(post["SCRIBE_POSTPROCESS_LLM__ALLOWED_ENDPOINTS"]) == ["http://ollama.llm.svc:11434/v1"]
    assert post["SCRIBE_POSTPROCESS_LLM__API_KEY"] == {"secretKeyRef": {"name": "llm", "key": "token"}}
    defaults = env(container(render(KEYS), "scribe-postprocess"))
    assert json.loads(defaults["SCRIBE_POSTPROCESS_POST_CORRECTION_ALLOWED"]) == ["off"]
    assert "SCRIBE_POSTPROCESS_LLM__ENABLED" not in defaults


def test_llm_configured_through_extra_env_counts(render):
    render(KEYS, {"postCorrection": {"allowed": ["off", "all"]}, "postprocess": {"extraEnv": [
        {"name": "SCRIBE_POSTPROCESS_LLM__ENABLED", "value": "true"},
        {"name": "SCRIBE_POSTPROCESS_LLM__ENDPOINT", "value": "http://llm:8000/v1"},
        {"name": "SCRIBE_POSTPROCESS_LLM__ALLOWED_ENDPOINTS", "value": '["http://llm:8000/v1"]'},
    ]}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"postCorrection": {"allowed": ["off"], "default": "all"}},
         'postCorrection.default "all" is not in postCorrection.allowed [off]'),
        ({"postCorrection": {"allowed": ["off", "flagged"]}},
         "postCorrection.allowed lists flagged but no LLM endpoint is configured"),
        ({"results": {"enabled": False}, "envoy": {"enabled": False}},
         "httpGateway.enabled is true but results.enabled is false"),
        ({"httpGateway": {"defaultModel": "large-v3"}},
         'httpGateway.defaultModel "large-v3" is served by no enabled pool'),
    ],
)
def test_bad_values_fail_naming_the_value(render, values, message):
    with pytest.raises(render.error) as err:
        render(KEYS, values)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"postCorrection": {"allowed": [False]}}, "/postCorrection/allowed/0"),  # unquoted off
        ({"postCorrection": {"default": "some"}}, "/postCorrection/default"),
        ({"transcriber": {"pieceSeconds": 10}}, "/transcriber/pieceSeconds"),
        ({"transcriber": {"pools": {"cpu": {"maxConcurrentJobs": -1}}}}, "/transcriber/pools/cpu/maxConcurrentJobs"),
        ({"httpGateway": {"service": {"type": "ExternalName", "port": 80}}}, "/httpGateway/service/type"),
    ],
)
def test_schema_rejects_bad_values(render, values, where):
    with pytest.raises(render.error) as err:
        render(KEYS, values)
    assert "values don't meet the specifications of the schema" in str(err.value)
    assert where in str(err.value)
