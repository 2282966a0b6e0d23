"""Plain curl against the REST port, as the README shows it, and the OpenAPI document checked
by an independent validator."""

import json
import subprocess
import tempfile
import urllib.request

from openapi_spec_validator import validate

from conftest import assert_pages, assert_similar, render_pdf, render_png


def curl(*args: str) -> dict:
    result = subprocess.run(["curl", "-sS", "--fail-with-body", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_curl_multipart_upload(http_addr):
    with tempfile.NamedTemporaryFile(suffix=".png") as page:
        page.write(render_png("Uploaded with curl"))
        page.flush()
        answer = curl("-F", f"file=@{page.name}", f"http://{http_addr}/predict")
        assert_similar(answer["text"], "Uploaded with curl")
        assert answer["boxes"][0]["text"] == "Uploaded"
        assert answer["request_id"]
        answer = curl("-F", f"image_file=@{page.name}", "-F", "psm=7", f"http://{http_addr}/gateway/ocr")
        assert_similar(answer["text"], "Uploaded with curl")


def test_curl_error_is_json(http_addr):
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code} %{content_type}", "-F", "file=@/dev/null", f"http://{http_addr}/predict"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "400 application/json"
    assert "image is empty" in json.loads(body)["error"]


def test_openapi_document_is_valid_openapi_3(http_addr):
    with urllib.request.urlopen(f"http://{http_addr}/openapi.json") as response:
        spec = json.load(response)
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_curl_uploads_a_three_page_pdf_and_reads_three_pages_in_order(http_addr):
    with tempfile.NamedTemporaryFile(suffix=".pdf") as document:
        document.write(render_pdf())
        document.flush()
        answer = curl("-F", f"file=@{document.name}", f"http://{http_addr}/predict")
    assert_pages(answer["text"])
    assert [p["page"] for p in answer["pages"]] == [1, 2, 3]
    assert answer["boxes"][-1]["page"] == 3
