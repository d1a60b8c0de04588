"""Document assembly: milliseconds per message to check (at DATA) and build (in prepare) a fax.

The mail carries a 3-page PDF, a PNG drawing and a 2-page fax TIFF. `assemble()` makes one PDF
of them (images placed on Letter pages by img2pdf, pages counted and checked); the baseline is
pypdf merging the PDF's pages alone. `validate()` opens every part to count its pages; its
baseline is pypdf counting the PDF's pages alone. The ratios are what images and the gateway's
checks add on top of the PDF work any merger does.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from pypdf import PdfReader, PdfWriter

from gateway.config import CoverConfig
from gateway.document.assemble import assemble, validate
from gateway.document.mime import Extracted, extract
from tests import samples
from tests.bench.common import Result

PDF_PAGES = 3
TIFF_PAGES = 2
WARM_UP = 2
_NO_COVER = CoverConfig()


def sample_mail() -> bytes:
    return samples.mail(
        samples.attachment(samples.pdf(PDF_PAGES), "report.pdf"),
        samples.attachment(samples.png(), "scan.png"),
        samples.attachment(samples.tiff(TIFF_PAGES), "fax.tif"),
    )


def ms_per_call(fn: Callable[[], object], iterations: int) -> float:
    for _ in range(WARM_UP):
        fn()
    started = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - started) * 1000 / iterations


def build(extracted: Extracted) -> None:
    document = assemble(extracted, paper="letter", max_pages=50, cover=_NO_COVER)
    if document.pages != PDF_PAGES + 1 + TIFF_PAGES:
        raise RuntimeError(f"assembled {document.pages} pages")


def check(extracted: Extracted) -> None:
    pages = validate(extracted, max_pages=50, cover=_NO_COVER)
    if pages != PDF_PAGES + 1 + TIFF_PAGES:
        raise RuntimeError(f"validated {pages} pages")


def pypdf_merge(pdf: bytes) -> None:
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(pdf)), import_outline=False)
    buffer = io.BytesIO()
    writer.write(buffer)


def pypdf_count(pdf: bytes) -> None:
    if len(PdfReader(io.BytesIO(pdf)).pages) != PDF_PAGES:
        raise RuntimeError("pypdf counted wrong")


def title(iterations: int) -> str:
    return f"Document assembly, PDF ({PDF_PAGES} p) + PNG + TIFF ({TIFF_PAGES} p), {iterations}x"


def run(iterations: int) -> list[Result]:
    """Blocking (CPU only): called in a thread by the runner."""
    extracted = extract(sample_mail())
    pdf = extracted.attachments[0].data
    return [
        Result(
            what="assemble() PDF+PNG+TIFF",
            unit="ms/msg",
            gateway=ms_per_call(lambda: build(extracted), iterations),
            baseline=ms_per_call(lambda: pypdf_merge(pdf), iterations),
            baseline_name=f"pypdf merging the {PDF_PAGES}-page PDF alone",
            higher_is_better=False,
            meaning="building the fax costs {ratio}x merging its PDF alone: image conversion "
            "and page checks",
        ),
        Result(
            what="validate() PDF+PNG+TIFF",
            unit="ms/msg",
            gateway=ms_per_call(lambda: check(extracted), iterations),
            baseline=ms_per_call(lambda: pypdf_count(pdf), iterations),
            baseline_name=f"pypdf counting the {PDF_PAGES}-page PDF's pages",
            higher_is_better=False,
            meaning="the check at DATA costs {ratio}x counting the PDF's pages alone: "
            "opening each image too",
        ),
    ]
