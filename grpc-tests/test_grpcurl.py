"""grpcurl 1.8.6 (which speaks reflection v1alpha only) against the server, with no .proto files."""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import assert_pages, assert_similar, render_pdf, render_png

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


def grpcurl(addr: str, *args: str, data: dict | None = None) -> subprocess.CompletedProcess:
    command = [GRPCURL, "-plaintext", "-max-msg-sz", str(64 << 20)]
    if data is not None:
        command += ["-d", "@"]
    command += [addr, *args]
    return subprocess.run(
        command,
        input=json.dumps(data) if data is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_grpcurl_is_the_real_1_8_6():
    result = subprocess.run([GRPCURL, "-version"], capture_output=True, text=True)
    assert "v1.8.6" in result.stdout + result.stderr


def test_list_shows_inference_health_and_reflection(addr):
    services = ok(grpcurl(addr, "list")).split()
    for service in (
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert service in services


def test_describe_lists_every_rpc(addr):
    description = ok(grpcurl(addr, "describe", "inference.GRPCInferenceService"))
    for rpc in ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer"):
        assert f"rpc {rpc} (" in description


def test_server_live_and_health_check(addr):
    assert json.loads(ok(grpcurl(addr, "inference.GRPCInferenceService/ServerLive"))) == {"live": True}
    health = ok(grpcurl(addr, "grpc.health.v1.Health/Check", data={"service": ""}))
    assert json.loads(health) == {"status": "SERVING"}
    health = ok(grpcurl(addr, "grpc.health.v1.Health/Check", data={"service": "inference.GRPCInferenceService"}))
    assert json.loads(health) == {"status": "SERVING"}


def test_model_infer_with_a_base64_image_in_json(addr):
    request = {
        "model_name": "ocr",
        "id": "grpcurl-1",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "contents": {"bytes_contents": [base64.b64encode(render_png("Served by grpcurl")).decode()]},
            }
        ],
        "outputs": [{"name": "text"}, {"name": "confidence"}],
    }
    response = json.loads(ok(grpcurl(addr, "inference.GRPCInferenceService/ModelInfer", data=request)))
    assert response["id"] == "grpcurl-1"
    assert [o["name"] for o in response["outputs"]] == ["text", "confidence"]
    text = base64.b64decode(response["outputs"][0]["contents"]["bytesContents"][0]).decode()
    assert_similar(text, "Served by grpcurl")
    assert 0.5 < response["outputs"][1]["contents"]["fp32Contents"][0] <= 1.0


def test_errors_carry_code_and_message(addr):
    request = {"model_name": "nope", "inputs": []}
    result = grpcurl(addr, "inference.GRPCInferenceService/ModelInfer", data=request)
    assert result.returncode != 0
    assert "Code: NotFound" in result.stderr
    assert "unknown model 'nope'" in result.stderr


def test_grpcurl_works_on_the_rest_port_too(http_addr):
    assert "inference.GRPCInferenceService" in ok(grpcurl(http_addr, "list")).split()
    ready = ok(grpcurl(http_addr, "inference.GRPCInferenceService/ServerReady"))
    assert json.loads(ready) == {"ready": True}


def test_a_three_page_pdf_reads_back_three_pages_in_order(addr):
    request = {
        "model_name": "ocr",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "contents": {"bytes_contents": [base64.b64encode(render_pdf()).decode()]},
            }
        ],
        "outputs": [{"name": "text"}, {"name": "pages"}],
    }
    reply = json.loads(ok(grpcurl(addr, "inference.GRPCInferenceService/ModelInfer", data=request)))
    outputs = {o["name"]: o for o in reply["outputs"]}
    text = base64.b64decode(outputs["text"]["contents"]["bytesContents"][0]).decode()
    assert_pages(text)
    pages = json.loads(base64.b64decode(outputs["pages"]["contents"]["bytesContents"][0]))
    assert [p["page"] for p in pages] == [1, 2, 3]
