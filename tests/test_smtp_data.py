"""DATA is read in chunks into a spool draft with aiosmtpd's line-by-line semantics."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.smtp.data import INLINE_BYTES, DataParser, Overrun, Received, receive
from gateway.store.spool import Spool
from tests import samples
from tests.servers.smtp import running_smtp

SENDER = "alice@example.com"
RECIPIENT = "12015550123@fax.local"
LINE_LIMIT = 1001  # aiosmtpd's line_length_limit


def reference(stream: bytes, size_limit: int | None) -> tuple[bytes | Overrun, bytes]:
    """aiosmtpd's smtp_DATA loop over whole lines: (the message or why it was thrown away,
    what followed the end marker)."""
    lines: list[bytes] = []
    size = 0
    overrun: Overrun | None = None
    position = 0
    while True:
        end = stream.index(b"\r\n", position) + 2
        line = stream[position:end]
        position = end
        if line == b".\r\n":
            break
        size += len(line)
        if overrun is None and size_limit and size > size_limit:
            overrun = Overrun.TOO_MUCH
        if overrun is None and len(line) > LINE_LIMIT:
            overrun = Overrun.LINE_TOO_LONG
        lines.append(line[1:] if line.startswith(b".") else line)
    return (overrun or b"".join(lines)), stream[position:]


def random_stream(rng: random.Random) -> bytes:
    """DATA as a client sends it: lines (dots, empty lines, long ones, bare CR and LF), the
    end marker, and maybe pipelined commands after it."""
    pieces = [b"", b".", b"..", b"...x", b"\r", b"\n", b"x", b"\r.", b"abc", b". ."]
    lines = []
    for _ in range(rng.randrange(0, 40)):
        kind = rng.random()
        if kind < 0.05:
            line = b"y" * rng.randrange(990, 1010)  # about the line limit
        elif kind < 0.6:
            line = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))
        else:
            line = bytes(rng.randrange(33, 127) for _ in range(rng.randrange(0, 80)))
        line = line.replace(b"\r\n", b"\r")  # a line holds no CRLF
        lines.append(line + b"\r\n")
    after = rng.choice([b"", b"QUIT\r\n", b"RSET\r\nMAIL FROM:<a@b>\r\n", b".\r\n"])
    return b"".join(lines) + b".\r\n" + after


def chunked(stream: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 12))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def parse(chunks: list[bytes], size_limit: int | None) -> tuple[bytes | Overrun, bytes]:
    parser = DataParser(size_limit=size_limit, line_limit=LINE_LIMIT)
    out = b""
    fed = 0
    for chunk in chunks:
        out += parser.feed(chunk)
        fed += 1
        if parser.done:
            break
    assert parser.done
    # A real stream is read no further than the chunk that held the marker.
    rest = parser.leftover + b"".join(chunks[fed:])
    return (parser.overrun or out), rest


def test_random_messages_cut_anywhere_read_as_aiosmtpd_reads_them() -> None:
    """For 3,000 random DATA streams cut at random places: the same message (dots removed),
    the same overrun, and the same bytes left over for the next command as line by line."""
    rng = random.Random(1205)
    for _ in range(3000):
        stream = random_stream(rng)
        limit = rng.choice([None, None, 50, 500, 5000])
        expected = reference(stream, limit)
        got = parse(chunked(stream, rng), limit)
        if got != expected and {got[0], expected[0]} == {Overrun.TOO_MUCH, Overrun.LINE_TOO_LONG}:
            # Both limits passed by one line: either refusal is right (the order differs only
            # inside one line, and both are permanent).
            assert got[1] == expected[1]
            continue
        assert got == expected, stream


def test_a_line_that_never_ends_is_not_kept_in_memory() -> None:
    """Megabytes without a CRLF: a line too long, and the parser holds only a byte of it."""
    parser = DataParser(size_limit=None, line_limit=LINE_LIMIT)
    for _ in range(100):
        assert parser.feed(b"z" * 100_000) == b""
        assert len(parser._carry) <= LINE_LIMIT + 2
    parser.feed(b"\r\n.\r\n")
    assert parser.done and parser.overrun is Overrun.LINE_TOO_LONG


class _Client:
    """The client's side of a session over a plain socket, reading whole replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def reply(self) -> bytes:
        """The last line of the next reply."""
        while True:
            while b"\r\n" not in self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                self.buffer += data
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[3:4] == b" ":
                return line


def _stuffed(message: bytes) -> bytes:
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def data_stream(message: bytes) -> bytes:
    """What a client sends after DATA's 354: the message stuffed, its end and QUIT."""
    return _stuffed(message) + b".\r\nQUIT\r\n"


