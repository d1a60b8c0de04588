"""The administrator's copy (notify.admin): failure reports, dead letters, held jobs, the summary.

Real components: the sandbox carrier and webhook harness for reports, the inbound worker's
media server for dead letters, the real store, outbox and capturing relay; time moves on a
clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.admin.copies import AdminCopiesWorker
from gateway.admin.summary import LAST_DAY, SummaryWorker, latest_moment, moment_on
from gateway.config import Config
from gateway.inbound.files import requeue_dead_letter
from gateway.mailout.templates import MailRenderer
from gateway.queue.runner import run_until_idle
from gateway.store import faxes as fax_store
from gateway.store import jobs as job_store
from gateway.store.meta import get_meta
from gateway.store.records import JobState, NewJob, new_job_id
from gateway.store.spool import Spool
from tests import samples, test_inbound_worker
from tests.harness import Harness, harness_config, running
from tests.helpers import BUSY, DELIVERS, Clock, subject_of, until
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.test_fax_to_email import webhooks_answered
from tests.test_inbound_worker import Inbound

ADMIN = "it@example.com"
media = test_inbound_worker.media
start_inbound = test_inbound_worker.start_inbound


def admin_worker(inbound: Inbound) -> AdminCopiesWorker:
    return AdminCopiesWorker(
        config=inbound.config,
        db=inbound.db,
        clock=inbound.clock,
        renderer=MailRenderer(None),
        outbox_dir=inbound.config.data.dir / "outbox",
    )


def summary_worker(inbound: Inbound) -> SummaryWorker:
    return SummaryWorker(
        config=inbound.config,
        db=inbound.db,
        clock=inbound.clock,
        renderer=MailRenderer(None),
        outbox_dir=inbound.config.data.dir / "outbox",
    )


def to_admin(relay: CapturingRelay) -> list[Any]:
    return [m for m in relay.messages if m.rcpt_tos == (ADMIN,)]


@pytest.fixture
async def reports(
    make_config: Callable[..., Config], sandbox: Sandbox, relay_server: CapturingRelay
) -> AsyncIterator[Harness]:
    config = harness_config(
        make_config, sandbox, relay_server, {"notify": {"admin": [ADMIN], "cc": ["boss@x.org"]}}
    )
    async with running(config, Clock()) as harness:
        sandbox.set_webhook(harness.webhook_url)
        yield harness


async def test_the_admin_gets_a_blind_copy_of_every_failure_report_and_of_no_other(
    reports: Harness, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A failure report goes to notify.admin too, on the envelope only (the sender does not see
    the address); a delivery report does not."""
    _job, busy = await reports.submit(BUSY, subject="Contract")
    _job, fine = await reports.submit(DELIVERS, subject="Invoice")
    for fax in (busy, fine):
        await webhooks_answered(sandbox, fax.carrier_id or "")
    await reports.settle()
    by_subject = {subject_of(m.message): m for m in relay_server.messages}
    failed = next(m for s, m in by_subject.items() if "failed" in s and "Contract" in s)
    assert failed.rcpt_tos == ("alice@example.com", "boss@x.org", ADMIN)
    headers = " ".join(str(failed.message[h]) for h in ("To", "Cc", "Bcc") if failed.message[h])
    assert ADMIN not in headers and "boss@x.org" in headers
    delivered = next(m for s, m in by_subject.items() if "delivered" in s)
    assert ADMIN not in delivered.rcpt_tos


@pytest.mark.parametrize(
    ("notify", "job"),
    [
        ({}, {"notify": "none"}),
        ({"on_failure": False}, {}),
        ({}, {"sender": "not an address"}),
    ],
    ids=["+notify=none", "on_failure=false", "unusable sender"],
)
async def test_the_admin_gets_every_failure_even_when_the_sender_gets_no_report(
    make_config: Callable[..., Config],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    notify: dict[str, Any],
    job: dict[str, Any],
) -> None:
    """With no report for the sender (their +notify=none, notify.on_failure off, or no usable
    address), notify.admin still gets the failure report, alone, once."""
    config = harness_config(
        make_config, sandbox, relay_server, {"notify": {"admin": [ADMIN], **notify}}
    )
    async with running(config, Clock()) as harness:
        sandbox.set_webhook(harness.webhook_url)
        _job, busy = await harness.submit(BUSY, subject="Contract", **job)
        await webhooks_answered(sandbox, busy.carrier_id or "")
        await harness.settle()
        await harness.settle()  # nothing more: the copy is queued once
    [copy] = relay_server.messages
    assert copy.rcpt_tos == (ADMIN,)
    assert "failed" in subject_of(copy.message) and "Contract" in subject_of(copy.message)
    assert str(copy.message["To"]) == ADMIN


