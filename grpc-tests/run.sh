#!/usr/bin/env bash
# End-to-end tests with clients this project did not write (grpcurl, curl, tritonclient grpc and
# http, kserve grpc and REST, an OpenAPI validator, schemathesis),
# against a freshly started server. Creates the Python venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${VENV:-.venv}
bin=${TESSERVE_BIN:-target/debug/tesserve}
requirements=grpc-tests/requirements.txt

if ! cmp -s "$requirements" "$venv/.requirements" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi
[ -x "$bin" ] || cargo build --quiet

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
http_port=$(free_port)
log=$(mktemp)
# A small pixel limit keeps the raw UINT8 tensors schemathesis generates cheap to refuse; every
# image the other tests send is far below it.
"$bin" --bind 127.0.0.1 --grpc-port "$port" --http-port "$http_port" --workers 2 \
  --max-image-pixels 4000000 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT

for _ in $(seq 1 60); do
  "$bin" healthcheck --grpc-port "$port" --timeout 1 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; echo "server exited before becoming ready" >&2; exit 1; }
  sleep 0.5
done
"$bin" healthcheck --grpc-port "$port" || { cat "$log"; exit 1; }

export TESSERVE_GRPC_ADDR="127.0.0.1:$port"
export TESSERVE_HTTP_ADDR="127.0.0.1:$http_port"
# tritonclient and kserve register the same protobuf symbols: one process each.
"$venv/bin/pytest" -q -p no:cacheprovider grpc-tests/test_grpcurl.py grpc-tests/test_curl.py \
  grpc-tests/test_tritonclient.py grpc-tests/test_tritonclient_http.py
"$venv/bin/pytest" -q -p no:cacheprovider grpc-tests/test_kserve.py grpc-tests/test_kserve_rest.py
# Property-based requests to every REST operation, generated from the server's /openapi.json.
"$venv/bin/pytest" -q -p no:cacheprovider grpc-tests/test_schemathesis.py
