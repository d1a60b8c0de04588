"""Cover pages and text-only faxes: a Jinja2 text template drawn onto fax-resolution pages.

The template (`templates/cover.txt.j2`, or the same name in `[templates] dir`, which wins) renders
to plain text; that text is wrapped, paginated and drawn with Pillow onto bilevel 200 dpi page
images (what a fax machine prints: no grey, no anti-aliasing to dither), and img2pdf turns the
pages into a PDF of exactly Letter or A4 size.

Layout language of the rendered text, kept tiny on purpose:
- a newline is a line break; long lines wrap at word boundaries (inside words if they must);
- a TAB moves to the next tab stop (every inch), so "From:<TAB>{{ sender }}" lines up, and
  the wrapped rest of such a line hangs at that stop;
- `{{ "FAX" | heading }}` draws its text large; `{{ page_break }}` starts a new page.
Mail data (subject, body, addresses) is cleaned before it reaches the template: control
characters, tabs, form feeds and the private heading marker cannot come from a mail, so nothing a
sender writes can change the layout, only the text.
"""

from __future__ import annotations

import functools
import io
import re
import threading
import unicodedata
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import img2pdf
import jinja2
from PIL import Image, ImageDraw, ImageFont

from gateway.paths import builtin_templates

BUILTIN_TEMPLATES = builtin_templates()
DEFAULT_TEMPLATE = "cover.txt.j2"

# Page geometry. 200 dpi is between fax "fine" (204x196) and what a printer needs for crisp text.
DPI = 200
PAPER_INCHES: dict[str, tuple[float, float]] = {"letter": (8.5, 11.0), "a4": (8.27, 11.69)}
PAPER_POINTS: dict[str, tuple[float, float]] = {"letter": (612.0, 792.0), "a4": (595.28, 841.89)}
MARGIN_PX = 120  # 0.6 inch: more than the unprintable edge of any fax machine
FONT_PX = 30  # about 11 pt at 200 dpi: readable after a fax's vertical "normal" resolution
HEADING_PX = 64
LINE_SPACING = 1.3
TAB_PX = 200  # 1 inch

# Private markers only templates can produce (mail data is stripped of control characters).
_HEADING = "\x0e"
_PAGE_BREAK = "\f"

# Font objects are shared (cached) and FreeType faces are not safe to use from two threads at
# once; validation (SMTP thread) and assembly (worker thread) can lay out text at the same time.
_FONT_LOCK = threading.RLock()

# Debian's DejaVu covers Latin, Greek and Cyrillic; Pillow's built-in font covers Latin only.
# The same machine renders validation and assembly, so page counts agree whichever is used.
_FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
)


class CoverTemplateError(Exception):
    """The cover template cannot be loaded or rendered (an operator's problem, not the sender's)."""


@dataclass(frozen=True)
class CoverContext:
    """What a cover page tells: who sends what to whom, how many pages (cover included), when."""

    sender: str
    recipient: str
    subject: str
    body: str
    pages: int
    date: datetime


# --- cleaning mail data -------------------------------------------------------------------------


def clean_line(text: str) -> str:
    """One line of printable text: controls and line breaks become spaces, format characters go."""
    out = []
    for char in unicodedata.normalize("NFC", text):
        if char.isspace() or unicodedata.category(char) == "Cc":
            out.append(" ")
        elif not _is_control(char):
            out.append(char)
    return " ".join("".join(out).split())


