"""Counting pages, validating a mail's documents, and assembling the one document to fax."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import pypdfium2 as pdfium
import pytest
from PIL import Image
from pypdf import PdfReader

from gateway.config import CoverConfig
from gateway.document.assemble import Document, assemble, count_pages, validate
from gateway.document.cover import CoverContext
from gateway.document.mime import Attachment, DocumentError, Extracted, extract
from tests import samples

NO_COVER = CoverConfig()
COVER = CoverConfig(enabled=True)


def extracted(*attachments: Attachment, body: str = "Please fax.", unsupported=()) -> Extracted:
    """An Extracted as extract() would return it."""
    return Extracted("Subject", "<id@x>", body, tuple(attachments), tuple(unsupported))


def pdf_pages(data: bytes) -> list[tuple[int, int]]:
    """Page sizes (rounded points) of a PDF, read back with pypdf."""
    return [
        (round(float(page.mediabox.width)), round(float(page.mediabox.height)))
        for page in PdfReader(io.BytesIO(data)).pages
    ]


def ink(data: bytes, page: int = 0) -> float:
    """Fraction of dark pixels on a rendered PDF page."""
    document = pdfium.PdfDocument(data)
    try:
        rendered = document[page].render(scale=0.5)
        image = rendered.to_pil().convert("L")
        rendered.close()
    finally:
        document.close()
    histogram = image.histogram()
    return sum(histogram[:128]) / (image.width * image.height)


def corner_is_white(data: bytes, page: int = 0) -> bool:
    """Whether the rendered page is white just inside its margin (where an image starts)."""
    document = pdfium.PdfDocument(data)
    try:
        rendered = document[page].render(scale=1)
        image = rendered.to_pil().convert("L")
        rendered.close()
    finally:
        document.close()
    return image.getpixel((image.width // 2, image.height // 2 - 60)) > 200


# --- count_pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "pages"),
    [
        (samples.pdf(1), "application/pdf", 1),
        (samples.pdf(7), "application/pdf", 7),
        (samples.encrypted_pdf("", pages=2), "application/pdf", 2),
        (samples.tiff(4), "image/tiff", 4),
        (samples.png(), "image/png", 1),
        (samples.png(mode="RGBA"), "image/png", 1),
        (samples.jpeg(), "image/jpeg", 1),
    ],
)
def test_count_pages(data: bytes, content_type: str, pages: int) -> None:
    """PDF pages and TIFF frames are counted; a PNG/JPEG is one page; owner-locked PDFs open."""
    assert count_pages(data, content_type) == pages


@pytest.mark.parametrize(
    ("data", "content_type", "kind", "text"),
    [
        (samples.corrupt_pdf(), "application/pdf", "corrupt", "the PDF is damaged"),
        (samples.truncated_pdf(), "application/pdf", "corrupt", "the PDF is damaged"),
        (samples.encrypted_pdf("secret"), "application/pdf", "unsupported", "password"),
        (samples.jpeg()[:2000], "image/jpeg", "corrupt", "the JPEG image is damaged"),
        (samples.png()[:200], "image/png", "corrupt", "the PNG image is damaged"),
        (samples.png(), "image/jpeg", "corrupt", "not a JPEG"),
        (samples.tiff(2)[:300], "image/tiff", "corrupt", "the TIFF image is damaged"),
        (samples.docx(), "application/zip", "unsupported", "cannot be faxed"),
    ],
)
def test_count_pages_refuses_what_cannot_be_read(
    data: bytes, content_type: str, kind: str, text: str
) -> None:
    """Damaged files, password-protected PDFs and other types raise DocumentError, clearly."""
    with pytest.raises(DocumentError) as caught:
        count_pages(data, content_type)
    assert caught.value.kind == kind
    assert text in str(caught.value)


# --- validate ------------------------------------------------------------------------------------


def test_validate_counts_all_parts() -> None:
    """The page count is the sum over all parts."""
    mail = extract(
        samples.mail(
            samples.attachment(samples.pdf(2), "a.pdf"),
            samples.attachment(samples.png(), "b.png"),
            samples.attachment(samples.tiff(3), "c.tif"),
        )
    )
    assert validate(mail, max_pages=50, cover=NO_COVER) == 6


def test_validate_no_document_names_supported_types() -> None:
    """Without a faxable part the error says which types can be faxed."""
    with pytest.raises(DocumentError) as caught:
        validate(extract(samples.mail()), max_pages=10, cover=NO_COVER)
    assert caught.value.kind == "no_document"
    assert (
        str(caught.value) == "nothing to fax: attach a PDF, TIFF, PNG or JPEG file to the message"
    )


def test_validate_no_document_names_the_unsupported_attachment() -> None:
    """A .docx-only mail is refused with the .docx named."""
    mail = extract(samples.mail(samples.attachment(samples.docx(), "report.docx")))
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=10, cover=NO_COVER)
    assert caught.value.kind == "no_document"
    assert str(caught.value) == "report.docx cannot be faxed; attach a PDF, TIFF, PNG or JPEG file"


def test_validate_names_many_unsupported_attachments_briefly() -> None:
    """Many unsupported parts are listed up to five, then counted."""
    mail = extracted(unsupported=[f"f{i}.doc" for i in range(8)])
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=10, cover=NO_COVER)
    assert str(caught.value).startswith("f0.doc, f1.doc, f2.doc, f3.doc, f4.doc and 3 more cannot")


def test_validate_corrupt_names_the_file() -> None:
    """A corrupt PDF is refused naming the file, even next to a good one."""
    mail = extract(
        samples.mail(
            samples.attachment(samples.pdf(), "good.pdf"),
            samples.attachment(samples.corrupt_pdf(), "Rechnung März.pdf"),
        )
    )
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=10, cover=NO_COVER)
    assert caught.value.kind == "corrupt"
    assert str(caught.value) == "Rechnung Marz.pdf: the PDF is damaged and cannot be read"


def test_validate_declared_pdf_that_is_not_one_is_corrupt() -> None:
    """A .pdf whose bytes are something else is reported as a damaged PDF by name."""
    mail = extract(samples.mail(samples.attachment(b"<html/>", "scan.pdf", "application/pdf")))
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=10, cover=NO_COVER)
    assert (caught.value.kind, str(caught.value).split(":")[0]) == ("corrupt", "scan.pdf")


def test_validate_password_protected_pdf() -> None:
    """A PDF needing a password is refused as unsupported, telling the sender what to do."""
    mail = extracted(Attachment("locked.pdf", "application/pdf", samples.encrypted_pdf()))
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=10, cover=NO_COVER)
    assert caught.value.kind == "unsupported"
    assert str(caught.value) == (
        "locked.pdf: the PDF is protected by a password; send it without the password"
    )


def test_validate_too_many_pages_gives_the_numbers() -> None:
    """Over max_pages the error names the page count and the limit."""
    mail = extracted(
        Attachment("a.pdf", "application/pdf", samples.pdf(4)),
        Attachment("b.tif", "image/tiff", samples.tiff(3)),
    )
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=5, cover=NO_COVER)
    assert caught.value.kind == "too_many_pages"
    assert str(caught.value) == "the fax would have 7 pages; the limit is 5"
    assert validate(mail, max_pages=7, cover=NO_COVER) == 7


@pytest.mark.parametrize("build", [validate, assemble])
def test_tiff_with_many_frames_is_refused_before_any_frame_is_decoded(build) -> None:
    """A 20,000-frame TIFF is refused from its IFD chain in well under a second, count named."""
    # Times here are this thread's CPU (thread_time), not the wall clock a loaded machine
    # stretches: what they bound is the work done.
    mail = extracted(
        Attachment("a.pdf", "application/pdf", samples.pdf(2)),
        Attachment("many.tif", "image/tiff", samples.tiff_chain(20_000)),
    )
    started = time.thread_time()
    with pytest.raises(DocumentError) as caught:
        if build is validate:
            validate(mail, max_pages=50, cover=NO_COVER)
        else:
            assemble(mail, paper="letter", max_pages=50, cover=NO_COVER)
    elapsed = time.thread_time() - started
    assert caught.value.kind == "too_many_pages"
    assert str(caught.value) == "the fax would have 20002 pages; the limit is 50"
    assert elapsed < 0.5, f"took {elapsed:.2f} s"


def test_tiff_past_the_frame_ceiling_is_refused_without_a_count() -> None:
    """Past 65,535 frames the walk stops and the error says "more than", still in bounded time."""
    mail = extracted(Attachment("many.tif", "image/tiff", samples.tiff_chain(70_000)))
    started = time.thread_time()
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=50, cover=NO_COVER)
    elapsed = time.thread_time() - started
    assert caught.value.kind == "too_many_pages"
    assert str(caught.value) == "the fax would have more than 65535 pages; the limit is 50"
    assert elapsed < 0.5, f"took {elapsed:.2f} s"


def test_validate_cover_counts_toward_the_limit() -> None:
    """The cover page is counted, and can be the page that goes over the limit."""
    mail = extracted(Attachment("a.pdf", "application/pdf", samples.pdf(3)))
    assert validate(mail, max_pages=4, cover=COVER) == 4
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=3, cover=COVER)
    assert str(caught.value) == "the fax would have 4 pages; the limit is 3"


def test_validate_body_only() -> None:
    """With body_only a text-only mail is a fax; without it, or with no text, it is refused."""
    text_only = extracted(body="Please call me back.")
    assert validate(text_only, max_pages=5, cover=CoverConfig(enabled=True, body_only=True)) == 1
    assert validate(text_only, max_pages=5, cover=CoverConfig(body_only=True)) == 1
    for config, mail in [(COVER, text_only), (CoverConfig(body_only=True), extracted(body=" \n"))]:
        with pytest.raises(DocumentError) as caught:
            validate(mail, max_pages=5, cover=config)
        assert caught.value.kind == "no_document"


def test_validate_long_body_only_fax_respects_the_limit() -> None:
    """A body-only fax longer than max_pages is refused with the limit, quickly."""
    long_text = extracted(body="\n".join(f"line {i}" for i in range(100_000)))
    with pytest.raises(DocumentError) as caught:
        validate(long_text, max_pages=3, cover=CoverConfig(body_only=True))
    assert caught.value.kind == "too_many_pages"
    assert str(caught.value).endswith("the limit is 3")


@pytest.mark.parametrize("paper", ["letter", "a4"])
@pytest.mark.parametrize(
    "cover",
    [NO_COVER, COVER, CoverConfig(enabled=True, body_only=True), CoverConfig(body_only=True)],
)
@pytest.mark.parametrize("body", ["Short note.", "A long letter. " * 600])
@pytest.mark.parametrize("with_files", [True, False])
def test_validate_and_assemble_agree(
    paper: str, cover: CoverConfig, body: str, with_files: bool
) -> None:
    """validate promises exactly the page count that assemble produces."""
    parts = (
        (
            Attachment("a.pdf", "application/pdf", samples.pdf(2)),
            Attachment("b.tif", "image/tiff", samples.tiff(2)),
        )
        if with_files
        else ()
    )
    mail = extracted(*parts, body=body)
    context = CoverContext("a@example.com", "+15551234567", "S", body, 0, datetime.now(UTC))
    try:
        promised = validate(mail, max_pages=200, cover=cover, paper=paper, cover_context=context)
    except DocumentError as exc:
        assert exc.kind == "no_document" and not with_files and not cover.body_only
        return
    document = assemble(mail, paper=paper, max_pages=200, cover=cover, cover_context=context)
    assert document.pages == promised == len(pdf_pages(document.data))


# --- assemble ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "name", "filename"),
    [
        (samples.pdf(3), "application/pdf", "Q3 report (final).PDF", "Q3_report__final.pdf"),
        (samples.png(), "image/png", "scan.png", "scan.png"),
        (samples.jpeg(), "image/jpeg", None, "fax.jpg"),
        (samples.tiff(2), "image/tiff", "Fax für Ämter.tiff", "Fax_fur_Amter.tif"),
    ],
)
def test_single_attachment_is_faxed_unchanged(
    data: bytes, content_type: str, name: str | None, filename: str
) -> None:
    """One attachment and no cover: the very same bytes, type, page count, a safe filename."""
    document = assemble(
        extracted(Attachment(name, content_type, data)),
        paper="letter",
        max_pages=10,
        cover=NO_COVER,
        cover_context=None,
        templates_dir=None,
    )
    assert document == Document(data, content_type, count_pages(data, content_type), filename)


@pytest.mark.parametrize(
    ("paper", "size"), [("letter", (612, 792)), ("a4", (595, 842))], ids=["letter", "a4"]
)
def test_merge_pdf_png_and_multipage_tiff(paper: str, size: tuple[int, int]) -> None:
    """PDF + PNG + 3-page TIFF merge in order into 2+1+3 pages; images sit on `paper` pages."""
    mail = extract(
        samples.mail(
            samples.attachment(samples.pdf(2, size=(500, 700)), "a.pdf"),
            samples.attachment(samples.png(), "b.png"),
            samples.attachment(samples.tiff(3), "c.tif"),
        )
    )
    document = assemble(mail, paper=paper, max_pages=10, cover=NO_COVER)
    assert (document.content_type, document.pages, document.filename) == (
        "application/pdf",
        6,
        "fax.pdf",
    )
    # The PDF keeps its own page size; every image page is exactly Letter or A4.
    assert pdf_pages(document.data) == [(500, 700)] * 2 + [size] * 4
    text = [page.extract_text() for page in PdfReader(io.BytesIO(document.data)).pages[:2]]
    assert text == ["Page 1 of 2", "Page 2 of 2"]


def test_fax_tiff_keeps_its_proportions_on_the_page() -> None:
    """A 204x98 dpi fax page (8.47x11 in) is drawn tall, not squashed to its pixel ratio."""
    mail = extracted(
        Attachment("a.tif", "image/tiff", samples.tiff(1)),
        Attachment("b.png", "image/png", samples.png()),
    )
    document = assemble(mail, paper="letter", max_pages=10, cover=NO_COVER)
    page = PdfReader(io.BytesIO(document.data)).pages[0]
    image = page.images[0]
    placed = _placed_size(page)
    # Physical aspect of the fax page is 11 / 8.47 = 1.30; its pixel aspect would be 0.62.
    assert placed[1] / placed[0] == pytest.approx(11.0 / (1728 / 204), rel=0.01)
    assert image.image.size == (1728, 1078)


def _placed_size(page) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Width and height at which the page's content stream draws its image (the cm operator)."""
    content = page.get_contents().get_data().decode("latin-1").split()
    index = content.index("cm")
    return float(content[index - 6]), float(content[index - 3])


