#!/usr/bin/env bash
# make cluster-down: deletes the kind cluster (and with it everything deployed there).
set -euo pipefail
# shellcheck source=cluster/lib.sh
source "$(dirname "$0")/lib.sh"
need_tools

step "delete kind cluster $CLUSTER_NAME"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  kind delete cluster --name "$CLUSTER_NAME"
else
  ok "no such cluster"
fi
