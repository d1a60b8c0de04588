"""Cover pages and text pages: templates, cleaning of mail data, layout and page counts."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from pypdf import PdfReader

from gateway.document.cover import (
    BUILTIN_TEMPLATES,
    CoverContext,
    CoverTemplateError,
    check_template,
    clean_block,
    clean_line,
    count_cover_pages,
    count_text_pages,
    cover_text,
    render_cover,
    render_text_pages,
    with_page_total,
)

WHEN = datetime(2024, 5, 17, 14, 30, tzinfo=UTC)


def context(**changes: object) -> CoverContext:
    """A typical cover context, with `changes` applied."""
    values: dict[str, object] = {
        "sender": "alice@example.com",
        "recipient": "+15551234567",
        "subject": "Signed contract",
        "body": "Hello Bob,\n\nhere is the contract.\n\nAlice",
        "pages": 3,
        "date": WHEN,
    }
    values.update(changes)
    return CoverContext(**values)  # type: ignore[arg-type]


def page_sizes(pdf: bytes) -> list[tuple[int, int]]:
    """Rounded page sizes in points."""
    return [
        (round(float(p.mediabox.width)), round(float(p.mediabox.height)))
        for p in PdfReader(io.BytesIO(pdf)).pages
    ]


def dark_rows(pdf: bytes, page: int = 0) -> list[int]:
    """Indexes of pixel rows with ink on a rendered page (to see where text lines are)."""
    document = pdfium.PdfDocument(pdf)
    try:
        bitmap = document[page].render(scale=1)
        image = bitmap.to_pil().convert("L")
        bitmap.close()
    finally:
        document.close()
    width = image.width
    data = image.tobytes()
    return [y for y in range(image.height) if min(data[y * width : (y + 1) * width]) < 128]


def test_builtin_template_shows_every_field() -> None:
    """The built-in template renders sender, recipient, subject, pages, date and body."""
    text = cover_text(context())
    for expected in (
        "alice@example.com",
        "+15551234567",
        "Signed contract",
        "3 (including this cover page)",
        "2024-05-17 14:30 UTC",
        "here is the contract.",
    ):
        assert expected in text
    assert (BUILTIN_TEMPLATES / "cover.txt.j2").is_file()


@pytest.mark.parametrize(("paper", "size"), [("letter", (612, 792)), ("a4", (595, 842))])
def test_cover_is_one_page_of_paper_size_with_ink(paper: str, size: tuple[int, int]) -> None:
    """A short cover is one Letter/A4 page with text on it."""
    pdf = render_cover(context(), paper=paper)
    assert page_sizes(pdf) == [size]
    rows = dark_rows(pdf)
    assert len(rows) > 50  # a dozen lines of text, each several pixels tall
    assert rows[0] > 20 and rows[-1] < size[1] - 20  # inside the margins


def test_long_body_flows_onto_more_pages_and_counts_agree() -> None:
    """A long body makes a multi-page cover, and the counting functions predict it exactly."""
    long = context(body="\n".join(f"Line {n} of a long message." for n in range(200)))
    pdf = render_cover(long, paper="letter")
    pages = len(page_sizes(pdf))
    assert pages > 2
    assert count_cover_pages(long, paper="letter") == pages
    assert count_cover_pages(long, paper="a4") < pages  # A4 is taller: fewer pages


def test_with_page_total_counts_the_cover_itself() -> None:
    """The total shown on the cover includes the cover's own pages."""
    short = with_page_total(context(), document_pages=4, paper="letter")
    assert short.pages == 5
    long = context(body="word " * 3000)
    total = with_page_total(long, document_pages=4, paper="letter")
    assert total.pages == 4 + count_cover_pages(total, paper="letter")
    assert total.pages > 5


def test_control_characters_in_mail_data_cannot_change_the_layout() -> None:
    """Newlines, tabs, form feeds and escapes in mail fields stay text, on their own line."""
    clean = render_cover(context(), paper="letter")
    hostile = context(
        subject="Signed\r\n\r\n\r\ncontract\x0c\x1b[2J\x0e",
        sender="alice@example.com\n\n\nFake: header",
        recipient="+15551234567\u2028\u2029",
    )
    text = cover_text(hostile)
    assert "Subject:\tSigned contract [2J" in text
    assert "From:\talice@example.com Fake: header" in text
    # Only the template's own heading marker; nothing from the mail became a control.
    assert "\x0c" not in text and text.count("\x0e") == 1 and "\x1b" not in text
    pdf = render_cover(hostile, paper="letter")
    assert len(page_sizes(pdf)) == 1
    # Same number of text lines drawn: nothing was split into extra lines.
    assert _line_count(dark_rows(pdf)) == _line_count(dark_rows(clean))


