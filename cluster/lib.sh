# Shared by the cluster scripts (sourced, not run): pinned versions, a tool cache, helpers.
# Versions move together: the JSON Schemas in deploy-tests/schemas come from the same
# KServe and Istio releases.
# shellcheck shell=bash
# The settings below are read by the scripts that source this file.
# shellcheck disable=SC2034

KIND_VERSION=v0.30.0
KIND_NODE_IMAGE=kindest/node:v1.33.4
KUBECTL_VERSION=v1.33.4
ISTIO_VERSION=1.30.3
CERT_MANAGER_VERSION=v1.18.2
KSERVE_VERSION=v0.20.0
METRICS_SERVER_VERSION=v0.8.0

CLUSTER_NAME=${CLUSTER_NAME:-tesserve}
NAMESPACE=tesserve
# Where the ingress gateway is reachable from this machine (kind maps the node port here).
INGRESS_PORT=${INGRESS_PORT:-8088}
INGRESS_HOST=ocr.example.com
IMAGE=tesserve:0.1.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/target/cluster-tools
export PATH=$TOOLS:$PATH
export KUBECONFIG=${KUBECONFIG:-$ROOT/target/cluster-tools/kubeconfig}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Downloads a release binary once into target/cluster-tools.
fetch_tool() {
  local name=$1 url=$2
  [ -x "$TOOLS/$name" ] && return
  mkdir -p "$TOOLS"
  echo "downloading $name from $url"
  curl -fsSL --retry 3 -o "$TOOLS/$name.tmp" "$url"
  chmod +x "$TOOLS/$name.tmp"
  mv "$TOOLS/$name.tmp" "$TOOLS/$name"
}

need_tools() {
  command -v docker >/dev/null || die "Docker is needed (kind runs the cluster in containers)"
  fetch_tool kind "https://github.com/kubernetes-sigs/kind/releases/download/$KIND_VERSION/kind-linux-amd64"
  fetch_tool kubectl "https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/amd64/kubectl"
  if [ ! -x "$TOOLS/istioctl" ]; then
    echo "downloading istioctl $ISTIO_VERSION"
    curl -fsSL --retry 3 \
      "https://github.com/istio/istio/releases/download/$ISTIO_VERSION/istioctl-$ISTIO_VERSION-linux-amd64.tar.gz" |
      tar -xz -C "$TOOLS" istioctl
  fi
}

# Waits until a deployment has rolled out, printing what it waited for.
rollout() {
  local namespace=$1 deployment=$2
  kubectl -n "$namespace" rollout status "deployment/$deployment" --timeout=300s
}
