"""tritonclient.http against the REST port: its default binary mode (no Content-Type, binary
tensors after the JSON) and plain JSON mode."""

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import assert_similar, render_png


@pytest.fixture(scope="module")
def client(http_addr):
    return httpclient.InferenceServerClient(http_addr)


def image_input(*pngs: bytes, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", [len(pngs)], "BYTES")
    tensor.set_data_from_numpy(np.array(list(pngs), dtype=np.object_), binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("ocr")
    assert client.get_server_metadata()["name"] == "tesserve"
    assert client.get_model_metadata("ocr")["platform"] == "tesseract"


def test_binary_mode_is_the_default(client):
    result = client.infer("ocr", [image_input(render_png("Binary over HTTP"))])
    assert_similar(result.as_numpy("text")[0].decode(), "Binary over HTTP")
    assert 0.5 < result.as_numpy("confidence")[0] <= 1.0
    assert b"ocr_page" in result.as_numpy("hocr")[0]


def test_json_outputs_and_batches(client):
    texts = ["Json one 111", "Json two 222"]
    outputs = [
        httpclient.InferRequestedOutput("text", binary_data=False),
        httpclient.InferRequestedOutput("confidence", binary_data=True),
    ]
    result = client.infer(
        "ocr",
        [image_input(*(render_png(t) for t in texts))],
        outputs=outputs,
        request_id="http-3",
        parameters={"psm": 7},
    )
    assert result.get_response()["id"] == "http-3"
    for got, expected in zip(result.as_numpy("text"), texts):
        got = got.decode() if isinstance(got, bytes) else got
        assert_similar(got, expected)
    assert result.as_numpy("confidence").dtype == np.float32


def test_errors_carry_the_message(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer("ocr", [image_input(render_png("ok"), b"not an image")])
    assert "input 'image'[1]" in raised.value.message()
    assert raised.value.status() == "400"
