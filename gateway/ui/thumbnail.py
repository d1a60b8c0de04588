"""Page 1 of a fax as a small PNG for its detail page, when its privacy mode allows one.

`may_show_thumbnail(mode)` is the one place that decides: the document of a fax attached in
the clear ("pdf") may be shown; one kept encrypted or not kept at
all ("encrypted-pdf", "none") may not, whatever files are still on disk.

`Thumbnails` renders them one at a time (a logged-in viewer reloading detail pages cannot keep
the daemon's threads busy rendering) and keeps the last few it made, by file and its change
time, so a page shown again costs nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

from gateway.document.kinds import sniff
from gateway.document.mime import DocumentError
from gateway.document.preview import first_page_png

WIDTH = 300
# Documents larger than this are not rendered for a thumbnail (the page says so instead).
MAX_DOCUMENT_BYTES = 64 * 1024**2
# Pictures kept (each a few tens of KB at WIDTH pixels).
CACHED = 64


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


class Thumbnails:
    """Page-1 pictures for the status pages: one render at a time, the last CACHED kept."""

    def __init__(self, cached: int = CACHED) -> None:
        self._cached = cached
        self._pictures: OrderedDict[tuple[str, int, int], bytes | None] = OrderedDict()
        self._rendering = asyncio.Semaphore(1)

    async def thumbnail(
        self, path: Path | None, content_type: str | None, mode: str
    ) -> bytes | None:
        """The PNG of page 1 of the document at `path`, or None (mode forbids it, file gone,
        unreadable)."""
        if path is None or not may_show_thumbnail(mode):
            return None
        try:
            stat = await asyncio.to_thread(path.stat)
        except OSError:
            return None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key in self._pictures:
            self._pictures.move_to_end(key)
            return self._pictures[key]
        async with self._rendering:
            if key not in self._pictures:  # another request may have made it meanwhile
                self._pictures[key] = await asyncio.to_thread(_render, path, content_type)
                while len(self._pictures) > self._cached:
                    self._pictures.popitem(last=False)
        return self._pictures.get(key)
