#!/usr/bin/env python3
"""Rehearse an install of charts/scribe on one machine: the rendered Deployments run in podman.

    .venv/bin/python tools/rehearse.py                    # build the images, rehearse, clean up
    .venv/bin/python tools/rehearse.py --images images.json --json-out result.json
    .venv/bin/python tools/rehearse.py --no-service-links # without kubelet's Service variables

What an operator with existing servers does, done here without a cluster:

1. Builds the images (tools/images/build.py; unchanged ones are reused) unless ``--images``.
2. Starts the "existing servers" on loopback: ``nats-server -js`` (random port, temporary store)
   and a moto S3 server (``moto_server``, port 0). Both come from the project venv.
3. Renders the chart with ``helm template`` (helm from tools/install_helm.sh; a copy of the chart
   without its ``dependencies:`` block, as tools/check_chart.sh, since the NATS and MinIO charts
   cannot be fetched) and the values such an operator sets: ``nats.enabled=false`` + ``nats.url``,
   ``minio.enabled=false`` + ``objectStore.{endpoint,secure,region,existingSecret}`` (a Secret
   with the S3 keys, created "with kubectl" here), ``auth.keysFile`` (hashed keys generated with
   scribe_libs.auth.generate_key, as ``scribe keys create``), ``image.registry/tag`` of the built
   images, a CPU pool ``cpu`` with ``models: [tiny.en]``, and a free port per service (the HTTP
   gateway's too: ``httpGateway.port``, its PORT env and ``http`` containerPort).
4. Runs every container of every rendered Deployment (one replica each) with podman, as the
   kubelet would: image, command/args, env (value, valueFrom secretKeyRef/configMapKeyRef from
   the rendered or operator Secrets and ConfigMaps, the downward API, resourceFieldRef rounded
   up, ``$(VAR)`` expansion), securityContext (runAsUser/runAsGroup, fsGroup and
   supplementalGroups as extra groups, runAsNonRoot checked, readOnlyRootFilesystem as
   ``--read-only`` WITHOUT podman's own tmpfs on /tmp, /var/tmp and /run, capabilities,
   allowPrivilegeEscalation: false as no-new-privileges), emptyDir volumes (host directories of
   mode 0777, or tmpfs for ``medium: Memory``), secret/configMap volumes (files with their
   ``items``, ``defaultMode``, group fsGroup), memory/CPU limits, the pod name as hostname, init
   containers to completion first.
5. Waits for each container's grpc.health.v1 to be SERVING, polling with the deadline its
   startupProbe gives (periodSeconds x failureThreshold), and fails early when a container exits.
   A container whose probes are ``httpGet`` (the HTTP gateway: /healthz, /readyz) is polled with
   them instead, as the kubelet would: its startup probe, then its readiness probe (200-399).
6. Checks the buckets the services declare, then through the containers: one batch job
   (Ingest.CreateJob upload of ``--audio``, Results.WatchJob until it ends,
   Results.GetTranscript) and one live call (StreamGateway.StreamingRecognize, the same speech
   decoded to LINEAR16 16 kHz and sent at real-time pace), with the x-api-key header of a
   generated key. With a reference transcript (``--reference``, default the ``.txt`` beside the
   audio) the batch job and the HTTP transcription must stay within ``--max-wer`` and the live
   call within ``--max-live-wer`` (WER as :func:`scribe_libs.scoring.wer` defines it). Through the HTTP gateway
   (services/http-gateway, OpenAI-compatible): ``GET /v1/models`` must list the pool's models,
   and ``POST /v1/audio/transcriptions`` of the same fixture (multipart: file, model=whisper-1,
   response_format=json; the same key as ``Authorization: Bearer``) must come back with the
   batch job's WER bound. Each service's /metrics.
7. Checks every container still answers SERVING, the HTTP gateway its HTTP liveness and
   readiness probes (/healthz, /readyz), stops them as the kubelet does (the
   preStop sleep, then SIGTERM and SIGKILL after terminationGracePeriodSeconds) and reports the
   exit codes, then removes the containers, the servers and the temporary directory.

A summary table goes to stderr; ``--json-out`` writes the results. Exit 0 when every check
passed, 1 when one failed, 2 when a prerequisite (podman, helm, nats-server, moto) is missing.

Where Kubernetes does something podman cannot, this stands in for it (also printed at the end):

- Pod network: every container runs with ``--network host``, so each service gets its own free
  port (``<service>.port``, ``transcriber.port``) and its own metrics port (the chart has one
  ``common.metrics.port`` for every pod; the rehearsal appends ``SCRIBE_<S>_METRICS_PORT`` through
  each service's documented ``extraEnv``, last one wins as in Kubernetes). ``status.podIP`` is
  127.0.0.1.
- Service DNS and kube-proxy: the chart is given loopback addresses for NATS and S3; clients call
  each service's port directly. The HTTP gateway, which the chart points at Envoy or the
  ClusterIP Services, gets ``SCRIBE_HTTP_GATEWAY_{INGEST,RESULTS}_ADDRESS`` = the loopback ports
  of ingest and results through its ``extraEnv`` (last one wins). Service-link variables (``<SERVICE>_SERVICE_HOST``,
  ``<SERVICE>_PORT_<port>_TCP``, ... that the kubelet puts into every pod of the namespace for
  every Service with a cluster IP unless the pod sets ``enableServiceLinks: false``) are
  injected with 127.0.0.1 as the cluster IP, and ``KUBERNETES_SERVICE_HOST/PORT`` always.
- Envoy front door and the helm test pod: their public images cannot be pulled and no Envoy
  binary is installable from the package registries, so they are not run; the gRPC calls go to
  the services' ports directly (what Envoy would route by path).
- Kubernetes API: none. The transcriber's mounted service-account directory holds a dummy token
  and namespace, so its pod labelling fails as an unreachable API server would (a warning).
- Downward API: metadata.name = the container name (also its hostname, resolvable inside it
  only, as a pod's), metadata.namespace = the release namespace, spec.nodeName = this host's
  name, status.podIP/status.hostIP = 127.0.0.1.
- Probes: the startup probe's budget is the SERVING (HTTP: ready) deadline; readiness/liveness
  are checked once at the end instead of periodically; nothing is restarted.
- Replicas, HPA, PodDisruptionBudget, RBAC, NetworkPolicy, ServiceMonitor: one replica per
  Deployment; the rest is not applicable without a cluster and is listed as skipped.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import mimetypes
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "scribe"
HELM = ROOT / ".tools" / "bin" / "helm"
FIXTURE = ROOT / "tests" / "fixtures" / "speech_en.wav"
NAMESPACE = "scribe"
RELEASE = "scribe"
PODMAN_RUN = ["podman", "run", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--network", "host",
              "--ulimit", "nofile=10000:10000", "--ulimit", "nproc=1000:1000"]
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: values key of each stateless service -> (component name, env prefix)
SERVICES = {"ingest": ("ingest", "INGEST"), "results": ("results", "RESULTS"),
            "postprocess": ("postprocess", "POSTPROCESS"), "streamGateway": ("stream-gateway", "STREAM_GATEWAY"),
            "httpGateway": ("http-gateway", "HTTP_GATEWAY")}
#: values key of the HTTP gateway (OpenAI-compatible API; HTTP probes, no gRPC port of its own)
HTTP_GATEWAY = "httpGateway"
SKIPPED_KINDS = {
    "Service": "Service DNS/kube-proxy: loopback ports instead",
    "HorizontalPodAutoscaler": "one replica per Deployment",
    "PodDisruptionBudget": "no voluntary disruptions without a cluster",
    "ServiceAccount": "no API server (dummy token mounted where automounted)",
    "Role": "no API server", "RoleBinding": "no API server", "NetworkPolicy": "host network",
    "ServiceMonitor": "no Prometheus Operator; /metrics scraped directly",
    "PrometheusRule": "no Prometheus Operator",
    "ScaledObject": "no KEDA operator (queue-driven scaling needs a cluster)",
}
JOB_TIMEOUT_S = 300.0
LIVE_TIMEOUT_S = 180.0
#: urllib without the environment's proxies: every HTTP call here goes to a loopback port
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(f"[rehearse] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- results -------------------------------------------------------------------------------------

@dataclass
class Check:
    """One line of the summary table."""

    name: str
    ok: bool | None  # None: skipped / stood in for
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Pod:
    """One container of a rendered Deployment, as run by podman."""

    deployment: str
    container: str
    name: str  # podman container name = pod name = hostname
    spec: dict[str, Any]
    pod_spec: dict[str, Any]
    image: str = ""
    grpc_port: int | None = None
    http_port: int | None = None  # the containerPort named "http" (the HTTP gateway)
    metrics_port: int | None = None
    deadline_s: float = 300.0
    started: float = 0.0
    serving_after: float | None = None
    exit_code: int | None = None
    stop_seconds: float | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


class RehearsalError(RuntimeError):
    """A step failed; the message is the reason (it goes into the summary)."""


# --- quantities ----------------------------------------------------------------------------------

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "m": 1e-3}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("250m", "2", "4Gi") as a number (cores or bytes)."""
    text = str(value)
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    return number * _SUFFIX.get(suffix, 1) if suffix else number