def pipelined_session(port: int, stream: bytes) -> list[bytes]:
    """EHLO, then MAIL, RCPT, DATA; then the `data_stream` in one write: the replies' last
    lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        client = _Client(sock)
        got = [client.reply()]
        for command in ("EHLO client.example", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>"):
            sock.sendall(command.encode() + b"\r\n")
            got.append(client.reply())
        sock.sendall(b"DATA\r\n")
        got.append(client.reply())
        sock.sendall(stream)
        got.append(client.reply())
        got.append(client.reply())
        return got


def with_dot_lines(message: bytes) -> bytes:
    """`message` with lines starting with dots in its MIME preamble (which readers skip)."""
    head, _, rest = message.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n.preamble\r\n..\r\n.\r\n" + rest


async def test_commands_pipelined_after_the_message_are_answered(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """QUIT sent in the same write as the message's end is read as the next command, and the
    spool holds the message as sent, with its dot-stuffing undone."""
    message = with_dot_lines(samples.mail(samples.attachment(samples.pdf(1), "a.pdf")))
    assert message.endswith(b"\r\n")
    async with running_smtp(make_config(), store_dir=tmp_path) as server:
        replies = await asyncio.to_thread(pipelined_session, server.port, data_stream(message))
        spooled = list((server.config.data.dir / "spool").iterdir())
    assert replies[-2].startswith(b"250 2.0.0 queued as "), replies
    assert replies[-1].startswith(b"221"), replies
    assert [p.read_bytes() for p in spooled] == [message]


async def test_a_large_message_is_not_held_whole_while_it_is_read(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """An 8 MB message costs the daemon a few MB of Python memory at its peak, not copies of
    the message: it goes to the spool as it arrives (the check runs in a worker process)."""
    message = samples.mail(samples.attachment(samples.pdf(1) + b"%" * 6_000_000, "big.pdf"))
    assert len(message) > 8_000_000
    stream = data_stream(message)
    async with running_smtp(make_config(), store_dir=tmp_path) as server:
        await asyncio.to_thread(pipelined_session, server.port, data_stream(samples.mail()))  # warm
        tracemalloc.start()
        try:
            replies = await asyncio.to_thread(pipelined_session, server.port, stream)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert replies[-2].startswith(b"250 2.0.0 queued as "), replies
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB for a {len(message) / 1e6:.1f} MB message"


@pytest.mark.parametrize("limit", [3000])
async def test_too_much_data_is_read_to_its_end_and_refused(
    make_config: Callable[..., Config], tmp_path: Path, limit: int
) -> None:
    """Past smtp.max_message_bytes the reply is 552 once the message ended, nothing is kept,
    and the session goes on with the next command."""
    config = make_config({"smtp": {"max_message_bytes": limit}})
    message = samples.mail(body="x" * 10_000)
    async with running_smtp(config, store_dir=tmp_path) as server:
        replies = await asyncio.to_thread(pipelined_session, server.port, data_stream(message))
        spool = server.config.data.dir / "spool"
        left = list(spool.iterdir()) if spool.exists() else []
    assert replies[-2].startswith(b"552"), replies
    assert replies[-1].startswith(b"221"), replies
    assert left == []


@pytest.mark.parametrize("size", [10_000, INLINE_BYTES + 10_000])
async def test_a_small_message_is_held_and_a_larger_one_drafted(tmp_path: Path, size: int) -> None:
    """Below INLINE_BYTES the message is held (its bytes are what the check reads, no temp
    file is made); above, it is in a draft; either way `keep` makes the same spool file."""
    message = b"Subject: x\r\n\r\n" + (b"y" * 78 + b"\r\n") * (size // 80)
    reader = asyncio.StreamReader()
    reader.feed_data(_stuffed(message) + b".\r\n")
    spool = Spool(tmp_path / "spool")
    received = await receive(reader, spool, size_limit=None, line_limit=LINE_LIMIT)
    assert isinstance(received, Received)
    temp_files = list(spool.root.iterdir()) if spool.root.exists() else []
    if size < INLINE_BYTES:
        assert received.draft is None and received.document == message
        assert temp_files == []
    else:
        assert received.draft is not None and received.document == received.draft.path
        assert len(temp_files) == 1
    kept = await asyncio.to_thread(received.keep, "job1")
    await received.close()
    assert kept == spool.path_for("job1") and kept.read_bytes() == message
    assert list(spool.root.iterdir()) == [kept]


async def test_a_message_just_past_the_inline_size_goes_through(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A message of a few hundred KB (drafted) and a small one (held) are both answered 250
    and spooled as sent."""
    small = samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))
    larger = samples.mail(samples.attachment(samples.pdf(1) + b"%" * INLINE_BYTES, "b.pdf"))
    assert len(small) < INLINE_BYTES < len(larger)
    async with running_smtp(make_config(), store_dir=tmp_path) as server:
        for message in (small, larger):
            replies = await asyncio.to_thread(pipelined_session, server.port, data_stream(message))
            assert replies[-2].startswith(b"250 2.0.0 queued as "), replies
        spooled = sorted(p.read_bytes() for p in (server.config.data.dir / "spool").iterdir())
    assert spooled == sorted([small, larger])
