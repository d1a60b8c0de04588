"""The kinds of document a fax can carry, recognised by their bytes.

Mail clients declare attachment types carelessly (`application/octet-stream`, `image/jpg`, a PNG
sent as `image/jpeg`), so what a part *is* is decided here from its first bytes. Only the four
formats the carrier renders are recognised; anything else is "not faxable" (None).

Two more families are *convertible*: plain text (always turned into PDF pages, text.py) and the
office formats LibreOffice reads (office.py, when documents.convert_office is on). Their bytes
have no magic a sniffer can trust (a DOCX is a ZIP, an HTML file is text), so they are known by
declared type or filename extension, and only after the bytes were found to be none of the four;
LibreOffice then decides by the content what it opens.
"""

from __future__ import annotations

import struct

PDF = "application/pdf"
TIFF = "image/tiff"
PNG = "image/png"
JPEG = "image/jpeg"

# Order matters: it is the order in which the types are named to people.
FAXABLE_TYPES: tuple[str, ...] = (PDF, TIFF, PNG, JPEG)

# What a person reads in an error: "attach PDF, TIFF, PNG or JPEG".
TYPE_NAMES: dict[str, str] = {PDF: "PDF", TIFF: "TIFF", PNG: "PNG", JPEG: "JPEG"}

_EXTENSIONS: dict[str, str] = {PDF: ".pdf", TIFF: ".tif", PNG: ".png", JPEG: ".jpg"}

# Filename extensions and declared types people use for the faxable kinds. Used only to tell
# "this was meant to be a PDF but its bytes are not one" (corrupt) from "this is a Word file"
# (unsupported); the bytes always decide what a part is.
_CLAIMED_BY_EXTENSION: dict[str, str] = {
    ".pdf": PDF,
    ".tif": TIFF,
    ".tiff": TIFF,
    ".png": PNG,
    ".jpg": JPEG,
    ".jpeg": JPEG,
    ".jpe": JPEG,
    ".jfif": JPEG,
}
_CLAIMED_BY_TYPE: dict[str, str] = {
    PDF: PDF,
    "application/x-pdf": PDF,
    TIFF: TIFF,
    "image/tif": TIFF,
    "image/x-tiff": TIFF,
    PNG: PNG,
    "image/x-png": PNG,
    JPEG: JPEG,
    "image/jpg": JPEG,
    "image/pjpeg": JPEG,
}

# Plain text: faxed as monospace pages (gateway/document/text.py).
TEXT = "text/plain"

# The office formats, by the type a canonical mail client declares and the name people give.
_OFFICE_TYPES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # canonical type: (name, extensions, other declared types)
    "application/msword": ("Word", (".doc",), ()),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (
        "Word",
        (".docx",),
        (),
    ),
    "application/vnd.oasis.opendocument.text": ("OpenDocument text", (".odt",), ()),
    "application/rtf": ("RTF", (".rtf",), ("text/rtf", "application/x-rtf")),
    "application/vnd.ms-excel": ("Excel", (".xls",), ()),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (
        "Excel",
        (".xlsx",),
        (),
    ),
    "application/vnd.oasis.opendocument.spreadsheet": ("OpenDocument spreadsheet", (".ods",), ()),
    "application/vnd.ms-powerpoint": ("PowerPoint", (".ppt",), ()),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "PowerPoint",
        (".pptx",),
        (),
    ),
    "application/vnd.oasis.opendocument.presentation": (
        "OpenDocument presentation",
        (".odp",),
        (),
    ),
    "text/html": ("HTML", (".html", ".htm"), ("application/xhtml+xml",)),
}
OFFICE_TYPES: frozenset[str] = frozenset(_OFFICE_TYPES)
_OFFICE_BY_EXTENSION = {ext: t for t, (_, exts, _) in _OFFICE_TYPES.items() for ext in exts}
_OFFICE_BY_TYPE = {
    declared: t for t, (_, _, others) in _OFFICE_TYPES.items() for declared in (t, *others)
}
_TEXT_EXTENSIONS = (".txt", ".text")
# What an office file of each container starts with. LibreOffice opens what it does not
# recognise as plain text, so a damaged file would be faxed as pages of gibberish: the bytes
# must at least be the container the type claims.
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_TYPES = frozenset(
    {"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"}
)

# Acrobat accepts a PDF header anywhere in the first 1024 bytes (some generators prepend junk
# such as a UTF-8 BOM or a mail gateway's banner); so do we.
_PDF_HEADER_WINDOW = 1024


def sniff(data: bytes) -> str | None:
    """The faxable MIME type of `data` judged by its magic bytes, or None if it is none of them."""
    head = data[:_PDF_HEADER_WINDOW]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    # Classic TIFF only, little or big endian. BigTIFF (version 43) is not something fax
    # software produces and img2pdf cannot embed it.
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return TIFF
    if b"%PDF-" in head:
        return PDF
    return None


