"""Real office files made on the spot (python-docx, openpyxl, odfpy, or by hand), and the skip
the LibreOffice tests take on a machine without it."""

from __future__ import annotations

import io
import shutil

import pytest

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ODT = "application/vnd.oasis.opendocument.text"
ODS = "application/vnd.oasis.opendocument.spreadsheet"
ODP = "application/vnd.oasis.opendocument.presentation"
RTF = "application/rtf"
HTML = "text/html"

needs_libreoffice = pytest.mark.skipif(
    shutil.which("soffice") is None or shutil.which("unshare") is None,
    reason="*** LibreOffice is not installed (Debian: libreoffice-writer-nogui,"
    " libreoffice-calc-nogui, libreoffice-impress-nogui; see debian-packages.txt) or unshare"
    " (util-linux) is missing: the office conversion tests SKIP ***",
)


def docx(text: str = "Quarterly report for the fax") -> bytes:
    import docx as python_docx

    document = python_docx.Document()
    document.add_heading("Report", level=1)
    document.add_paragraph(text)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def xlsx(text: str = "Budget sheet for the fax") -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet["A1"] = text
    sheet["A2"] = 42
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def odt(text: str = "OpenDocument letter for the fax") -> bytes:
    from odf.opendocument import OpenDocumentText
    from odf.text import P

    document = OpenDocumentText()
    document.text.addElement(P(text=text))
    buffer = io.BytesIO()
    document.write(buffer)
    return buffer.getvalue()


def ods(text: str = "OpenDocument sheet for the fax") -> bytes:
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import Table, TableCell, TableRow
    from odf.text import P

    document = OpenDocumentSpreadsheet()
    table = Table(name="Sheet1")
    row = TableRow()
    cell = TableCell()
    cell.addElement(P(text=text))
    row.addElement(cell)
    table.addElement(row)
    document.spreadsheet.addElement(table)
    buffer = io.BytesIO()
    document.write(buffer)
    return buffer.getvalue()


def odp(text: str = "OpenDocument slide for the fax") -> bytes:
    from odf.draw import Frame, Page, TextBox
    from odf.opendocument import OpenDocumentPresentation
    from odf.style import MasterPage, PageLayout
    from odf.text import P

    document = OpenDocumentPresentation()
    layout = PageLayout(name="Layout")
    document.automaticstyles.addElement(layout)
    master = MasterPage(name="Master", pagelayoutname=layout)
    document.masterstyles.addElement(master)
    page = Page(masterpagename=master)
    frame = Frame(width="20cm", height="3cm", x="2cm", y="2cm")
    box = TextBox()
    box.addElement(P(text=text))
    frame.addElement(box)
    page.addElement(frame)
    document.presentation.addElement(page)
    buffer = io.BytesIO()
    document.write(buffer)
    return buffer.getvalue()


def rtf(text: str = "Rich text memo for the fax") -> bytes:
    return ("{\\rtf1\\ansi\\deff0 {\\fonttbl {\\f0 Times;}}\\f0\\fs24 " + text + "\\par}").encode()


def html(text: str = "Web page for the fax", image_url: str | None = None) -> bytes:
    image = f'<img src="{image_url}" alt="logo">' if image_url else ""
    return f"<html><body><h1>Page</h1><p>{text}</p>{image}</body></html>".encode()
