"""Sample documents and mail messages, built in code for tests of every part of the gateway.

Documents (all return bytes):
    pdf(pages, size=LETTER)        a real PDF, written by hand here (not by the code under test),
                                   each page showing "Page i of n" and a black box
    corrupt_pdf()                  starts like a PDF, but no reader can find a page in it
    truncated_pdf(pages)           a real PDF cut in half
    encrypted_pdf(user_password)   a PDF that needs a password to open ("" = owner password only)
    png(width, height, mode)       a drawing; mode "RGBA" has a transparent background
    jpeg(width, height)            a photo-like drawing
    tiff(pages, size, dpi, compression)
                                   a multi-page bilevel fax TIFF (G4, 204x98 dpi by default)
    tiff_chain(frames, byte_order, cycle, big)
                                   a TIFF of many 1x1 frames, its IFD chain written by hand
                                   (Pillow takes minutes to write 20,000 frames)
    gif(), docx(), text_file()     things that cannot be faxed

Mail (MIME) building blocks; combine them freely:
    part(data, content_type, filename=..., disposition=..., content_id=...)  one leaf part
    attachment(data, filename)     a leaf with "Content-Disposition: attachment", declared type
                                   guessed from the bytes
    multipart(subtype, *parts)     a container
    forwarded(raw_message)         a message/rfc822 part ("forward as attachment")
    to_bytes(root, subject=..., sender=..., to=...)  the complete message, CRLF line ends
    mail(*attachments, body=..., html=..., subject=...)  the common case in one call:
                                   multipart/mixed with a text body and the attachments
    traffic_mail(tag, index, numbers, sender=..., document=...)
                                   message `index` of a test's traffic (Subject and
                                   Message-ID name it)

Example:
    raw = mail(attachment(pdf(2), "report.pdf"), attachment(png(), "scan.png"))
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from email import encoders, policy
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.utils import formatdate, make_msgid

from PIL import Image, ImageDraw
from pypdf import PdfReader, PdfWriter

# Page sizes in PDF points (1/72 inch).
LETTER = (612.0, 792.0)
A4 = (595.28, 841.89)

DEFAULT_SENDER = "alice@example.com"
DEFAULT_TO = "15551234567@fax.local"


# --- documents ----------------------------------------------------------------------------------


def pdf(pages: int = 1, *, size: tuple[float, float] = LETTER, label: str = "Page") -> bytes:
    """A valid PDF of `pages` pages of `size` points, each with "<label> i of n" and a box."""
    if pages < 1:
        raise ValueError("a PDF needs at least one page")
    width, height = size
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in once the page object numbers are known
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids: list[str] = []
    for number in range(1, pages + 1):
        text = f"{label} {number} of {pages}".encode("latin-1")
        stream = b"0 0 0 rg 72 72 200 100 re f BT /F1 36 Tf 72 %d Td (%s) Tj ET" % (
            int(height) - 144,
            text,
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content_ref = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (width, height, content_ref)
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>".encode()

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def corrupt_pdf() -> bytes:
    """Bytes that sniff as a PDF (the header is right) but hold no readable document."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 8 + b"\nthis is not a PDF\n"


