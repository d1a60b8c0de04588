"""Conversions between fax document formats: images to PDF pages, and both ways for inbound faxes.

Fax TIFFs are bilevel, usually CCITT G3 or G4 compressed, and have non-square pixels (204 dpi
across, 98 or 196 dpi down). img2pdf embeds G4 data as it is and sizes each page from both
resolutions, so a page keeps its proportions; when the resolution tags are missing (some fax
software omits them) the standard fax resolutions are inferred from the page's pixel size.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import img2pdf
import pypdfium2 as pdfium
from PIL import Image, ImageOps
from pypdf import PdfReader

from gateway.document.kinds import MAX_TIFF_FRAMES, TIFF, sniff, tiff_frames
from gateway.document.mime import CORRUPT, TOO_MANY_PAGES, UNSUPPORTED, DocumentError

# PDFium is not thread-safe, and these functions run in worker threads (asyncio.to_thread):
# every use of pypdfium2 in the gateway holds this lock.
PDFIUM_LOCK = threading.Lock()

# (width px, height px, (x dpi, y dpi)) -> (page width, page height, image width, image height),
# all in PDF points: what img2pdf calls a layout function.
Layout = Callable[[float, float, tuple[float, float]], tuple[float, float, float, float]]

# Fax line widths (ITU-T T.4) and the horizontal resolution they imply.
_FAX_WIDTHS = {1728: 204.0, 2048: 204.0, 2432: 204.0, 3456: 408.0, 4096: 408.0, 4864: 408.0}
_FAX_ROWS_DPI = (98.0, 196.0, 391.0)
_TYPICAL_PAGE_INCHES = 11.35  # between Letter (11) and A4 (11.69)

# What a fax TIFF made from a PDF looks like: "fine" resolution, bilevel, G4.
FAX_DPI = (204, 196)


def natural_layout(fallback_dpi: tuple[float, float] | None = None) -> Layout:
    """Each page at its physical size; `fallback_dpi` replaces a resolution that is missing."""

    def layout(
        width_px: float, height_px: float, ndpi: tuple[float, float]
    ) -> tuple[float, float, float, float]:
        x_dpi, y_dpi = fallback_dpi or ndpi
        x_dpi = x_dpi if x_dpi > 0 else 96.0
        y_dpi = y_dpi if y_dpi > 0 else 96.0
        width = width_px * 72.0 / x_dpi
        height = height_px * 72.0 / y_dpi
        return width, height, width, height

    return layout


def fax_resolution(width_px: int, height_px: int) -> tuple[float, float] | None:
    """The standard fax resolution a page of this pixel size was scanned at, if it is a fax."""
    x_dpi = _FAX_WIDTHS.get(width_px)
    if x_dpi is None:
        return None
    y_dpi = min(_FAX_ROWS_DPI, key=lambda dpi: abs(height_px / dpi - _TYPICAL_PAGE_INCHES))
    return x_dpi, y_dpi


def missing_fax_resolution(data: bytes) -> tuple[float, float] | None:
    """For a TIFF without resolution tags that has a fax's pixel size: the fax's resolution."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "TIFF" or 282 in image.tag_v2 or 283 in image.tag_v2:
                return None
            return fax_resolution(*image.size)
    except Exception:
        return None  # unreadable: the conversion itself reports it


