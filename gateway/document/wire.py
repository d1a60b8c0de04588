"""The frames the daemon and its document worker processes exchange over a pipe.

A frame is a JSON header and the binary blobs it announces, so a message's bytes travel as they
are (no base64, no pickle: the worker's answer is data, never code):

    4 bytes   big-endian length of the header
    header    UTF-8 JSON object; "blobs" lists the length of each blob that follows
    blobs     the bytes of each blob, back to back

Both sides read a frame whole or not at all; a pipe that ends mid-frame means the other side
died (EOFError here, IncompleteReadError in asyncio).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

_LENGTH = struct.Struct(">I")
# A header is a few hundred bytes of settings and results; anything larger is a broken peer.
MAX_HEADER_BYTES = 1024 * 1024


class WireError(Exception):
    """A frame that does not parse: the peer is broken, not the document."""


def encode(header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One frame of `header` (without "blobs"; it is added) and `blobs`."""
    body = json.dumps({**header, "blobs": [len(b) for b in blobs]}).encode()
    return b"".join((_LENGTH.pack(len(body)), body, *blobs))


def _header(raw: bytes) -> tuple[dict[str, Any], list[int]]:
    try:
        header = json.loads(raw)
        sizes = header.pop("blobs")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise WireError("bad frame header: blobs must be lengths")
    return header, sizes


def _length(raw: bytes) -> int:
    (size,) = _LENGTH.unpack(raw)
    if size > MAX_HEADER_BYTES:
        raise WireError(f"frame header of {size} bytes")
    return size


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]] | None:
    """The next frame from a blocking stream; None at a clean end (EOF between frames)."""
    first = stream.read(_LENGTH.size)
    if not first:
        return None
    header, sizes = _header(_read_exactly(stream, _length(_read_exactly(stream, 4, first))))
    return header, [_read_exactly(stream, n) for n in sizes]


def _read_exactly(stream: BinaryIO, size: int, start: bytes = b"") -> bytes:
    parts = [start]
    got = len(start)
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            raise EOFError("the pipe ended inside a frame")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def read_frame_async(stream: asyncio.StreamReader) -> tuple[dict[str, Any], list[bytes]]:
    """The next frame from an asyncio stream (IncompleteReadError if the peer died)."""
    size = _length(await stream.readexactly(_LENGTH.size))
    header, sizes = _header(await stream.readexactly(size))
    return header, [await stream.readexactly(n) for n in sizes]
