"""The deployment manifests, checked offline: every kustomization renders, every document is valid
for its kind, and every fact the manifests state about tesserve (ports, port names, probes, model
name, arguments, gRPC methods, REST paths, metrics) is true of the server in this repository."""

import json
import math
import os
import re
import subprocess
import tomllib
import urllib.error
import urllib.request

import jsonschema
import pytest
import yaml

from conftest import (KUSTOMIZATIONS, ROOT, TESSERVE, K8sLoader, find, kustomize, load_all, one)

SCHEMAS = ROOT / "deploy-tests" / "schemas"
# Kinds no vendored schema covers; each has its own test below.
WITHOUT_SCHEMA = {("argoproj.io/v1alpha1", "Application")}
MANIFEST_DIRS = ["kserve", "istio", "monitoring", "overlays", "argocd"]

# ---------------------------------------------------------------------------------------------
# What the server is, read from its source (the same constants the binary is built from).


def rust_const(path: str, name: str) -> str:
    source = (ROOT / path).read_text()
    match = re.search(rf"pub const {name}: [^=]+= ([^;]+);", source)
    assert match, f"{name} not found in {path}"
    return match.group(1).strip().strip('"')


GRPC_PORT = int(rust_const("src/config.rs", "DEFAULT_GRPC_PORT"))
HTTP_PORT = int(rust_const("src/config.rs", "DEFAULT_HTTP_PORT"))
MODEL_NAME = rust_const("src/model/mod.rs", "DEFAULT_MODEL_NAME")
SHUTDOWN_GRACE = float(rust_const("src/config.rs", "DEFAULT_SHUTDOWN_GRACE_SECS"))
SHUTDOWN_TIMEOUT = float(rust_const("src/config.rs", "DEFAULT_SHUTDOWN_TIMEOUT_SECS"))
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def rest_routes(server) -> list[re.Pattern]:
    """The server's REST paths, from the OpenAPI document it serves (its router registers every
    route with its description), as regular expressions ({param} matches one segment)."""
    with urllib.request.urlopen(f"{server.http}/openapi.json", timeout=10) as response:
        templates = list(json.load(response)["paths"])
    assert len(templates) > 10, templates
    return [re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)) + "$") for t in templates]


def rest_path_exists(server, path: str) -> bool:
    """An exact path matches a route; `prefix*` (Istio's wildcard) must be the start of one."""
    routes = rest_routes(server)
    if path.endswith("*"):
        sample = path[:-1] + "x/ready"
        return any(r.match(sample) or r.match(path[:-1] + "x") for r in routes)
    return any(r.match(path) for r in routes)


# ---------------------------------------------------------------------------------------------
# Rendering and schemas.


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_to_documents(rendered, name):
    assert rendered[name], f"{name} rendered nothing"
    for doc in rendered[name]:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc


