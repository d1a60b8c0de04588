"""Plain-text attachments as fax pages: monospace, wrapped, paginated, drawn like the cover.

A `.txt` file is laid out as a typewriter would: one fixed-width cell per character (two for
East Asian wide ones), tabs at every 8th column, long lines wrapped at the last space that fits
(cut inside a word only when a word is longer than a line), a form feed starts a new page. The
pages are bilevel 200 dpi images on Letter or A4 (gateway/document/cover.py draws them the same
way), so no converter program is involved and the count is exact before anything is drawn.
"""

from __future__ import annotations

import functools
import io
import threading
import unicodedata
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gateway.document.cover import DPI, MARGIN_PX, PAPER_INCHES, pages_to_pdf
from gateway.document.mime import TOO_MANY_PAGES, DocumentError

FONT_PX = 28  # 10 pt at 200 dpi: about 86 columns on Letter, 84 on A4
LINE_PX = round(FONT_PX * 1.2)
TAB_COLUMNS = 8

_MONO_FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSansMono.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSansMono.ttf"),
)
# FreeType faces are not safe to share between threads (validation and assembly run at once).
_FONT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _MONO_FONT_FILES:
        if path.is_file():
            return ImageFont.truetype(str(path), FONT_PX)
    # Pillow's own font is proportional; the cell below is its widest Latin letter, so lines
    # still fit, only less evenly.
    return ImageFont.load_default(size=FONT_PX)


def _cell_px() -> float:
    with _FONT_LOCK:
        return float(_font().getlength("M"))


def _grid(paper: str) -> tuple[int, int]:
    """(columns, lines) of one page."""
    width_in, height_in = PAPER_INCHES[paper]
    width, height = round(width_in * DPI), round(height_in * DPI)
    columns = int((width - 2 * MARGIN_PX) // _cell_px())
    lines = (height - 2 * MARGIN_PX) // LINE_PX
    return max(columns, 20), max(lines, 10)


def _cells(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _clean(line: str) -> str:
    """Tabs expanded to columns; controls, format characters and unassigned ones dropped."""
    out: list[str] = []
    column = 0
    for char in line:
        if char == "\t":
            spaces = TAB_COLUMNS - column % TAB_COLUMNS
            out.append(" " * spaces)
            column += spaces
        elif unicodedata.category(char) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(char)
            column += _cells(char)
    return "".join(out).rstrip()


def _wrap(line: str, columns: int) -> list[str]:
    """`line` in pieces of at most `columns` cells, broken after the last space that fits."""
    pieces: list[str] = []
    while True:
        used, cut = 0, len(line)
        for index, char in enumerate(line):
            used += _cells(char)
            if used > columns:
                cut = index
                break
        if cut == len(line):
            pieces.append(line)
            return pieces
        space = line.rfind(" ", 0, cut + 1)
        if space > 0 and line[:space].strip():
            pieces.append(line[:space].rstrip())
            line = line[space + 1 :]
        else:
            pieces.append(line[: max(cut, 1)])
            line = line[max(cut, 1) :]


def layout(text: str, *, paper: str, page_limit: int | None = None) -> list[list[str]]:
    """The lines of each page; with `page_limit`, stops once more pages than that are needed."""
    columns, per_page = _grid(paper)
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    pages: list[list[str]] = [[]]
    for sheet_index, sheet in enumerate(text.split("\f")):
        if sheet_index > 0 and pages[-1]:
            pages.append([])
        for source in sheet.split("\n"):
            for piece in _wrap(_clean(source), columns):
                if len(pages[-1]) >= per_page:
                    pages.append([])
                    if page_limit is not None and len(pages) > page_limit:
                        return pages
                pages[-1].append(piece)
    # No blank lines or page at the end (a trailing newline or form feed), but one page at least.
    while len(pages) > 1 and not any(line.strip() for line in pages[-1]):
        pages.pop()
    while len(pages[-1]) > 1 and not pages[-1][-1].strip():
        pages[-1].pop()
    return pages


def text_to_pdf(data: bytes, *, paper: str, max_pages: int, label: str) -> bytes:
    """UTF-8 text as a PDF of monospace pages; DocumentError if it needs over `max_pages`."""
    pages = layout(data.decode("utf-8", "replace"), paper=paper, page_limit=max_pages)
    if len(pages) > max_pages:
        raise DocumentError(
            f"{label}: the text needs more than {max_pages} pages; the limit is {max_pages}",
            kind=TOO_MANY_PAGES,
        )
    width_in, height_in = PAPER_INCHES[paper]
    size = round(width_in * DPI), round(height_in * DPI)
    images: list[bytes] = []
    for lines in pages:
        image = Image.new("1", size, 1)
        draw = ImageDraw.Draw(image)
        with _FONT_LOCK:
            for number, line in enumerate(lines):
                if line:
                    draw.text((MARGIN_PX, MARGIN_PX + number * LINE_PX), line, font=_font())
        buffer = io.BytesIO()
        image.save(buffer, "PNG", dpi=(DPI, DPI))
        images.append(buffer.getvalue())
    return pages_to_pdf(images, paper)