def clean_block(text: str) -> str:
    """Multi-line text: newlines kept (any convention), tabs expanded, other controls removed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    lines = []
    for line in text.split("\n"):
        line = line.expandtabs(8)
        lines.append("".join(c for c in line if not _is_control(c)).rstrip())
    return "\n".join(lines).strip("\n")


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls (incl. TAB, FF); Cf: format characters such as bidi overrides, which
    # would reorder the drawn text; Cs/Co/Cn: surrogates, private use and unassigned code points.
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn")


# --- templates ----------------------------------------------------------------------------------


def _environment(templates_dir: Path | None) -> jinja2.Environment:
    search = [str(templates_dir)] if templates_dir is not None else []
    search.append(str(BUILTIN_TEMPLATES))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        autoescape=False,  # plain text drawn as pixels: there is no markup to escape
        undefined=jinja2.StrictUndefined,  # a misspelt variable is an error, not a blank
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["heading"] = lambda value: f"{_HEADING}{clean_line(str(value))}"
    env.globals["page_break"] = _PAGE_BREAK
    return env


def cover_text(
    context: CoverContext,
    *,
    template_name: str = DEFAULT_TEMPLATE,
    templates_dir: Path | None = None,
) -> str:
    """The cover template rendered as text (mail data cleaned first)."""
    variables = {
        "sender": clean_line(context.sender),
        "recipient": clean_line(context.recipient),
        "subject": clean_line(context.subject),
        "body": clean_block(context.body),
        "pages": context.pages,
        "date": context.date,
    }
    try:
        template = _environment(templates_dir).get_template(template_name)
        return template.render(**variables)
    except jinja2.TemplateError as exc:
        raise CoverTemplateError(f"cover template {template_name!r}: {exc}") from exc


def check_template(
    template_name: str = DEFAULT_TEMPLATE, templates_dir: Path | None = None
) -> None:
    """Render the template once with sample data; raises CoverTemplateError if it cannot be.

    For start-up and `check-config`: a broken template should stop the daemon, not every fax.
    """
    sample = CoverContext(
        sender="alice@example.com",
        recipient="+15551234567",
        subject="Sample",
        body="Sample body.",
        pages=2,
        date=datetime.now(UTC),
    )
    cover_text(sample, template_name=template_name, templates_dir=templates_dir)


# --- layout -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """One piece of text drawn at (x, y) on a page."""

    x: int
    y: int
    text: str
    heading: bool


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in _FONT_FILES:
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _page_pixels(paper: str) -> tuple[int, int]:
    if paper not in PAPER_INCHES:
        raise ValueError(f"paper must be one of {sorted(PAPER_INCHES)}, not {paper!r}")
    width, height = PAPER_INCHES[paper]
    return round(width * DPI), round(height * DPI)


@functools.lru_cache(maxsize=65536)
def _length(size: int, text: str) -> float:
    """Advance width of `text` in pixels (cached: the same words recur all through a letter)."""
    return float(_font(size).getlength(text))


def _wrap(text: str, width: float, size: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than a line is cut where it must be.

    Lines are measured as the sum of their words, which ignores kerning across word boundaries;
    the 1% kept spare covers it.
    """
    if not text.strip():
        return [""]
    budget = width * 0.99
    lines: list[str] = []
    indent = text[: len(text) - len(text.lstrip())]
    current, used = indent, _length(size, indent)
    for word in re.findall(r"\S+\s*", text):
        bare = word.rstrip()
        if used + _length(size, bare) <= budget:
            current, used = current + word, used + _length(size, word)
            continue
        if current.strip():
            lines.append(current.rstrip())
        while _length(size, bare) > budget:
            cut = _longest_prefix(bare, budget, size)
            lines.append(bare[:cut])
            bare, word = bare[cut:], word[cut:]
        current, used = word, _length(size, word)
    if current.strip() or not lines:
        lines.append(current.rstrip())
    return lines


