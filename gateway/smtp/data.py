"""DATA read in chunks straight into a spool draft, instead of line by line into memory.

aiosmtpd reads a message one `readuntil(b"\\r\\n")` at a time into a list of lines and joins
them: a 10 MB message is ~135,000 awaits on the event loop and two whole copies in memory per
session while it is read, handed on as a third (`envelope.original_content`). Here the message
is read as the socket delivers it (a few KB to a few hundred KB a time), searched for the end
marker and un-stuffed with bytes methods (C loops), and written to a temp file of the spool
(`Spool.draft`) every FLUSH_BYTES: a session holds at most about that much of its message.
A message that ends below INLINE_BYTES never gets a draft: the session holds it (it did
anyway), the DATA check gets its bytes over the worker's pipe, and `Received.keep` writes it
as its job's message in one go (`Spool.write`): two thread hops fewer (the draft's creation and
its removal) on the path to the 250 of the many small messages, for a copy of at most
INLINE_BYTES.

The semantics are aiosmtpd's (RFC 5321 4.5.2, 4.5.3.1.6), which tests/test_smtp_data.py holds
this reader to on random messages cut at random places:

- the message ends at the first line that is a lone "." (the data's first line included);
- a line's leading "." is removed (the client doubled it);
- a line longer than `line_limit` bytes with its CRLF makes the reply `500 Line too long`, and
  more than `size_limit` bytes (counted before un-stuffing, without the final ".") `552 Too
  much mail data`; either way the rest is read to its end and thrown away, not stored;
- whatever the client sent after the end marker (pipelined commands) is given back to the
  stream for the session's next command.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from pathlib import Path

from gateway.store.spool import Draft, Spool

MARKER = b"\r\n.\r\n"
_STUFFED = b"\r\n."
CRLF = b"\r\n"
# Bytes of a message a session holds before they go to its draft (one thread hop each); a
# message smaller than this is written at its end, in one hop with the draft's creation.
FLUSH_BYTES = 1024 * 1024
# A message smaller than this stays in the session's memory, without a draft (see above):
# at most smtp.max_concurrent_data of them, a few MB, against the 20 x 10 MB the memory bound
# is measured with (those always go through a draft).
INLINE_BYTES = 256 * 1024
# Read whatever the stream holds: its buffer is bounded by the transport's flow control.
_READ_ALL = 1 << 30


class Overrun(enum.Enum):
    """Why a message's content was thrown away while it was read."""

    LINE_TOO_LONG = "line too long"
    TOO_MUCH = "too much mail data"