def images_to_pdf(
    data: bytes, *, layout: Layout, first_frame_only: bool, label: str = "the image"
) -> bytes:
    """An image as PDF pages (every TIFF frame unless first_frame_only), placed by `layout`.

    img2pdf embeds what it can as it is (JPEG, G4); transparency is flattened onto white (some
    fax renderers draw a PDF soft mask black) and EXIF orientation applied by turning the pixels
    (img2pdf would turn the page to landscape instead), both with Pillow.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            needs_pillow = _has_alpha(image) or _orientation(image) not in (1, None)
            frames = 1 if first_frame_only else getattr(image, "n_frames", 1)
    except Exception:
        raise DocumentError(f"{label} is damaged and cannot be read", kind=CORRUPT) from None
    pdf: bytes | None = None
    if not needs_pillow:
        try:
            pdf = _img2pdf(data, layout, first_frame_only)
        except Exception:
            pdf = None  # a mode or encoding img2pdf will not embed: let Pillow normalise it
    if pdf is None:
        try:
            pdf = _img2pdf(_normalised_frames(data, first_frame_only), layout, first_frame_only)
        except Exception:
            raise DocumentError(f"{label} cannot be converted for faxing", kind=CORRUPT) from None
    if _pages(pdf) != frames:
        # A page count we promised (validation counted frames) must never silently change.
        raise DocumentError(f"{label} gave an unexpected number of pages", kind=CORRUPT)
    return pdf


def tiff_to_pdf(data: bytes, *, max_pages: int = MAX_TIFF_FRAMES) -> bytes:
    """A (fax) TIFF as a PDF with one page per frame, each at its physical size.

    Frames are counted along the IFD chain first (`kinds.tiff_frames`, milliseconds for any
    count): a TIFF of more than `max_pages` frames is refused (TOO_MANY_PAGES) before one of
    them is decoded.
    """
    if sniff(data) != TIFF:
        raise DocumentError("the received fax is not a TIFF image", kind=UNSUPPORTED)
    frames = tiff_frames(data, limit=max_pages)
    if frames is not None and frames > max_pages:
        raise DocumentError(
            f"the TIFF has more than {max_pages} pages, the most converted", kind=TOO_MANY_PAGES
        )
    guess = missing_fax_resolution(data)
    return images_to_pdf(
        data, layout=natural_layout(guess), first_frame_only=False, label="the received TIFF"
    )


def pdf_to_tiff(data: bytes, *, dpi: tuple[int, int] = FAX_DPI) -> bytes:
    """A PDF as a multi-page bilevel G4 TIFF at fax resolution (204x196 dpi by default)."""
    frames: list[Image.Image] = []
    with PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError:
            raise DocumentError("the PDF cannot be read", kind=CORRUPT) from None
        try:
            for index in range(len(document)):
                page = document[index]
                try:
                    # PDFium renders with one scale; render at the horizontal resolution and
                    # resample the vertical one.
                    bitmap = page.render(scale=dpi[0] / 72.0)
                    try:
                        grey = bitmap.to_pil().convert("L")
                    finally:
                        bitmap.close()
                finally:
                    page.close()
                height = max(1, round(grey.height * dpi[1] / dpi[0]))
                frames.append(grey.resize((grey.width, height), Image.Resampling.LANCZOS))
        except pdfium.PdfiumError:
            raise DocumentError("the PDF cannot be read", kind=CORRUPT) from None
        finally:
            document.close()
    if not frames:
        raise DocumentError("the PDF has no pages", kind=CORRUPT)
    bilevel = [frame.convert("1") for frame in frames]
    buffer = io.BytesIO()
    bilevel[0].save(
        buffer, "TIFF", save_all=True, append_images=bilevel[1:], compression="group4", dpi=dpi
    )
    return buffer.getvalue()


def _img2pdf(images: bytes | list[bytes], layout: Layout, first_only: bool) -> bytes:
    pdf = img2pdf.convert(
        images,
        layout_fun=layout,
        first_frame_only=first_only,
        rotation=img2pdf.Rotation.none,
        nodate=True,
    )
    if not isinstance(pdf, bytes):
        raise TypeError("img2pdf returned no PDF")
    return pdf


def _pages(pdf: bytes) -> int:
    return len(PdfReader(io.BytesIO(pdf)).pages)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _orientation(image: Image.Image) -> int | None:
    try:
        value = image.getexif().get(0x0112)
    except Exception:
        return None
    return value if isinstance(value, int) else None


def _normalised_frames(data: bytes, first_only: bool) -> list[bytes]:
    """Each frame upright, on white, in a mode img2pdf embeds (1, L or RGB), resolution kept."""
    frames: list[bytes] = []
    with Image.open(io.BytesIO(data)) as image:
        count = 1 if first_only else getattr(image, "n_frames", 1)
        for index in range(count):
            image.seek(index)
            dpi = image.info.get("dpi")
            if dpi and _orientation(image) in (5, 6, 7, 8):
                dpi = (dpi[1], dpi[0])  # a quarter turn swaps the axes and their resolutions
            frame = ImageOps.exif_transpose(image.copy()) or image.copy()
            if _has_alpha(frame):
                rgba = frame.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                frame = Image.alpha_composite(white, rgba).convert("RGB")
            elif frame.mode not in ("1", "L", "RGB"):
                frame = frame.convert("RGB")
            options: dict[str, object] = {}
            if dpi and all(isinstance(v, int | float) and v > 0 for v in dpi[:2]):
                options["dpi"] = (float(dpi[0]), float(dpi[1]))
            buffer = io.BytesIO()
            if image.format in ("JPEG", "MPO") and frame.mode != "1":
                frame.save(buffer, "JPEG", quality=90, **options)
            else:
                frame.save(buffer, "PNG", **options)
            frames.append(buffer.getvalue())
    return frames
