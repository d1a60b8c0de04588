"""Claims (gateway/store/claims.py): the crash guard's pickups, and a dead process's claims."""

from __future__ import annotations

import sqlite3
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from gateway.config import config_from_dict
from gateway.daemon import Gateway
from gateway.mailout.outbox import queue_mail
from gateway.store import Database
from gateway.store import outbox as outbox_store
from gateway.store.claims import release_claims
from gateway.store.outbox import OUTBOX
from tests.conftest import free_port
from tests.servers.gateway import gateway_config_data
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox


def _mail(to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "fax@example.com"
    message["To"] = to
    message["Subject"] = "A report"
    message.set_content("It went through.")
    return message


async def _queued_and_claimed_by(db: Database, outbox_dir: Path, owner: str) -> int:
    await queue_mail(
        db,
        outbox_dir,
        key="report:1:delivered",
        kind="delivered",
        message=_mail("alice@example.com"),
        recipients=["alice@example.com"],
    )
    [claimed] = await db.run(_claim_as, owner)
    return claimed.id


def _claim_as(conn: sqlite3.Connection, owner: str) -> list[outbox_store.OutboxMessage]:
    """What a claim of another process looks like in the store: its boot id, a long lease."""
    conn.execute(
        "UPDATE outbox SET pickups = pickups + 1, attempts = attempts + 1, claimed_by = ?,"
        " next_attempt_at = ?",
        (owner, time.time() + 600),
    )
    return outbox_store.list_messages(conn)


async def test_release_takes_back_only_other_processes_claims(tmp_path: Path) -> None:
    """A claim of a dead process is due now after release, pickup kept; our own is left."""
    db = await Database(tmp_path / "store.db").open()
    try:
        message_id = await _queued_and_claimed_by(db, tmp_path / "outbox", "dead-boot")
        now = time.time()
        assert await db.run(release_claims, [OUTBOX], now) == 1
        released = await db.run(outbox_store.get_message, message_id)
        assert released is not None
        assert released.next_attempt_at == now and released.pickups == 1
        # Ours, claimed by this process, keeps its lease.
        await db.run(outbox_store.claim_due, now, 10, 600.0)
        assert await db.run(release_claims, [OUTBOX], time.time()) == 0
    finally:
        db.close()


async def test_a_restart_sends_at_once_what_a_killed_process_was_sending(
    config_data: dict[str, Any], sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A mail claimed by a process killed mid-send (600 s lease) goes out at the next start,
    not after the lease."""
    data = gateway_config_data(config_data, sandbox, relay_server, free_port())
    config = config_from_dict(data, env={})
    config.data.dir.mkdir(parents=True, exist_ok=True)
    db = await Database(config.data.dir / "store.db").open()
    try:
        await _queued_and_claimed_by(db, config.data.dir / "outbox", "killed-boot")
    finally:
        db.close()
    gw = Gateway(config)
    started = time.monotonic()
    await gw.start()
    try:
        # Far inside the 600 s lease, with room for a start on a loaded machine.
        [captured] = await relay_server.wait_for(1, timeout=60)
        assert "alice@example.com" in captured.rcpt_tos
        assert time.monotonic() - started < 60
    finally:
        await gw.stop()
