#!/usr/bin/env bash
# make load-test: drives the deployment through the ingress gateway and shows that
#   1. the HPA adds replicas under load (tesserve-load, LOAD_SECONDS, default 240 s);
#   2. one API key past its rate (10/s, burst 20) gets 429 from the gateway;
#   3. a caller without a sidecar (no mTLS certificate) is refused by the predictor.
set -euo pipefail
# shellcheck source=cluster/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools
seconds=${LOAD_SECONDS:-240}
concurrency=${LOAD_CONCURRENCY:-16}

step "build tesserve-load"
(cd "$ROOT" && cargo build --release --locked -p tesserve-load)
load=$ROOT/target/release/tesserve-load
target=(--grpc "127.0.0.1:$INGRESS_PORT")
if "$load" --help | grep -q -- --authority; then
  target+=(--authority "$INGRESS_HOST")
elif [ "$(getent hosts "$INGRESS_HOST" | awk '{ print $1 }')" = 127.0.0.1 ]; then
  target=(--grpc "$INGRESS_HOST:$INGRESS_PORT")
else
  die "the gateway routes by host name: add '127.0.0.1 $INGRESS_HOST' to /etc/hosts"
fi

step "1. autoscaling: $concurrency concurrent gRPC callers for ${seconds}s"
kubectl -n "$NAMESPACE" get hpa
before=$(kubectl -n "$NAMESPACE" get deployment ocr-predictor -o jsonpath='{.status.replicas}')
"$load" "${target[@]}" --model ocr --concurrency "$concurrency" --duration "$seconds" &
loader=$!
trap 'kill "$loader" 2>/dev/null || true' EXIT
most=$before
while kill -0 "$loader" 2>/dev/null; do
  sleep 20
  replicas=$(kubectl -n "$NAMESPACE" get deployment ocr-predictor -o jsonpath='{.status.replicas}')
  utilisation=$(kubectl -n "$NAMESPACE" get hpa ocr-predictor -o jsonpath='{.status.currentMetrics[0].resource.current.averageUtilization}' 2>/dev/null || true)
  echo "   replicas $replicas, CPU ${utilisation:-?} % of request"
  [ "$replicas" -gt "$most" ] && most=$replicas
done
wait "$loader"
trap - EXIT
[ "$most" -gt "$before" ] || die "replicas stayed at $before under load"
ok "the HPA scaled from $before to $most replicas"

step "2. rate limit: 60 requests at once with one API key"
codes=$(for _ in $(seq 1 60); do
  curl -s -o /dev/null -w '%{http_code}\n' -H "Host: $INGRESS_HOST" -H "x-api-key: load-test" \
    "http://127.0.0.1:$INGRESS_PORT/v2/health/ready" &
done | sort | uniq -c)
echo "$codes"
grep -q ' 429$' <<<"$codes" || die "no 429 past the per-key rate"
ok "requests past the key's rate get 429 from the gateway"

step "3. mTLS: a pod without a sidecar calls the predictor directly"
kubectl create namespace mtls-check --dry-run=client -o yaml | kubectl apply -f -
if kubectl -n mtls-check run plain-client --rm -i --restart=Never --image=curlimages/curl:8.11.1 -- \
  curl -sS -m 10 "http://ocr-predictor.$NAMESPACE.svc.cluster.local:8080/healthz"; then
  die "a plaintext caller reached the predictor"
fi
kubectl delete namespace mtls-check --wait=false
ok "plaintext refused: PeerAuthentication STRICT holds"
