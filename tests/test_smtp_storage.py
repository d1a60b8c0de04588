"""SMTP and the gateway's resources: nothing is accepted it has no room (disk, document
slots) to process."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from pathlib import Path

from gateway.config import Config
from tests import samples
from tests.helpers import fill, tiny_filesystem
from tests.servers.smtp import running_smtp

SENDER = "alice@example.com"
RECIPIENT = "12015550123@fax.local"


def send(port: int, message: bytes) -> tuple[tuple[int, bytes], tuple[int, bytes] | None]:
    """(MAIL reply, DATA reply or None when MAIL was refused)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        mail = client.mail(SENDER)
        if mail[0] != 250:
            return mail, None
        assert client.rcpt(RECIPIENT)[0] == 250
        return mail, client.data(message)


async def test_below_the_free_space_floor_mail_from_gets_452(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """With data.dir below data.min_free_bytes, MAIL FROM is answered 452 4.3.1."""
    config = make_config({"data": {"min_free_bytes": 10**18}})
    async with running_smtp(config, store_dir=tmp_path) as server:
        mail, data = await asyncio.to_thread(send, server.port, samples.mail())
    assert mail[0] == 452 and mail[1].startswith(b"4.3.1 ")
    assert data is None


async def test_a_message_that_would_not_fit_gets_452_at_data_and_nothing_half_written(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """On a nearly full data.dir a large message is refused 452 4.3.1 at DATA (the client
    keeps it), no spool file is left; a small one still goes through."""
    config = make_config({"data": {"min_free_bytes": 256 * 1024}})
    with tiny_filesystem(config.data.dir, "2m") as data_dir:
        big = samples.mail(samples.attachment(b"%PDF-1.4\n" + b"0" * 1_200_000, "big.pdf"))
        async with running_smtp(config, store_dir=tmp_path) as server:
            # 2 MB minus the floor: room for a small message, not for twice a 1.2 MB one.
            mail, data = await asyncio.to_thread(send, server.port, big)
            assert mail[0] == 250
            assert data is not None and data[0] == 452 and data[1].startswith(b"4.3.1 ")
            spooled = list((data_dir / "spool").glob("*")) if (data_dir / "spool").exists() else []
            assert spooled == []
            small = samples.mail(samples.attachment(samples.pdf(1), "one.pdf"))
            mail, data = await asyncio.to_thread(send, server.port, small)
            assert data is not None and data[0] == 250


async def test_a_disk_that_fills_while_spooling_gets_452_not_451(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """ENOSPC while spooling (the floor switched off) answers 452 4.3.1 and leaves no file."""
    config = make_config({"data": {"min_free_bytes": 0}})
    with tiny_filesystem(config.data.dir, "1m") as data_dir:
        (data_dir / "spool").mkdir()
        fill(data_dir)
        async with running_smtp(config, store_dir=tmp_path) as server:
            _mail, data = await asyncio.to_thread(
                send, server.port, samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))
            )
        assert data is not None and data[0] == 452, data
        assert [p.name for p in (data_dir / "spool").iterdir()] == []


async def test_past_max_concurrent_data_a_message_gets_451_and_then_goes_through(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """While smtp.max_concurrent_data messages are being read, another DATA is answered
    451 4.3.2 (the client retries); once a slot is free it is accepted."""
    config = make_config({"smtp": {"max_concurrent_data": 1}})
    message = samples.mail(samples.attachment(samples.pdf(1), "one.pdf"))
    async with running_smtp(config, store_dir=tmp_path) as server:
        slots = server.server.handler.document_slots
        async with slots:  # the one slot, taken as a message being read would take it
            _mail, busy = await asyncio.to_thread(send, server.port, message)
        _mail, accepted = await asyncio.to_thread(send, server.port, message)
    assert busy is not None and busy[0] == 451 and busy[1].startswith(b"4.3.2 ")
    assert accepted is not None and accepted[0] == 250
