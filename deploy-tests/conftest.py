"""Fixtures for the offline deployment checks: the repository, the rendered kustomizations, and a
real tesserve server to hold the manifests against (ports, probes, methods, metrics)."""

import contextlib
import os
import pathlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV_BIN = pathlib.Path(os.environ.get("VENV", ROOT / ".venv-deploy")) / "bin"
KUBECTL = str(VENV_BIN / "kubectl")
GRPCURL = str(VENV_BIN / "grpcurl")
TESSERVE = os.environ.get("TESSERVE_BIN", str(ROOT / "target" / "debug" / "tesserve"))

# Every kustomization a user or Argo CD may build, and what each must contain.
KUSTOMIZATIONS = ["kserve", "istio", "monitoring", "overlays/raw-hpa", "overlays/keda", "overlays/serverless"]


class K8sLoader(yaml.SafeLoader):
    """YAML as Kubernetes reads it: unquoted dates stay strings."""


K8sLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_all(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=K8sLoader) if doc is not None]


def kustomize(path: str | pathlib.Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return load_all(result.stdout)


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {name: kustomize(name) for name in KUSTOMIZATIONS}


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, grpc_port: int, http_port: int):
        self.grpc = f"127.0.0.1:{grpc_port}"
        self.http = f"http://127.0.0.1:{http_port}"

    def grpcurl(self, *args: str, data: str | None = None) -> subprocess.CompletedProcess:
        command = [GRPCURL, "-plaintext", "-max-time", "20"]
        if data is not None:
            command += ["-d", data]
        return subprocess.run([*command, self.grpc, *args], capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def tesserve(*flags: str, ready: Callable[[], bool], log: pathlib.Path) -> Iterator[subprocess.Popen]:
    """A real server on loopback with one worker and these flags, its output (both streams) in
    `log`; yielded once `ready()` holds, stopped (and waited for) on exit."""
    assert os.access(TESSERVE, os.X_OK), f"{TESSERVE} not built (make build)"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [TESSERVE, "serve", "--bind", "127.0.0.1", "--workers", "1", *flags],
            stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert process.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.3)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The real server, with its defaults except the ports: what the manifests must agree with."""
    grpc_port, http_port = free_port(), free_port()

    def ready() -> bool:
        check = subprocess.run(
            [TESSERVE, "healthcheck", "--grpc-port", str(grpc_port), "--timeout", "1"],
            capture_output=True,
        )
        return check.returncode == 0

    with tesserve("--grpc-port", str(grpc_port), "--http-port", str(http_port), ready=ready,
                  log=tmp_path_factory.mktemp("server") / "tesserve.log"):
        yield Served(grpc_port, http_port)
