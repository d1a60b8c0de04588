"""The outbox: queued once per key, sent once, retried with backoff across restarts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.mailout.message import RenderedMail, build_message
from gateway.mailout.outbox import OutboxWorker, message_path_for, queue_mail
from gateway.mailout.relay import create_relay
from gateway.store import Database, blobs
from gateway.store import outbox as store
from gateway.store.outbox import OutboxState
from tests.servers.postgres import StoreBackend
from tests.servers.relay import CapturingRelay, RelayFactory

ConfigFactory = Callable[..., Config]
QUEUE = {"min_backoff_seconds": 30.0, "max_backoff_seconds": 3600.0, "lifetime_seconds": 86400.0}


class Clock:
    """Time the test moves forward by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Lowest:
    """A jitter source that always picks the low end: exact, predictable delays."""

    def uniform(self, a: float, b: float) -> float:
        return a


pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
async def db(tmp_path: Path, store_backend: StoreBackend) -> AsyncIterator[Database]:
    database = await store_backend.database(tmp_path).open()
    yield database
    database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def mail(subject: str = "Fax to +1 555-123-4567 delivered", to: str = "alice@example.com") -> Any:
    return build_message(
        from_address="fax-gateway@example.com",
        to=[to],
        rendered=RenderedMail(subject=subject, text="Delivered.\n", html=None),
        message_id_domain="fax.example.com",
    )


def worker_for(
    db: Database,
    make_config: ConfigFactory,
    server: CapturingRelay,
    clock: Clock,
    **relay: Any,
) -> OutboxWorker:
    config = make_config({"relay": {**server.relay_config_overrides(), **relay}, "queue": QUEUE})
    return OutboxWorker(config=config, db=db, relay=create_relay(config), clock=clock, rng=Lowest())


async def queue(
    db: Database, outbox_dir: Path, clock: Clock, key: str = "report:fax-1:delivered", **kw: Any
) -> bool:
    options: dict[str, Any] = {
        "kind": "delivered",
        "message": mail(),
        "recipients": ["alice@example.com"],
    }
    options.update(kw)
    return await queue_mail(db, outbox_dir, key=key, now=clock(), **options)


async def run_until_idle(worker: OutboxWorker) -> int:
    """Call run_once until a pass finds nothing due, as the runner does; total handled."""
    total = 0
    for _ in range(100):
        handled = await worker.run_once()
        if handled == 0:
            return total
        total += handled
    raise AssertionError("the worker never became idle")


async def only(db: Database) -> store.OutboxMessage:
    [message] = await db.run(store.list_messages)
    return message


