"""Plain-text attachments as monospace fax pages: wrapped, paginated, counted before drawing."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from gateway.document.kinds import TEXT, convertible_type
from gateway.document.mime import TOO_MANY_PAGES, DocumentError, extract
from gateway.document.text import _grid, layout, text_to_pdf
from tests import samples


def test_long_lines_wrap_at_spaces_and_keep_every_character() -> None:
    """A line longer than the page wraps after the last space that fits; nothing is lost."""
    columns, _ = _grid("letter")
    words = " ".join(f"word{n:03d}" for n in range(60))
    [page] = layout(words, paper="letter")
    assert all(len(line) <= columns for line in page)
    assert len(page) > 1
    assert " ".join(page).split() == words.split()


def test_a_word_longer_than_a_line_is_cut() -> None:
    """A run without spaces (a URL, a hash) is cut at the page width instead of overflowing."""
    columns, _ = _grid("a4")
    [page] = layout("x" * (columns * 2 + 5), paper="a4")
    assert [len(line) for line in page] == [columns, columns, 5]


def test_tabs_expand_to_columns_of_eight_and_controls_vanish() -> None:
    """Tabs line up at every 8th column; other control characters are dropped."""
    [page] = layout("a\tb\x07\ncd\te", paper="letter")
    assert page == ["a       b", "cd      e"]


def test_pages_break_when_full_and_at_form_feeds() -> None:
    """A page holds a fixed number of lines; a form feed starts a new page; no blank last page."""
    _, per_page = _grid("letter")
    pages = layout("\n".join(str(n) for n in range(per_page + 1)) + "\n", paper="letter")
    assert [len(page) for page in pages] == [per_page, 1]
    assert len(layout("one\fTwo\f", paper="letter")) == 2


def test_pdf_has_the_counted_pages_at_paper_size() -> None:
    """text_to_pdf draws exactly the pages layout counted, on Letter."""
    _, per_page = _grid("letter")
    text = "\n".join(f"line {n}" for n in range(per_page * 2 + 3))
    reader = PdfReader(
        io.BytesIO(text_to_pdf(text.encode(), paper="letter", max_pages=10, label="t"))
    )
    assert len(reader.pages) == 3
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (612, 792)


def test_text_past_the_page_limit_is_refused_naming_the_file() -> None:
    """A text file needing more than fax.max_pages is refused before any page is drawn."""
    with pytest.raises(DocumentError) as caught:
        text_to_pdf(b"line\n" * 10_000, paper="letter", max_pages=3, label="log.txt")
    assert caught.value.kind == TOO_MANY_PAGES
    assert str(caught.value).startswith("log.txt: the text needs more than 3 pages")


def test_text_attachment_is_kept_decoded_when_convertible() -> None:
    """With TEXT convertible, a Latin-1 .txt attachment is an attachment in UTF-8, not the body."""
    raw = samples.mail(
        samples.part("Caf\u00e9 notes\n", "text/plain", filename="notes.txt", charset="latin-1"),
        body="Body here",
    )
    extracted = extract(raw, convertible=frozenset({TEXT}))
    assert extracted.body_text == "Body here"
    [notes] = extracted.attachments
    assert (notes.filename, notes.content_type, notes.data) == (
        "notes.txt",
        TEXT,
        "Caf\u00e9 notes\r\n".encode(),  # the line ends as on the wire; layout reads both
    )


@pytest.mark.parametrize(
    ("declared", "filename", "expected"),
    [
        ("application/octet-stream", "Report.DOCX", "docx"),
        ("application/msword", None, "application/msword"),
        ("text/rtf", "memo", "application/rtf"),
        ("application/octet-stream", "notes.txt", TEXT),
        ("text/plain", "data.csv", TEXT),
        ("application/zip", "archive.zip", None),
    ],
)
def test_convertible_types_by_name_then_declared_type(
    declared: str, filename: str | None, expected: str | None
) -> None:
    """The extension decides first (clients say octet-stream), then the declared type."""
    found = convertible_type(declared, filename)
    if expected == "docx":
        assert found is not None and found.endswith("wordprocessingml.document")
    else:
        assert found == expected
