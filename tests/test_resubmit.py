"""Resubmission end to end: a fax the sandbox fails on the line is sent again after
fax.resubmit_delay_seconds with a fresh URL, told in between (notify.on_retry) and at the end
once, threaded, with how many times it was tried; never for document or permanent failures."""

from __future__ import annotations

import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.carrier.faxerrors import resubmittable
from gateway.carrier.status import Outcome
from gateway.config import ConfigError, config_from_dict
from gateway.store import faxes as fax_store
from gateway.store import jobs
from gateway.store import outbox as outbox_store
from gateway.store.events import defer_event, events_of, record_event
from gateway.store.records import FaxState, JobState
from gateway.ui.actions import Actions
from tests import samples
from tests.conftest import merge
from tests.helpers import until
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.test_email_to_fax import fax_mail, send

NUMBER = "+12015550123"
PDF_MAIL = ("12015550123@fax.local",)


def resubmitting(attempts: int, *, on_retry: bool = False) -> dict[str, Any]:
    return {
        "fax": {"resubmit_attempts": attempts, "resubmit_delay_seconds": 1},
        "notify": {"on_retry": on_retry},
    }


def outbound_to(sandbox: Sandbox, number: str = NUMBER) -> list[dict[str, Any]]:
    digits = number.lstrip("+")
    return [f for f in sandbox.faxes() if f["direction"] == "outbound" and f["to"] == digits]


