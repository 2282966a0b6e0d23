#!/usr/bin/env bash
# make deploy: the predictor, Istio's mTLS/authorization/gateway/rate limit and (when
# prometheus-operator's CRDs exist) the monitors, from the kustomizations in this repository.
# OVERLAY=overlays/keda (etc.) picks another; the default is overlays/raw-hpa.
set -euo pipefail
# shellcheck source=cluster/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools
overlay=${OVERLAY:-overlays/raw-hpa}

step "namespace $NAMESPACE (sidecar injection on)"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NAMESPACE" istio-injection=enabled --overwrite

step "gateway certificate (self-signed, for ${INGRESS_HOST})"
if kubectl -n istio-system get secret tesserve-gateway-tls >/dev/null 2>&1; then
  ok "exists"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$INGRESS_HOST" \
    -addext "subjectAltName=DNS:$INGRESS_HOST" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  kubectl -n istio-system create secret tls tesserve-gateway-tls --cert "$tmp/cert.pem" --key "$tmp/key.pem"
fi

step "kubectl apply -k $overlay"
if kubectl get crd podmonitors.monitoring.coreos.com >/dev/null 2>&1; then
  kubectl apply -k "$ROOT/$overlay"
else
  echo "   prometheus-operator's CRDs are not installed: applying kserve/ and istio/ without monitoring/"
  kubectl apply -k "$ROOT/kserve"
  kubectl apply -k "$ROOT/istio"
fi

step "InferenceService ready"
kubectl -n "$NAMESPACE" wait inferenceservice/ocr --for=condition=Ready --timeout=300s
kubectl -n "$NAMESPACE" get inferenceservice ocr
kubectl -n "$NAMESPACE" get pods -l serving.kserve.io/inferenceservice=ocr
kubectl -n "$NAMESPACE" get hpa 2>/dev/null || true

step "through the gateway: http://127.0.0.1:$INGRESS_PORT, Host $INGRESS_HOST"
bash "$ROOT/deploy-tests/venv.sh"
until curl -fsS -H "Host: $INGRESS_HOST" "http://127.0.0.1:$INGRESS_PORT/v2/health/ready"; do sleep 3; done
echo
"$ROOT/.venv-deploy/bin/grpcurl" -plaintext -authority "$INGRESS_HOST" "127.0.0.1:$INGRESS_PORT" \
  inference.GRPCInferenceService/ServerReady
ok "REST and gRPC answer through the Istio ingress gateway"