def test_large_image_is_shrunk_into_the_page_and_small_one_is_not_enlarged() -> None:
    """Images larger than the page are fitted inside the margin; small ones keep their size."""
    mail = extracted(
        Attachment("big.png", "image/png", samples.png(4000, 1000)),
        Attachment("small.png", "image/png", samples.png(96, 48)),
    )
    document = assemble(mail, paper="letter", max_pages=10, cover=NO_COVER)
    big, small = (_placed_size(p) for p in PdfReader(io.BytesIO(document.data)).pages)
    assert big[0] == pytest.approx(612 - 36) and big[1] == pytest.approx((612 - 36) / 4)
    assert small == pytest.approx((72.0, 36.0))  # 96x48 px at 96 dpi


def test_transparent_png_is_flattened_onto_white() -> None:
    """A PNG with a transparent background becomes a white page, not a black one."""
    mail = extracted(
        Attachment("a.png", "image/png", samples.png(600, 600, mode="RGBA")),
        Attachment("b.pdf", "application/pdf", samples.pdf()),
    )
    document = assemble(mail, paper="letter", max_pages=10, cover=NO_COVER)
    reader = PdfReader(io.BytesIO(document.data))
    assert "/SMask" not in reader.pages[0].images[0].indirect_reference.get_object()
    assert 0.0 < ink(document.data, 0) < 0.5


