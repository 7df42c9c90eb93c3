#!/usr/bin/env bash
# Check charts/scribe without a cluster: helm lint --strict, helm template of every values set
# in charts/scribe/ci/*.yaml, Kubernetes schema validation of the rendered manifests
# (kubernetes-validate, offline), and hadolint over the services' Dockerfiles.
#
# Chart dependencies (NATS, MinIO) cannot be fetched here, and helm refuses to lint or render a
# chart whose declared dependencies are missing from charts/, even when they are disabled. So the
# chart is copied to a temporary directory without its `dependencies:` block, and every values
# set is rendered with nats.enabled=false / minio.enabled=false plus stand-in external endpoints
# (values sets that already use external endpoints keep theirs).
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

step "helm lint --strict (defaults, dependencies disabled)"
"$HELM" lint --strict "$WORK/scribe" -f "$WORK/no-deps.yaml" --set-string auth.keysFile=ci || status=1

shopt -s nullglob
sets=("$CHART"/ci/*.yaml)
(( ${#sets[@]} >= 3 )) || { echo "error: expected at least 3 values sets in $CHART/ci, found ${#sets[@]}" >&2; exit 1; }
for values in "${sets[@]}"; do
  name="$(basename "$values" .yaml)"
  # Sets that enable the embedded dependencies get the stand-ins; the others render as written.
  extra=()
  if "$PYTHON" -c "import sys, yaml; v = yaml.safe_load(open(sys.argv[1])) or {}; sys.exit(0 if (v.get('nats') or {}).get('enabled', True) or (v.get('minio') or {}).get('enabled', True) else 1)" "$values"; then
    extra=(-f "$WORK/no-deps.yaml")
  fi
  step "helm lint --strict $name"
  "$HELM" lint --strict "$WORK/scribe" -f "$values" "${extra[@]}" || status=1
  step "helm template $name"
  if "$HELM" template scribe "$WORK/scribe" --namespace scribe --kube-version "$KUBE_VERSION" \
      -f "$values" "${extra[@]}" >"$OUT/$name.yaml"; then
    step "kubernetes-validate $name (Kubernetes $KUBE_VERSION, strict)"
    # ServiceMonitor is a CRD kind with no schema in kubernetes-validate; validate the rest.
    "$PYTHON" - "$OUT/$name.yaml" "$OUT/$name.core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
print(f"{len(docs)} objects rendered, {len(docs) - len(core)} CRD objects skipped")
PY
    "$PYTHON" -m kubernetes_validate --strict --quiet -k "$KUBE_VERSION" "$OUT/$name.core.yaml" || status=1
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
