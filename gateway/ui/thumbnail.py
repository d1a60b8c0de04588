"""Page 1 of a fax as a small PNG for its detail page, when its privacy mode allows one.

`may_show_thumbnail(mode)` is the one place that decides: the document of a fax attached in
the clear ("pdf") may be shown; one kept encrypted or not kept at
all ("encrypted-pdf", "none") may not, whatever files are still on disk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.document.kinds import sniff
from gateway.document.mime import DocumentError
from gateway.document.preview import first_page_png

WIDTH = 300
# Documents larger than this are not rendered for a thumbnail (the page says so instead).
MAX_DOCUMENT_BYTES = 64 * 1024**2


def may_show_thumbnail(mode: str) -> bool:
    """Whether a fax kept in privacy `mode` may have its first page shown."""
    return mode == "pdf"


def _render(path: Path, content_type: str | None) -> bytes | None:
    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    kind = sniff(data) or content_type
    if kind is None:
        return None
    try:
        return first_page_png(data, kind, WIDTH)
    except DocumentError:
        return None


async def thumbnail(path: Path | None, content_type: str | None, mode: str) -> bytes | None:
    """The PNG of page 1 of the document at `path`, or None (mode forbids it, file gone,
    unreadable)."""
    if path is None or not may_show_thumbnail(mode):
        return None
    return await asyncio.to_thread(_render, path, content_type)