def test_exif_rotated_photo_is_turned_upright_on_a_portrait_page() -> None:
    """A phone photo stored sideways with EXIF orientation 6 is placed upright (tall)."""
    stored = Image.new("RGB", (800, 600), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif.tobytes())
    mail = extracted(
        Attachment("photo.jpg", "image/jpeg", buffer.getvalue()),
        Attachment("b.pdf", "application/pdf", samples.pdf()),
    )
    document = assemble(mail, paper="letter", max_pages=10, cover=NO_COVER)
    page = PdfReader(io.BytesIO(document.data)).pages[0]
    width, height = _placed_size(page)
    assert height > width
    assert (round(float(page.mediabox.width)), page.get("/Rotate", 0)) == (612, 0)


def test_cover_page_is_prepended() -> None:
    """With a cover, page 1 is a non-blank cover of paper size and the parts follow."""
    mail = extracted(Attachment("a.pdf", "application/pdf", samples.pdf(2)))
    context = CoverContext(
        "alice@example.com", "+1 555 123 4567", "Contract", "Sign page 2.", 0, datetime.now(UTC)
    )
    document = assemble(mail, paper="a4", max_pages=10, cover=COVER, cover_context=context)
    assert document.pages == 3
    assert pdf_pages(document.data) == [(595, 842), (612, 792), (612, 792)]
    assert 0.001 < ink(document.data, 0) < 0.2
    texts = [p.extract_text() for p in PdfReader(io.BytesIO(document.data)).pages]
    assert texts[1:] == ["Page 1 of 2", "Page 2 of 2"]


