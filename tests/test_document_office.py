"""LibreOffice conversion for real: Word, Excel, OpenDocument, RTF and HTML files the tests make
become PDF; damaged, slow or unconvertible files are refused naming the file; no network."""

from __future__ import annotations

import http.server
import io
import random
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

from gateway.config import Config, DocumentsConfig
from gateway.document.conversion import CONVERTIBLE, to_faxable
from gateway.document.kinds import PDF
from gateway.document.mime import (
    CORRUPT,
    TOO_COSTLY,
    UNSUPPORTED,
    Attachment,
    DocumentError,
    extract,
)
from gateway.document.office import OfficeConverter
from tests import office_files, samples
from tests.office_files import needs_libreoffice


def text_of(pdf: bytes) -> str:
    return " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def converter(**settings: object) -> OfficeConverter:
    return OfficeConverter(DocumentsConfig(convert_office=True, **settings))  # type: ignore[arg-type]


@needs_libreoffice
@pytest.mark.parametrize(
    ("make", "content_type", "name", "words"),
    [
        (office_files.docx, office_files.DOCX, "report.docx", "Quarterly report"),
        (office_files.xlsx, office_files.XLSX, "budget.xlsx", "Budget sheet"),
        (office_files.odt, office_files.ODT, "letter.odt", "OpenDocument letter"),
        (office_files.ods, office_files.ODS, "sheet.ods", "OpenDocument sheet"),
        (office_files.odp, office_files.ODP, "slides.odp", "OpenDocument slide"),
        (office_files.rtf, office_files.RTF, "memo.rtf", "Rich text memo"),
        (office_files.html, office_files.HTML, "page.html", "Web page"),
    ],
)
def test_office_file_becomes_a_pdf_with_its_text(
    make: Callable[[], bytes], content_type: str, name: str, words: str
) -> None:
    """Each office format a test makes comes back from LibreOffice as a PDF showing its text."""
    pdf = converter().convert(Attachment(name, content_type, make()))
    assert pdf.startswith(b"%PDF-")
    assert words in text_of(pdf)


def test_bytes_that_are_not_the_claimed_format_are_refused_unopened() -> None:
    """A "docx" that is not a ZIP is refused as damaged, naming it, before LibreOffice runs
    (LibreOffice would open it as plain text and fax gibberish)."""
    missing = converter(libreoffice="/nonexistent/soffice")  # proves no program was needed
    with pytest.raises(DocumentError) as caught:
        missing.convert(Attachment("notes.docx", office_files.DOCX, b"just some text"))
    assert caught.value.kind == CORRUPT
    assert str(caught.value) == "notes.docx is damaged or not a Word file"


@needs_libreoffice
def test_file_libreoffice_cannot_read_is_refused_naming_it() -> None:
    """A ZIP shaped like a Word file that LibreOffice cannot load is refused by name."""
    with pytest.raises(DocumentError) as caught:
        converter().convert(Attachment("Broken.docx", office_files.DOCX, samples.docx()))
    assert caught.value.kind == CORRUPT
    assert str(caught.value) == "Broken.docx: LibreOffice could not convert this Word file to PDF"


@needs_libreoffice
def test_conversion_past_the_timeout_is_killed_and_refused() -> None:
    """A conversion still running at documents.convert_timeout_seconds is killed and refused."""
    with pytest.raises(DocumentError) as caught:
        converter(convert_timeout_seconds=0.2).convert(
            Attachment("slow.docx", office_files.DOCX, office_files.docx())
        )
    assert caught.value.kind == UNSUPPORTED
    assert str(caught.value) == "slow.docx took longer than 0.2 s to convert to PDF"


def test_a_zip_bomb_office_file_is_refused_before_libreoffice_opens_it() -> None:
    """A .docx of ~3 MB whose XML unpacks to 600 MB is too_costly, never given to LibreOffice
    (which unpacks it outside the worker's memory budget): refused even where it is missing."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(office_files.docx()), "r") as source,
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as bomb,
    ):
        for member in source.infolist():
            bomb.writestr(member, source.read(member))
        with bomb.open("word/padding.xml", "w", force_zip64=True) as padding:
            chunk = b"\0" * (16 * 1024 * 1024)
            for _ in range(600 // 16 + 1):
                padding.write(chunk)
    data = buffer.getvalue()
    assert len(data) < 4 * 1024 * 1024
    office = converter(libreoffice="/nonexistent/soffice")
    with pytest.raises(DocumentError, match=r"report\.docx unpacks to 608 MB") as caught:
        office.convert(Attachment("report.docx", office_files.DOCX, data))
    assert caught.value.kind == TOO_COSTLY


def test_missing_libreoffice_is_named() -> None:
    """Without the program, `missing()` names it and a file is refused naming the converter."""
    absent = converter(libreoffice="/nonexistent/soffice")
    assert absent.missing() == (
        "the converter LibreOffice ('/nonexistent/soffice') is not installed on the gateway"
    )
    with pytest.raises(DocumentError) as caught:
        absent.convert(Attachment("report.docx", office_files.DOCX, office_files.docx()))
    assert caught.value.kind == UNSUPPORTED
    assert "report.docx cannot be converted: the converter LibreOffice" in str(caught.value)


@pytest.fixture
def web_server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records every path asked of it."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(404)

        do_OPTIONS = do_HEAD = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@needs_libreoffice
def test_conversion_has_no_network(web_server: tuple[str, list[str]]) -> None:
    """An HTML file's remote image is never fetched: LibreOffice runs without network (outside
    the namespace it fetches it, which this test's server would record)."""
    url, asked = web_server
    page = office_files.html("Linked logo", image_url=f"{url}/tracker.png")
    pdf = converter().convert(Attachment("page.html", office_files.HTML, page))
    assert "Linked logo" in text_of(pdf)
    assert asked == []