def _longest_prefix(word: str, width: float, size: int) -> int:
    """The longest prefix of `word` (at least one character) that fits in `width`."""
    low, high = 1, len(word)
    while low < high:
        middle = (low + high + 1) // 2
        if _length(size, word[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return low


class _Pager:
    """Places lines top to bottom, starting a new page when one is full."""

    def __init__(self, paper: str) -> None:
        page_width, page_height = _page_pixels(paper)
        self.right = page_width - MARGIN_PX
        self.bottom = page_height - MARGIN_PX
        self.pages: list[list[_Run]] = [[]]
        self.y = MARGIN_PX

    def new_page(self) -> None:
        self.pages.append([])
        self.y = MARGIN_PX

    def take(self, height: int) -> int:
        """The top of the next line `height` pixels high (on a new page if it does not fit)."""
        if self.y + height > self.bottom and self.pages[-1]:
            self.new_page()
        top = self.y
        self.y += height
        return top

    def place(self, source: str) -> None:
        """One line of the rendered text: heading or not, tab stops, wrapped."""
        heading = source.startswith(_HEADING)
        source = "".join(c for c in source if c == "\t" or not _is_control(c))
        size = HEADING_PX if heading else FONT_PX
        line_height = round(size * LINE_SPACING)
        # Leading segments sit at successive tab stops; the last one wraps, hanging at its stop.
        segments = source.split("\t")
        x = MARGIN_PX
        fixed: list[tuple[int, str]] = []
        for segment in segments[:-1]:
            fixed.append((x, segment))
            end = x + _length(size, segment)
            x = MARGIN_PX + (int(end - MARGIN_PX) // TAB_PX + 1) * TAB_PX
        if x > self.right - 20 * _length(size, "M"):
            x = MARGIN_PX  # tab stops past most of the width: wrap from the margin instead
        for number, line in enumerate(_wrap(segments[-1], self.right - x, size)):
            top = self.take(line_height)
            if number == 0:
                self.pages[-1].extend(_Run(fx, top, text, heading) for fx, text in fixed if text)
            if line:
                self.pages[-1].append(_Run(x, top, line, heading))


def _layout(text: str, paper: str, page_limit: int | None = None) -> list[list[_Run]]:
    """Text placed on pages. With page_limit, stops once more pages than that are needed."""
    pager = _Pager(paper)
    with _FONT_LOCK:
        _place_all(pager, text, page_limit)
    pages = pager.pages
    if len(pages) > 1 and not pages[-1]:
        pages.pop()
    return pages


def _place_all(pager: _Pager, text: str, page_limit: int | None) -> None:
    for source in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if page_limit is not None and len(pager.pages) > page_limit:
            break
        chunks = source.split(_PAGE_BREAK)
        for index, chunk in enumerate(chunks):
            if index > 0:
                pager.new_page()
            if chunk or len(chunks) == 1:
                pager.place(chunk)


def count_text_pages(text: str, *, paper: str, page_limit: int | None = None) -> int:
    """How many pages `render_text_pages(text)` makes; past page_limit, some number above it."""
    return len(_layout(text, paper, page_limit))


def _draw(pages: list[list[_Run]], paper: str) -> bytes:
    width, height = _page_pixels(paper)
    images: list[bytes] = []
    for runs in pages:
        image = Image.new("1", (width, height), 1)
        draw = ImageDraw.Draw(image)
        with _FONT_LOCK:
            for run in runs:
                font = _font(HEADING_PX if run.heading else FONT_PX)
                draw.text((run.x, run.y), run.text, font=font)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", dpi=(DPI, DPI))
        images.append(buffer.getvalue())
    return pages_to_pdf(images, paper)


def pages_to_pdf(images: list[bytes], paper: str) -> bytes:
    """Page images (PNG at DPI) as a PDF whose pages are exactly Letter or A4."""
    page_width, page_height = PAPER_POINTS[paper]
    layout = img2pdf.get_layout_fun((page_width, page_height), fit=img2pdf.FitMode.into)
    pdf = img2pdf.convert(images, layout_fun=layout, nodate=True)
    if not isinstance(pdf, bytes):
        raise TypeError("img2pdf returned no PDF")
    return pdf


def render_text_pages(text: str, *, paper: str) -> bytes:
    """A PDF of `text` laid out on as many Letter/A4 pages as it needs (body-only faxes)."""
    return _draw(_layout(clean_block(text), paper), paper)


# --- covers -------------------------------------------------------------------------------------


def with_page_total(
    context: CoverContext,
    *,
    document_pages: int,
    paper: str,
    template_name: str = DEFAULT_TEMPLATE,
    templates_dir: Path | None = None,
) -> CoverContext:
    """`context` with `pages` = cover pages + document_pages, the cover's own pages included.

    The cover shows the total, and the total depends on how many pages the cover takes, so this
    looks for the fixed point (the count's digits can, rarely, push a line to the next page).
    """
    guess = replace(context, pages=document_pages + 1)
    for _ in range(4):
        cover_pages = len(
            _layout(
                cover_text(guess, template_name=template_name, templates_dir=templates_dir), paper
            )
        )
        if guess.pages == document_pages + cover_pages:
            return guess
        guess = replace(guess, pages=document_pages + cover_pages)
    return guess


def count_cover_pages(
    context: CoverContext,
    *,
    paper: str,
    template_name: str = DEFAULT_TEMPLATE,
    templates_dir: Path | None = None,
    page_limit: int | None = None,
) -> int:
    """How many pages the cover for `context` takes (as `context.pages` stands)."""
    text = cover_text(context, template_name=template_name, templates_dir=templates_dir)
    return len(_layout(text, paper, page_limit))


def render_cover(
    context: CoverContext,
    *,
    paper: str,
    template_name: str = DEFAULT_TEMPLATE,
    templates_dir: Path | None = None,
) -> bytes:
    """The cover as a PDF (one page, or more if the body text is long)."""
    text = cover_text(context, template_name=template_name, templates_dir=templates_dir)
    return _draw(_layout(text, paper), paper)
