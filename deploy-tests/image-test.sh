#!/usr/bin/env bash
# Builds the Dockerfile for real and runs the image: `make image-test`.
#
# No Docker engine runs on the CI machines and no registry can be reached, so this uses
# rootful podman from Debian's packages and makes the two images the Dockerfile names itself:
#   debian:<release>-slim              debootstrap --variant=minbase, imported with podman
#   rust:<version>-slim-<release>      that base + gcc + this machine's own Rust toolchain
# Both carry this machine's CA certificates (outbound HTTPS may be re-signed here, and cargo
# inside the build must trust it). The Dockerfile itself is built unmodified.
#
# Then the image is run as its own non-root user on free loopback ports with a read-only root
# filesystem and no capabilities, and checked with its HEALTHCHECK, grpcurl and curl.
#
# Caches (kept between runs, so a second run only rebuilds what changed):
#   $IMAGE_TEST_CACHE (default target/image-test)   the debootstrap tarball
#   podman's image store                            the two base images and build layers
# IMAGE_TEST_KEEP=1 keeps the built image (tag $IMAGE) afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

release=${DEBIAN_RELEASE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${IMAGE_TEST_CACHE:-$PWD/target/image-test}
image=${IMAGE:-localhost/tesserve:image-test}
venv=${VENV:-.venv-deploy}
rust_version=$(rustc --version | sed -E 's/^rustc ([0-9]+\.[0-9]+).*/\1/')
base_image=docker.io/library/debian:$release-slim
rust_image=docker.io/library/rust:$rust_version-slim-$release
host_ca=/etc/ssl/certs/ca-certificates.crt
started=$SECONDS

say() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - started))"; }
fail() {
  printf 'image-test: FAILED: %s\n' "$*" >&2
  exit 1
}

say "tools"
# podman and friends; curl and a font for the request the test sends.
packages=(podman buildah runc debootstrap uidmap slirp4netns curl fonts-dejavu-core)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ "$(id -u)" -eq 0 ] || fail "rootful podman is needed: run as root"
[ -x "$venv/bin/grpcurl" ] || bash deploy-tests/venv.sh "$venv"

# crun and podman's default ulimits fail on these machines; runc with explicit limits works.
# CONTAINERS_CONF keeps this to the test instead of changing /etc/containers for everyone.
mkdir -p "$cache"
export CONTAINERS_CONF=$cache/containers.conf
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
cat >"$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

say "base image $base_image"
if podman image exists "$base_image"; then
  echo "present"
else
  tarball=$cache/$release-minbase.tar
  if [ ! -s "$tarball" ]; then
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
      { tail -20 "$cache/debootstrap.log"; fail "debootstrap"; }
    # As in Debian's own images: the release, its updates and security updates.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $release $release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # update-ca-certificates (run when a stage installs ca-certificates) adds these.
    mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
    cp "$host_ca" "$rootfs/usr/local/share/ca-certificates/host-bundle.crt"
    cp "$host_ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  podman import --quiet --change 'CMD ["bash"]' "$tarball" "$base_image" >/dev/null
  echo "imported $(du -h "$tarball" | cut -f1) from $tarball"
fi

say "builder image $rust_image (this machine's Rust $rust_version)"
if podman image exists "$rust_image"; then
  echo "present"
else
  ctr=$(buildah from --pull-never "$base_image")
  buildah run "$ctr" -- sh -c 'apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates gcc libc6-dev >/dev/null && rm -rf /var/lib/apt/lists/*'
  mnt=$(buildah mount "$ctr")
  # The toolchain without its HTML documentation, where the official image keeps it.
  mkdir -p "$mnt/usr/local/rustup/toolchain" "$mnt/usr/local/cargo/bin"
  tar -C "$(rustc --print sysroot)" --exclude=./share/doc -cf - . |
    tar -C "$mnt/usr/local/rustup/toolchain" -xf -
  for tool in cargo rustc rustdoc; do
    ln -s "../../rustup/toolchain/bin/$tool" "$mnt/usr/local/cargo/bin/$tool"
  done
  buildah umount "$ctr" >/dev/null
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$rust_version" "$ctr"
  buildah commit --quiet --rm "$ctr" "$rust_image" >/dev/null
  echo "made"
fi

