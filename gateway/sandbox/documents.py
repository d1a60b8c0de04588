"""Fetching and checking a fax document, as the carrier does before it dials.

The documented formats are PDF, PNG, JPEG and TIFF. The type is decided by the file's first
bytes, not by the URL or the Content-Type header (a presigned URL often answers
`binary/octet-stream`). Failures carry the documented fax error code:

- 4203 "file download failed": no connection, a non-2xx answer, a timeout. The table also has
  5314 "failed to fetch file" among the internal 53xx errors; we read that one as a failure
  inside the carrier's own pipeline and 4203, in the block of document errors reported before
  any call, as the answer to an unreachable URL, which is what the sandbox can observe.
- 4202 "file too large": more bytes than the limit (declared or actually sent).
- 4201 "file format invalid": not one of the four formats, or a file of one of them that
  cannot be read or has no pages.
"""

from __future__ import annotations

import io

import aiohttp
from PIL import Image
from pypdf import PdfReader

from gateway.sandbox.state import Document

FILE_FORMAT_INVALID = 4201
FILE_TOO_LARGE = 4202
FILE_DOWNLOAD_FAILED = 4203

_CHUNK = 64 * 1024


class DocumentRefused(Exception):
    """The document cannot be faxed; `code` is the carrier's fax error code."""

    def __init__(self, code: int, reason: str, record: dict[str, object] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # What was seen of the download, for the control API.
        self.record = record
        if record is not None:
            record["error"] = reason


def sniff(data: bytes) -> str | None:
    """MIME type from the magic bytes, or None when it is none of the fax formats."""
    # PDF readers accept the header anywhere in the first 1024 bytes (junk before it occurs).
    if b"%PDF-" in data[:1024]:
        return "application/pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


def inspect(data: bytes) -> Document:
    """Type and page count of a document; raises DocumentRefused(4201) when it is not one.

    Blocking (parses the file): run it in a thread.
    """
    content_type = sniff(data)
    if content_type is None:
        raise DocumentRefused(FILE_FORMAT_INVALID, "not a PDF, PNG, JPEG or TIFF file")
    try:
        pages = _count_pages(data, content_type)
    except Exception as exc:
        raise DocumentRefused(
            FILE_FORMAT_INVALID, f"unreadable {content_type}: {type(exc).__name__}: {exc}"
        ) from None
    if pages < 1:
        raise DocumentRefused(FILE_FORMAT_INVALID, f"{content_type} without pages")
    return Document(content_type=content_type, pages=pages, data=data)


def _count_pages(data: bytes, content_type: str) -> int:
    if content_type == "application/pdf":
        return len(PdfReader(io.BytesIO(data), strict=False).pages)
    with Image.open(io.BytesIO(data)) as image:
        if content_type == "image/tiff":
            return int(getattr(image, "n_frames", 1))
        # Decode the pixels: a truncated PNG or JPEG must fail here, as it would at the fax.
        image.load()
        return 1


async def fetch(
    session: aiohttp.ClientSession, url: str, *, max_bytes: int, seconds: float
) -> tuple[bytes, dict[str, object]]:
    """Download `url`; returns the bytes and a record of the download for the control API.

    Raises DocumentRefused with 4203 (unreachable) or 4202 (too large).
    """
    record: dict[str, object] = {"url": url, "status": None, "bytes": 0}
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=seconds), max_redirects=5
        ) as response:
            record["status"] = response.status
            if response.status != 200:
                raise DocumentRefused(
                    FILE_DOWNLOAD_FAILED,
                    f"the document URL answered HTTP {response.status}",
                    record,
                )
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise DocumentRefused(
                    FILE_TOO_LARGE, f"{declared} bytes declared, limit {max_bytes}", record
                )
            buffer = bytearray()
            async for chunk in response.content.iter_chunked(_CHUNK):
                buffer += chunk
                if len(buffer) > max_bytes:
                    raise DocumentRefused(FILE_TOO_LARGE, f"more than {max_bytes} bytes", record)
            record["bytes"] = len(buffer)
            return bytes(buffer), record
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise DocumentRefused(FILE_DOWNLOAD_FAILED, reason, record) from None