def _line_count(rows: list[int]) -> int:
    """Number of separate runs of inked rows (text lines)."""
    return sum(1 for i, y in enumerate(rows) if i == 0 or y - rows[i - 1] > 1)


def test_form_feed_in_body_is_not_a_page_break() -> None:
    """A form feed in the mail body does not start a new page (only templates can)."""
    assert count_cover_pages(context(body="a\x0c\x0c\x0cb"), paper="letter") == 1


def test_bidi_override_is_removed() -> None:
    """Right-to-left override characters cannot reverse how a number is drawn."""
    assert clean_line("+1555\u202e7654321") == "+15557654321"
    assert clean_block("line\u202e one\r\nline\ttwo\x00") == "line one\nline    two"


def test_override_directory_wins_and_falls_back(tmp_path: Path) -> None:
    """A template in the override directory is used; other names come from the built-in set."""
    (tmp_path / "cover.txt.j2").write_text("{{ page_break }}Custom for {{ recipient }}")
    (tmp_path / "plain.txt.j2").write_text("Only {{ subject }}")
    assert cover_text(context(), templates_dir=tmp_path) == "\x0cCustom for +15551234567"
    assert cover_text(context(), template_name="plain.txt.j2", templates_dir=tmp_path) == (
        "Only Signed contract"
    )
    # A page break at the very start makes an empty first page: the template's choice.
    assert count_cover_pages(context(), paper="letter", templates_dir=tmp_path) == 2
    other = tmp_path / "empty"
    other.mkdir()
    assert "Signed contract" in cover_text(context(), templates_dir=other)


def test_template_page_break_and_heading(tmp_path: Path) -> None:
    """`page_break` starts a page; `heading` draws taller text than body lines."""
    (tmp_path / "t.j2").write_text('{{ "BIG" | heading }}\nsmall\n{{ page_break }}\nnext page')
    pdf = render_cover(context(), paper="letter", template_name="t.j2", templates_dir=tmp_path)
    assert len(page_sizes(pdf)) == 2
    rows = dark_rows(pdf)
    runs: list[list[int]] = []
    for y in rows:
        if runs and y - runs[-1][-1] <= 1:
            runs[-1].append(y)
        else:
            runs.append([y])
    heading, body = runs[0], runs[1]
    assert len(heading) > 1.5 * len(body)


def test_broken_template_is_an_operator_error(tmp_path: Path) -> None:
    """Unknown variables, syntax errors and missing files raise CoverTemplateError."""
    (tmp_path / "typo.j2").write_text("{{ sendr }}")
    (tmp_path / "syntax.j2").write_text("{% if %}")
    for name in ("typo.j2", "syntax.j2", "missing.j2"):
        with pytest.raises(CoverTemplateError) as caught:
            check_template(name, tmp_path)
        assert name in str(caught.value)
    check_template()


def test_render_text_pages_wraps_and_paginates() -> None:
    """Body-only text wraps long lines and words and paginates; counting predicts it."""
    text = ("word " * 40 + "\n") * 60 + "x" * 5000
    pdf = render_text_pages(text, paper="a4")
    sizes = page_sizes(pdf)
    assert len(sizes) == count_text_pages(text, paper="a4") > 1
    assert set(sizes) == {(595, 842)}
    assert count_text_pages(text, paper="a4", page_limit=1) == 2  # stops early, above the limit


def test_empty_text_is_one_blank_page() -> None:
    """Empty text still makes a (blank) page rather than an invalid PDF."""
    pdf = render_text_pages("", paper="letter")
    assert page_sizes(pdf) == [(612, 792)]
    assert dark_rows(pdf) == []


def test_unknown_paper_is_refused() -> None:
    """Only letter and a4 are paper sizes."""
    with pytest.raises(ValueError):
        render_text_pages("x", paper="legal")


def test_covers_render_from_many_threads_at_once() -> None:
    """Validation and assembly lay out text in different threads; results stay identical."""
    long = context(body="Lorem ipsum dolor sit amet. " * 300)
    expected = count_cover_pages(long, paper="letter")
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda _: count_cover_pages(long, paper="letter"), range(12)))
        pdfs = list(pool.map(lambda _: render_cover(long, paper="a4"), range(4)))
    assert counts == [expected] * 12
    # Compare the drawn pages (the PDF's /ID differs from one save to the next).
    drawn = {
        tuple(i.data for p in PdfReader(io.BytesIO(pdf)).pages for i in p.images) for pdf in pdfs
    }
    assert len(drawn) == 1