def test_cover_with_single_image_makes_a_pdf() -> None:
    """A cover turns even a single image into a merged PDF."""
    mail = extracted(Attachment("a.jpg", "image/jpeg", samples.jpeg()))
    document = assemble(mail, paper="letter", max_pages=10, cover=COVER)
    assert (document.content_type, document.pages) == ("application/pdf", 2)


def test_body_only_fax() -> None:
    """With body_only a text-only mail becomes a PDF of its text (with or without the cover)."""
    mail = extracted(body="Please call me back at 555-0100.")
    for cover in (CoverConfig(enabled=True, body_only=True), CoverConfig(body_only=True)):
        document = assemble(mail, paper="letter", max_pages=5, cover=cover)
        assert (document.content_type, document.pages) == ("application/pdf", 1)
        assert pdf_pages(document.data) == [(612, 792)]
        assert ink(document.data) > 0.0005


def test_assemble_enforces_the_limit_and_refuses_nothing_to_fax() -> None:
    """assemble checks the same rules as validate: no document, page limit."""
    with pytest.raises(DocumentError) as caught:
        assemble(extracted(), paper="letter", max_pages=5, cover=NO_COVER)
    assert caught.value.kind == "no_document"
    mail = extracted(Attachment("a.pdf", "application/pdf", samples.pdf(6)))
    with pytest.raises(DocumentError) as caught:
        assemble(mail, paper="letter", max_pages=5, cover=NO_COVER)
    assert caught.value.kind == "too_many_pages"