def image_count(pdf: bytes) -> int:
    """The image XObjects on the PDF's pages."""
    count = 0
    for page in PdfReader(io.BytesIO(pdf)).pages:
        objects = (page.get("/Resources") or {}).get("/XObject") or {}
        count += sum(1 for o in objects.values() if o.get_object().get("/Subtype") == "/Image")
    return count


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 60), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
@needs_libreoffice
def test_conversion_reads_none_of_the_gateways_files(
    tmp_path: Path, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file:// image in data.dir, in the inbound archive or in another conversion's temp
    directory is not read into the PDF; the same image at a harmless path is."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    config = make_config(
        {"documents": {"convert_office": True}, "inbound": {"archive_dir": str(tmp_path / "a")}}
    )
    places = {
        "harmless": tmp_path / "public",
        "data.dir": config.data.dir / "inbound",
        "archive": tmp_path / "a" / "2026",
        "temp": tmp_path / "tmp" / "faxgw-convert-another",
    }
    for place in places.values():
        place.mkdir(parents=True)
        (place / "face.png").write_bytes(png())
    office = OfficeConverter.for_gateway(config)
    shown = {}
    for name, place in places.items():
        page = office_files.html(f"Image from {name}", image_url=(place / "face.png").as_uri())
        pdf = office.convert(Attachment("page.html", office_files.HTML, page))
        assert f"Image from {name}" in text_of(pdf)
        shown[name] = image_count(pdf) > 0
    assert shown == {"harmless": True, "data.dir": False, "archive": False, "temp": False}


def jpegs_docx(count: int) -> bytes:
    """A Word file of `count` noise pictures (~320 kB each, which JPEG cannot shrink)."""
    import docx as python_docx

    document = python_docx.Document()
    document.add_paragraph("Pictures")
    noise = random.Random(7)
    for _ in range(count):
        picture = Image.frombytes("RGB", (600, 600), noise.randbytes(600 * 600 * 3))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=90)
        document.add_picture(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


@pytest.mark.slow
@needs_libreoffice
def test_files_libreoffice_writes_are_bounded() -> None:
    """With documents.convert_max_output_mb = 1 a document whose PDF is ~1.4 MB is refused
    (LibreOffice cannot write it: RLIMIT_FSIZE); with the default it converts."""
    document = Attachment("pictures.docx", office_files.DOCX, jpegs_docx(5))
    assert len(converter().convert(document)) > 1024 * 1024
    with pytest.raises(DocumentError) as caught:
        converter(convert_max_output_mb=1).convert(document)
    assert str(caught.value) == (
        "pictures.docx: LibreOffice could not convert this Word file to PDF"
    )


@needs_libreoffice
def test_profile_is_thrown_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each conversion's profile and files live in a temp dir that is gone afterwards."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    converter().convert(Attachment("memo.rtf", office_files.RTF, office_files.rtf()))
    assert list(tmp_path.iterdir()) == []


def test_office_parts_are_unsupported_when_conversion_is_off() -> None:
    """With convert_office off an office attachment is named unsupported, as it always was,
    and a text attachment still becomes PDF pages."""
    raw = samples.mail(
        samples.attachment(office_files.docx(), "report.docx", office_files.DOCX),
        samples.part("Line one\nLine two\n", "text/plain", filename="notes.txt"),
    )
    faxable = to_faxable(
        extract(raw, convertible=CONVERTIBLE),
        office=OfficeConverter(DocumentsConfig()),
        paper="letter",
        max_pages=50,
    )
    assert faxable.extracted.unsupported == ("report.docx",)
    [notes] = faxable.extracted.attachments
    assert (notes.filename, notes.content_type) == ("notes.txt", PDF)
    assert "Line two" in text_of(notes.data) or len(PdfReader(io.BytesIO(notes.data)).pages) == 1
    assert faxable.converted == {}


def test_known_conversions_are_reused_without_libreoffice() -> None:
    """The prepare worker's path: a PDF kept from DATA stands in for its office file, so no
    converter is needed (the program here does not exist)."""
    raw = samples.mail(samples.attachment(office_files.docx(), "report.docx", office_files.DOCX))
    kept = samples.pdf(2)
    faxable = to_faxable(
        extract(raw, convertible=CONVERTIBLE),
        office=converter(libreoffice="/nonexistent/soffice"),
        paper="letter",
        max_pages=50,
        known={0: kept},
    )
    [document] = faxable.extracted.attachments
    assert (document.filename, document.content_type, document.data) == ("report.docx", PDF, kept)
