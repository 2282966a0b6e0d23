"""The kserve package's InferenceRESTClient (v2 protocol) against the REST port. Runs in the
kserve process."""

import asyncio

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

from conftest import assert_similar, render_png


def run(work):
    async def main():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1))
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


def text_of(response, index=0):
    value = response.get_output_by_name("text").as_numpy()[index]
    return value.decode() if isinstance(value, bytes) else value


def test_health(http_addr):
    base = f"http://{http_addr}"

    async def work(client):
        return (
            await client.is_server_live(base),
            await client.is_server_ready(base),
            await client.is_model_ready(base, "ocr"),
        )

    assert run(work) == (True, True, True)


def test_binary_numpy_input(http_addr):
    tensor = InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([render_png("KServe over REST")], dtype=np.object_), binary_data=True)
    request = InferRequest(model_name="ocr", infer_inputs=[tensor], request_id="kserve-rest")
    response = run(lambda client: client.infer(f"http://{http_addr}", request, model_name="ocr"))
    assert response.id == "kserve-rest"
    assert_similar(text_of(response), "KServe over REST")
