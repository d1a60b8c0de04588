"""A PNG picture of page 1 of a fax, for notifications and the web view.

PDFs are rendered with pypdfium2; TIFF, PNG and JPEG with Pillow. Fax TIFFs often have a
different resolution across than down (204x98 dpi), so images are scaled by their physical size,
not their pixel counts: the preview has the proportions of the paper, not a squashed page.
"""

from __future__ import annotations

import io

import pypdfium2 as pdfium
from PIL import Image, ImageOps

from gateway.document.convert import PDFIUM_LOCK, missing_fax_resolution
from gateway.document.kinds import JPEG, PDF, PNG, TIFF, TYPE_NAMES
from gateway.document.mime import CORRUPT, UNSUPPORTED, DocumentError

# However tall a page is, the preview stays below this many times its width.
_MAX_ASPECT = 8


def first_page_png(data: bytes, content_type: str, width: int = 600) -> bytes:
    """Page 1 of a PDF/TIFF/PNG/JPEG as a PNG exactly `width` pixels wide, aspect kept."""
    image = first_page_image(data, content_type, width)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def first_page_image(data: bytes, content_type: str, width: int = 600) -> Image.Image:
    """Page 1 as a picture `width` pixels wide (RGB or grey), for a caller that embeds it
    itself: no PNG made only to be decoded again."""
    if width < 1:
        raise ValueError("width must be positive")
    if content_type == PDF:
        return _pdf_first_page(data, width)
    if content_type in (TIFF, PNG, JPEG):
        return _image_first_page(data, content_type, width)
    raise DocumentError(f"{content_type} cannot be previewed", kind=UNSUPPORTED)


def _fit(image: Image.Image, physical_ratio: float, width: int) -> Image.Image:
    height = max(1, min(round(width * physical_ratio), width * _MAX_ASPECT))
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _pdf_first_page(data: bytes, width: int) -> Image.Image:
    with PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise DocumentError(
                    "the PDF is protected by a password", kind=UNSUPPORTED
                ) from None
            raise DocumentError("the PDF is damaged and cannot be read", kind=CORRUPT) from None
        try:
            if len(document) < 1:
                raise DocumentError("the PDF has no pages", kind=CORRUPT)
            page = document[0]
            try:
                page_width, page_height = page.get_size()
                if page.get_rotation() in (90, 270):
                    page_width, page_height = page_height, page_width
                scale = width / page_width if page_width > 0 else 1.0
                scale = min(scale, width * _MAX_ASPECT / max(page_height, 1.0))
                bitmap = page.render(scale=scale, may_draw_forms=True)
                try:
                    # to_pil() may share the bitmap's memory: copy before the bitmap is freed.
                    image = bitmap.to_pil().convert("RGB")
                finally:
                    bitmap.close()
            finally:
                page.close()
        except pdfium.PdfiumError:
            raise DocumentError("the PDF is damaged and cannot be read", kind=CORRUPT) from None
        finally:
            document.close()
    return _fit(image, page_height / page_width if page_width > 0 else 1.0, width)


def _image_first_page(data: bytes, content_type: str, width: int) -> Image.Image:
    name = TYPE_NAMES[content_type]
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)
            info = opened.info
            dpi = (
                missing_fax_resolution(data) or info.get("dpi") or info.get("resolution") or (1, 1)
            )
            frame = ImageOps.exif_transpose(opened.copy()) or opened.copy()
    except Exception:
        raise DocumentError(
            f"the {name} image is damaged and cannot be read", kind=CORRUPT
        ) from None
    x_dpi, y_dpi = (float(v) if v and float(v) > 0 else 1.0 for v in dpi[:2])
    if frame.size != opened.size:  # a quarter turn: resolutions swap with the axes
        x_dpi, y_dpi = y_dpi, x_dpi
    if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
        rgba = frame.convert("RGBA")
        frame = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    elif frame.mode in ("1", "L", "I", "I;16", "F"):
        frame = frame.convert("L")  # grey, so a shrunk bilevel fax stays readable
    else:
        frame = frame.convert("RGB")
    physical_ratio = (frame.height / y_dpi) / (frame.width / x_dpi)
    return _fit(frame, physical_ratio, width)