def truncated_pdf(pages: int = 3) -> bytes:
    """A real PDF of `pages` pages cut off in the middle, as a broken upload leaves it."""
    whole = pdf(pages)
    return whole[: len(whole) // 2]


def encrypted_pdf(user_password: str = "secret", pages: int = 1) -> bytes:
    """A PDF encrypted with AES-256; with user_password="" anyone may open it (owner-locked)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(pages))))
    writer.encrypt(user_password=user_password, owner_password="owner-pass", algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _drawing(width: int, height: int, mode: str) -> Image.Image:
    background: tuple[int, ...] | int
    if mode == "RGBA":
        background = (255, 255, 255, 0)
    elif mode in ("1", "L"):
        background = 255
    else:
        background = (255, 255, 255)
    image = Image.new(mode, (width, height), background)
    draw = ImageDraw.Draw(image)
    ink: tuple[int, ...] | int = 0 if mode in ("1", "L") else (20, 40, 160)[: len(mode)]
    if mode == "RGBA":
        ink = (20, 40, 160, 255)
    draw.rectangle((width // 10, height // 10, width // 2, height // 2), fill=ink)
    draw.line((0, height - 1, width - 1, 0), fill=ink, width=max(1, width // 100))
    draw.text((width // 10, (height * 2) // 3), "sample", fill=ink)
    return image


def png(width: int = 400, height: int = 300, *, mode: str = "RGB") -> bytes:
    """A PNG drawing of width x height pixels (mode "RGB", "L", "1", "RGBA", "P")."""
    image = _drawing(width, height, "RGB" if mode == "P" else mode)
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(width: int = 640, height: int = 480) -> bytes:
    """A JPEG drawing of width x height pixels."""
    buffer = io.BytesIO()
    _drawing(width, height, "RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def tiff(
    pages: int = 3,
    *,
    size: tuple[int, int] = (1728, 1078),
    dpi: tuple[float, float] | None = (204.0, 98.0),
    compression: str = "group4",
) -> bytes:
    """A bilevel multi-page TIFF as fax machines make: 1728 px wide, 204x98 dpi, CCITT G4.

    dpi=None leaves out the resolution tags (some fax software does).
    """
    frames = [_drawing(size[0], size[1], "1") for _ in range(pages)]
    for number, frame in enumerate(frames, start=1):
        ImageDraw.Draw(frame).text((100, 100), f"fax page {number}", fill=0)
    buffer = io.BytesIO()
    options: dict[str, object] = {"compression": compression}
    if dpi is not None:
        options["dpi"] = dpi
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:], **options)
    return buffer.getvalue()


def tiff_chain(
    frames: int, *, byte_order: str = "<", cycle: bool = False, big: bool = False
) -> bytes:
    """A TIFF of `frames` 1x1 bilevel frames sharing one strip, each IFD pointing to the next.

    byte_order "<" is little endian ("II"), ">" big endian ("MM"); cycle=True makes the last IFD
    point back to the first; big=True writes BigTIFF (version 43, 8-byte offsets).
    """
    import struct

    count, entry, offset_format = ("Q", "HHQQ", "Q") if big else ("H", "HHII", "I")
    header = 16 if big else 8
    strip = header  # one byte of pixels right after the header, shared by every frame
    first = header + 2  # IFDs start on a word boundary
    tags = [(256, 1), (257, 1), (258, 1), (259, 1), (262, 0), (273, strip), (277, 1), (278, 1)]
    tags.append((279, 1))
    ifd_size = struct.calcsize(byte_order + count + entry * len(tags) + offset_format)
    out = bytearray(b"II" if byte_order == "<" else b"MM")
    if big:
        out += struct.pack(byte_order + "HHHQ", 43, 8, 0, first)
    else:
        out += struct.pack(byte_order + "HI", 42, first)
    out += b"\x00\x00"  # the strip (a white pixel) and a pad byte
    for index in range(frames):
        at = first + index * ifd_size
        following = at + ifd_size if index + 1 < frames else (first if cycle else 0)
        out += struct.pack(byte_order + count, len(tags))
        for tag, value in tags:
            # Every value a LONG (LONG8 in BigTIFF): TIFF readers accept LONG for these tags.
            out += struct.pack(byte_order + entry, tag, 16 if big else 4, 1, value)
        out += struct.pack(byte_order + offset_format, following)
    return bytes(out)


def gif() -> bytes:
    """A GIF: an image format the carrier does not take."""
    buffer = io.BytesIO()
    _drawing(120, 60, "RGB").convert("P").save(buffer, "GIF")
    return buffer.getvalue()


def docx() -> bytes:
    """A zip shaped like a Word document (what people attach when they mean "fax this")."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Override PartName="/word/document.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr(
            "word/document.xml",
            '<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
            'wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>Hello</w:t></w:r></w:p>'
            "</w:body></w:document>",
        )
    return buffer.getvalue()


DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def text_file() -> bytes:
    """A plain text file, as attached (not as the body)."""
    return b"Notes\r\nline two\r\n"


# --- mail ---------------------------------------------------------------------------------------


def _declared_type(data: bytes) -> str:
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if data.startswith(b"GIF8"):
        return "image/gif"
    if data.startswith(b"PK"):
        return DOCX_TYPE
    return "application/octet-stream"


def part(
    data: bytes | str,
    content_type: str,
    *,
    filename: str | None = None,
    disposition: str | None = "attachment",
    content_id: str | None = None,
    content_location: str | None = None,
    filename_style: str = "rfc2231",
    charset: str = "utf-8",
) -> Message:
    """One leaf part. Text types take str (quoted-printable), others bytes (base64).

    filename_style "rfc2231" writes non-ASCII names as `filename*=utf-8''...` (the standard);
    "encoded-word" writes `filename="=?utf-8?b?...?="` as Outlook and Gmail do.
    """
    maintype, _, subtype = content_type.partition("/")
    if maintype == "text":
        text = data.decode(charset) if isinstance(data, bytes) else data
        leaf: Message = MIMEText(text, subtype, charset)
    else:
        raw = data.encode() if isinstance(data, str) else data
        leaf = MIMEBase(maintype, subtype)
        leaf.set_payload(raw)
        encoders.encode_base64(leaf)
    if filename is not None:
        if filename_style == "encoded-word" and not filename.isascii():
            encoded = Header(filename, "utf-8").encode()
            leaf.set_param("name", encoded)
            value = f'{disposition or "attachment"}; filename="{encoded}"'
            leaf["Content-Disposition"] = value
        else:
            name: str | tuple[str, str, str] = (
                filename if filename.isascii() else ("utf-8", "", filename)
            )
            leaf.set_param("name", name)
            leaf.add_header("Content-Disposition", disposition or "attachment", filename=name)
            if disposition is None:
                del leaf["Content-Disposition"]
    elif disposition is not None:
        leaf["Content-Disposition"] = disposition
    if content_id is not None:
        leaf["Content-ID"] = f"<{content_id}>"
    if content_location is not None:
        leaf["Content-Location"] = content_location
    return leaf


def attachment(data: bytes, filename: str | None, content_type: str | None = None) -> Message:
    """An attachment; its declared type is guessed from the bytes unless given."""
    return part(data, content_type or _declared_type(data), filename=filename)


def multipart(subtype: str, *parts: Message, boundary: str | None = None) -> Message:
    """A multipart/<subtype> container of `parts` in order."""
    container = MIMEMultipart(subtype, boundary=boundary)
    for child in parts:
        container.attach(child)
    return container


def forwarded(raw_message: bytes, *, filename: str | None = None) -> Message:
    """A message/rfc822 part holding `raw_message` ("forward as attachment")."""
    inner = BytesParser(policy=policy.compat32).parsebytes(raw_message)
    wrapper = MIMEMessage(inner)
    wrapper["Content-Disposition"] = (
        f'attachment; filename="{filename}"' if filename else "attachment"
    )
    return wrapper


def to_bytes(
    root: Message,
    *,
    subject: str = "Fax",
    sender: str = DEFAULT_SENDER,
    to: str = DEFAULT_TO,
    message_id: str | None = None,
) -> bytes:
    """A complete message: `root` with From/To/Subject/Date/Message-ID, CRLF line ends."""
    root["From"] = sender
    root["To"] = to
    root["Subject"] = Header(subject, "utf-8").encode() if not subject.isascii() else subject
    root["Date"] = formatdate(localtime=False)
    root["Message-ID"] = message_id or make_msgid(domain="example.com")
    if "MIME-Version" not in root:
        root["MIME-Version"] = "1.0"
    return root.as_bytes(policy=policy.compat32.clone(linesep="\r\n"))


def traffic_mail(
    tag: str,
    index: int,
    numbers: Sequence[str],
    *,
    sender: str = DEFAULT_SENDER,
    document: bytes | None = None,
) -> bytes:
    """Message `index` of a test's traffic to `numbers` (one fax each): Subject "<tag> <index>"
    (what its report names), Message-ID <tag-index@example.com>, `document` (default: a
    one-page PDF) attached as doc.pdf. Each call draws a new MIME boundary: a test that sends
    a message again keeps its bytes."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(f"{n.lstrip('+')}@fax.local" for n in numbers)
    message["Subject"] = f"{tag} {index}"
    message["Message-ID"] = f"<{tag}-{index}@example.com>"
    message.set_content("see attachment")
    attached = document if document is not None else pdf(1)
    message.add_attachment(attached, "application", "pdf", filename="doc.pdf")
    return message.as_bytes(policy=policy.SMTP)


def mail(
    *attachments: Message,
    body: str = "Please fax the attached document.",
    html: str | None = None,
    subject: str = "Fax",
    sender: str = DEFAULT_SENDER,
    to: str = DEFAULT_TO,
) -> bytes:
    """multipart/mixed: the body (plain, or plain+HTML alternative), then the attachments."""
    text = part(body, "text/plain", disposition=None)
    if html is not None:
        text = multipart("alternative", text, part(html, "text/html", disposition=None))
    if not attachments:
        return to_bytes(text, subject=subject, sender=sender, to=to)
    return to_bytes(multipart("mixed", text, *attachments), subject=subject, sender=sender, to=to)