def test_the_jwt_component_renders_with_istio(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "istio", tmp_path)],
        "components": [os.path.relpath(ROOT / "istio/jwt", tmp_path)],
    }))
    docs = kustomize(tmp_path)
    request_auth = one(docs, "RequestAuthentication")
    gateway = one(docs, "Gateway")
    assert request_auth["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]
    assert request_auth["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    claims = request_auth["spec"]["jwtRules"][0]["outputClaimToHeaders"]
    assert {"header": "x-tenant-id", "claim": "tenant"} in claims, "the tenant claim must reach the server"
    deny = one(docs, "AuthorizationPolicy", "tesserve-require-jwt")
    assert deny["spec"]["action"] == "DENY"
    assert set(deny["spec"]["rules"][0]["to"][0]["operation"]["hosts"]) >= set(gateway_hosts(gateway))


def schema_for(doc: dict) -> dict:
    group, _, version = doc["apiVersion"].rpartition("/")
    path = SCHEMAS / (group or "core") / f"{doc['kind'].lower()}_{version}.json"
    assert path.exists(), f"no schema for {doc['apiVersion']} {doc['kind']} ({path.relative_to(ROOT)})"
    return json.loads(path.read_text())


def schema_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema_for(doc))
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_rendered_document_is_valid_for_its_kind(rendered, name):
    problems = {}
    for doc in rendered[name]:
        if errors := schema_errors(doc):
            problems[f"{doc['kind']}/{doc['metadata']['name']}"] = errors
    assert not problems, json.dumps(problems, indent=1)


def manifest_files() -> list:
    return sorted(p for d in MANIFEST_DIRS for p in (ROOT / d).rglob("*.yaml")
                  if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_file_is_valid_for_its_kind(path):
    for doc in load_all(path.read_text()):
        if (doc["apiVersion"], doc["kind"]) in WITHOUT_SCHEMA:
            continue
        assert not schema_errors(doc), schema_errors(doc)


def test_the_schema_check_rejects_a_broken_manifest():
    isvc = yaml.load((ROOT / "kserve/ocr-isvc.yaml").read_text(), Loader=K8sLoader)
    isvc["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8081"
    assert any("containerPort" in e for e in schema_errors(isvc))


def test_every_manifest_file_is_part_of_a_kustomization():
    listed = set()
    for kustomization in ROOT.glob("*/**/kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
    orphans = [str(p.relative_to(ROOT)) for p in manifest_files()
               if p.resolve() not in listed and p.parent.name != "argocd"]
    assert not orphans, f"not in any kustomization (so never deployed): {orphans}"


# ---------------------------------------------------------------------------------------------
# The predictor: KServe InferenceService and ServingRuntime.


def predictor_container(isvc: dict) -> dict:
    containers = isvc["spec"]["predictor"]["containers"]
    assert len(containers) == 1 and containers[0]["name"] == "kserve-container"
    return containers[0]


def server_args(container: dict) -> list[str]:
    args = container["args"]
    assert args[0] == "serve", "the container runs `tesserve serve` explicitly"
    return args[1:]


def flag(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def cpu(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


ISVC_OVERLAYS = ["kserve", "overlays/raw-hpa", "overlays/keda", "overlays/serverless"]


def isvc_of(rendered, name):
    return one(rendered[name], "InferenceService")


def mode(isvc: dict) -> str:
    return isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_ports_and_names_are_the_servers(rendered, name):
    isvc = isvc_of(rendered, name)
    container = predictor_container(isvc)
    args = server_args(container)
    grpc = int(flag(args, "--grpc-port", "--grpc_port") or GRPC_PORT)
    http = int(flag(args, "--http-port", "--http_port") or HTTP_PORT)
    assert (grpc, http) == (GRPC_PORT, HTTP_PORT), "the manifests use the server's default ports"
    ports = {p["containerPort"]: p["name"] for p in container["ports"]}
    # 8081 speaks only gRPC over HTTP/2 (h2c); 8080 speaks HTTP/1.1 and h2c, so either name fits.
    allowed = {grpc: {"h2c"}, http: {"http", "h2c"}}
    for port, name_ in ports.items():
        assert port in allowed, f"port {port} is not one the server listens on"
        assert name_ in allowed[port], f"port {port} named {name_}"
    if mode(isvc) == "Knative":
        assert len(ports) == 1, "Knative gives a revision exactly one port"
    else:
        first = container["ports"][0]
        assert (first["containerPort"], first["name"]) == (grpc, "h2c"), \
            "KServe makes the first port the Service's port 80: gRPC"
        assert http in ports, "REST and /metrics reachable in Standard mode"


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_model_name_and_image(rendered, name):
    isvc = isvc_of(rendered, name)
    container = predictor_container(isvc)
    model = flag(server_args(container), "--model-name", "--model_name") or MODEL_NAME
    assert model == MODEL_NAME == isvc["metadata"]["name"]
    assert container["image"] == f"tesserve:{VERSION}", "image tag follows Cargo.toml's version"


def test_serving_runtime_names_the_model_after_the_inference_service(rendered):
    runtime = one(rendered["kserve"], "ServingRuntime")
    assert [f["name"] for f in runtime["spec"]["supportedModelFormats"]] == ["tesseract"]
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    assert "--model_name={{.Name}}" in server_args(container)
    isvc_container = predictor_container(isvc_of(rendered, "kserve"))
    for field in ("ports", "readinessProbe", "resources", "securityContext", "env", "volumeMounts"):
        assert runtime_field_matches(container[field], isvc_container[field]), field


def runtime_field_matches(runtime_value, isvc_value) -> bool:
    """The runtime and the InferenceService describe the same container (port names may differ
    in form: the runtime gives probe ports as numbers)."""
    return json.dumps(runtime_value, sort_keys=True) == json.dumps(isvc_value, sort_keys=True)


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_probes_ask_what_the_server_answers(rendered, name, server):
    container = predictor_container(isvc_of(rendered, name))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k] for k in ("readinessProbe", "livenessProbe", "startupProbe") if k in container}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for kind, probe in probes.items():
        if "grpc" in probe:
            port = probe["grpc"]["port"]
            assert port in (GRPC_PORT, HTTP_PORT), f"{kind}: gRPC probe on {port}"
            reply = server.grpcurl("grpc.health.v1.Health/Check",
                                   data=json.dumps({"service": probe["grpc"]["service"]}))
            assert reply.returncode == 0 and json.loads(reply.stdout) == {"status": "SERVING"}, \
                f"{kind}: {reply.stdout}{reply.stderr}"
        else:
            get = probe["httpGet"]
            port = get.get("port", container["ports"][0]["containerPort"])
            port = named.get(port, port)
            assert port == HTTP_PORT, f"{kind}: HTTP probe on {port}, REST is {HTTP_PORT}"
            with urllib.request.urlopen(server.http + get["path"], timeout=10) as reply:
                assert reply.status == 200, f"{kind}: {get['path']}"
    readiness = probes["readinessProbe"]
    asks = readiness.get("grpc", {}).get("service") or readiness.get("httpGet", {}).get("path")
    assert asks in ("inference.GRPCInferenceService", "/v2/health/ready", "/healthz"), \
        "readiness must follow the server's readiness (engines, saturation, shutdown)"


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_workers_follow_the_cpu_limit(rendered, name):
    container = predictor_container(isvc_of(rendered, name))
    resources = container["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"], "whole CPUs for the engines"
    assert resources["requests"]["memory"] == resources["limits"]["memory"], "Guaranteed QoS"
    env = {e["name"]: e for e in container.get("env", [])}
    workers = env["TESSERVE_WORKERS"]
    limit = math.ceil(cpu(resources["limits"]["cpu"]))
    if "valueFrom" in workers:
        ref = workers["valueFrom"]["resourceFieldRef"]
        assert (ref["containerName"], ref["resource"], str(ref["divisor"])) == (container["name"], "limits.cpu", "1")
    else:
        assert int(workers["value"]) == limit


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_container_runs_locked_down(rendered, name):
    container = predictor_container(isvc_of(rendered, name))
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user.groups()


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_the_only_writable_path_is_a_small_memory_tmp(rendered, name):
    """The root filesystem is read-only; Tesseract's PDF renderer (the `pdf` output) writes
    only to files, so /tmp is a size-limited in-memory emptyDir."""
    predictor = isvc_of(rendered, name)["spec"]["predictor"]
    mounts = predictor_container(isvc_of(rendered, name))["volumeMounts"]
    assert [(m["name"], m["mountPath"]) for m in mounts] == [("tmp", "/tmp")]
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    runtime = one(rendered["kserve"], "ServingRuntime")
    assert {v["name"]: v for v in runtime["spec"]["volumes"]}["tmp"] == volumes["tmp"]


@pytest.mark.parametrize("name", ISVC_OVERLAYS)
def test_istio_sidecar_is_injected_and_outlives_the_drain(rendered, name):
    predictor = isvc_of(rendered, name)["spec"]["predictor"]
    assert predictor["labels"]["sidecar.istio.io/inject"] == "true"
    proxy = yaml.safe_load(predictor["annotations"]["proxy.istio.io/config"])
    drain = float(proxy["terminationDrainDuration"].rstrip("s"))
    assert proxy["holdApplicationUntilProxyStarts"] is True
    assert drain >= SHUTDOWN_GRACE + SHUTDOWN_TIMEOUT


@pytest.mark.parametrize("name", ["kserve", "overlays/raw-hpa", "overlays/keda"])
def test_termination_grace_covers_prestop_and_the_servers_shutdown(rendered, name):
    predictor = isvc_of(rendered, name)["spec"]["predictor"]
    container = predictor_container(isvc_of(rendered, name))
    args = server_args(container)
    grace = float(flag(args, "--shutdown-grace") or SHUTDOWN_GRACE)
    timeout = float(flag(args, "--shutdown-timeout") or SHUTDOWN_TIMEOUT)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert predictor["terminationGracePeriodSeconds"] > pre_stop + grace + timeout


def test_kserves_rules_for_each_deployment_mode(rendered):
    """What KServe's admission webhook refuses, checked here since no schema can."""
    raw = isvc_of(rendered, "overlays/raw-hpa")
    keda = isvc_of(rendered, "overlays/keda")
    knative = isvc_of(rendered, "overlays/serverless")
    for isvc in (raw, keda, knative):
        assert mode(isvc) in ("Standard", "Knative"), "KServe 0.15+ names; older names skip validation"
    # Standard + HPA: cpu or memory, a utilisation of 60-70 %.
    p = raw["spec"]["predictor"]
    assert raw["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert (p["minReplicas"], p["maxReplicas"], p["scaleMetric"]) == (1, 10, "cpu")
    assert 60 <= p["scaleTarget"] <= 70
    # KEDA: no scaleMetric; the queue-depth query and a threshold.
    p = keda["spec"]["predictor"]
    assert keda["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    assert "scaleMetric" not in p and "scaleTarget" not in p
    external = [m["external"] for m in p["autoScaling"]["metrics"] if m["type"] == "External"]
    assert len(external) == 1 and external[0]["metric"]["backend"] == "prometheus"
    assert external[0]["metric"]["query"] and float(external[0]["target"]["value"]) > 0
    # Knative: concurrency or rps, one port, no Kubernetes-only fields Knative refuses.
    p = knative["spec"]["predictor"]
    container = predictor_container(knative)
    assert "serving.kserve.io/autoscalerClass" not in knative["metadata"]["annotations"]
    assert p["minReplicas"] == 0 and p["scaleMetric"] in ("concurrency", "rps")
    for field in ("terminationGracePeriodSeconds", "securityContext", "deploymentStrategy"):
        assert field not in p, field
    assert "lifecycle" not in container and "startupProbe" not in container
    assert all("valueFrom" not in e for e in container["env"])


def test_keda_query_uses_metrics_the_server_exports(rendered, server):
    keda = isvc_of(rendered, "overlays/keda")
    metric = [m["external"]["metric"] for m in keda["spec"]["predictor"]["autoScaling"]["metrics"]
              if m["type"] == "External"][0]
    query = metric["query"]
    # Names directly before a label matcher are series names.
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query))
    assert names == {"tesserve_queue_depth"}, names
    with urllib.request.urlopen(server.http + "/metrics", timeout=10) as reply:
        exposition = reply.read().decode()
    for name in names:
        assert re.search(rf"^{name}(\{{| )", exposition, re.M), f"{name} not in /metrics"
    assert rust_const("src/telemetry/metrics.rs", "QUEUE_DEPTH") == "tesserve_queue_depth"
    # The series come from the PodMonitor's scrape of this namespace's predictor pods.
    isvc = isvc_of(rendered, "overlays/keda")
    namespace = isvc["metadata"]["namespace"]
    assert f'namespace="{namespace}"' in query and f'pod=~"{isvc["metadata"]["name"]}-predictor-.*"' in query
    monitor = one(rendered["overlays/keda"], "PodMonitor")
    prometheus_namespace = re.match(r"https?://[^.]+\.([^.]+)\.svc", metric["serverAddress"]).group(1)
    assert monitor["metadata"]["namespace"] == namespace
    policy = one(rendered["overlays/keda"], "AuthorizationPolicy", "tesserve-predictor")
    scrapers = [s["source"]["namespaces"] for r in policy["spec"]["rules"] for s in r["from"]
                if "namespaces" in s["source"]]
    assert [prometheus_namespace] in scrapers, "Prometheus's namespace may read /metrics"


@pytest.mark.parametrize("name", ["overlays/raw-hpa", "overlays/keda", "overlays/serverless"])
def test_pod_monitor_finds_the_predictor_and_its_metrics_port(rendered, name, server):
    docs = rendered[name]
    isvc = one(docs, "InferenceService")
    monitor = one(docs, "PodMonitor")
    assert not find(docs, "ServiceMonitor"), "one scrape per pod"
    assert monitor["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    ports = {p["name"]: p["containerPort"] for p in predictor_container(isvc)["ports"]}
    assert ports.get(endpoint["port"]) == HTTP_PORT and endpoint["path"] == "/metrics"
    assert rest_path_exists(server, "/metrics")


def test_container_arguments_are_accepted_by_the_servers_own_parser(rendered):
    """`tesserve serve --check-config ARGS` parses and validates without serving. A binary that
    predates --check-config still parses (clap checks every flag and value before --help)."""
    help_text = subprocess.run([TESSERVE, "serve", "--help"], capture_output=True, text=True).stdout
    validates = "--check-config" in help_text
    if not validates:
        print("WARNING: this tesserve has no --check-config: arguments are parsed, not validated")
    containers = [predictor_container(isvc_of(rendered, n)) for n in ISVC_OVERLAYS]
    containers.append(one(rendered["kserve"], "ServingRuntime")["spec"]["containers"][0])
    for container in containers:
        args = [a.replace("{{.Name}}", MODEL_NAME) for a in server_args(container)]
        env = {"PATH": "/usr/bin:/bin", "OMP_THREAD_LIMIT": "1"}
        for e in container.get("env", []):
            limit = container["resources"]["limits"]["cpu"]
            env[e["name"]] = e.get("value") or str(math.ceil(cpu(limit)))
        check = ["--check-config"] if validates else ["--help"]
        result = subprocess.run([TESSERVE, "serve", *args, *check], env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{args}: {result.stderr}"
    bad = subprocess.run([TESSERVE, "serve", "--model-name=ocr", "--grpc-port=eighty", "--help"],
                         capture_output=True, text=True)
    assert bad.returncode != 0, "the parser must refuse what it cannot read, or this test proves nothing"


# ---------------------------------------------------------------------------------------------
# Istio.


def gateway_hosts(gateway: dict) -> list[str]:
    return sorted({h for s in gateway["spec"]["servers"] for h in s["hosts"]})


def grpc_methods(server) -> set[str]:
    """Every method the running server offers, as gRPC paths: /package.Service/Method."""
    listed = server.grpcurl("list")
    assert listed.returncode == 0, listed.stderr
    methods = set()
    for service in listed.stdout.split():
        described = server.grpcurl("list", service)
        assert described.returncode == 0, described.stderr
        methods |= {"/" + m.rsplit(".", 1)[0] + "/" + m.rsplit(".", 1)[1] for m in described.stdout.split()}
    # grpcurl 1.8 speaks reflection v1alpha only, so v1 is not listed: the source says if it is served.
    if "build_v1()" in (ROOT / "src/server.rs").read_text():
        methods.add("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    return methods


def test_authorization_policy_names_real_methods_and_paths(rendered, server):
    docs = rendered["istio"]
    policy = one(docs, "AuthorizationPolicy", "tesserve-predictor")
    assert policy["spec"]["action"] == "ALLOW"
    assert one(docs, "AuthorizationPolicy", "allow-nothing")["spec"] == {"action": "ALLOW"}, "deny by default"
    offered = grpc_methods(server)
    assert "/inference.GRPCInferenceService/ModelInfer" in offered
    isvc = isvc_of(rendered, "kserve")
    assert policy["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    container_ports = {str(p["containerPort"]) for p in predictor_container(isvc)["ports"]}
    for rule in policy["spec"]["rules"]:
        for to in rule["to"]:
            operation = to["operation"]
            assert set(operation["ports"]) <= container_ports
            for path in operation["paths"]:
                if path.count("/") == 2 and "." in path.split("/")[1]:
                    assert path in offered, f"{path}: no such gRPC method"
                    assert operation["methods"] == ["POST"]
                else:
                    assert rest_path_exists(server, path), f"{path}: no such REST route"
                    assert operation["ports"] == [str(HTTP_PORT)]
                    segments = path.split("/")
                    if "models" in segments:
                        assert segments[segments.index("models") + 1].split(":")[0] == MODEL_NAME
    never = {"/inference.GRPCInferenceService/RepositoryModelLoad", "/inference.GRPCInferenceService/RepositoryModelUnload"}
    allowed = {p for r in policy["spec"]["rules"] for t in r["to"] for p in t["operation"]["paths"]}
    assert not never & allowed, "model repository control stays inside"
    assert never <= offered


def test_authorization_policy_admits_the_gateway_that_routes_here(rendered):
    docs = rendered["istio"]
    gateway = one(docs, "Gateway")
    policy = one(docs, "AuthorizationPolicy", "tesserve-predictor")
    principals = [p for r in policy["spec"]["rules"] for s in r["from"] for p in s["source"].get("principals", [])]
    assert principals == [f"cluster.local/ns/{gateway['metadata']['namespace']}/sa/istio-ingressgateway-service-account"]
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}


def test_mtls_is_strict_where_the_predictor_runs(rendered):
    docs = rendered["overlays/raw-hpa"]
    peer = one(docs, "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT" and "selector" not in peer["spec"]
    assert peer["metadata"]["namespace"] == one(docs, "InferenceService")["metadata"]["namespace"]
    rule = one(docs, "DestinationRule")
    assert rule["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"


def test_virtual_service_routes_the_gateways_host_to_the_predictor(rendered, server):
    docs = rendered["overlays/raw-hpa"]
    gateway, service = one(docs, "Gateway"), one(docs, "VirtualService")
    isvc = one(docs, "InferenceService")
    assert service["spec"]["gateways"] == [f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}"]
    assert sorted(service["spec"]["hosts"]) == gateway_hosts(gateway)
    predictor = f"{isvc['metadata']['name']}-predictor.{isvc['metadata']['namespace']}.svc.cluster.local"
    assert one(docs, "DestinationRule")["spec"]["host"] == predictor
    # KServe's Standard-mode Service: port 80 -> the first container port, others keep their number.
    ports = predictor_container(isvc)["ports"]
    service_ports = {80: ports[0]["containerPort"], **{p["containerPort"]: p["containerPort"] for p in ports[1:]}}
    offered = grpc_methods(server)
    policy = one(docs, "AuthorizationPolicy", "tesserve-predictor")
    allowed = {p for r in policy["spec"]["rules"] for t in r["to"] for p in t["operation"]["paths"]}
    routes = {r["name"]: r for r in service["spec"]["http"]}
    grpc, rest = routes["grpc"], routes["rest"]
    for route, target in ((grpc, GRPC_PORT), (rest, HTTP_PORT)):
        destination = route["route"][0]["destination"]
        assert destination["host"] == predictor
        assert service_ports[destination["port"]["number"]] == target
    for match in grpc["match"]:
        prefix = match["uri"]["prefix"]
        assert any(m.startswith(prefix) for m in offered & allowed), f"{prefix} routes nothing allowed"
    for match in rest["match"]:
        path = match["uri"].get("exact") or match["uri"]["prefix"] + "*"
        assert rest_path_exists(server, path) or path == "/v2*", path
        assert any(a == path or a.startswith(path.rstrip("*")) for a in allowed), f"{path} routed, never allowed"


def test_envoy_filter_limits_per_api_key_on_the_gateways_virtual_hosts(rendered):
    docs = rendered["istio"]
    gateway, limiter = one(docs, "Gateway"), one(docs, "EnvoyFilter")
    assert limiter["metadata"]["namespace"] == gateway["metadata"]["namespace"], \
        "an EnvoyFilter applies to workloads of its own namespace"
    assert limiter["spec"]["workloadSelector"]["labels"] == gateway["spec"]["selector"]
    patches = limiter["spec"]["configPatches"]
    http_filter = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    assert len(http_filter) == 1
    filter_name = http_filter[0]["patch"]["value"]["name"]
    assert filter_name == "envoy.filters.http.local_ratelimit"
    vhosts = [p for p in patches if p["applyTo"] == "VIRTUAL_HOST"]
    expected = {f"{h}:{s['port']['number']}" for s in gateway["spec"]["servers"] for h in s["hosts"]}
    assert {p["match"]["routeConfiguration"]["vhost"]["name"] for p in vhosts} == expected
    for patch in vhosts:
        value = patch["patch"]["value"]
        config = value["typed_per_filter_config"][filter_name]
        assert "rate_limits" not in value, "route-level descriptors: Envoy >= 1.40 warns they will be ignored"
        keys = {a["request_headers"]["header_name"]: a["request_headers"]["descriptor_key"]
                for limit in config["rate_limits"] for a in limit["actions"]}
        assert keys.get("x-api-key"), "one bucket per API key"
        buckets = {d["entries"][0]["key"]: d for d in config["descriptors"]}
        assert set(buckets) == set(keys.values())
        for bucket in buckets.values():
            assert bucket["entries"][0]["value"] == "", "empty value: a bucket for each distinct key"
            assert bucket["token_bucket"]["tokens_per_fill"] == 10 and bucket["token_bucket"]["fill_interval"] == "1s"
        assert config["status"]["code"] == "TooManyRequests"
        assert config["rate_limited_as_resource_exhausted"] is True, "gRPC callers get RESOURCE_EXHAUSTED"
        for gate in ("filter_enabled", "filter_enforced"):
            assert config[gate]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}


def test_argocd_application_deploys_an_overlay_that_renders(rendered):
    (app,) = load_all((ROOT / "argocd/application.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source, destination = app["spec"]["source"], app["spec"]["destination"]
    assert source["path"] in rendered, f"{source['path']} is not one of {KUSTOMIZATIONS}"
    isvc = one(rendered[source["path"]], "InferenceService")
    assert destination["namespace"] == isvc["metadata"]["namespace"]
    assert app["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"]["istio-injection"] == "enabled"


# ---------------------------------------------------------------------------------------------
# Dockerfile and scripts.


def test_dockerfile_matches_the_server(server):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {HTTP_PORT} {GRPC_PORT}$", dockerfile, re.M)
    assert re.search(r"^ENV OMP_THREAD_LIMIT=1", dockerfile, re.M)
    assert re.search(r'^\s*CMD \["/usr/local/bin/tesserve", "healthcheck"\]$', dockerfile, re.M)
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert user and int(user.group(1)) > 0
    # The build stage runs the Makefile's targets, the ones CI runs.
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"\bmake (\w[\w-]*)", dockerfile):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target}"
    # The healthcheck subcommand, with the image's environment, reaches the server's default port.
    result = subprocess.run([TESSERVE, "healthcheck", "--help"], capture_output=True, text=True)
    assert f"[default: {GRPC_PORT}]" in result.stdout


def test_hadolint_reports_nothing():
    from conftest import VENV_BIN
    result = subprocess.run([str(VENV_BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def shell_scripts() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.sh")
                  if not any(part.startswith(".") or part == "target" for part in p.relative_to(ROOT).parts))


def test_shellcheck_reports_nothing():
    from conftest import VENV_BIN
    scripts = shell_scripts()
    assert "deploy-tests/image-test.sh" in scripts and any(s.startswith("cluster/") for s in scripts)
    result = subprocess.run([str(VENV_BIN / "shellcheck"), "--external-sources", *scripts],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for script in scripts:
        assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0, script
        head = (ROOT / script).read_text().splitlines()[:40]
        assert "set -euo pipefail" in head or script.endswith("lib.sh"), f"{script}: set -euo pipefail"