async def test_every_dead_letter_is_told_once_with_why(start_inbound: Callable[..., Any]) -> None:
    """A fax whose document cannot be fetched is a dead letter; the admin gets one mail saying
    why, however often the worker looks; dying again after a requeue is a new mail."""
    inbound: Inbound = await start_inbound(
        {"notify": {"admin": [ADMIN]}, "inbound": {"max_attempts": 1}}
    )
    fax_id = await inbound.announce("missing")  # the media server answers 404, once is all
    await inbound.settle()
    assert (await inbound.row(fax_id)).state.value == "dead"
    admin = admin_worker(inbound)
    assert await admin.run_once() == 1
    assert await admin.run_once() == 0
    await run_until_idle([admin, inbound.outbox])
    [mail] = to_admin(inbound.relay)
    subject = subject_of(mail.message)
    assert subject.startswith("Inbound fax from +1 555-666-8888 not delivered: download:")
    text = mail.message.get_body(("plain",)).get_content()
    assert "404" in text and f"dead-letter requeue {fax_id}" in text
    assert "still at the carrier" in text
    # Requeued by an operator, dead again later: told again.
    await inbound.db.run(requeue_dead_letter, fax_id, data_dir=inbound.config.data.dir)
    inbound.clock.advance(1)
    await inbound.settle()
    await run_until_idle([admin, inbound.outbox])
    assert len(to_admin(inbound.relay)) == 2


async def test_every_held_job_is_told_once(start_inbound: Callable[..., Any]) -> None:
    """A job held by the crash guard brings the admin one mail with the job, the sender, the
    numbers and why; nothing without notify.admin."""
    inbound: Inbound = await start_inbound({"notify": {"admin": [ADMIN]}})
    run = inbound.db.run
    job_id = new_job_id()
    spool = Spool(inbound.config.data.dir / "spool").write(job_id, b"Subject: x\r\n\r\nx\r\n")
    new = NewJob(
        id=job_id,
        sender="alice@example.com",
        auth_user=None,
        client_address="127.0.0.1",
        subject="Contract",
        message_id="<m@example.com>",
        from_number="+12015550100",
        spool_path=spool,
        recipients=("+12015550123",),
    )
    await run(job_store.create_job, new, inbound.clock())
    # Two pickups that never finished: held at the second claim (queue.max_pickups = 1).
    await run(job_store.claim_jobs, JobState.RECEIVED, max_pickups=1, now=inbound.clock())
    await run(job_store.claim_jobs, JobState.RECEIVED, max_pickups=1, now=inbound.clock())
    assert (await run(job_store.get_job, job_id)).state is JobState.HELD  # type: ignore[union-attr]
    quiet = AdminCopiesWorker(
        config=inbound.config.model_copy(
            update={"notify": inbound.config.notify.model_copy(update={"admin": ()})}
        ),
        db=inbound.db,
        clock=inbound.clock,
        renderer=MailRenderer(None),
        outbox_dir=inbound.config.data.dir / "outbox",
    )
    assert await quiet.run_once() == 0
    admin = admin_worker(inbound)
    await run_until_idle([admin, inbound.outbox])
    [mail] = to_admin(inbound.relay)
    assert subject_of(mail.message).startswith(f"Fax job {job_id} held:")
    text = mail.message.get_body(("plain",)).get_content()
    assert "alice@example.com" in text and "+1 201-555-0123" in text
    assert f"queue retry {job_id}" in text
    assert await admin.run_once() == 0


