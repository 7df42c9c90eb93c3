#!/usr/bin/env bash
# Check charts/scribe without a cluster: helm lint --strict and helm template of the chart's
# defaults (a default install must work: no value is required) and of every values set in
# charts/scribe/ci/*.yaml, Kubernetes schema validation of the rendered manifests
# (kubernetes-validate, offline), a check that every SCRIBE_<SERVICE>_* variable the chart
# renders names a field of that service's settings (the services refuse unknown ones; needs the
# services importable by $PYTHON, e.g. the project venv, else skipped), and hadolint over the
# services' Dockerfiles.
#
# Chart dependencies (NATS, MinIO) cannot be fetched here, and helm refuses to lint or render a
# chart whose declared dependencies are missing from charts/, even when they are disabled. So the
# chart is copied to a temporary directory without its `dependencies:` block, and every values
# set is rendered with nats.enabled=false / minio.enabled=false plus stand-in external endpoints
# (values sets that already use external endpoints keep theirs). The defaults are rendered as they
# are (the embedded NATS and MinIO Services are then only named in the env, not rendered).
#
# Usage: tools/check_chart.sh            (runs tools/install_helm.sh first if helm is missing)
# Env:   KUBE_VERSION  Kubernetes version to validate against (default 1.35.0, the kubectl shipped)
#        OUT           directory to keep the rendered manifests in (default: a temporary one)
# Exit:  non-zero on the first failing check; prints which.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/scribe"
KUBE_VERSION="${KUBE_VERSION:-1.35.0}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$ROOT/.tools/bin/helm" ]] || ! "$PYTHON" -c "import kubernetes_validate" 2>/dev/null; then
  "$ROOT/tools/install_helm.sh"
fi
HELM="$ROOT/.tools/bin/helm"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
OUT="${OUT:-$WORK/rendered}"
mkdir -p "$OUT"

# Copy of the chart without its dependencies block (and without any fetched charts/).
"$PYTHON" - "$CHART" "$WORK/scribe" <<'PY'
import pathlib, shutil, sys
import yaml
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
chart = yaml.safe_load((dst / "Chart.yaml").read_text())
chart.pop("dependencies", None)
(dst / "Chart.yaml").write_text(yaml.safe_dump(chart, sort_keys=False))
PY

# Stand-in external endpoints for values sets that rely on the embedded dependencies.
cat >"$WORK/no-deps.yaml" <<'YAML'
nats: {enabled: false, url: "nats://nats.ci.svc:4222"}
minio: {enabled: false}
objectStore: {endpoint: "minio.ci.svc:9000", secure: false, existingSecret: ci-s3}
YAML

status=0
step() { echo "== $*"; }

# Does $PYTHON have the services' settings classes (the project venv)? Then check env names.
check_env=0
if "$PYTHON" -c "from scribe_libs.config import unknown_variables; import scribe_ingest.config, scribe_results.config, scribe_postprocess.config, scribe_stream_gateway.config, scribe_transcriber.config, scribe_http_gateway.config" 2>/dev/null; then
  check_env=1
else
  echo "note: the scribe services are not importable by $PYTHON; the environment-name check is skipped"
fi

shopt -s nullglob
sets=("$CHART"/ci/*.yaml)
(( ${#sets[@]} >= 3 )) || { echo "error: expected at least 3 values sets in $CHART/ci, found ${#sets[@]}" >&2; exit 1; }
# "defaults": the chart's own values and nothing else, as `helm install scribe charts/scribe` renders
# them (a default install must lint, render and validate: no value is required).
for values in defaults "${sets[@]}"; do
  args=()
  if [[ "$values" == defaults ]]; then
    name=defaults
  else
    name="$(basename "$values" .yaml)"
    args=(-f "$values")
    # Sets that enable the embedded dependencies get the stand-ins; the others render as written.
    if "$PYTHON" -c "import sys, yaml; v = yaml.safe_load(open(sys.argv[1])) or {}; sys.exit(0 if (v.get('nats') or {}).get('enabled', True) or (v.get('minio') or {}).get('enabled', True) else 1)" "$values"; then
      args+=(-f "$WORK/no-deps.yaml")
    fi
  fi
  step "helm lint --strict $name"
  "$HELM" lint --strict "$WORK/scribe" "${args[@]}" || status=1
  step "helm template $name"
  if "$HELM" template scribe "$WORK/scribe" --namespace scribe --kube-version "$KUBE_VERSION" \
      "${args[@]}" >"$OUT/$name.yaml"; then
    step "kubernetes-validate $name (Kubernetes $KUBE_VERSION, strict)"
    # ServiceMonitor, PrometheusRule and ScaledObject (KEDA) are CRD kinds with no schema in kubernetes-validate;
    # validate the rest (tests/chart checks the ScaledObjects against KEDA's documented fields).
    "$PYTHON" - "$OUT/$name.yaml" "$OUT/$name.core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d["apiVersion"].startswith(("monitoring.coreos.com/", "keda.sh/"))]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
print(f"{len(docs)} objects rendered, {len(docs) - len(core)} CRD objects skipped")
PY
    "$PYTHON" -m kubernetes_validate --strict --quiet -k "$KUBE_VERSION" "$OUT/$name.core.yaml" || status=1
    if (( check_env )); then
      step "environment names $name"
      # Every SCRIBE_<SERVICE>_* variable of every container must name a field of that service's
      # Settings (nested fields with "__"): scribe_libs.config.unknown_variables, the check the
      # services run at start (UnknownSetting).
      "$PYTHON" - "$OUT/$name.yaml" <<'PY' || status=1
import sys
import yaml
from scribe_http_gateway.config import Settings as HttpGateway
from scribe_ingest.config import Settings as Ingest
from scribe_libs.config import unknown_variables
from scribe_postprocess.config import Settings as Postprocess
from scribe_results.config import Settings as Results
from scribe_stream_gateway.config import Settings as StreamGateway
from scribe_transcriber.config import Settings as Transcriber

SETTINGS = (Ingest, Results, Postprocess, StreamGateway, Transcriber, HttpGateway)
unknown, checked = [], 0
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc["kind"] not in ("Deployment", "Pod"):
        continue
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    for c in spec.get("initContainers", []) + spec["containers"]:
        env = {e["name"]: "" for e in c.get("env", [])}
        checked += sum(1 for n in env if n.startswith("SCRIBE_"))
        for settings in SETTINGS:  # the check each service runs at start (UnknownSetting)
            unknown += [f"{doc['metadata']['name']}/{c['name']}: {n} names no setting of {settings.__module__}"
                        for n in unknown_variables(settings, env)]
print(f"{checked} SCRIBE_* variables checked, {len(unknown)} unknown")
for line in unknown:
    print("error:", line, file=sys.stderr)
sys.exit(1 if unknown else 0)
PY
    fi
  else
    status=1
  fi
done

if command -v hadolint >/dev/null || [[ -x "$(dirname "$(command -v "$PYTHON")")/hadolint" ]]; then
  HADOLINT="$(command -v hadolint || echo "$(dirname "$(command -v "$PYTHON")")/hadolint")"
  dockerfiles=("$ROOT"/services/*/Dockerfile "$ROOT"/services/*/Dockerfile.gpu)
  if (( ${#dockerfiles[@]} )); then
    step "hadolint ${#dockerfiles[@]} Dockerfiles"
    "$HADOLINT" --failure-threshold warning "${dockerfiles[@]}" || status=1
  fi
fi

if (( status )); then echo "chart checks FAILED" >&2; else echo "chart checks passed"; fi
exit "$status"
