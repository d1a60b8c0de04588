"""MAIL and RCPT paths read without the header parser get exactly aiosmtpd's reading."""

from __future__ import annotations

import random
from collections.abc import Callable

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from gateway.config import Config
from gateway.smtp.mailpaths import plain_path
from gateway.smtp.session import GatewaySMTP
from tests.test_smtp_server import running_smtp

# Pieces of paths: plain atoms, every character the parser treats specially, and the
# things the fast path leaves to it (quotes, comments, literals, encoded words, non-ASCII).
_PIECES = [
    "alice", "12015550123", "fax", "local", "example", "com", "a+b", "x_y", "o'neil", "=?",
    "?=", "=?utf-8?q?x?=", ".", "..", "@", "@@", "<", ">", "<>", " ", "  ", "\t", "(", ")",
    "(c)", '"', '"q r"', "\\", "[", "]", "[127.0.0.1]", ",", ";", ":", "é", "\u00a0", "\x0b",
    "SIZE=123", " BODY=8BITMIME", "!#$%&*/=?^`{|}~-", "0", "-",
]  # fmt: skip


def library(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's own reading of the path (local_part_limit 0: no limit)."""
    return SMTP._getaddr(_Limitless(), arg)  # type: ignore[arg-type]


class _Limitless:
    local_part_limit = 0


_ATOMS = ["alice", "12015550123", "fax", "a+b", "o'neil", "x=y", "q?", "!#$%&*/^`{|}~-", "0"]


def random_path(rng: random.Random) -> str:
    """A path: a plain one, perhaps with one piece of anything spliced in somewhere; or one
    of pieces of anything."""
    kind = rng.random()
    if kind < 0.5:
        local = ".".join(rng.choice(_ATOMS) for _ in range(rng.randrange(1, 3)))
        domain = ".".join(rng.choice(_ATOMS) for _ in range(rng.randrange(1, 3)))
        rest = rng.choice(["", " SIZE=1", "\t BODY=7BIT", "  (c) X=1", " \u00a0Y", "\x0bZ"])
        path = f"<{local}@{domain}>{rest}"
        if rng.random() < 0.5:
            at = rng.randrange(len(path) + 1)
            path = path[:at] + rng.choice(_PIECES) + path[at:]
        return path
    if kind < 0.75:
        local = "".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 4)))
        domain = "".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 4)))
        rest = "".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 3)))
        return f"<{local}@{domain}>{rest}"
    return "".join(rng.choice(_PIECES) for _ in range(rng.randrange(1, 9)))


def test_plain_paths_read_as_the_library_reads_them() -> None:
    """Every path the fast reading takes gets the library's (address, rest), on 20,000
    generated paths, and plenty of them are taken."""
    rng = random.Random(20261201)
    taken = 0
    for _ in range(20_000):
        arg = random_path(rng)
        fast = plain_path(arg)
        if fast is None:
            continue
        taken += 1
        assert fast == library(arg), arg
    assert taken > 3_000


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<alice@example.com>", ("alice@example.com", "")),
        ("<12015550123@fax.local> SIZE=1000", ("12015550123@fax.local", "SIZE=1000")),
        ("<a.b+c@x.y>\t  BODY=8BITMIME", ("a.b+c@x.y", "BODY=8BITMIME")),
    ],
)
def test_common_paths_are_read_fast(arg: str, expected: tuple[str, str]) -> None:
    """The paths mail clients send take the fast reading, with the library's answer."""
    assert plain_path(arg) == expected == library(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "<>",
        '<"john doe"@example.com>',
        "<alice@[127.0.0.1]>",
        "<@relay.example:alice@example.com>",
        "<alice@example.com> (comment)",
        "<=?utf-8?q?a?=@example.com>",
        "<élodie@example.com>",
        "<a..b@example.com>",
        "alice@example.com",
        " <alice@example.com>",
    ],
)
def test_anything_else_goes_to_the_library(arg: str) -> None:
    """Quoted, literal, routed, commented, encoded, non-ASCII, odd or bare paths are left to
    aiosmtpd's parser."""
    assert plain_path(arg) is None


def test_the_local_part_limit_still_holds() -> None:
    """A plain path whose local part is longer than the session's limit is refused as the
    library refuses it."""
    session = GatewaySMTP.__new__(GatewaySMTP)
    session.local_part_limit = 8
    assert session._getaddr("<abcdefgh@example.com>") == ("abcdefgh@example.com", "")
    assert session._getaddr("<abcdefghi@example.com>") == (None, None)


async def test_a_session_reads_plain_and_quoted_paths(make_config: Callable[..., Config]) -> None:
    """Over SMTP, a plain sender and recipient (the fast reading) and a quoted local part (the
    library's) are each read and answered as before."""
    async with running_smtp(make_config()) as gw:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
        await client.connect()
        try:
            assert (await client.mail("alice@example.com")).code == 250
            assert (await client.rcpt('"12015550123"@fax.local')).code == 250
            assert (await client.rcpt("12015550124@fax.local")).code == 250
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt("12015550125@elsewhere.example")
            assert refused.value.code == 550
        finally:
            await client.quit()
