"""Shared fixtures: the address of the server under test and images rendered from known text."""

import difflib
import io
import os

import pytest
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@pytest.fixture(scope="session")
def addr() -> str:
    """host:port of a running tesserve gRPC listener (grpc-tests/run.sh starts one)."""
    value = os.environ.get("TESSERVE_GRPC_ADDR")
    if not value:
        pytest.fail("TESSERVE_GRPC_ADDR is not set; run grpc-tests/run.sh")
    return value


@pytest.fixture(scope="session")
def http_addr() -> str:
    """host:port of the same server's REST listener."""
    value = os.environ.get("TESSERVE_HTTP_ADDR")
    if not value:
        pytest.fail("TESSERVE_HTTP_ADDR is not set; run grpc-tests/run.sh")
    return value


def render_image(text: str) -> Image.Image:
    """Black text on white, 32 px DejaVu Sans, one line per '\\n'."""
    font = ImageFont.truetype(FONT, 32)
    lines = text.split("\n")
    width = max(int(font.getlength(line)) for line in lines) + 48
    height = 44 * len(lines) + 48
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((24, 24 + 44 * row), line, font=font, fill=0)
    return image


def render_png(text: str) -> bytes:
    out = io.BytesIO()
    render_image(text).save(out, format="PNG")
    return out.getvalue()


def assert_similar(actual: str, expected: str, min_ratio: float = 0.9) -> None:
    """OCR output matches the rendered text up to a small difference."""
    norm = lambda s: " ".join(s.split())
    ratio = difflib.SequenceMatcher(None, norm(actual), norm(expected)).ratio()
    assert ratio >= min_ratio, f"OCR text {actual!r} differs from {expected!r} (ratio {ratio:.2f})"


PDF_PAGES = ("First page 101", "Second page 202", "Third page 303")


def render_pdf(pages: tuple[str, ...] = PDF_PAGES) -> bytes:
    """A scanned-style PDF: one rendered page image per text, placed at 300 dpi (Pillow's PDF
    writer, as a scanning app would write it)."""
    images = [render_image(text) for text in pages]
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=300)
    return out.getvalue()


def assert_pages(text: str, pages: tuple[str, ...] = PDF_PAGES) -> None:
    """A document's text: its pages in order, separated by form feeds."""
    read = text.split("\f")
    assert len(read) == len(pages), f"{len(read)} pages in {text!r}"
    for actual, expected in zip(read, pages):
        assert_similar(actual, expected)