async def final_faxes(sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    def final() -> list[dict[str, Any]]:
        done = [f for f in outbound_to(sandbox) if f["status"] in ("delivered", "failed")]
        return done if len(done) >= count else []

    return await sandbox.wait_for_async(final, timeout=30, what=f"{count} final faxes")


def text_of(message: Any) -> str:
    body = message.get_body(preferencelist=("plain",))
    return str(body.get_content()) if body is not None else ""


async def test_busy_fax_is_sent_again_told_in_between_and_reported_once(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Busy once, then through: two POSTs with different URLs, an interim "will try again at"
    mail while the document is kept, then one delivery report saying it took 2 tries."""
    sandbox.fail_faxes(1, 5109, to=NUMBER)
    async with gateway(resubmitting(2, on_retry=True)) as gw:
        job_id = await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        [interim] = await relay_server.wait_for(1, timeout=30)
        assert "will try again at" in str(interim.message["Subject"])
        assert interim.message["In-Reply-To"] == "<original-123@example.com>"
        assert "far end is not able to receive (error 5109)" in text_of(interim.message)
        assert not list(interim.message.iter_attachments())
        # While the resubmission waits, nothing of the job is cleaned up.
        job = await gw.db.run(jobs.get_job, job_id)
        assert job is not None and job.stored_deleted_at is None
        assert job.document_path is not None and job.document_path.exists()
        first, second = sorted(await final_faxes(sandbox, 2), key=lambda f: f["created_at"])
        assert (first["status"], second["status"]) == ("failed", "delivered")
        assert first["url"] != second["url"]
        interim_again, final = await relay_server.wait_for(2, timeout=30)
        assert interim_again is interim
        assert str(final.message["Subject"]).strip().startswith("Fax to +1 201-555-0123 delivered")
        assert final.message["In-Reply-To"] == "<original-123@example.com>"
        assert "Tries:        2 (sent again after a failed call)" in text_of(final.message)
        [fax] = await gw.db.run(fax_store.faxes_of, job_id)
        assert (fax.resubmits, fax.carrier_id) == (1, second["id"])
    assert len(relay_server.messages) == 2


async def test_a_failure_learnt_from_the_posts_own_answer_is_told_in_between_too(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """The POST's answer is lost (500 after the fax was made) and its webhook never comes: the
    fax the submit worker adopts by its URL has already failed on the line; it is resubmitted
    and the sender still gets the interim "will try again" mail, then the delivery report."""
    sandbox.fail_faxes(1, 5109, to=NUMBER)
    sandbox.drop_webhooks(1)
    sandbox.fail_next(1, 500, method="POST", path="/api/v1/faxes", when="after")
    async with gateway(resubmitting(2, on_retry=True)) as gw:
        await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        first, second = sorted(await final_faxes(sandbox, 2), key=lambda f: f["created_at"])
        assert (first["status"], second["status"]) == ("failed", "delivered")
        interim, final = await relay_server.wait_for(2, timeout=30)
        assert "will try again at" in str(interim.message["Subject"])
        assert str(final.message["Subject"]).strip().startswith("Fax to +1 201-555-0123 delivered")
    assert len(relay_server.messages) == 2


async def test_a_failure_whose_interim_mail_its_event_did_not_queue_is_told_all_the_same(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """The try's failure is recorded but its event's application ends before the interim mail
    (deferred): the next POST gives the fax a new carrier id, so the event, applied again, no
    longer finds it; the submit worker queues that round's mail before its POST instead."""
    sandbox.fail_faxes(1, 5109, to=NUMBER)
    overrides = merge(
        resubmitting(1, on_retry=True), {"webhooks": {"reconcile_after_seconds": 3600}}
    )
    async with gateway(overrides) as gw:
        token = gw.config.http.webhook_token.get_secret_value()
        sandbox.set_webhook(None)  # the failure's webhook is the test's to store
        job_id = await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        [failed] = await final_faxes(sandbox, 1)
        assert failed["status"] == "failed"

        async def submitted() -> bool:
            [fax] = await gw.db.run(fax_store.faxes_of, job_id)
            return fax.carrier_id == failed["id"] and fax.state is FaxState.SUBMITTED

        await until(submitted, 30)
        # What the events worker leaves when applying the failure ends between recording it
        # and queueing the mail: the fax waits to be resubmitted, its event deferred.
        now = time.time()
        result = await gw.db.run(
            fax_store.record_carrier_status, failed["id"], "failed", Outcome.FAILED,
            error_code=5109, error_description="far end is not able to receive", now=now,
            resubmit_attempts=1, resubmit_delay=1.0,
        )  # fmt: skip
        assert result is not None and result[0].state is FaxState.PENDING
        payload = {"type": "fax", "id": failed["id"], "direction": "outbound", "status": "failed"}

        def recorded_and_deferred(conn: sqlite3.Connection) -> int | None:
            # In one call on the store's thread: the events worker cannot apply the event
            # between the two (under load it did, queueing the mail this test is about).
            event_id = record_event(conn, failed["id"], "failed", "outbound", payload, now)
            if event_id is not None:  # due again only once the resubmission's POST is recorded
                defer_event(conn, event_id, "OSError: No space left on device", now + 3600, now)
            return event_id

        event_id = await gw.db.run(recorded_and_deferred)
        assert event_id is not None
        sandbox.set_webhook(f"{gw.config.http.public_url}/webhooks/fax/{token}")
        _first, second = sorted(await final_faxes(sandbox, 2), key=lambda f: f["created_at"])
        assert second["status"] == "delivered"

        async def resubmitted() -> bool:
            [fax] = await gw.db.run(fax_store.faxes_of, job_id)
            return fax.carrier_id == second["id"]

        await until(resubmitted, 30)
        await gw.db.run(defer_event, event_id, "OSError: No space left on device", 0, time.time())

        async def applied_again() -> bool:
            [event] = await gw.db.run(events_of, failed["id"])
            return (event.error or "").startswith("no fax of ours has this carrier id")

        await until(applied_again, 30)
        mails = await relay_server.wait_for(2, timeout=30)
        subjects = [" ".join(str(mail.message["Subject"]).split()) for mail in mails]
        [interim] = [subject for subject in subjects if "will try again at" in subject]
        [final] = [subject for subject in subjects if subject != interim]
        assert final.startswith("Fax to +1 201-555-0123 delivered"), subjects
        # Queued just before the POST, it names that POST's time (to the minute), not when
        # the submit worker's claim on the fax would run out (minutes later).
        shown = re.search(r"will try again at (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", interim)
        assert shown is not None, interim
        at = datetime.strptime(shown[1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
        assert now <= at + 60 and at <= time.time(), (interim, now)
    assert len(relay_server.messages) == 2


async def test_a_fax_failing_every_time_is_tried_resubmit_attempts_more_times(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """Busy every time: 1 + resubmit_attempts POSTs, then one failure report (no interim mails
    with notify.on_retry off) saying how many tries there were."""
    sandbox.fail_faxes(10, 5121, to=NUMBER)
    async with gateway(resubmitting(2)) as gw:
        await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        await final_faxes(sandbox, 3)
        [report] = await relay_server.wait_for(1, timeout=30)
        assert "failed" in str(report.message["Subject"])
        assert "Tries:        3 (sent again after each failed call" in text_of(report.message)
    assert len(outbound_to(sandbox)) == 3
    assert len(relay_server.messages) == 1


@pytest.mark.parametrize(
    ("code", "why"),
    [(5108, "a fixed property of the far end"), (4203, "the document could not be fetched")],
)
async def test_failures_retrying_cannot_cure_are_not_resubmitted(
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    code: int,
    why: str,
) -> None:
    """A permanent (5108) or document (4xxx) failure is reported at once, sent only once."""
    sandbox.fail_faxes(1, code, to=NUMBER)
    async with gateway(resubmitting(2, on_retry=True)) as gw:
        await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        [report] = await relay_server.wait_for(1, timeout=30)
        assert "failed" in str(report.message["Subject"]), why
    assert len(outbound_to(sandbox)) == 1


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("failed", 5109, True),  # busy / no fax tone
        ("failed", 5121, True),  # line dropped mid-fax
        ("failed", 5314, True),  # failed to fetch file: every resubmission has a fresh URL
        ("failed", 5300, True),  # the carrier's internal error
        ("failed", 5108, False),  # far end not compatible
        ("failed", 5152, False),  # sub-address refused
        ("failed", 4201, False),  # file format
        ("failed", 4203, False),  # download failed: never 4xxx
        ("busy", None, True),
        ("no-answer", None, True),
        ("failed", None, False),  # no code, no busy word: unknown why
    ],
)
def test_which_failures_are_resubmitted(status: str, code: int | None, expected: bool) -> None:
    """Line and carrier failures (51xx retryable, 53xx, busy words) yes; 4xxx and permanent no."""
    assert resubmittable(status, code) is expected


@pytest.mark.parametrize(
    "fax",
    [{"resubmit_delay_seconds": 0}, {"resubmit_attempts": -1}, {"resubmit_attempts": 11}],
)
def test_resubmission_settings_are_validated(config_data: dict[str, Any], fax: dict) -> None:
    """A delay under a second or a negative (or absurd) count is a configuration error."""
    with pytest.raises(ConfigError):
        config_from_dict(merge(config_data, {"fax": fax}), env={})


async def test_an_operators_retry_of_a_fax_waiting_to_be_resubmitted_tells_no_retry_again(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A fax held while it waited to be resubmitted, then retried by an operator, gets no
    second "will try again" mail for the operator's round (no call failed in it): the interim
    mail of its one failure, then its delivery."""
    sandbox.fail_faxes(1, 5109, to=NUMBER)
    overrides = merge(resubmitting(1, on_retry=True), {"fax": {"resubmit_delay_seconds": 3600}})
    async with gateway(overrides) as gw:
        job_id = await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        [interim] = await relay_server.wait_for(1, timeout=30)
        assert "will try again at" in str(interim.message["Subject"])
        [fax] = await gw.db.run(fax_store.faxes_of, job_id)
        assert (fax.state, fax.resubmits, fax.submit_attempts) == (FaxState.PENDING, 1, 0)

        # What pickups that each died mid-step leave (kill -9 before the POST): the crash
        # guard's count at its limit, the fax due; the next claim holds it, and its job.
        def crashed(conn: Any) -> None:
            conn.execute(
                "UPDATE faxes SET pickups = ?, next_attempt_at = 0 WHERE id = ?",
                (gw.config.queue.max_pickups, fax.id),
            )

        await gw.db.run(crashed)  # found by the submit worker's periodic scan (0.1 s here)

        async def held() -> bool:
            job = await gw.db.run(jobs.get_job, job_id)
            return job is not None and job.state is JobState.HELD

        await until(held, 30)
        actions = Actions(gw.config, gw.db, lambda: None)  # the scan finds the job again
        outcome = await actions.retry(job_id, "operator")
        assert outcome.ok, outcome.message
        _first, second = sorted(await final_faxes(sandbox, 2), key=lambda f: f["created_at"])
        assert second["status"] == "delivered"

        async def reported() -> bool:
            [now] = await gw.db.run(fax_store.faxes_of, job_id)
            return now.reported_at is not None and now.carrier_id == second["id"]

        await until(reported, 30)
        keys = [message.key for message in await gw.db.run(outbox_store.list_messages)]
        retries = [key for key in keys if key.startswith(f"report:{fax.id}:retry")]
        assert retries == [f"report:{fax.id}:retry:1"], keys
        assert f"report:{fax.id}:delivered:round1" in keys, keys


async def test_an_interim_mail_that_cannot_be_made_does_not_keep_the_fax_from_going_again(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay, tmp_path: Path
) -> None:
    """An override of the retry mail that fails to render (a name it does not have): the fax
    is still sent again and delivered, and told; only the interim mail is missing."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "retry.subject.j2").write_text("Fax to {{ no_such_value }} will go again\n")
    sandbox.fail_faxes(1, 5109, to=NUMBER)
    overrides = merge(resubmitting(1, on_retry=True), {"templates": {"dir": str(templates)}})
    async with gateway(overrides) as gw:
        job_id = await send(gw, fax_mail(PDF_MAIL[0], (samples.pdf(1), "application/pdf", "a.pdf")))
        _first, second = sorted(await final_faxes(sandbox, 2), key=lambda f: f["created_at"])
        assert second["status"] == "delivered"
        [final] = await relay_server.wait_for(1, timeout=30)
        assert str(final.message["Subject"]).strip().startswith("Fax to +1 201-555-0123 delivered")
        [fax] = await gw.db.run(fax_store.faxes_of, job_id)
        assert (fax.state, fax.resubmits) == (FaxState.DELIVERED, 1)
    assert len(relay_server.messages) == 1