# --- the rehearsal -------------------------------------------------------------------------------

class Rehearsal:
    """State of one rehearsal; :meth:`run` does everything and always cleans up."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run_id = args.run_id or secrets.token_hex(3)
        self.prefix = f"scribe-rh-{self.run_id}"
        self.work = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.checks: list[Check] = []
        self.standins: list[str] = []
        self.servers: list[Any] = []  # scribe_harness NatsServer / MotoServer
        self.pods: list[Pod] = []
        self.created: list[str] = []
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.configmaps: dict[str, dict[str, bytes]] = {}
        self.services: list[dict[str, Any]] = []
        self.images: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.nats_url = ""
        self.s3 = ""
        self.kube_api_port = free_port()
        self.result: dict[str, Any] = {"run_id": self.run_id}

    # -- bookkeeping --
    def check(self, name: str, ok: bool | None, detail: str = "", seconds: float = 0.0) -> Check:
        """Record one summary line and log it."""
        c = Check(name, ok, detail, seconds)
        self.checks.append(c)
        mark = {True: "ok", False: "FAILED", None: "skipped"}[ok]
        log(f"{name}: {mark}{' - ' + detail if detail else ''}")
        return c

    def step(self, name: str, fn: Callable[[], str | None]) -> bool:
        """Run one step; its return value is the detail, an exception a failed line."""
        started = time.monotonic()
        try:
            detail = fn() or ""
        except RehearsalError as exc:
            self.check(name, False, str(exc), time.monotonic() - started)
            return False
        except Exception as exc:  # noqa: BLE001 - any failure is a failed step in the table
            self.check(name, False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
            return False
        self.check(name, True, detail, time.monotonic() - started)
        return True

    # -- 1. images --
    def build_images(self) -> str:
        """Images from --images, else built now by tools/images/build.py (unchanged ones reused)."""
        if self.args.images:
            self.images = json.loads(Path(self.args.images).read_text())
            return f"from {self.args.images}"
        out = self.work / "images.json"
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "images" / "build.py"), "--json", str(out)],
                              stdout=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RehearsalError(f"tools/images/build.py exited {proc.returncode}")
        self.images = json.loads(out.read_text())
        return ", ".join(self.images.values())

    # -- 2. servers (the test harness's: scribe_harness.servers) --
    def start_nats(self) -> str:
        """``nats-server -js`` on a random loopback port with a temporary store; returns its URL."""
        from scribe_harness import NatsServer

        server = NatsServer(self.work / "nats")
        self.servers.append(server)
        try:
            self.nats_url = server.start()
        except RuntimeError as exc:
            raise RehearsalError(f"nats-server did not start: {exc}") from exc
        return self.nats_url

    def start_moto(self) -> str:
        """A moto S3 server on a free loopback port; returns ``host:port``."""
        from scribe_harness import MotoServer

        server = MotoServer(self.work / "moto")
        self.servers.append(server)
        try:
            self.s3 = server.start()
        except RuntimeError as exc:
            raise RehearsalError(f"moto_server did not start: {exc}") from exc
        return self.s3

    # -- 3. render --
    def values(self) -> dict[str, Any]:
        """The values an operator with existing NATS and S3 sets (plus free ports and the built images)."""
        from scribe_libs.auth import generate_key

        entries = []
        keys = (("ops", "ops", ["admin"]), ("acme", "acme", ["jobs:write", "jobs:read", "stream"]))
        for key_id, owner, scopes in keys:
            self.keys[key_id], entry = generate_key(key_id, owner, scopes)
            entries.append(entry)
        # The operator's Secret for the object store (kubectl create secret generic scribe-s3 ...).
        self.secrets["scribe-s3"] = {"accessKey": b"rehearsal", "secretKey": secrets.token_hex(16).encode()}
        values: dict[str, Any] = {
            "nats": {"enabled": False, "url": self.nats_url},
            "minio": {"enabled": False},
            "objectStore": {"endpoint": self.s3, "secure": False, "region": "us-east-1", "existingSecret": "scribe-s3"},
            "auth": {"keysFile": json.dumps({"keys": entries})},
            "image": {"pullPolicy": "IfNotPresent"},
            "transcriber": {"port": free_port(), "pools": {"cpu": {"models": list(self.args.models)}}},
        }
        registries = set()
        for key, (_component, env) in SERVICES.items():
            values[key] = {"port": free_port(),
                           "extraEnv": [{"name": f"SCRIBE_{env}_METRICS_PORT", "value": str(free_port())}]}
        values["transcriber"]["extraEnv"] = [{"name": "SCRIBE_TRANSCRIBER_METRICS_PORT", "value": str(free_port())}]
        # The gateway dials Envoy or the ClusterIP Services (scribe-ingest:<port>); neither exists
        # here, so its extraEnv (after the chart's own env: the last one wins) names the loopback ports.
        values[HTTP_GATEWAY]["extraEnv"] += [
            {"name": f"SCRIBE_HTTP_GATEWAY_{backend.upper()}_ADDRESS", "value": f"127.0.0.1:{values[backend]['port']}"}
            for backend in ("ingest", "results")]
        for key, component in [*((k, c) for k, (c, _) in SERVICES.items()), ("transcriber", "transcriber")]:
            ref = self.images[component]
            registry, _, rest = ref.partition("/")
            repo, _, tag = rest.rpartition(":")
            registries.add(registry)
            values[key]["image"] = {"repository": repo, "tag": tag}
        if len(registries) != 1:
            raise RehearsalError(f"images come from several registries: {registries}")
        values["image"]["registry"] = registries.pop()
        self.standins.append("one metrics port per service through each service's extraEnv "
                             "(common.metrics.port is shared by every pod; pods do not share a network here)")
        self.standins.append("http-gateway's SCRIBE_HTTP_GATEWAY_{INGEST,RESULTS}_ADDRESS = ingest's and results' "
                             "loopback ports, through its extraEnv (the chart names Envoy or the ClusterIP Services)")
        return values

    def render(self) -> str:
        """``helm template`` of a dependency-less copy of the chart; keeps Secrets, ConfigMaps, Services."""
        if not HELM.exists():
            subprocess.run([str(ROOT / "tools" / "install_helm.sh")], capture_output=True, timeout=900,
                           env={**os.environ, "PYTHON": sys.executable})
        if not HELM.exists():
            raise RehearsalError("helm not installed (tools/install_helm.sh)")
        chart = self.work / "chart" / "scribe"
        shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        meta.pop("dependencies", None)
        (chart / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        values_path = self.work / "operator-values.yaml"
        values_path.write_text(yaml.safe_dump(self.values(), sort_keys=False))
        cmd = [str(HELM), "template", RELEASE, str(chart), "--namespace", NAMESPACE, "-f", str(values_path)]
        for extra in self.args.values or []:
            cmd += ["-f", extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RehearsalError(f"helm template failed: {proc.stderr.strip()[-1500:]}")
        (self.work / "rendered.yaml").write_text(proc.stdout)
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        kinds: dict[str, int] = {}
        for doc in docs:
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
            meta = doc["metadata"]
            if doc["kind"] in ("Secret", "ConfigMap"):
                data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()} if doc["kind"] == "Secret" \
                    else {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
                data.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
                (self.secrets if doc["kind"] == "Secret" else self.configmaps)[meta["name"]] = data
            elif doc["kind"] == "Service":
                self.services.append(doc)
        self.docs = docs
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))

    # -- 4. containers --
    def plan(self) -> str:
        """One container per rendered Deployment container; the rest is listed as skipped."""
        planned = []
        for doc in self.docs:
            if doc["kind"] not in ("Deployment", "Pod"):
                continue
            pod_spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
            name = doc["metadata"]["name"]
            component = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
            if doc["kind"] == "Pod" or component == "envoy":
                why = ("helm test pod (grpcurl image cannot be pulled; health is checked directly)"
                       if doc["kind"] == "Pod" else
                       "Envoy image cannot be pulled and no Envoy is installable; clients call the services' ports")
                self.check(f"{doc['kind']} {name}", None, why)
                continue
            replicas = doc["spec"].get("replicas")
            for container in pod_spec["containers"]:
                pod = Pod(deployment=name, container=container["name"],
                          name=f"{self.prefix}-{name.removeprefix('scribe-')}",
                          spec=container, pod_spec=pod_spec, image=container["image"])
                if len(pod_spec["containers"]) > 1:
                    pod.name += f"-{container['name']}"
                self.pods.append(pod)
            planned.append(f"{name} (1 of {replicas if replicas is not None else 'HPA min'})")
        for kind, why in SKIPPED_KINDS.items():
            names = [d["metadata"]["name"] for d in self.docs if d["kind"] == kind]
            if names:
                self.check(f"{kind} x{len(names)}", None, why)
        if not self.pods:
            raise RehearsalError("no Deployment rendered")
        return "; ".join(planned)

    def _secret_value(self, ref: dict[str, Any], store: dict[str, dict[str, bytes]], kind: str) -> str | None:
        data = store.get(ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise RehearsalError(f"{kind} {ref['name']!r} key {ref['key']!r} does not exist")
        return data[ref["key"]].decode()

    def service_links(self) -> dict[str, str]:
        """The variables kubelet adds for every Service with a cluster IP in the namespace."""
        env: dict[str, str] = {}
        for svc in self.services:
            spec = svc["spec"]
            if spec.get("clusterIP") == "None" or spec.get("type") == "ExternalName":
                continue
            base = svc["metadata"]["name"].upper().replace("-", "_")
            ports = spec.get("ports") or []
            if not ports:
                continue
            ip = "127.0.0.1"
            env[f"{base}_SERVICE_HOST"] = ip
            env[f"{base}_SERVICE_PORT"] = str(ports[0]["port"])
            for p in ports:
                if p.get("name"):
                    env[f"{base}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
            env[f"{base}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
            for p in ports:
                proto = p.get("protocol", "TCP")
                pre = f"{base}_PORT_{p['port']}_{proto}"
                env[pre] = f"{proto.lower()}://{ip}:{p['port']}"
                env[f"{pre}_PROTO"] = proto.lower()
                env[f"{pre}_PORT"] = str(p["port"])
                env[f"{pre}_ADDR"] = ip
        return env

    def resolve_env(self, pod: Pod) -> dict[str, str]:
        """The container's environment as the kubelet builds it (service links, env, valueFrom)."""
        env: dict[str, str] = {}
        if self.args.service_links and pod.pod_spec.get("enableServiceLinks", True):
            env.update(self.service_links())
        kube = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.kube_api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.kube_api_port),
                "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.kube_api_port}"}
        env.update(kube)
        for src in pod.spec.get("envFrom") or []:
            store, kind = (self.secrets, "Secret") if "secretRef" in src else (self.configmaps, "ConfigMap")
            ref = src.get("secretRef") or src.get("configMapRef")
            for k, v in (store.get(ref["name"]) or {}).items():
                env[src.get("prefix", "") + k] = v.decode()
        resources = pod.spec.get("resources") or {}
        for item in pod.spec.get("env") or []:
            name = item["name"]
            if "value" in item:
                value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                               lambda m: env.get(m.group(1), m.group(0)), str(item["value"]))
                value = value.replace("$$", "$")
            elif "valueFrom" in item:
                vf = item["valueFrom"]
                if "secretKeyRef" in vf:
                    value = self._secret_value(vf["secretKeyRef"], self.secrets, "Secret")
                elif "configMapKeyRef" in vf:
                    value = self._secret_value(vf["configMapKeyRef"], self.configmaps, "ConfigMap")
                elif "fieldRef" in vf:
                    path = vf["fieldRef"]["fieldPath"]
                    value = {"metadata.name": pod.name, "metadata.namespace": NAMESPACE,
                             "spec.nodeName": socket.gethostname(), "status.podIP": "127.0.0.1",
                             "status.hostIP": "127.0.0.1", "spec.serviceAccountName": pod.pod_spec.get(
                                 "serviceAccountName", "default"), "metadata.uid": self.run_id}.get(path)
                    if value is None:
                        raise RehearsalError(f"{pod.deployment}: fieldRef {path} not emulated")
                elif "resourceFieldRef" in vf:
                    ref = vf["resourceFieldRef"]
                    kind, _, res = ref["resource"].partition(".")
                    amount = (resources.get(kind) or {}).get(res)
                    if amount is None and kind == "requests":
                        amount = (resources.get("limits") or {}).get(res)
                    if amount is None:  # no limit: the node's allocatable
                        amount = (os.cpu_count() if res == "cpu"
                                  else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
                    value = str(math.ceil(quantity(amount) / quantity(ref.get("divisor", "1"))))
                else:
                    raise RehearsalError(f"{pod.deployment}: env {name}: valueFrom {list(vf)} not emulated")
                if value is None:
                    continue
            else:
                value = ""
            env[name] = value
        return env

    def _volume_dir(self, pod: Pod, volume: dict[str, Any]) -> tuple[str, Path | None, dict[str, str]]:
        """(kind, host path or None for tmpfs, tmpfs options) of one pod volume."""
        base = self.work / "volumes" / pod.name / volume["name"]
        fs_group = (pod.pod_spec.get("securityContext") or {}).get("fsGroup")
        if "emptyDir" in volume:
            ed = volume["emptyDir"] or {}
            if ed.get("medium") == "Memory":
                opts = {"mode": "1777"}
                if ed.get("sizeLimit"):
                    opts["size"] = str(int(quantity(ed["sizeLimit"])))
                return "tmpfs", None, opts
            base.mkdir(parents=True, exist_ok=True)
            os.chmod(base, 0o777)  # kubelet's emptyDir mode
            if fs_group is not None:
                os.chown(base, 0, int(fs_group))
                os.chmod(base, 0o2777)
            return "emptyDir", base, {}
        if "projected" in volume:
            projected = volume["projected"]
            base.mkdir(parents=True, exist_ok=True)
            for source in projected.get("sources") or []:
                if "serviceAccountToken" in source:
                    self._write_file(base / source["serviceAccountToken"]["path"], b"rehearsal-dummy-token",
                                     projected.get("defaultMode", 0o644), fs_group)
                    continue
                kind = next((k for k in ("secret", "configMap") if k in source), None)
                if kind is None:
                    raise RehearsalError(f"{pod.deployment}: projected source {list(source)} is not emulated")
                self._project(pod, base, kind, source[kind], source[kind].get("name"),
                              projected.get("defaultMode", 0o644), fs_group)
            os.chmod(base, 0o755)
            return "secret", base, {}
        for kind in ("secret", "configMap"):
            if kind in volume:
                src = volume[kind]
                name = src.get("secretName") if kind == "secret" else src.get("name")
                base.mkdir(parents=True, exist_ok=True)
                self._project(pod, base, kind, src, name, src.get("defaultMode", 0o644), fs_group)
                os.chmod(base, 0o755)
                return kind, base, {}
        raise RehearsalError(f"{pod.deployment}: volume {volume['name']} of type "
                             f"{[k for k in volume if k != 'name']} is not emulated")

    def _project(self, pod: Pod, base: Path, kind: str, src: dict[str, Any], name: str | None, default_mode: int,
                 fs_group: Any) -> None:
        """Write a Secret's or ConfigMap's keys (or its ``items``) as files below ``base``."""
        data = (self.secrets if kind == "secret" else self.configmaps).get(name or "")
        if data is None:
            if src.get("optional"):
                return
            raise RehearsalError(f"{pod.deployment}: {kind} {name!r} of a volume not found")
        for item in src.get("items") or [{"key": k, "path": k} for k in data]:
            if item["key"] not in data:
                raise RehearsalError(f"{pod.deployment}: {kind} {name!r} has no key {item['key']!r}")
            self._write_file(base / item["path"], data[item["key"]], item.get("mode", default_mode), fs_group)

    @staticmethod
    def _write_file(target: Path, content: bytes, mode: int, fs_group: Any) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        if fs_group is not None:
            os.chown(target, 0, int(fs_group))
            mode |= 0o040  # kubelet makes fsGroup-owned files group-readable
        os.chmod(target, mode)

    def podman_args(self, pod: Pod, container: dict[str, Any], init: bool = False) -> list[str]:
        """The ``podman run`` command line of one container of a pod spec."""
        ps = pod.pod_spec
        psc = ps.get("securityContext") or {}
        csc = container.get("securityContext") or {}
        name = pod.name if not init else f"{pod.name}-init-{container['name']}"
        args = [*PODMAN_RUN, "--name", name, "--label", f"scribe-rehearsal={self.run_id}",
                "--hostname", pod.name, "--add-host", f"{pod.name}:127.0.0.1",
                "--pull", "never"]  # the images are local (imagePullPolicy has nothing to pull from)
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        gid = csc.get("runAsGroup", psc.get("runAsGroup"))
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            effective = uid if uid is not None else self._image_user(container["image"])
            if str(effective).split(":")[0] in ("", "0", "root"):
                raise RehearsalError(f"{pod.deployment}: runAsNonRoot but the user is {effective!r}")
        for group in [psc.get("fsGroup"), *(psc.get("supplementalGroups") or [])]:
            if group is not None:
                args += ["--group-add", str(group)]
        if csc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if csc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        caps = csc.get("capabilities") or {}
        for cap in caps.get("drop") or []:
            args += ["--cap-drop", cap]
        for cap in caps.get("add") or []:
            args += ["--cap-add", cap]
        if csc.get("privileged"):
            args += ["--privileged"]
        limits = (container.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            args += ["--memory", str(int(quantity(limits["memory"])))]
        if "cpu" in limits:
            args += ["--cpus", f"{quantity(limits['cpu']):g}"]
        volumes = {v["name"]: v for v in ps.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise RehearsalError(f"{pod.deployment}: volumeMount {mount['name']} names no volume")
            kind, path, opts = self._volume_dir(pod, volume)
            if path is None:
                args += ["--tmpfs", f"{mount['mountPath']}:rw," + ",".join(f"{k}={v}" for k, v in opts.items())]
                continue
            if mount.get("subPath"):
                path = path / mount["subPath"]
            ro = mount.get("readOnly") or kind in ("secret", "configMap")
            args += ["-v", f"{path}:{mount['mountPath']}:{'ro' if ro else 'rw'}"]
        if ps.get("automountServiceAccountToken") and not any(
                m["mountPath"].startswith("/var/run/secrets") for m in container.get("volumeMounts") or []):
            sa = self.work / "volumes" / pod.name / "kube-api-access"
            sa.mkdir(parents=True, exist_ok=True)
            (sa / "token").write_text("rehearsal-dummy-token")
            (sa / "namespace").write_text(NAMESPACE)
            shutil.copy(self._ca_bundle(), sa / "ca.crt")
            for f in sa.iterdir():
                os.chmod(f, 0o644)
            args += ["-v", f"{sa}:{SA_DIR}:ro"]
        env = self.resolve_env(pod) if not init else self.resolve_env(
            Pod(pod.deployment, container["name"], pod.name, container, ps))
        if not init:
            pod.env = env
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        command = container.get("command")
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(container["image"])
        args += [str(a) for a in container.get("args") or []]
        return args

    @staticmethod
    def _ca_bundle() -> Path:
        for candidate in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
            if Path(candidate).exists():
                return Path(candidate)
        raise RehearsalError("no CA bundle on this machine for the dummy service-account directory")

    @staticmethod
    def _image_user(image: str) -> str:
        proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Config.User}}", image],
                              capture_output=True, text=True)
        return proc.stdout.strip()

    def start_containers(self) -> str:
        """Run init containers to completion, then start every container detached."""
        for pod in self.pods:
            pod.grpc_port = self.container_port(pod, "grpc")
            pod.http_port = self.container_port(pod, "http")
            probe = pod.spec.get("startupProbe") or pod.spec.get("readinessProbe") or {}
            if probe:
                pod.deadline_s = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3) + \
                    probe.get("initialDelaySeconds", 0)
            for init in pod.pod_spec.get("initContainers") or []:
                proc = subprocess.run(self.podman_args(pod, init, init=True), capture_output=True, text=True,
                                      timeout=pod.deadline_s)
                self.created.append(f"{pod.name}-init-{init['name']}")
                if proc.returncode != 0:
                    raise RehearsalError(f"{pod.deployment}: init container {init['name']} exited "
                                         f"{proc.returncode}: {proc.stderr[-800:]}")
            args = self.podman_args(pod, pod.spec)
            metrics = [v for k, v in pod.env.items() if k.endswith("_METRICS_PORT") and k.startswith("SCRIBE_")]
            pod.metrics_port = int(metrics[0]) if metrics and metrics[0].isdigit() and metrics[0] != "0" else None
            (self.work / f"{pod.name}.podman-args.json").write_text(json.dumps(args, indent=1))
            proc = subprocess.run(args[:2] + ["-d"] + args[2:], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RehearsalError(f"{pod.deployment}: podman run failed: {proc.stderr.strip()[-800:]}")
            self.created.append(pod.name)
            pod.started = time.monotonic()
        return f"{len(self.pods)} containers started"

    # -- 5. health --
    def container_state(self, name: str) -> tuple[str, int]:
        """(status, exit code) of a container; ('missing', -1) when it is gone."""
        proc = subprocess.run(["podman", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return "missing", -1
        status, code = proc.stdout.split()
        return status, int(code)

    def logs_tail(self, name: str, lines: int = 25) -> str:
        """The last lines of a container's log (retried briefly: an exited container's log may lag)."""
        text = ""
        for _ in range(10):
            proc = subprocess.run(["podman", "logs", "--tail", str(lines), name], capture_output=True, text=True)
            text = (proc.stdout + proc.stderr).strip()
            if text:
                break
            time.sleep(0.2)
        return text

    @staticmethod
    def container_port(pod: Pod, name: str) -> int | None:
        """The containerPort named ``name`` of a container, or None."""
        return next((int(p["containerPort"]) for p in pod.spec.get("ports") or [] if p.get("name") == name), None)

    @staticmethod
    def http_probed(pod: Pod) -> bool:
        """True when the container's readiness is an HTTP probe (httpGet), as the HTTP gateway's."""
        return "httpGet" in (pod.spec.get("readinessProbe") or {})

    def http_probe(self, pod: Pod, probe: dict[str, Any]) -> tuple[bool, str]:
        """One kubelet HTTP probe: GET ``httpGet`` (port by number or containerPort name, path, headers).

        Returns (success, answer): success is a status 200-399 within the probe's ``timeoutSeconds``
        (default 1 s), as the kubelet counts it; the answer is ``"<path> <status>"`` and, for a
        failure, the body's start or the connection error.
        """
        get = probe["httpGet"]
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = self.container_port(pod, port)
            if port is None:
                raise RehearsalError(f"{pod.deployment}: probe port {get['port']!r} names no containerPort")
        path = get.get("path", "/")
        url = f"{get.get('scheme', 'HTTP').lower()}://{get.get('host') or '127.0.0.1'}:{port}{path}"
        headers = {"User-Agent": "kube-probe/rehearsal"}
        headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
        try:
            with _HTTP.open(urllib.request.Request(url, headers=headers),
                            timeout=float(probe.get("timeoutSeconds", 1))) as reply:
                return 200 <= reply.status < 400, f"{path} {reply.status}"
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace").strip()
            return 200 <= exc.code < 400, f"{path} {exc.code} {body[:300]}".strip()
        except (urllib.error.URLError, OSError) as exc:
            return False, f"{path}: {getattr(exc, 'reason', exc)}"

    def _exited_before(self, pod: Pod, what: str) -> None:
        """Raise (with the log's tail) when the container is no longer running."""
        status, code = self.container_state(pod.name)
        if status not in ("running", "created", "configured"):
            pod.exit_code = code
            raise RehearsalError(f"container {status} with exit code {code} before {what}; log:\n"
                                 f"{self.logs_tail(pod.name)}")

    def wait_http_ready(self, pod: Pod) -> str:
        """Poll the HTTP startup probe, then the HTTP readiness probe, within the startup probe's budget."""
        deadline = pod.started + pod.deadline_s
        stages = [p for p in (pod.spec.get("startupProbe"), pod.spec["readinessProbe"]) if p and "httpGet" in p]
        answers = []
        for probe in stages:
            last = "no answer"
            while True:
                passed, last = self.http_probe(pod, probe)
                if passed:
                    answers.append(last)
                    break
                self._exited_before(pod, "ready")
                if time.monotonic() >= deadline:
                    raise RehearsalError(f"not ready within the startup probe's {pod.deadline_s:.0f} s "
                                         f"(last: {last}); log:\n{self.logs_tail(pod.name)}")
                time.sleep(0.5)
        pod.serving_after = time.monotonic() - pod.started
        return f"ready ({', '.join(answers)}) on :{pod.http_port} after {pod.serving_after:.1f} s"

    def wait_serving(self, pod: Pod) -> str:
        """Poll grpc.health.v1 until SERVING (HTTP probes for an httpGet container) within the startup budget."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        if self.http_probed(pod):
            return self.wait_http_ready(pod)
        if pod.grpc_port is None:
            raise RehearsalError(f"{pod.deployment}: no grpc containerPort")
        deadline = pod.started + pod.deadline_s
        last = "no answer"
        with grpc.insecure_channel(f"127.0.0.1:{pod.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        pod.serving_after = time.monotonic() - pod.started
                        return f"SERVING on :{pod.grpc_port} after {pod.serving_after:.1f} s"
                except grpc.RpcError as exc:
                    last = f"{exc.code().name}"
                self._exited_before(pod, "SERVING")
                time.sleep(0.5)
        raise RehearsalError(f"not SERVING within the startup probe's {pod.deadline_s:.0f} s (last: {last}); log:\n"
                             f"{self.logs_tail(pod.name)}")

    def wait_all(self) -> bool:
        """Wait for every container in parallel; one summary line each."""
        with ThreadPoolExecutor(max_workers=len(self.pods)) as pool:
            futures = {pod.name: pool.submit(self._timed, self.wait_serving, pod) for pod in self.pods}
        ok = True
        for pod in self.pods:
            passed, detail, seconds = futures[pod.name].result()
            self.check(f"health {pod.deployment}", passed, detail, seconds)
            ok &= passed
        return ok

    @staticmethod
    def _timed(fn: Callable[..., str], *a: Any) -> tuple[bool, str, float]:
        started = time.monotonic()
        try:
            return True, fn(*a), time.monotonic() - started
        except Exception as exc:  # noqa: BLE001 - reported in the table
            return False, str(exc), time.monotonic() - started

    # -- 6. traffic --
    def port_of(self, component: str, kind: str = "grpc") -> int:
        """The gRPC (``kind="http"``: HTTP) port of the running container of a component."""
        for pod in self.pods:
            labels = next(d for d in self.docs if d["kind"] == "Deployment" and d["metadata"]["name"] == pod.deployment)
            port = pod.grpc_port if kind == "grpc" else pod.http_port
            if labels["metadata"]["labels"].get("app.kubernetes.io/component") == component and port:
                return port
        raise RehearsalError(f"no running {component} with a {kind} port")

    def channel(self, component: str, key: str = "acme"):  # noqa: ANN201 - grpc.Channel
        """A channel to a component that sends the API key ``key``."""
        import grpc

        from scribe_libs.auth import ApiKeyClientInterceptor

        channel = grpc.insecure_channel(f"127.0.0.1:{self.port_of(component)}")
        return grpc.intercept_channel(channel, ApiKeyClientInterceptor(self.keys[key]))

    def buckets(self) -> str:
        """The S3 buckets the services declared at start-up (scribe-audio, scribe-results)."""
        with urllib.request.urlopen(f"http://{self.s3}/", timeout=10) as reply:
            body = reply.read().decode()
        names = sorted(set(re.findall(r"<Name>([^<]+)</Name>", body)))
        self.result["buckets"] = names
        expected = {"scribe-audio", "scribe-results"}
        missing = sorted(expected - set(names))
        if missing:
            raise RehearsalError(f"the services did not create {missing}; buckets: {names}")
        return ", ".join(names)

    def batch_job(self) -> str:
        """CreateJob upload, WatchJob until it ends, GetTranscript (txt), WER against the .txt."""
        from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2

        audio = Path(self.args.audio)
        spec = jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(), filename=audio.name,
                                request_id=f"rehearsal-{self.run_id}")

        def requests():  # noqa: ANN202 - an iterator of CreateJobRequest
            yield ingest_pb2.CreateJobRequest(spec=spec)
            data = audio.read_bytes()
            for lo in range(0, len(data), 256 * 1024):
                yield ingest_pb2.CreateJobRequest(audio=data[lo:lo + 256 * 1024])

        with self.channel("ingest") as ch_ingest, self.channel("results") as ch_results:
            reply = ingest_pb2_grpc.IngestStub(ch_ingest).CreateJob(requests(), timeout=60)
            job_id = reply.job.job_id
            results = results_pb2_grpc.ResultsStub(ch_results)
            job = reply.job
            states = [jobs_pb2.JobState.Name(job.state)]
            for update in results.WatchJob(results_pb2.WatchJobRequest(job_id=job_id), timeout=JOB_TIMEOUT_S):
                job = update.job
                name = jobs_pb2.JobState.Name(job.state)
                if name != states[-1]:
                    states.append(name)
            self.result["job"] = {"job_id": job_id, "states": states, "model": job.spec.config.model}
            if job.state != jobs_pb2.JobState.JOB_STATE_COMPLETED:
                raise RehearsalError(f"job {job_id} ended {states[-1]}: {job.error_reason} {job.error_message}")
            from scribe_libs.formats import FORMAT_NAMES

            request = results_pb2.GetTranscriptRequest(job_id=job_id, format=FORMAT_NAMES["txt"])
            transcript = results.GetTranscript(request, timeout=30)
        text = transcript.content.decode().strip()
        self.result["job"]["text"] = text
        detail = f"{' -> '.join(s.removeprefix('JOB_STATE_') for s in states)}: {text!r}"
        return self.scored("job", text, detail, self.args.max_wer)

    def reference(self) -> str | None:
        """The reference transcript of ``--audio`` (``--reference``, else the .txt beside it), or None."""
        path = Path(self.args.reference) if self.args.reference else Path(self.args.audio).with_suffix(".txt")
        return path.read_text().strip() if path.exists() else None

    def scored(self, what: str, text: str, detail: str, max_wer: float) -> str:
        """Add the WER of ``text`` to ``result[what]`` and ``detail``; a failed step above ``max_wer``."""
        from scribe_libs.scoring import wer

        reference = self.reference()
        if reference is None:
            return detail
        error = wer(reference, text)
        self.result[what]["wer"] = error
        detail += f" (WER {error:.2f})"
        if error > max_wer:
            raise RehearsalError(f"{detail}: WER above {max_wer}")
        return detail

    def live_call(self) -> str:
        """StreamingRecognize of the same speech (16 kHz LINEAR16) at real-time pace; finals with words."""
        from scribe.v1 import streaming_pb2, streaming_pb2_grpc
        from scribe_libs.audio import WHISPER_SAMPLE_RATE, decode_for_whisper
        from scribe_libs.callaudio import encode_linear16

        rate, pcm = WHISPER_SAMPLE_RATE, encode_linear16(decode_for_whisper(Path(self.args.audio)))
        config = streaming_pb2.StreamingConfig(
            encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=rate, audio_channel_count=1,
            interim_results=True, word_timestamps=True, labels={"rehearsal": self.run_id})
        step = rate * 2 // 10  # 100 ms

        def requests():  # noqa: ANN202 - an iterator of StreamingRecognizeRequest
            yield streaming_pb2.StreamingRecognizeRequest(config=config)
            started = time.monotonic()
            for lo in range(0, len(pcm), step):
                delay = started + lo / (rate * 2) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # a live call: audio arrives as it is spoken
                yield streaming_pb2.StreamingRecognizeRequest(audio=pcm[lo:lo + step])

        finals, interims, words = [], 0, 0
        summary = None
        with self.channel("stream-gateway") as channel:
            stub = streaming_pb2_grpc.StreamGatewayStub(channel)
            for response in stub.StreamingRecognize(requests(), timeout=LIVE_TIMEOUT_S):
                kind = response.WhichOneof("response")
                if kind == "result" and response.result.is_final:
                    finals.append(response.result.text)
                    words += len(response.result.words)
                elif kind == "result":
                    interims += 1
                elif kind == "summary":
                    summary = response.summary
        text = " ".join(t.strip() for t in finals).strip()
        self.result["live"] = {"finals": finals, "interims": interims, "words": words, "text": text,
                               "job_id": summary.job_id if summary else ""}
        if not finals or words == 0:
            raise RehearsalError(f"{len(finals)} finals with {words} words ({interims} interims)")
        detail = f"{len(finals)} finals, {words} words, {interims} interims: {text!r}"
        return self.scored("live", text, detail, self.args.max_live_wer)

    def http_call(self, method: str, path: str, body: bytes | None = None, content_type: str = "",
                  timeout: float = 30.0) -> tuple[int, bytes]:
        """One request to the HTTP gateway with the acme key as ``Authorization: Bearer``; (status, body)."""
        headers = {"Authorization": f"Bearer {self.keys['acme']}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        url = f"http://127.0.0.1:{self.port_of('http-gateway', 'http')}{path}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with _HTTP.open(request, timeout=timeout) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def http_models(self) -> str:
        """GET /v1/models: OpenAI's list object, naming the CPU pool's models (and whisper-1)."""
        status, body = self.http_call("GET", "/v1/models")
        if status != 200:
            raise RehearsalError(f"GET /v1/models answered {status}: {body[:500].decode(errors='replace')}")
        reply = json.loads(body)
        ids = [m.get("id") for m in reply.get("data") or []]
        self.result["http_models"] = ids
        if reply.get("object") != "list" or not ids:
            raise RehearsalError(f"GET /v1/models lists no model: {reply}")
        missing = [m for m in self.args.models if m not in ids]
        if missing:
            raise RehearsalError(f"GET /v1/models lacks the pool's {missing}: {ids}")
        return ", ".join(ids)

    def http_transcription(self) -> str:
        """POST /v1/audio/transcriptions (multipart: file, model, response_format=json) of the batch fixture."""
        audio = Path(self.args.audio)
        boundary = f"scribe-rehearsal-{secrets.token_hex(12)}"
        parts = []
        for name, value in (("model", "whisper-1"), ("response_format", "json")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{audio.name}"\r\n'
                     f"Content-Type: {mimetypes.guess_type(audio.name)[0] or 'application/octet-stream'}\r\n\r\n"
                     .encode() + audio.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self.http_call("POST", "/v1/audio/transcriptions", b"".join(parts),
                                      f"multipart/form-data; boundary={boundary}", timeout=JOB_TIMEOUT_S)
        if status != 200:
            raise RehearsalError(f"POST /v1/audio/transcriptions answered {status}: "
                                 f"{body[:500].decode(errors='replace')}")
        text = str(json.loads(body).get("text", "")).strip()
        self.result["http"] = {"status": status, "text": text}
        detail = f"200 (model whisper-1): {text!r}"
        return self.scored("http", text, detail, self.args.max_wer)

    def metrics(self) -> str:
        """GET /metrics of every service."""
        seen = []
        for pod in self.pods:
            if pod.metrics_port is None:
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{pod.metrics_port}/metrics", timeout=10) as reply:
                body = reply.read().decode(errors="replace")
            if "scribe" not in body:
                raise RehearsalError(f"{pod.deployment}: /metrics has no scribe metric")
            seen.append(f"{pod.container}:{pod.metrics_port}")
        return ", ".join(seen)

    def still_serving(self) -> str:
        """Every container still running and SERVING, or ready by its HTTP probes (the liveness question)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        bad = []
        for pod in self.pods:
            status, code = self.container_state(pod.name)
            if self.http_probed(pod):
                probes = [pod.spec[k] for k in ("livenessProbe", "readinessProbe")
                          if "httpGet" in (pod.spec.get(k) or {})]
                answers = [self.http_probe(pod, probe) for probe in probes]
                if status != "running" or not all(passed for passed, _ in answers):
                    bad.append(f"{pod.deployment}: {status} {', '.join(answer for _, answer in answers)}")
                continue
            try:
                with grpc.insecure_channel(f"127.0.0.1:{pod.grpc_port}") as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                answer = exc.code().name
            if answer != "SERVING" or status != "running":
                bad.append(f"{pod.deployment}: {status} {answer}")
        if bad:
            raise RehearsalError("; ".join(bad))
        http = sum(1 for pod in self.pods if self.http_probed(pod))
        return f"{len(self.pods) - http} SERVING" + (f", {http} ready (HTTP probes)" if http else "")

    # -- 7. shutdown --
    def stop_pod(self, pod: Pod) -> None:
        """The kubelet's stop: preStop sleep, then SIGTERM and SIGKILL at the grace period's end."""
        grace = int(pod.pod_spec.get("terminationGracePeriodSeconds", 30))
        pre_stop = ((pod.spec.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        started = time.monotonic()
        time.sleep(min(int(pre_stop), grace))  # kubelet runs the preStop hook inside the grace period
        left = max(grace - int(pre_stop), 1)
        subprocess.run(["podman", "stop", "-t", str(left), pod.name], capture_output=True, timeout=left + 60)
        pod.stop_seconds = time.monotonic() - started
        _, pod.exit_code = self.container_state(pod.name)

    def shutdown(self) -> str:
        """Stop every running container in parallel; each must exit 0 within its grace period."""
        with ThreadPoolExecutor(max_workers=max(len(self.pods), 1)) as pool:
            list(pool.map(self.stop_pod, [p for p in self.pods if self.container_state(p.name)[0] == "running"]))
        bad = [f"{p.deployment} exit {p.exit_code} after {p.stop_seconds:.1f} s" for p in self.pods
               if p.stop_seconds is not None and p.exit_code != 0]
        detail = ", ".join(f"{p.container} {p.exit_code} in {p.stop_seconds:.1f}s" for p in self.pods
                           if p.stop_seconds is not None)
        if bad:
            raise RehearsalError("not a clean exit within terminationGracePeriodSeconds: " + "; ".join(bad))
        return detail

    def save_logs(self) -> None:
        """Keep every container's log and collect its WARNING/ERROR records."""
        out = Path(self.args.logs) if self.args.logs else self.work / "logs"
        out.mkdir(parents=True, exist_ok=True)
        warnings: dict[str, list[str]] = {}
        for pod in self.pods:
            proc = subprocess.run(["podman", "logs", pod.name], capture_output=True, text=True)
            text = proc.stdout + proc.stderr
            pod.log_path = out / f"{pod.container}.log"
            pod.log_path.write_text(text)
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("severity") in ("WARNING", "ERROR", "CRITICAL"):
                    entry = f"{record['severity']}: {record.get('message')}"
                    trace = str(record.get("exc_info") or "").strip().splitlines()
                    if trace:  # where it was raised and what: the traceback's last frame and line
                        entry += " | " + " / ".join(line.strip() for line in trace[-3:])
                    warnings.setdefault(pod.container, []).append(entry)
        self.result["log_warnings"] = warnings
        self.result["logs"] = str(out)

    def cleanup(self) -> None:
        """Remove the containers, stop the servers, delete the temporary directory."""
        for name in reversed(self.created):
            subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)
        for server in self.servers:
            server.stop()
        if not self.args.keep_workdir:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- all --
    def run(self) -> int:
        """Every step in order; always cleans up. Returns the exit status."""
        started = time.monotonic()
        try:
            ok = (self.step("images", self.build_images)
                  and self.step("nats-server -js", self.start_nats)
                  and self.step("moto S3 server", self.start_moto)
                  and self.step("helm template", self.render)
                  and self.step("containers (one replica per Deployment)", self.plan)
                  and self.step("podman run", self.start_containers))
            if ok and self.wait_all():
                self.step("buckets declared by the services", self.buckets)
                self.step(f"batch job ({Path(self.args.audio).name})", self.batch_job)
                self.step("live call (StreamingRecognize)", self.live_call)
                if any(self.http_probed(p) for p in self.pods):
                    self.step("http-gateway GET /v1/models", self.http_models)
                    self.step(f"http-gateway POST /v1/audio/transcriptions ({Path(self.args.audio).name})",
                              self.http_transcription)
                self.step("metrics endpoints", self.metrics)
                self.step("still SERVING after the traffic", self.still_serving)
            if self.pods and self.created:
                self.save_logs()
                self.step("graceful stop (preStop, SIGTERM, grace period)", self.shutdown)
        finally:
            self.cleanup()
        self.result["wall_seconds"] = time.monotonic() - started
        self.result["checks"] = [c.__dict__ for c in self.checks]
        self.result["standins"] = self.standins
        self.result["containers"] = {p.container: {"name": p.name, "image": p.image, "grpc_port": p.grpc_port,
                                                   "http_port": p.http_port,
                                                   "serving_after_s": p.serving_after, "exit_code": p.exit_code,
                                                   "stop_seconds": p.stop_seconds} for p in self.pods}
        failed = [c for c in self.checks if c.ok is False]
        self.result["ok"] = not failed
        self.summary()
        if self.args.json_out:
            Path(self.args.json_out).write_text(json.dumps(self.result, indent=2, default=str))
        return 0 if not failed else 1

    def summary(self) -> None:
        """The summary table and the stand-ins, to stderr."""
        width = max(len(c.name) for c in self.checks) if self.checks else 10
        lines = ["", f"{'CHECK':<{width}}  {'RESULT':<8} {'SECONDS':>8}  DETAIL"]
        for c in self.checks:
            mark = {True: "ok", False: "FAILED", None: "skipped"}[c.ok]
            detail = c.detail.replace("\n", "\n" + " " * (width + 21))
            lines.append(f"{c.name:<{width}}  {mark:<8} {c.seconds:8.1f}  {detail}")
        lines.append("")
        lines.append("Stand-ins for what Kubernetes does and podman cannot:")
        standins = [
            "pod network: --network host, a free port per service; status.podIP = 127.0.0.1",
            "Service DNS/kube-proxy: NATS and S3 on loopback in the values; clients dial each service's port",
            "service-link variables " + ("injected (enableServiceLinks default)" if self.args.service_links
                                         else "NOT injected (--no-service-links)"),
            "Envoy front door and helm test pod: not run (images cannot be pulled); health checked directly",
            "Kubernetes API: none; the transcriber's pod labelling meets a dummy service-account token",
            "probes: startup budget = SERVING deadline (httpGet probes, as http-gateway's, polled over HTTP); "
            "readiness/liveness once at the end; no restarts",
            *self.standins,
        ]
        lines += [f"  - {s}" for s in standins]
        for container, warns in (self.result.get("log_warnings") or {}).items():
            # Errors in full (an INTERNAL answer is diagnosed by its traceback), warnings shortened.
            errors = sorted({w for w in warns if not w.startswith("WARNING")})
            others = sorted({w for w in warns if w.startswith("WARNING")})
            if errors:
                lines.append(f"log errors of {container} ({len(errors)}): " + "; ".join(errors)[:4000])
            if others:
                lines.append(f"log warnings of {container} ({len(others)}): " + "; ".join(others)[:600])
        lines.append(f"wall time {self.result['wall_seconds']:.0f} s; "
                     f"{'PASSED' if self.result['ok'] else 'FAILED'}")
        print("\n".join(lines), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="JSON {component: image} from tools/images/build.py (default: build now)")
    parser.add_argument("--values", action="append", help="more values files, layered after the operator's")
    parser.add_argument("--models", nargs="+", default=["tiny.en"], help="models of the CPU pool (default tiny.en)")
    parser.add_argument("--audio", default=str(FIXTURE),
                        help="speech the services decode (WAV, FLAC, MP3, ...) for the batch job, the live call and "
                             "the HTTP transcription (default: the committed espeak-ng clip)")
    parser.add_argument("--reference", help="its reference transcript, a text file (default: the .txt beside --audio)")
    parser.add_argument("--max-wer", type=float, default=0.3,
                        help="highest accepted WER of the batch job and the HTTP transcription")
    parser.add_argument("--max-live-wer", type=float, default=0.5,
                        help="highest accepted WER of the live call (greedy decodes of short windows; "
                             "scribe_harness.speech has the measured figures)")
    parser.add_argument("--no-service-links", dest="service_links", action="store_false",
                        help="do not inject kubelet's <SERVICE>_SERVICE_HOST/... variables")
    parser.add_argument("--run-id", help="suffix of the container names (default: random)")
    parser.add_argument("--json-out", help="write the results as JSON here")
    parser.add_argument("--logs", help="keep the containers' logs in this directory")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (rendered manifests)")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        log("podman is not installed (apt-get install -y podman buildah runc debootstrap uidmap)")
        return 2
    sys.path.insert(0, str(ROOT / "libs"))  # the generated stubs (tools/gen_protos.py) and scribe_libs
    try:
        import grpc  # noqa: F401
        import grpc_health  # noqa: F401

        import scribe.v1  # noqa: F401
    except ImportError as exc:
        log(f"{exc}: run with the project venv (.venv/bin/python) after `make install`")
        return 2
    rehearsal = Rehearsal(args)
    log(f"run {rehearsal.run_id}, work directory {rehearsal.work}")
    return rehearsal.run()


if __name__ == "__main__":
    sys.exit(main())
