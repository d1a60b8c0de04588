"""SMTP and the gateway's resources: nothing is accepted it has no room (disk, document
slots) to process."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Config, ConfigError
from gateway.smtp import replies
from tests import samples
from tests.helpers import fill, tiny_filesystem
from tests.servers.smtp import running_smtp

SENDER = "alice@example.com"
RECIPIENT = "12015550123@fax.local"


def send(
    port: int, message: bytes, source: str = "127.0.0.1"
) -> tuple[tuple[int, bytes], tuple[int, bytes] | None]:
    """(MAIL reply, DATA reply or None when MAIL was refused), sent from address `source`."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
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
        # The one slot, taken as a message of another client being read would take it.
        async with slots.held("192.0.2.1"):
            _mail, busy = await asyncio.to_thread(send, server.port, message)
        _mail, accepted = await asyncio.to_thread(send, server.port, message)
    assert busy is not None and busy[0] == 451 and busy[1].startswith(b"4.3.2 ")
    assert busy[1].decode() == replies.BUSY[4:]
    assert accepted is not None and accepted[0] == 250


async def test_one_client_gets_at_most_its_share_of_the_document_slots(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """With max_concurrent_data 3 and max_concurrent_data_per_ip 2, a client whose 2 messages
    are being checked gets 451 4.3.2 "from your address" for a third, while another address
    gets a slot; once one of its own is done, the first client gets in again."""
    config = make_config({"smtp": {"max_concurrent_data": 3, "max_concurrent_data_per_ip": 2}})
    message = samples.mail(samples.attachment(samples.pdf(1), "one.pdf"))
    async with running_smtp(config, store_dir=tmp_path) as server:
        slots = server.server.handler.document_slots
        # Two slots held as two messages of 127.0.0.1 being read would hold them (the key is
        # the one a real session from that address is counted under).
        async with slots.held("127.0.0.1"):
            async with slots.held("127.0.0.1"):
                _mail, refused = await asyncio.to_thread(send, server.port, message)
                _mail, other = await asyncio.to_thread(send, server.port, message, "127.0.0.2")
                assert slots.held_by("127.0.0.1") == 2 and slots.held_by("127.0.0.2") == 0
            _mail, again = await asyncio.to_thread(send, server.port, message)
    assert refused is not None and refused[0] == 451, refused
    assert refused[1].decode() == replies.BUSY_FROM_CLIENT[4:]
    assert other is not None and other[0] == 250, other
    assert again is not None and again[0] == 250, again


async def test_the_fair_share_defaults_to_half_the_slots_and_nonsense_is_refused(
    make_config: Callable[..., Config],
) -> None:
    """max_concurrent_data_per_ip defaults to half of max_concurrent_data rounded up, and a
    value below 1, above max_concurrent_data or not a number is refused with the key named."""
    assert make_config().smtp.max_concurrent_data_per_ip == 2
    assert make_config({"smtp": {"max_concurrent_data": 1}}).smtp.max_concurrent_data_per_ip == 1
    assert make_config({"smtp": {"max_concurrent_data": 7}}).smtp.max_concurrent_data_per_ip == 4
    for bad in (
        {"max_concurrent_data_per_ip": 0},
        {"max_concurrent_data_per_ip": 5},
        {"max_concurrent_data": 8, "max_concurrent_data_per_ip": 9},
        {"max_concurrent_data_per_ip": "two"},
    ):
        with pytest.raises(ConfigError) as caught:
            make_config({"smtp": bad})
        assert "max_concurrent_data_per_ip" in str(caught.value), bad


async def test_a_reload_applies_new_document_slot_caps_to_the_next_data(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """SIGHUP's reload (which needs no restart for them) applies a new max_concurrent_data_per_ip
    and max_concurrent_data from the next DATA on; slots held meanwhile are given back whole."""
    config = make_config({"smtp": {"max_concurrent_data": 3, "max_concurrent_data_per_ip": 2}})
    message = samples.mail(samples.attachment(samples.pdf(1), "one.pdf"))
    async with running_smtp(config, store_dir=tmp_path) as server:
        slots = server.server.handler.document_slots
        async with slots.held("127.0.0.1"):
            await server.server.reload(
                make_config({"smtp": {"max_concurrent_data": 3, "max_concurrent_data_per_ip": 1}})
            )
            _mail, own = await asyncio.to_thread(send, server.port, message)
            await server.server.reload(make_config({"smtp": {"max_concurrent_data": 1}}))
            _mail, total = await asyncio.to_thread(send, server.port, message, "127.0.0.2")
        assert slots.held_by("127.0.0.1") == 0
        _mail, freed = await asyncio.to_thread(send, server.port, message)
    assert own is not None and own[1].decode() == replies.BUSY_FROM_CLIENT[4:], own
    assert total is not None and total[1].decode() == replies.BUSY[4:], total
    assert freed is not None and freed[0] == 250, freed