# TIFF numbers pages in 16 bits (the PageNumber tag); no fax has more frames. Walking this many
# IFDs takes a few tens of milliseconds, so it is the walk's bound, whatever the file claims.
MAX_TIFF_FRAMES = 65_535

# Per TIFF version: byte order-free formats of the IFD entry count, one entry's size, and the
# next-IFD offset; and where the header keeps the first offset.
_TIFF_LAYOUTS = {42: ("H", 12, "I", 4, "I"), 43: ("Q", 20, "Q", 8, "Q")}


def tiff_frames(data: bytes, *, limit: int = MAX_TIFF_FRAMES) -> int | None:
    """Frames in a TIFF counted along its IFD chain, decoding nothing; at most `limit` + 1.

    Reads only the header and, per IFD, its entry count and next-IFD offset: the cost is one
    small read per frame up to `limit`, whatever the file's size. Classic TIFF and BigTIFF, either
    byte order. The chain ends at offset 0, at an IFD seen before (a cycle: Pillow ends there
    too), or at an IFD that lies outside the file (the frames before it are counted; the decoder
    names the damage). None if `data` does not start like a TIFF.
    """
    if data[:2] == b"II":
        order = "<"
    elif data[:2] == b"MM":
        order = ">"
    else:
        return None
    try:
        (version,) = struct.unpack_from(order + "H", data, 2)
        count_format, entry_size, next_format, first_at, first_format = _TIFF_LAYOUTS[version]
        (offset,) = struct.unpack_from(order + first_format, data, first_at)
    except (struct.error, KeyError):
        return None
    count_format, next_format = order + count_format, order + next_format
    count_size, next_size = struct.calcsize(count_format), struct.calcsize(next_format)
    seen: set[int] = set()
    frames = 0
    while offset and offset not in seen and frames <= limit:
        seen.add(offset)
        if offset + count_size > len(data):
            break
        (entries,) = struct.unpack_from(count_format, data, offset)
        next_at = offset + count_size + entries * entry_size
        if next_at + next_size > len(data):
            break
        frames += 1
        (offset,) = struct.unpack_from(next_format, data, next_at)
    return frames


def extension(content_type: str) -> str:
    """The usual filename extension (with its dot) for a content type; ".bin" if unknown."""
    bare = _bare(content_type)
    if bare in _OFFICE_TYPES:
        return _OFFICE_TYPES[bare][1][0]
    if bare == TEXT:
        return ".txt"
    return _EXTENSIONS.get(bare, ".bin")


def office_name(content_type: str) -> str:
    """What people call an office type ("Word", "Excel"); the type itself if it is none."""
    entry = _OFFICE_TYPES.get(_bare(content_type))
    return entry[0] if entry else content_type


def office_bytes_match(content_type: str, data: bytes) -> bool:
    """Whether `data` starts like a file of this office type (ZIP, OLE2, RTF; HTML: any)."""
    bare = _bare(content_type)
    if bare == "text/html":
        return b"\x00" not in data[:1024]
    if bare == "application/rtf":
        return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{\\rtf")
    if bare in _OLE_TYPES:
        return data.startswith(_OLE_MAGIC)
    return data.startswith(_ZIP_MAGIC)


def convertible_type(declared_type: str | None, filename: str | None) -> str | None:
    """TEXT or an office type (its canonical name) that a part which is none of the faxable
    kinds declares or is named as; None for anything else. The extension wins over the declared
    type, which clients often leave at application/octet-stream."""
    if filename:
        dot = filename.rfind(".")
        if dot >= 0:
            ext = filename[dot:].lower()
            if ext in _OFFICE_BY_EXTENSION:
                return _OFFICE_BY_EXTENSION[ext]
            if ext in _TEXT_EXTENSIONS:
                return TEXT
    bare = _bare(declared_type or "")
    if bare in _OFFICE_BY_TYPE:
        return _OFFICE_BY_TYPE[bare]
    if bare == TEXT:
        return TEXT
    return None


def claimed_type(declared_type: str | None, filename: str | None) -> str | None:
    """The faxable type a part *claims* to be by its declared type or filename, if any."""
    if declared_type and _bare(declared_type) in _CLAIMED_BY_TYPE:
        return _CLAIMED_BY_TYPE[_bare(declared_type)]
    if filename:
        dot = filename.rfind(".")
        if dot >= 0:
            return _CLAIMED_BY_EXTENSION.get(filename[dot:].lower())
    return None


def _bare(content_type: str) -> str:
    """`Application/PDF; name=x` -> `application/pdf`."""
    return content_type.split(";", 1)[0].strip().lower()
