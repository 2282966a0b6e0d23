#!/usr/bin/env bash
# make cluster-up: a one-node kind cluster with metrics-server (for the HPA), the ingress
# gateway's node port published on 127.0.0.1:$INGRESS_PORT, and the tesserve image loaded.
# Idempotent: an existing cluster of the same name is reused.
set -euo pipefail
# shellcheck source=cluster/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools

step "kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  ok "exists"
else
  kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" --wait 120s --config - <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraPortMappings:
      - containerPort: 30080
        hostPort: $INGRESS_PORT
        listenAddress: 127.0.0.1
YAML
fi
kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG"
kubectl get nodes

step "metrics-server $METRICS_SERVER_VERSION"
kubectl apply -f "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
# kind's kubelets have self-signed serving certificates.
kubectl -n kube-system patch deployment metrics-server --type=json -p \
  '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]' \
  2>/dev/null || true
rollout kube-system metrics-server
until kubectl top nodes >/dev/null 2>&1; do sleep 5; done
kubectl top nodes
ok "CPU metrics flow: the HPA can scale"

step "image $IMAGE"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  docker build -t "$IMAGE" "$ROOT"
fi
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"
ok "$IMAGE loaded into the node"
