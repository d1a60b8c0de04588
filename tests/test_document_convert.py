"""Conversions for inbound faxes (TIFF to PDF, PDF to TIFF) and page-1 PNG previews."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image
from pypdf import PdfReader

from gateway.document.convert import fax_resolution, pdf_to_tiff, tiff_to_pdf
from gateway.document.mime import DocumentError
from gateway.document.preview import first_page_png
from tests import samples


def sizes_in_inches(pdf: bytes) -> list[tuple[float, float]]:
    """Page sizes in inches, read back with pypdf."""
    return [
        (float(p.mediabox.width) / 72, float(p.mediabox.height) / 72)
        for p in PdfReader(io.BytesIO(pdf)).pages
    ]


def png_size(data: bytes) -> tuple[int, int]:
    """Pixel size of a PNG, checking it is one."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("compression", ["group4", "group3", "tiff_lzw"])
def test_fax_tiff_to_pdf_keeps_pages_and_proportions(compression: str) -> None:
    """Every frame becomes a page of its physical size: 1728x1078 px at 204x98 dpi = 8.47x11 in."""
    pdf = tiff_to_pdf(samples.tiff(3, compression=compression))
    sizes = sizes_in_inches(pdf)
    assert len(sizes) == 3
    for width, height in sizes:
        assert width == pytest.approx(1728 / 204, abs=0.01)
        assert height == pytest.approx(1078 / 98, abs=0.01)


def test_fine_resolution_tiff_to_pdf() -> None:
    """A 'fine' fax (204x196 dpi) is the same paper size with twice the rows."""
    pdf = tiff_to_pdf(samples.tiff(1, size=(1728, 2156), dpi=(204.0, 196.0)))
    ((width, height),) = sizes_in_inches(pdf)
    assert (round(width, 2), round(height, 2)) == (8.47, 11.0)


def test_tiff_without_resolution_tags_is_recognised_as_a_fax() -> None:
    """A fax TIFF without resolution tags gets the standard fax resolution, not 96 dpi squares."""
    pdf = tiff_to_pdf(samples.tiff(2, dpi=None))
    for width, height in sizes_in_inches(pdf):
        assert (round(width, 2), round(height, 2)) == (8.47, 11.0)


def test_fax_resolution_inference() -> None:
    """Standard fax widths imply 204 dpi across; rows give normal or fine resolution."""
    assert fax_resolution(1728, 1078) == (204.0, 98.0)
    assert fax_resolution(1728, 2200) == (204.0, 196.0)
    assert fax_resolution(1000, 1000) is None


def test_tiff_to_pdf_refuses_other_data() -> None:
    """Non-TIFF data is unsupported; a damaged TIFF is corrupt."""
    with pytest.raises(DocumentError) as caught:
        tiff_to_pdf(samples.pdf())
    assert caught.value.kind == "unsupported"
    with pytest.raises(DocumentError) as caught:
        tiff_to_pdf(samples.tiff(2)[:200])
    assert caught.value.kind == "corrupt"


def test_pdf_to_tiff_makes_a_fax_tiff() -> None:
    """A PDF becomes a bilevel G4 TIFF at 204x196 dpi with one frame per page."""
    data = pdf_to_tiff(samples.pdf(3))
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 3
        assert image.mode == "1"
        assert image.info["compression"] == "group4"
        assert image.info["dpi"] == pytest.approx((204, 196))
        # Letter: 8.5 in x 204 dpi across, 11 in x 196 dpi down.
        assert image.size == (1734, 11 * 196)
    # And back: the round trip keeps the paper size.
    assert [tuple(round(v, 1) for v in s) for s in sizes_in_inches(tiff_to_pdf(data))] == [
        (8.5, 11.0)
    ] * 3


def test_pdf_to_tiff_refuses_a_corrupt_pdf() -> None:
    """A PDF that cannot be read is a DocumentError, not a PDFium exception."""
    with pytest.raises(DocumentError) as caught:
        pdf_to_tiff(samples.corrupt_pdf())
    assert caught.value.kind == "corrupt"


@pytest.mark.parametrize(
    ("data", "content_type", "width", "size"),
    [
        (samples.pdf(2), "application/pdf", 600, (600, 776)),
        (samples.pdf(1, size=samples.A4), "application/pdf", 300, (300, 424)),
        (samples.pdf(1, size=(792, 612)), "application/pdf", 600, (600, 464)),
        (samples.tiff(3), "image/tiff", 600, (600, 779)),
        (samples.tiff(1, dpi=None), "image/tiff", 600, (600, 779)),
        (samples.png(400, 300), "image/png", 600, (600, 450)),
        (samples.png(400, 300, mode="RGBA"), "image/png", 200, (200, 150)),
        (samples.jpeg(640, 480), "image/jpeg", 320, (320, 240)),
    ],
)
def test_first_page_png_dimensions(
    data: bytes, content_type: str, width: int, size: tuple[int, int]
) -> None:
    """The preview is exactly `width` wide with the page's physical proportions."""
    assert png_size(first_page_png(data, content_type, width=width)) == size


def test_preview_shows_the_page_content() -> None:
    """A PDF preview is not blank: the sample page's black box is drawn."""
    with Image.open(io.BytesIO(first_page_png(samples.pdf(), "application/pdf"))) as image:
        grey = image.convert("L")
        assert grey.getextrema()[0] < 50
        assert grey.getpixel((5, 5)) > 200


@pytest.mark.parametrize(
    ("data", "content_type", "kind"),
    [
        (samples.corrupt_pdf(), "application/pdf", "corrupt"),
        (samples.encrypted_pdf("secret"), "application/pdf", "unsupported"),
        (samples.png()[:100], "image/png", "corrupt"),
        (samples.docx(), "application/zip", "unsupported"),
    ],
)
def test_preview_errors_are_document_errors(data: bytes, content_type: str, kind: str) -> None:
    """Damaged, locked or unknown documents raise DocumentError with the right kind."""
    with pytest.raises(DocumentError) as caught:
        first_page_png(data, content_type)
    assert caught.value.kind == kind


def test_previews_from_many_threads_at_once() -> None:
    """PDFium is used from worker threads; concurrent previews all succeed."""
    documents = [samples.pdf(n) for n in range(1, 9)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        sizes = list(
            pool.map(lambda d: png_size(first_page_png(d, "application/pdf", 100)), documents * 3)
        )
    assert sizes == [(100, 129)] * 24


def test_a_tiff_of_too_many_frames_is_refused_before_decoding() -> None:
    """20,000 frames past max_pages: TOO_MANY_PAGES in well under a second, nothing decoded
    (decoding them takes several seconds of CPU)."""
    data = samples.tiff_chain(20_000)
    started = time.thread_time()  # CPU, not wall time: a loaded machine slows the clock
    with pytest.raises(DocumentError, match="more than 250 pages") as caught:
        tiff_to_pdf(data, max_pages=250)
    assert time.thread_time() - started < 1
    assert caught.value.kind == "too_many_pages"
    assert len(PdfReader(io.BytesIO(tiff_to_pdf(samples.tiff(3), max_pages=3))).pages) == 3
