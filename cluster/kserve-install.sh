#!/usr/bin/env bash
# make kserve-install: cert-manager (KServe's webhook certificates) and KServe in Standard mode
# (plain Deployments + HPA; no Knative needed).
set -euo pipefail
# shellcheck source=cluster/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools

step "cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
for deployment in cert-manager cert-manager-webhook cert-manager-cainjector; do
  rollout cert-manager "$deployment"
done

step "KServe $KSERVE_VERSION"
release=https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION
kubectl apply --server-side --force-conflicts -f "$release/kserve.yaml"
rollout kserve kserve-controller-manager
# The cluster-wide runtimes need the webhook, which needs the controller: apply after it runs.
until kubectl apply --server-side --force-conflicts -f "$release/kserve-cluster-resources.yaml"; do
  sleep 10
done
# Standard mode by default, and KServe's own Ingress off: istio/ routes the traffic.
kubectl -n kserve get configmap inferenceservice-config -o json |
  python3 -c '
import json, sys
cm = json.load(sys.stdin)
deploy = json.loads(cm["data"]["deploy"]); deploy["defaultDeploymentMode"] = "Standard"
ingress = json.loads(cm["data"]["ingress"]); ingress["disableIngressCreation"] = True
cm["data"]["deploy"], cm["data"]["ingress"] = json.dumps(deploy), json.dumps(ingress)
json.dump(cm, sys.stdout)' | kubectl apply -f -
kubectl get crd inferenceservices.serving.kserve.io
ok "KServe runs, Standard mode by default"
