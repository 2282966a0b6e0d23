"""The kserve package's InferenceGRPCClient, with typed (list) and raw (numpy) inputs. Runs in
its own process: its stubs clash with tritonclient's."""

import asyncio
import json

import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.infer_type import RequestedOutput

from conftest import assert_pages, assert_similar, render_pdf, render_png


def run(addr, work):
    async def main():
        client = InferenceGRPCClient(url=addr)
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_health(addr):
    async def work(client):
        return (
            await client.is_server_live(),
            await client.is_server_ready(),
            await client.is_model_ready("ocr"),
        )

    assert run(addr, work) == (True, True, True)


def test_typed_input_from_a_list(addr):
    image = render_png("KServe typed input")
    request = InferRequest(
        model_name="ocr",
        request_id="kserve-typed",
        infer_inputs=[InferInput("image", [1], "BYTES", data=[image])],
        request_outputs=[RequestedOutput("text"), RequestedOutput("confidence")],
    )

    response = run(addr, lambda client: client.infer(request))
    assert response.id == "kserve-typed"
    text = response.get_output_by_name("text").as_numpy()[0]
    assert_similar(text.decode() if isinstance(text, bytes) else text, "KServe typed input")
    assert 0.5 < response.get_output_by_name("confidence").as_numpy()[0] <= 1.0


def test_raw_input_from_numpy(addr):
    tensor = InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(
        np.array([render_png("First 111"), render_png("Second 222")], dtype=np.object_), binary_data=True
    )
    request = InferRequest(model_name="ocr", infer_inputs=[tensor], request_id="kserve-raw")

    response = run(addr, lambda client: client.infer(request))
    texts = [t.decode() if isinstance(t, bytes) else t for t in response.get_output_by_name("text").as_numpy()]
    assert_similar(texts[0], "First 111")
    assert_similar(texts[1], "Second 222")
    assert [o.name for o in response.outputs] == ["text", "confidence", "words", "hocr", "tsv"]


def test_unknown_model_raises(addr):
    request = InferRequest(
        model_name="missing", infer_inputs=[InferInput("image", [1], "BYTES", data=[render_png("x")])]
    )
    with pytest.raises(Exception) as raised:
        run(addr, lambda client: client.infer(request))
    assert "unknown model 'missing'" in str(raised.value)


def test_a_three_page_pdf_reads_back_three_pages_in_order(addr):
    request = InferRequest(
        model_name="ocr",
        request_id="kserve-pdf",
        infer_inputs=[InferInput("image", [1], "BYTES", data=[render_pdf()])],
        request_outputs=[RequestedOutput("text"), RequestedOutput("words")],
    )
    response = run(addr, lambda client: client.infer(request))
    text = response.get_output_by_name("text").as_numpy()[0]
    assert_pages(text.decode() if isinstance(text, bytes) else text)
    words = response.get_output_by_name("words").as_numpy()[0]
    pages = [w["page"] for w in json.loads(words)]
    assert pages[0] == 1 and pages[-1] == 3 and pages == sorted(pages)