say "podman build"
build_log=$cache/build.log
build_started=$SECONDS
# --format docker: the OCI image format has no HEALTHCHECK and podman would drop it.
if ! nice -n 10 podman build --format docker --pull=never --layers \
  --build-arg RUST_VERSION="$rust_version" --build-arg DEBIAN_RELEASE="$release" \
  -t "$image" . >"$build_log" 2>&1; then
  tail -40 "$build_log"
  fail "podman build (log: $build_log)"
fi
build_seconds=$((SECONDS - build_started))
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "built $image in ${build_seconds}s, $((size / 1000000)) MB"

say "image configuration"
inspect() { podman image inspect --format "$1" "$image"; }
user=$(inspect '{{.Config.User}}')
[[ $user =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || fail "USER is '$user', not a non-root numeric uid"
inspect '{{json .Config.Env}}' | grep -q '"OMP_THREAD_LIMIT=1"' || fail "OMP_THREAD_LIMIT=1 not set"
ports=$(inspect '{{json .Config.ExposedPorts}}')
for port in 8080/tcp 8081/tcp; do
  [[ $ports == *"\"$port\""* ]] || fail "port $port not exposed: $ports"
done
healthcheck=$(inspect '{{json .Config.Healthcheck}}')
[[ $healthcheck == *healthcheck* ]] || fail "no HEALTHCHECK running 'tesserve healthcheck': $healthcheck"
echo "user $user, ports $ports, healthcheck $healthcheck"

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port=$(free_port)
http_port=$(free_port)
name=tesserve-image-test-$$
work=$(mktemp -d)
cleanup() {
  podman rm --force --time 0 "$name" >/dev/null 2>&1 || true
  [ "${IMAGE_TEST_KEEP:-}" = 1 ] || podman rmi "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "run: read-only root, no capabilities, 127.0.0.1:$grpc_port (gRPC) and :$http_port (REST)"
# The one writable path is a small /tmp (no other tmpfs: --read-only-tmpfs=false), as the
# manifests mount an emptyDir there: Tesseract's PDF renderer writes only to files.
# (podman complains that it cannot add systemd timers for the health check: there is no
# systemd here, and `podman healthcheck run` below runs the check instead.)
podman run --detach --name "$name" --read-only --read-only-tmpfs=false \
  --tmpfs /tmp:rw,size=64m,mode=1777 \
  --cap-drop ALL --security-opt no-new-privileges --memory 1g \
  -p "127.0.0.1:$grpc_port:8081" -p "127.0.0.1:$http_port:8080" \
  "$image" serve --workers 2 >/dev/null 2>"$work/run.log" || { cat "$work/run.log"; fail "podman run"; }

healthy=""
for _ in $(seq 1 60); do
  if podman healthcheck run "$name" >/dev/null 2>&1; then
    healthy=yes
    break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] ||
    { podman logs "$name"; fail "container exited"; }
  sleep 1
done
[ -n "$healthy" ] || { podman logs "$name"; fail "HEALTHCHECK never passed"; }
echo "HEALTHCHECK (tesserve healthcheck) passes"

# podman top would run ps inside the image, which has none: read the process from the host.
pid=$(podman inspect --format '{{.State.Pid}}' "$name")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[ "$uid" = "${user%%:*}" ] || fail "the server runs as uid '$uid', not ${user%%:*}"
echo "server process uid $uid"
[ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")" = true ] ||
  fail "root filesystem is not read-only"

"$venv/bin/python" - "$work/hello.png" "$work/two.pdf" <<'EOF'
import sys
from PIL import Image, ImageDraw, ImageFont
font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40)
image = Image.new("L", (900, 120), 255)
ImageDraw.Draw(image).text((30, 30), "Container image test 42", font=font, fill=0)
image.save(sys.argv[1])
# A two-page PDF whose second page is upside down, for rotate=auto (osd.traineddata).
second = Image.new("L", (1200, 400), 255)
for row, line in enumerate(["The second page of the", "document was scanned the", "wrong way up"]):
    ImageDraw.Draw(second).text((40, 40 + 110 * row), line, font=font, fill=0)
image.save(sys.argv[2], save_all=True, append_images=[second.rotate(180)], resolution=300)
EOF

say "grpcurl"
grpcurl=("$venv/bin/grpcurl" -plaintext -max-time 30)
"${grpcurl[@]}" "127.0.0.1:$grpc_port" list | tee "$work/services"
grep -qx inference.GRPCInferenceService "$work/services" || fail "service not listed"
"${grpcurl[@]}" -d '{"service": "inference.GRPCInferenceService"}' "127.0.0.1:$grpc_port" \
  grpc.health.v1.Health/Check | grep -q SERVING || fail "gRPC health is not SERVING"
cat >"$work/infer.json" <<EOF
{"model_name": "ocr",
 "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
             "contents": {"bytes_contents": ["$(base64 -w0 "$work/hello.png")"]}}],
 "outputs": [{"name": "text"}]}