async def test_queued_mail_is_sent_once_and_its_file_removed(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """queue_mail writes the file, then the row; the worker sends it and cleans up."""
    outbox_dir = tmp_path / "data" / "outbox"  # data.dir's, where the worker's node keeps it
    assert await queue(db, outbox_dir, clock)
    path = message_path_for(outbox_dir, "report:fax-1:delivered")
    assert path.exists() and (await only(db)).message_path == path
    worker = worker_for(db, make_config, relay_server, clock)
    with capture_logs() as logs:
        assert await run_until_idle(worker) == 1
    [captured] = relay_server.messages
    assert captured.rcpt_tos == ("alice@example.com",)
    assert captured.message["Subject"] == "Fax to +1 555-123-4567 delivered"
    sent = await only(db)
    assert sent.state == OutboxState.SENT and sent.attempts == 1 and sent.sent_at == clock()
    assert not path.exists()
    [line] = [e for e in logs if e["event"] == "outbox.sent"]
    assert line["key"] == "report:fax-1:delivered" and line["kind"] == "delivered"
    assert line["attempts"] == 1
    assert await worker.run_once() == 0


async def test_mails_due_together_share_one_relay_session(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """Three mails waiting go over one session, byte for byte as stored; it is QUIT once the
    outbox is empty, and the next mail opens a new one."""
    outbox_dir = tmp_path / "outbox"
    for n in range(3):
        assert await queue(db, outbox_dir, clock, key=f"report:fax-{n}:delivered")
    stored = [
        message_path_for(outbox_dir, f"report:fax-{n}:delivered").read_bytes() for n in range(3)
    ]
    worker = worker_for(db, make_config, relay_server, clock)
    assert await run_until_idle(worker) == 3
    assert sorted(m.data for m in relay_server.messages) == sorted(stored)
    assert (relay_server.sessions, relay_server.quits) == (1, 1)
    assert await queue(db, outbox_dir, clock, key="report:fax-3:delivered")
    assert await run_until_idle(worker) == 1
    assert (relay_server.sessions, relay_server.quits) == (2, 2)


async def test_same_key_queued_twice_is_sent_once(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """A notification queued again (retried webhook, replay) goes out once."""
    outbox_dir = tmp_path / "data" / "outbox"  # data.dir's, where the worker's node keeps it
    assert await queue(db, outbox_dir, clock)
    assert not await queue(db, outbox_dir, clock, message=mail("Second rendering"))
    worker = worker_for(db, make_config, relay_server, clock)
    await run_until_idle(worker)
    # Even after it was sent, the key stays spent.
    assert not await queue(db, outbox_dir, clock)
    await run_until_idle(worker)
    [captured] = relay_server.messages
    assert captured.message["Subject"] == "Fax to +1 555-123-4567 delivered"
    assert not message_path_for(outbox_dir, "report:fax-1:delivered").exists()


async def test_4xx_is_deferred_with_backoff_then_sent_once(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """451: deferred by the minimum backoff, doubling next time, then delivered exactly once."""
    await queue(db, tmp_path / "outbox", clock)
    worker = worker_for(db, make_config, relay_server, clock)
    relay_server.fail_next(2, code=451, message="4.3.0 Try again later")
    with capture_logs() as logs:
        assert await worker.run_once() == 1
    deferred = await only(db)
    assert deferred.state == OutboxState.PENDING and deferred.attempts == 1
    assert deferred.next_attempt_at == pytest.approx(clock() + 30.0)
    assert deferred.error is not None and "451" in deferred.error
    [line] = [e for e in logs if e["event"] == "outbox.deferred"]
    assert line["attempts"] == 1 and line["log_level"] == "warning" and line["delay"] == 30.0

    assert await worker.run_once() == 0  # not due yet
    clock.advance(30)
    await run_until_idle(worker)
    again = await only(db)
    assert again.attempts == 2 and again.next_attempt_at == pytest.approx(clock() + 60.0)
    clock.advance(60)
    await run_until_idle(worker)
    assert (await only(db)).state == OutboxState.SENT
    assert len(relay_server.messages) == 1


async def test_5xx_fails_the_message_and_requeue_sends_it(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """554: failed, logged at error level, file kept; an operator's requeue sends it."""
    await queue(db, tmp_path / "outbox", clock)
    worker = worker_for(db, make_config, relay_server, clock)
    relay_server.reject_next(1, code=554, message="5.7.1 Spam", at="DATA")
    with capture_logs() as logs:
        await run_until_idle(worker)
    failed = await only(db)
    assert failed.state == OutboxState.FAILED and "554" in (failed.error or "")
    assert failed.message_path.exists()
    [line] = [e for e in logs if e["event"] == "outbox.failed"]
    assert line["log_level"] == "error" and line["attempts"] == 1
    assert relay_server.messages == []
    assert await worker.run_once() == 0  # failed is final

    assert await db.run(store.requeue, failed.id, clock())
    await run_until_idle(worker)
    assert (await only(db)).state == OutboxState.SENT
    assert len(relay_server.messages) == 1


async def test_mail_not_tried_while_the_relay_is_down_is_not_charged_an_attempt(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """Only the mail that met the dead relay counts an attempt (inbound.max_attempts reads it)."""
    outbox_dir = tmp_path / "outbox"
    for n in range(3):
        await queue(db, outbox_dir, clock, key=f"inbound:fax-{n}", message=mail(f"n{n}"))
    worker = worker_for(db, make_config, relay_server, clock)
    relay_server.go_down()
    for _ in range(4):
        await run_until_idle(worker)
        clock.advance(3600)
    pending = await db.run(store.list_messages, OutboxState.PENDING)
    # Each pass tries one message; four passes, four attempts in all, not twelve.
    assert sum(m.attempts for m in pending) == 4


async def test_relay_down_then_back_delivers_exactly_once(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """Refused connections defer the mail; after come_up it arrives once, and only once."""
    outbox_dir = tmp_path / "outbox"
    for n in range(3):
        await queue(db, outbox_dir, clock, key=f"report:fax-{n}:delivered", message=mail(f"n{n}"))
    worker = worker_for(db, make_config, relay_server, clock)
    relay_server.go_down()
    assert await run_until_idle(worker) == 3
    pending = await db.run(store.list_messages, OutboxState.PENDING)
    assert len(pending) == 3
    # One connection attempt per pass: the others were deferred without trying.
    assert sum((m.error or "").startswith("not tried") for m in pending) == 2
    clock.advance(3600)
    assert await run_until_idle(worker) == 3  # still down: deferred again
    relay_server.come_up()
    assert await run_until_idle(worker) == 0  # not due yet: backoff doubled
    clock.advance(3600)
    assert await run_until_idle(worker) == 3
    subjects = sorted(m.message["Subject"] for m in await relay_server.wait_for(3))
    assert subjects == ["n0", "n1", "n2"]
    clock.advance(86400)
    assert await run_until_idle(worker) == 0
    assert len(relay_server.messages) == 3


async def test_deferred_mail_survives_a_restart(
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
    store_backend: StoreBackend,
) -> None:
    """Deferred with the relay down; a new Database and worker on the same store send it."""
    first = await store_backend.database(tmp_path).open()
    try:
        await queue(first, tmp_path / "outbox", clock)
        relay_server.go_down()
        await run_until_idle(worker_for(first, make_config, relay_server, clock))
    finally:
        first.close()
    relay_server.come_up()
    second = await store_backend.database(tmp_path).open()
    try:
        worker = worker_for(second, make_config, relay_server, clock)
        assert await worker.run_once() == 0  # the backoff is remembered across the restart
        clock.advance(30)
        assert await run_until_idle(worker) == 1
        assert (await only(second)).state == OutboxState.SENT
    finally:
        second.close()
    assert len(relay_server.messages) == 1


async def test_lifetime_over_is_dead_and_logged(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """Undeliverable for queue.lifetime_seconds: dead, at error level; the last try is on time."""
    await queue(db, tmp_path / "outbox", clock)
    worker = worker_for(db, make_config, relay_server, clock)
    relay_server.go_down()
    clock.advance(86400 - 10)
    await run_until_idle(worker)
    last = await only(db)
    # The deferral is cut to the end of the lifetime instead of the full backoff.
    assert last.state == OutboxState.PENDING
    assert last.next_attempt_at == pytest.approx(last.created_at + 86400)
    clock.advance(10)
    with capture_logs() as logs:
        await run_until_idle(worker)
    dead = await only(db)
    assert dead.state == OutboxState.DEAD and "lifetime" in (dead.error or "")
    [line] = [e for e in logs if e["event"] == "outbox.dead"]
    assert line["log_level"] == "error"


async def test_wrong_relay_password_keeps_mail_waiting(
    db: Database,
    make_config: ConfigFactory,
    make_relay_server: RelayFactory,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """535 defers (never fails) the mail; once the password is right it goes out."""
    server = make_relay_server(tls="starttls", users={"gateway": "s3cret-pass"})
    config = make_config(
        {"relay": {**server.relay_config_overrides(), "password": "oops"}, "queue": QUEUE}
    )
    relay = create_relay(config, tls_context=server.client_tls_context())
    await queue(db, tmp_path / "outbox", clock)
    await run_until_idle(OutboxWorker(config=config, db=db, relay=relay, clock=clock, rng=Lowest()))
    assert (await only(db)).state == OutboxState.PENDING
    fixed = make_config({"relay": server.relay_config_overrides(), "queue": QUEUE})
    relay = create_relay(fixed, tls_context=server.client_tls_context())
    clock.advance(30)
    await run_until_idle(OutboxWorker(config=fixed, db=db, relay=relay, clock=clock, rng=Lowest()))
    assert (await only(db)).state == OutboxState.SENT
    assert server.messages[0].auth_user == "gateway"


async def test_partial_refusal_retries_only_the_temporarily_refused(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """Accepted recipients get it once, 5xx ones are dropped, 4xx ones get it on a later try."""
    recipients = ["alice@example.com", "gone@example.com", "full@example.com"]
    await queue(db, tmp_path / "outbox", clock, recipients=recipients)
    relay_server.refuse_recipient("gone@example.com", 550, "5.1.1 No such user")
    relay_server.refuse_recipient("full@example.com", 452, "4.2.2 Mailbox full")
    worker = worker_for(db, make_config, relay_server, clock)
    with capture_logs() as logs:
        await run_until_idle(worker)
    waiting = await only(db)
    assert waiting.state == OutboxState.PENDING
    assert waiting.recipients == ("full@example.com",)
    assert any(e["event"] == "outbox.recipients_refused" for e in logs)
    relay_server.clear_faults()
    clock.advance(30)
    await run_until_idle(worker)
    assert (await only(db)).state == OutboxState.SENT
    assert [m.rcpt_tos for m in relay_server.messages] == [
        ("alice@example.com",),
        ("full@example.com",),
    ]


async def test_partial_permanent_refusal_is_sent_with_a_note(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """Some accepted, the rest refused with 5xx: sent (nothing left to retry), refusal noted."""
    await queue(
        db, tmp_path / "outbox", clock, recipients=["alice@example.com", "gone@example.com"]
    )
    relay_server.refuse_recipient("gone@example.com", 550, "5.1.1 No such user")
    await run_until_idle(worker_for(db, make_config, relay_server, clock))
    sent = await only(db)
    assert sent.state == OutboxState.SENT and "gone@example.com" in (sent.error or "")
    assert [m.rcpt_tos for m in relay_server.messages] == [("alice@example.com",)]


async def test_missing_message_file_is_dead(
    db: Database,
    make_config: ConfigFactory,
    relay_server: CapturingRelay,
    clock: Clock,
    tmp_path: Path,
) -> None:
    """A row whose message file vanished cannot ever be sent: dead at once, not retried."""
    outbox_dir = tmp_path / "outbox"
    await queue(db, outbox_dir, clock)
    path = message_path_for(outbox_dir, "report:fax-1:delivered")
    path.unlink()
    await db.run(blobs.forget, [path])  # and its shared copy, where the store keeps one
    await run_until_idle(worker_for(db, make_config, relay_server, clock))
    dead = await only(db)
    assert dead.state == OutboxState.DEAD and "missing" in (dead.error or "")


async def test_outbox_through_maildir(
    db: Database, make_config: ConfigFactory, clock: Clock, tmp_path: Path
) -> None:
    """With relay.backend = "maildir" the worker delivers a complete file per recipient."""
    maildir = tmp_path / "Maildir"
    config = make_config({"relay": {"backend": "maildir", "maildir": str(maildir)}})
    worker = OutboxWorker(config=config, db=db, relay=create_relay(config), clock=clock)
    await queue(db, tmp_path / "outbox", clock, recipients=["a@example.com", "b@example.com"])
    assert await run_until_idle(worker) == 1
    files = sorted((maildir / "new").iterdir())
    assert len(files) == 2
    assert {f.read_bytes().split(b"\n", 2)[1] for f in files} == {
        b"Delivered-To: a@example.com",
        b"Delivered-To: b@example.com",
    }
    assert (await only(db)).state == OutboxState.SENT


async def test_queue_mail_refuses_a_malformed_recipient_before_writing(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """A recipient with a line break is a ValueError, and leaves neither file nor row."""
    outbox_dir = tmp_path / "outbox"
    with pytest.raises(ValueError):
        await queue(db, outbox_dir, clock, recipients=["a@example.com\r\nRCPT TO:<b@x>"])
    assert await db.run(store.list_messages) == []
    assert not outbox_dir.exists() or list(outbox_dir.iterdir()) == []


async def test_claimed_message_of_a_crashed_worker_is_due_again_after_the_lease(
    db: Database, clock: Clock, tmp_path: Path
) -> None:
    """A claim without an outcome (worker died mid-send) makes the message due after the lease."""
    await queue(db, tmp_path / "outbox", clock)
    [claimed] = await db.run(store.claim_due, clock(), 10, 600.0)
    assert claimed.attempts == 1
    assert await db.run(store.claim_due, clock() + 599, 10, 600.0) == []
    [again] = await db.run(store.claim_due, clock() + 600, 10, 600.0)
    assert again.id == claimed.id and again.attempts == 2
    assert await db.run(store.pending_count) == 1
    assert await db.run(store.state_counts) == {
        "pending": 1,
        "sent": 0,
        "failed": 0,
        "dead": 0,
        "held": 0,
    }
