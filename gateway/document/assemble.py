"""One fax document from a mail: check it can be faxed (at DATA), then build it (in a worker).

`validate` is what the SMTP server calls before it answers 250: it opens every part just far
enough to know it is readable and how many pages it has, without building anything. `assemble`
builds the document the carrier will fetch:

- one PDF/TIFF/PNG/JPEG attachment and no cover: faxed as it is, bytes unchanged;
- otherwise one PDF, in message order: the cover first (when enabled), then each PDF's pages
  (pypdf) and each image on a Letter/A4 page (img2pdf; a multi-page TIFF stays whole);
- no attachment, only body text, and `cover.body_only`: the text is the document (the cover,
  which shows the body, when covers are enabled; the plain text otherwise).
Both count pages the same way, except that `validate` takes a PDF's page count from its page tree
root where `assemble` reads every page; so the number `validate` promised is the number faxed,
or, for a PDF whose root lies about its pages, the job fails when it is built.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from pypdf import PdfReader, PdfWriter
from pypdf.errors import DependencyError

from gateway.config import CoverConfig
from gateway.document.convert import (
    Layout,
    images_to_pdf,
    missing_fax_resolution,
    natural_layout,
)
from gateway.document.cover import (
    PAPER_POINTS,
    CoverContext,
    count_cover_pages,
    count_text_pages,
    render_cover,
    render_text_pages,
    with_page_total,
)
from gateway.document.kinds import (
    FAXABLE_TYPES,
    JPEG,
    MAX_TIFF_FRAMES,
    PDF,
    PNG,
    TIFF,
    TYPE_NAMES,
    extension,
    tiff_frames,
)
from gateway.document.mime import (
    CORRUPT,
    NO_DOCUMENT,
    TOO_MANY_PAGES,
    UNSUPPORTED,
    Attachment,
    DocumentError,
    Extracted,
    one_line_ascii,
)

# Images are placed inside this margin (points): the edge a fax machine cannot print.
IMAGE_MARGIN_PT = 18.0
# Pillow refuses ("decompression bomb") images much larger than this; so do we, with a message.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

SUPPORTED = ", ".join(TYPE_NAMES[t] for t in FAXABLE_TYPES[:-1]) + f" or {TYPE_NAMES[JPEG]}"
_IMAGE_FORMATS = {TIFF: ("TIFF",), PNG: ("PNG",), JPEG: ("JPEG", "MPO")}


@dataclass(frozen=True)
class Document:
    """The document to fax: its bytes, type, exact page count and a safe ASCII filename."""

    data: bytes
    content_type: str
    pages: int
    filename: str


# --- counting -----------------------------------------------------------------------------------


def count_pages(data: bytes, content_type: str, *, exact: bool = True) -> int:
    """Pages this document will fax as; DocumentError if it is damaged or cannot be opened.

    `exact=False` takes a PDF's word for it: the /Count of its page tree root, instead of
    reading every page object (~0.25 ms a page). `validate` counts so at DATA; `assemble`
    counts exactly, so a PDF whose root lies is refused when it is built (the job fails and the
    sender is told), never faxed past `fax.max_pages`.

    Encrypted PDFs: one that opens without a password (only editing or printing is restricted,
    an "owner password") is read like any other; the carrier renders it the same way. One that
    needs a password to open is refused as "unsupported": nobody can render it without the
    password, and the sender can fix it by sending it unprotected.
    """
    if content_type == PDF:
        return _pdf_pages(data, exact=exact)
    if content_type in _IMAGE_FORMATS:
        return _image_pages(data, content_type)
    raise DocumentError(f"{content_type} cannot be faxed; attach {SUPPORTED}", kind=UNSUPPORTED)


def _open_pdf(data: bytes) -> PdfReader:
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except Exception:
        raise DocumentError("the PDF is damaged and cannot be read", kind=CORRUPT) from None
    if encrypted:
        try:
            opened = bool(reader.decrypt(""))
        except DependencyError:
            opened = False
        except Exception:
            raise DocumentError("the PDF is damaged and cannot be read", kind=CORRUPT) from None
        if not opened:
            raise DocumentError(
                "the PDF is protected by a password; send it without the password",
                kind=UNSUPPORTED,
            )
    return reader


def _pdf_pages(data: bytes, *, exact: bool = True) -> int:
    reader = _open_pdf(data)
    try:
        declared = None if exact else _declared_pages(reader)
        pages = declared if declared is not None else len(reader.pages)
    except Exception:
        raise DocumentError("the PDF is damaged and cannot be read", kind=CORRUPT) from None
    if pages < 1:
        raise DocumentError("the PDF has no pages", kind=CORRUPT)
    return pages


def _declared_pages(reader: PdfReader) -> int | None:
    """The /Count of the page tree root, when it is a plain positive integer; else None."""
    root = reader.trailer["/Root"].get_object()["/Pages"].get_object()
    count = root.get("/Count")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 1:
        return int(count)
    return None


def _image_pages(data: bytes, content_type: str) -> int:
    name = TYPE_NAMES[content_type]
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in _IMAGE_FORMATS[content_type]:
                raise DocumentError(f"the file is not a {name} image", kind=CORRUPT)
            frames = getattr(image, "n_frames", 1) if content_type == TIFF else 1
            for frame in range(frames):
                image.seek(frame)
                width, height = image.size
                if width < 1 or height < 1:
                    raise DocumentError(f"the {name} image is empty", kind=CORRUPT)
                if width * height > MAX_IMAGE_PIXELS:
                    raise DocumentError(
                        f"the {name} image is too large ({width}x{height} pixels); "
                        f"the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels",
                        kind=UNSUPPORTED,
                    )
                if content_type == JPEG:
                    # Decoding at 1/8 scale still reads every byte of the stream: a truncated
                    # JPEG fails here, at a fraction of the cost of a full decode.
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
            return frames
    except DocumentError:
        raise
    except Image.DecompressionBombError:
        raise DocumentError(f"the {name} image is too large to fax", kind=UNSUPPORTED) from None
    except Exception:
        raise DocumentError(
            f"the {name} image is damaged and cannot be read", kind=CORRUPT
        ) from None


# --- planning -----------------------------------------------------------------------------------


def _body_only(extracted: Extracted, cover: CoverConfig) -> bool:
    return cover.body_only and not extracted.attachments and bool(extracted.body_text.strip())


def _no_document(extracted: Extracted) -> DocumentError:
    if extracted.unsupported:
        names = ", ".join(extracted.unsupported[:5])
        if len(extracted.unsupported) > 5:
            names += f" and {len(extracted.unsupported) - 5} more"
        return DocumentError(
            f"{names} cannot be faxed; attach a {SUPPORTED} file", kind=NO_DOCUMENT
        )
    return DocumentError(
        f"nothing to fax: attach a {SUPPORTED} file to the message", kind=NO_DOCUMENT
    )


def _part_pages(attachment: Attachment, *, exact: bool) -> int:
    try:
        return count_pages(attachment.data, attachment.content_type, exact=exact)
    except DocumentError as exc:
        raise DocumentError(f"{attachment.label}: {exc.message}", kind=exc.kind) from None


def _default_context(extracted: Extracted) -> CoverContext:
    return CoverContext(
        sender="",
        recipient="",
        subject=extracted.subject,
        body=extracted.body_text,
        pages=0,
        date=datetime.now(UTC),
    )


def _check_limit(pages: int, max_pages: int) -> None:
    if pages > max_pages:
        raise DocumentError(
            f"the fax would have {pages} pages; the limit is {max_pages}", kind=TOO_MANY_PAGES
        )


def _counted(
    attachments: tuple[Attachment, ...], max_pages: int, *, exact: bool = True
) -> list[int]:
    """Each attachment's pages, refusing as soon as the running total is over `max_pages`.

    A TIFF's frames are first counted along its IFD chain, before Pillow parses every IFD and
    validation decodes every frame: a 20,000-frame TIFF of 1x1 pages (2.9 MB) took 65 s of CPU
    to be refused that way, and takes milliseconds this way (docs/RELIABILITY.md).
    """
    counts: list[int] = []
    for attachment in attachments:
        if attachment.content_type == TIFF:
            frames = tiff_frames(attachment.data)
            if frames is not None and frames > MAX_TIFF_FRAMES:
                raise DocumentError(
                    f"the fax would have more than {MAX_TIFF_FRAMES} pages; "
                    f"the limit is {max_pages}",
                    kind=TOO_MANY_PAGES,
                )
            # None (not a TIFF by its bytes) or a damaged chain: the decoder below names it.
            _check_limit(sum(counts) + (frames or 0), max_pages)
        counts.append(_part_pages(attachment, exact=exact))
        _check_limit(sum(counts), max_pages)
    return counts


def validate(
    extracted: Extracted,
    *,
    max_pages: int,
    cover: CoverConfig,
    paper: str = "letter",
    cover_context: CoverContext | None = None,
    templates_dir: Path | None = None,
) -> int:
    """The number of pages the fax will have (cover included), or DocumentError.

    Builds nothing. `paper`, `cover_context` and `templates_dir` matter only with a cover, whose
    length depends on them; give the same values `assemble` will get for an exact count. A
    broken cover template raises CoverTemplateError (an operator's problem: answer 4xx).
    """
    context = cover_context or _default_context(extracted)
    template = cover.template
    if not extracted.attachments:
        if not _body_only(extracted, cover):
            raise _no_document(extracted)
        if cover.enabled:
            pages = count_cover_pages(
                replace(context, pages=max_pages),
                paper=paper,
                template_name=template,
                templates_dir=templates_dir,
                page_limit=max_pages,
            )
        else:
            pages = count_text_pages(extracted.body_text, paper=paper, page_limit=max_pages)
        _check_limit(pages, max_pages)
        return pages
    pages = sum(_counted(extracted.attachments, max_pages, exact=False))
    if cover.enabled:
        context = with_page_total(
            context,
            document_pages=pages,
            paper=paper,
            template_name=template,
            templates_dir=templates_dir,
        )
        pages = context.pages
    _check_limit(pages, max_pages)
    return pages


# --- building -----------------------------------------------------------------------------------


def assemble(
    extracted: Extracted,
    *,
    paper: str,
    max_pages: int,
    cover: CoverConfig,
    cover_context: CoverContext | None = None,
    templates_dir: Path | None = None,
) -> Document:
    """Build the one document to fax (see the module docstring). DocumentError if it cannot be.

    The `pages` of `cover_context` is ignored: the cover shows the real total.
    """
    context = cover_context or _default_context(extracted)
    if not extracted.attachments:
        if not _body_only(extracted, cover):
            raise _no_document(extracted)
        if cover.enabled:
            context = with_page_total(
                context,
                document_pages=0,
                paper=paper,
                template_name=cover.template,
                templates_dir=templates_dir,
            )
            data = render_cover(
                context, paper=paper, template_name=cover.template, templates_dir=templates_dir
            )
        else:
            data = render_text_pages(extracted.body_text, paper=paper)
        return _finished(data, max_pages)

    counts = _counted(extracted.attachments, max_pages)
    if len(extracted.attachments) == 1 and not cover.enabled:
        only = extracted.attachments[0]
        return Document(only.data, only.content_type, counts[0], safe_filename(only))

    parts: list[tuple[bytes, int]] = []
    if cover.enabled:
        context = with_page_total(
            context,
            document_pages=sum(counts),
            paper=paper,
            template_name=cover.template,
            templates_dir=templates_dir,
        )
        _check_limit(context.pages, max_pages)
        cover_pdf = render_cover(
            context, paper=paper, template_name=cover.template, templates_dir=templates_dir
        )
        parts.append((cover_pdf, context.pages - sum(counts)))
    for attachment, count in zip(extracted.attachments, counts, strict=True):
        if attachment.content_type == PDF:
            parts.append((attachment.data, count))
        else:
            fallback = missing_fax_resolution(attachment.data)
            layout = on_paper_layout(paper, fallback_dpi=fallback)
            pdf = images_to_pdf(
                attachment.data,
                layout=layout,
                first_frame_only=attachment.content_type != TIFF,
                label=attachment.label,
            )
            parts.append((pdf, count))
    return _finished(_merge(parts), max_pages)


def _finished(pdf: bytes, max_pages: int) -> Document:
    # Our own PDF, just written by pypdf: its root's /Count is the truth.
    reader = PdfReader(io.BytesIO(pdf))
    pages = _declared_pages(reader) or len(reader.pages)
    _check_limit(pages, max_pages)
    return Document(pdf, PDF, pages, "fax.pdf")


def _merge(parts: list[tuple[bytes, int]]) -> bytes:
    writer = PdfWriter()
    for data, expected in parts:
        reader = _open_pdf(data)
        before = len(writer.pages)
        writer.append(reader, import_outline=False)
        if len(writer.pages) - before != expected:
            # Cannot happen with the libraries as they are; if it does, the count we promised
            # would be wrong, and a fax with a wrong page count must not go out silently.
            raise DocumentError(
                f"a part gave {len(writer.pages) - before} pages instead of {expected}",
                kind=CORRUPT,
            )
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def safe_filename(attachment: Attachment) -> str:
    """An ASCII filename for storage and downloads, with the extension its bytes deserve."""
    stem = one_line_ascii(attachment.filename or "", limit=80)
    dot = stem.rfind(".")
    if dot > 0:
        stem = stem[:dot]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("_")
    return (stem or "fax") + extension(attachment.content_type)


def on_paper_layout(paper: str, *, fallback_dpi: tuple[float, float] | None = None) -> Layout:
    """Images on a Letter/A4 page: at their own size, shrunk to fit inside the margin if larger."""
    page_width, page_height = PAPER_POINTS[paper]
    room_width = page_width - 2 * IMAGE_MARGIN_PT
    room_height = page_height - 2 * IMAGE_MARGIN_PT
    natural = natural_layout(fallback_dpi)

    def layout(
        width_px: float, height_px: float, ndpi: tuple[float, float]
    ) -> tuple[float, float, float, float]:
        _, _, width, height = natural(width_px, height_px, ndpi)
        scale = min(1.0, room_width / width, room_height / height)
        return page_width, page_height, width * scale, height * scale

    return layout
