#!/usr/bin/env bash
# make istio-install: Istio (default profile: istiod + ingress gateway) with the gateway's
# HTTP port on node port 30080, which kind publishes on 127.0.0.1:$INGRESS_PORT.
set -euo pipefail
# shellcheck source=cluster/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools

step "Istio $ISTIO_VERSION"
istioctl install -y --set profile=default \
  --set 'components.ingressGateways[0].name=istio-ingressgateway' \
  --set 'components.ingressGateways[0].enabled=true' \
  --set 'components.ingressGateways[0].k8s.service.type=NodePort' \
  --set 'components.ingressGateways[0].k8s.service.ports[0].name=status-port' \
  --set 'components.ingressGateways[0].k8s.service.ports[0].port=15021' \
  --set 'components.ingressGateways[0].k8s.service.ports[1].name=http2' \
  --set 'components.ingressGateways[0].k8s.service.ports[1].port=80' \
  --set 'components.ingressGateways[0].k8s.service.ports[1].targetPort=8080' \
  --set 'components.ingressGateways[0].k8s.service.ports[1].nodePort=30080' \
  --set 'components.ingressGateways[0].k8s.service.ports[2].name=https' \
  --set 'components.ingressGateways[0].k8s.service.ports[2].port=443' \
  --set 'components.ingressGateways[0].k8s.service.ports[2].targetPort=8443'
rollout istio-system istiod
rollout istio-system istio-ingressgateway
istioctl version
ok "istiod and the ingress gateway run"