EOF
"${grpcurl[@]}" -d @ "127.0.0.1:$grpc_port" inference.GRPCInferenceService/ModelInfer \
  <"$work/infer.json" >"$work/infer.out"
text=$("$venv/bin/python" -c '
import base64, json, sys
reply = json.load(open(sys.argv[1]))
print(base64.b64decode(reply["outputs"][0]["contents"]["bytesContents"][0]).decode().strip())
' "$work/infer.out")
echo "ModelInfer over gRPC: '$text'"
[[ $text == *"image test 42"* ]] || fail "gRPC OCR read '$text'"

say "curl"
curl=(curl --silent --show-error --fail --max-time 30)
"${curl[@]}" "http://127.0.0.1:$http_port/v2/health/ready" | grep -q '"ready":true' ||
  fail "/v2/health/ready is not ready"
"${curl[@]}" "http://127.0.0.1:$http_port/v2/models/ocr/ready" >/dev/null || fail "model not ready"
reply=$("${curl[@]}" -F "file=@$work/hello.png" "http://127.0.0.1:$http_port/predict")
echo "POST /predict: $reply"
[[ $reply == *"image test 42"* ]] || fail "REST OCR read '$reply'"
"${curl[@]}" "http://127.0.0.1:$http_port/metrics" | grep -q '^tesserve_queue_depth' ||
  fail "/metrics has no tesserve_queue_depth"
"${curl[@]}" --http2-prior-knowledge "http://127.0.0.1:$http_port/healthz" >/dev/null ||
  fail "the REST port does not speak h2c"
echo "health, readiness, /predict, /metrics and h2c on the REST port answer"

say "documents: a PDF page by page, rotate=auto, the searchable PDF"
reply=$("${curl[@]}" -F "file=@$work/two.pdf" "http://127.0.0.1:$http_port/predict?rotate=auto")
echo "POST /predict?rotate=auto (2-page PDF): $reply"
"$venv/bin/python" - "$reply" <<'EOF' || fail "the PDF was not read page by page, upright"
import json, sys
reply = json.loads(sys.argv[1])
first, second = reply["text"].split("\f")
assert "image test 42" in first, first
assert "wrong way up" in second, second
assert reply["pages"][1]["orientation"]["applied"] is True, reply["pages"]
EOF
"$venv/bin/python" - "$work/two.pdf" >"$work/pdf-infer.json" <<'EOF'
import base64, json, sys
data = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
print(json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                              "data": [{"b64": data}]}],
                  "outputs": [{"name": "pdf"}]}))
EOF
"${curl[@]}" -H 'content-type: application/json' --data-binary "@$work/pdf-infer.json" \
  "http://127.0.0.1:$http_port/v2/models/ocr/infer" >"$work/pdf-infer.out"
"$venv/bin/python" - "$work/pdf-infer.out" <<'EOF' || fail "no searchable PDF from the image"
import base64, json, sys
reply = json.load(open(sys.argv[1]))
pdf = base64.b64decode(reply["outputs"][0]["data"][0]["b64"])
assert pdf.startswith(b"%PDF-") and b"GlyphLessFont" in pdf, pdf[:200]
print(f"searchable PDF output: {len(pdf)} bytes")
EOF

say "SIGTERM: graceful stop"
podman stop --time 60 "$name" >/dev/null 2>>"$work/run.log"
code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$code" = 0 ] || { podman logs "$name" | tail -20; fail "exit status $code after SIGTERM"; }
echo "exited 0 after SIGTERM"

say "image-test passed: build ${build_seconds}s, image $((size / 1000000)) MB"