async def test_the_daily_summary_goes_once_a_day_at_summary_time_across_restarts(
    start_inbound: Callable[..., Any],
) -> None:
    """At notify.summary_time the admin gets one summary of the day before: faxes out and in,
    pages, failures by code with their descriptions, top senders, queues and dead letters, as
    text and an HTML table; not again that day, nor after a restart; again the next day."""
    inbound: Inbound = await start_inbound(
        {"notify": {"admin": [ADMIN], "summary_time": "06:30"}, "inbound": {"max_attempts": 1}}
    )
    run = inbound.db.run
    # Tomorrow 06:30 UTC is the summary moment (ahead: the clock only moves forward), the
    # traffic an hour before it.
    now = datetime.fromtimestamp(inbound.clock(), UTC)
    moment = now.replace(hour=6, minute=30, second=0, microsecond=0) + timedelta(days=1)
    inbound.clock.advance(moment.timestamp() - inbound.clock() - 3600)  # 05:30
    worker = summary_worker(inbound)
    due = await worker.next_due()
    assert due is not None and due == moment.timestamp() - 86400  # the last one: not yet sent
    # The last moment's: caught up once at the first start, then the next moment is awaited.
    assert await worker.run_once() == 1
    assert await worker.next_due() == moment.timestamp()
    assert await worker.run_once() == 0
    await run_until_idle([inbound.outbox])
    assert len(to_admin(inbound.relay)) == 1

    at = inbound.clock()
    for sender, number, outcome in (
        ("alice@example.com", "+12015550123", None),
        ("alice@example.com", "+12015550124", 5109),
        ("bob@example.com", "+12015550125", 5109),
        ("alice@example.com", "+12015550126", 5108),
    ):
        job_id = new_job_id(at)
        new = NewJob(
            id=job_id,
            sender=sender,
            auth_user=None,
            client_address="127.0.0.1",
            subject="s",
            message_id="",
            from_number="+12015550100",
            spool_path=inbound.config.data.dir / "spool" / f"{job_id}.eml",
            recipients=(number,),
        )
        await run(job_store.create_job, new, at)
        [fax] = await run(fax_store.faxes_of, job_id)
        if outcome is None:
            await run(
                lambda conn, fid=fax.id: conn.execute(
                    "UPDATE faxes SET state = 'delivered', pages = 3, finished_at = ? WHERE id = ?",
                    (at, fid),
                )
            )
        else:
            await run(fax_store.fail_fax, fax.id, outcome, "x", at)
    inbound.media.files["in"] = samples.pdf(2)
    await inbound.announce("in")
    await inbound.announce("lost")  # 404: a dead letter
    await inbound.settle()

    inbound.clock.advance(moment.timestamp() - inbound.clock() + 60)  # 06:31
    assert await worker.run_once() == 1
    await run_until_idle([inbound.outbox])
    [_caught_up, mail] = to_admin(inbound.relay)
    assert subject_of(mail.message) == (
        f"Fax gateway summary for {(moment - timedelta(days=1)).date()}: 1 delivered, 3 failed,"
        " 2 received, 1 dead letters"
    )
    text = mail.message.get_body(("plain",)).get_content()
    assert "1 delivered (3 pages), 3 failed" in text and "2 received (4 pages)" in text
    assert "2 x 5109: far end is not able to receive" in text
    assert "1 x 5108: far end is not compatible" in text
    assert "3 x alice@example.com" in text and "1 x bob@example.com" in text
    html = mail.message.get_body(("html",)).get_content()
    assert "<table" in html and "far end is not able to receive</td>" in html
    assert await run(get_meta, LAST_DAY) == moment.date().isoformat()

    restarted = summary_worker(inbound)
    assert await restarted.run_once() == 0
    inbound.clock.advance(86400)
    assert await restarted.run_once() == 1
    await run_until_idle([inbound.outbox])
    assert len(to_admin(inbound.relay)) == 3


async def test_the_daemon_archives_inbound_faxes_and_tells_the_admin(
    gateway: Any, sandbox: Sandbox, relay_server: CapturingRelay, tmp_path: Path
) -> None:
    """A whole gateway with notify.admin and an archive: an inbound fax is archived and then
    mailed, and the admin gets the summary it catches up on at its first start."""
    archive = tmp_path / "archive"
    overrides = {"notify": {"admin": [ADMIN]}, "inbound": {"archive_dir": str(archive)}}
    async with gateway(overrides) as gw:
        sandbox.inbound("12015550101", "12015550142", samples.pdf(1))

        async def delivered() -> bool:
            return len(relay_server.messages) >= 2

        await until(delivered, seconds=30)
        by_rcpt = {m.rcpt_tos: subject_of(m.message) for m in relay_server.messages}
        assert by_rcpt[("office@example.com",)].startswith("Fax from +1 201-555-0142")
        assert by_rcpt[(ADMIN,)].startswith("Fax gateway summary for ")
        assert len(relay_server.messages) == 2
        assert sorted(p.suffix for p in archive.rglob("*") if p.is_file()) == [".json", ".pdf"]
        assert await gw.db.run(get_meta, LAST_DAY) is not None


def test_summary_time_is_read_in_the_notify_time_zone_across_a_clock_change(
    make_config: Callable[..., Config],
) -> None:
    """07:00 in America/New_York is 12:00 UTC in winter and 11:00 UTC in summer; the day the
    clocks change has 23 hours between two summaries."""
    config = make_config({"notify": {"timezone": "America/New_York", "summary_time": "07:00"}})
    # 2026-03-08: daylight saving time starts in the United States at 02:00.
    moment = latest_moment(config, datetime(2026, 3, 8, 11, 30, tzinfo=UTC).timestamp())
    assert moment.astimezone(UTC) == datetime(2026, 3, 8, 11, 0, tzinfo=UTC)
    before = moment_on(config, moment.date() - timedelta(days=1))
    assert before.astimezone(UTC) == datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    assert moment.timestamp() - before.timestamp() == 23 * 3600
    # Before the morning's moment, the latest is yesterday's.
    early = latest_moment(config, datetime(2026, 3, 8, 10, 59, tzinfo=UTC).timestamp())
    assert early == before
