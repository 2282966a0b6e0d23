"""tritonclient[grpc]: Triton's own client, which sends raw_input_contents and reads only
raw_output_contents. Runs in its own process: its stubs clash with kserve's."""

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import assert_pages, assert_similar, render_image, render_pdf, render_png


@pytest.fixture(scope="module")
def client(addr):
    return grpcclient.InferenceServerClient(addr)


def image_input(*pngs: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(np.array(list(pngs), dtype=np.object_))
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("ocr")
    metadata = client.get_model_metadata("ocr", as_json=True)
    assert metadata["platform"] == "tesseract"
    assert [o["name"] for o in metadata["outputs"]] == ["text", "confidence", "words", "hocr", "tsv", "alto", "pdf", "pages"]
    config = client.get_model_config("ocr", as_json=True)["config"]
    assert config["input"][0]["data_type"] == "TYPE_STRING"


def test_infer_returns_the_text_with_every_output_by_default(client):
    result = client.infer("ocr", [image_input(render_png("Hello from Triton"))])
    assert_similar(result.as_numpy("text")[0].decode(), "Hello from Triton")
    confidence = result.as_numpy("confidence")
    assert confidence.dtype == np.float32 and 0.5 < confidence[0] <= 1.0
    assert b'"text":"Hello"' in result.as_numpy("words")[0]
    assert b"ocr_page" in result.as_numpy("hocr")[0]
    assert result.as_numpy("tsv")[0].startswith(b"1\t")


def test_batch_with_requested_outputs_and_triton_parameters(client):
    texts = ["Invoice 1001", "Invoice 2002"]
    result = client.infer(
        "ocr",
        [image_input(*(render_png(t) for t in texts))],
        outputs=[grpcclient.InferRequestedOutput("confidence"), grpcclient.InferRequestedOutput("text")],
        request_id="triton-7",
        priority=3,
        parameters={"psm": 7, "dpi": 300.0},
    )
    response = result.get_response()
    assert response.id == "triton-7"
    assert [o.name for o in response.outputs] == ["confidence", "text"]
    for got, expected in zip(result.as_numpy("text"), texts):
        assert_similar(got.decode(), expected)


def test_uint8_pixels(client):
    pixels = np.asarray(render_image("Raw pixels").convert("RGB"), dtype=np.uint8)
    tensor = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("ocr", [tensor], outputs=[grpcclient.InferRequestedOutput("text")])
    assert_similar(result.as_numpy("text")[0].decode(), "Raw pixels")


def test_bad_image_is_invalid_argument_naming_the_index(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("ocr", [image_input(render_png("fine"), b"not an image")])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'image'[1]" in raised.value.message()


def test_statistics_count_inferences(client):
    stats = client.get_inference_statistics("ocr", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 1
    assert int(stats["inference_stats"]["success"]["count"]) >= 1


def test_stream_infer(client):
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        for i, text in enumerate(["Stream alpha", "Stream beta"]):
            client.async_stream_infer("ocr", [image_input(render_png(text))], request_id=str(i))
    finally:
        client.stop_stream()
    assert len(results) == 2
    by_id = {r.get_response().id: r for r, error in results if error is None}
    assert_similar(by_id["0"].as_numpy("text")[0].decode(), "Stream alpha")
    assert_similar(by_id["1"].as_numpy("text")[0].decode(), "Stream beta")


def test_a_three_page_pdf_reads_back_three_pages_in_order(client):
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("text", "pages")]
    result = client.infer("ocr", [image_input(render_pdf())], outputs=outputs)
    assert_pages(result.as_numpy("text")[0].decode())
    pages = json.loads(result.as_numpy("pages")[0])
    assert [p["page"] for p in pages] == [1, 2, 3]