class DataParser:
    """The DATA state machine over chunks as they arrive: `feed` returns the message bytes
    each chunk completes, un-stuffed; `done` once the end marker was seen, and `leftover` is
    what followed it."""

    def __init__(self, *, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        # The unfinished last line, always from its CRLF on: the end marker and a stuffed
        # dot are then always searched with the CRLF before them. The data's first line has
        # a CRLF of its own before it (the 354 line's), removed again from the first output.
        self._carry = CRLF
        self._started = False
        self.size = 0  # bytes of message, as sent (before un-stuffing)
        self.overrun: Overrun | None = None
        self.done = False
        self.leftover = b""

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            raise RuntimeError("DATA already ended")
        window = self._carry + chunk
        end = window.find(MARKER)
        if end >= 0:
            self.done = True
            self.leftover = window[end + len(MARKER) :]
            self._carry = b""
            return self._content(window[: end + len(CRLF)])
        cut = window.rfind(CRLF)
        if cut < 0:  # only once an overrun cut the carry short: the content is thrown away
            region, self._carry = b"", window[-1:]
        else:
            region, self._carry = window[:cut], window[cut:]
        content = self._content(region)
        if len(self._carry) - len(CRLF) > self.line_limit:
            # A line that never ends must not grow in memory: only its last byte is kept (a
            # CR, maybe, of the CRLF that starts the end marker).
            self._overrun(Overrun.LINE_TOO_LONG)
            self._carry = self._carry[-1:]
        return content

    def _content(self, region: bytes) -> bytes:
        """`region` (from a CRLF on, whole lines) as message bytes, or b"" after an overrun."""
        if not region:
            return b""
        first = not self._started
        self._started = True
        size = self.size + len(region) - (len(CRLF) if first else 0)
        if self.overrun is None:
            too_much = bool(self.size_limit) and size > (self.size_limit or 0)
            too_long = _longest_line(region) > self.line_limit
            if too_much and too_long:
                self._overrun(self._first_overrun(region, first))
            elif too_much:
                self._overrun(Overrun.TOO_MUCH)
            elif too_long:
                self._overrun(Overrun.LINE_TOO_LONG)
        self.size = size
        if self.overrun is not None:
            return b""
        content = region.replace(_STUFFED, CRLF)
        return content[len(CRLF) :] if first else content

    def _first_overrun(self, region: bytes, first: bool) -> Overrun:
        """Both limits were passed inside `region`: the one a line-by-line reader meets first
        (rare, so a loop over its lines is fine; of one line, the size is counted first)."""
        size = self.size + (0 if first else len(CRLF))
        for line in region.split(CRLF)[1:]:
            size += len(line) + len(CRLF)
            if self.size_limit and size > self.size_limit:
                return Overrun.TOO_MUCH
            if len(line) + len(CRLF) > self.line_limit:
                return Overrun.LINE_TOO_LONG
        return Overrun.TOO_MUCH

    def _overrun(self, why: Overrun) -> None:
        if self.overrun is None:
            self.overrun = why


def _longest_line(region: bytes) -> int:
    """The longest line of `region` (which starts with a CRLF), its CRLF counted."""
    return max(map(len, region.split(CRLF))) + len(CRLF)


@dataclass(eq=False)
class Received:
    """A message read at DATA, `size` bytes: in its draft in the spool, or (below
    INLINE_BYTES) in `data` alone; `taken` once the handler made it its job's (the session
    then leaves it to the handler)."""

    spool: Spool
    draft: Draft | None
    size: int
    data: bytes | None = None
    taken: bool = False

    @property
    def document(self) -> bytes | Path:
        """What the DATA check reads: the bytes, or the draft's path (read by the worker)."""
        if self.data is not None:
            return self.data
        assert self.draft is not None
        return self.draft.path

    def keep(self, job_id: str) -> Path:
        """The message, durably, as the spool file of `job_id` (blocking: in a thread)."""
        if self.data is not None:
            return self.spool.write(job_id, self.data)
        assert self.draft is not None
        return self.draft.keep(job_id)

    async def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.draft is not None
        return await asyncio.to_thread(self.draft.read)

    async def close(self) -> None:
        """The session is done with it: the draft's temp name goes (a kept message stays)."""
        if self.draft is not None:
            await asyncio.to_thread(self.draft.close)


@dataclass(frozen=True)
class NotStored:
    """A message read to its end whose draft could not be written (a full disk, say)."""

    error: OSError


async def receive(
    reader: asyncio.StreamReader, spool: Spool, *, size_limit: int | None, line_limit: int
) -> Received | Overrun | NotStored:
    """Read one message's DATA from `reader` into a new draft of `spool`: the message, or why
    it was thrown away (always read to its end, so the session goes on at the next command).
    Cancelled (the client hung up), nothing of it stays."""
    parser = DataParser(size_limit=size_limit, line_limit=line_limit)
    held = bytearray()
    draft: Draft | None = None
    failed: OSError | None = None
    try:
        while not parser.done:
            chunk = await reader.read(_READ_ALL)
            if not chunk:
                raise ConnectionResetError("the client closed the connection inside DATA")
            held += parser.feed(chunk)
            if parser.done:
                if parser.leftover:
                    # Nothing was awaited since the read that emptied the buffer, so the
                    # stream holds nothing else: this puts the bytes back where they were.
                    reader.feed_data(parser.leftover)
                break
            if failed is not None or parser.overrun is not None:
                held.clear()
            elif len(held) >= FLUSH_BYTES:
                part, held = held, bytearray()
                try:
                    if draft is None:
                        draft = await asyncio.to_thread(spool.draft, part)
                    else:
                        await asyncio.to_thread(draft.write, part)
                except OSError as exc:
                    failed = exc
        if parser.overrun is None and failed is None:
            if draft is None and len(held) < INLINE_BYTES:
                return Received(spool, None, parser.size, bytes(held))
            try:
                if draft is None:
                    draft = await asyncio.to_thread(spool.draft, held)
                elif held:
                    await asyncio.to_thread(draft.write, held)
            except OSError as exc:
                failed = exc
    except BaseException:
        if draft is not None:
            # Shielded: a cancelled session must not leave its temp file behind.
            await asyncio.shield(asyncio.to_thread(draft.close))
        raise
    if parser.overrun is not None or failed is not None:
        if draft is not None:
            await asyncio.to_thread(draft.close)
        return parser.overrun or NotStored(failed)  # type: ignore[arg-type]
    assert draft is not None
    return Received(spool, draft, parser.size)