def test_owner_locked_pdf_merges() -> None:
    """A PDF that opens without a password (owner-locked) merges like any other."""
    mail = extracted(
        Attachment("a.pdf", "application/pdf", samples.encrypted_pdf("", pages=2)),
        Attachment("b.png", "image/png", samples.png()),
    )
    document = assemble(mail, paper="letter", max_pages=10, cover=NO_COVER)
    assert document.pages == 3
    assert not PdfReader(io.BytesIO(document.data)).is_encrypted


def test_validate_takes_the_page_count_from_the_page_tree_root() -> None:
    """validate reads a PDF's /Count without reading its pages: 2,000 pages refused in a
    fraction of the time counting them one by one takes."""
    data = samples.pdf(2000)
    mail = extracted(Attachment("big.pdf", "application/pdf", data))
    started = time.thread_time()
    with pytest.raises(DocumentError) as caught:
        validate(mail, max_pages=50, cover=NO_COVER)
    declared = time.thread_time() - started
    assert caught.value.kind == "too_many_pages"
    assert "2000 pages" in str(caught.value)
    started = time.thread_time()
    assert count_pages(data, "application/pdf") == 2000  # every page object read
    assert declared < (time.thread_time() - started) / 2


def test_a_pdf_whose_root_understates_its_pages_is_never_built_past_the_limit() -> None:
    """A root /Count of 2 on 3 real pages passes validate with 2, and assemble refuses it."""
    lying = samples.pdf(3).replace(b"/Count 3", b"/Count 2")
    mail = extracted(Attachment("scan.pdf", "application/pdf", lying))
    assert validate(mail, max_pages=2, cover=NO_COVER) == 2
    with pytest.raises(DocumentError) as caught:
        assemble(mail, paper="letter", max_pages=2, cover=NO_COVER)
    assert caught.value.kind == "too_many_pages"
    assert assemble(mail, paper="letter", max_pages=3, cover=NO_COVER).pages == 3
