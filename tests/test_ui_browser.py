"""The status pages in a real browser: Playwright drives Debian's Chromium, headless, against a
whole gateway (SMTP, sandbox carrier, capturing relay) started by the fixtures.

Playwright's own browser downloads are never used: Chromium is /usr/bin/chromium (Debian
package `chromium`, see debian-packages.txt); without it these tests skip, saying so.
Screenshots of each page are kept in var/screenshots/ as test artifacts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.daemon import Gateway
from gateway.store import jobs
from gateway.store.db import transaction
from gateway.store.inbound import InboundState, inbound_by_carrier_id
from gateway.store.jobs import create_job
from gateway.store.records import JobState, NewJob, new_job_id
from tests import samples
from tests.conftest import ROOT, merge
from tests.helpers import OUR_FAX_LINE, until
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.test_email_to_fax import fax_mail, send
from tests.ui_site import ADMIN, PASSWORD, ui_overrides

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "var" / "screenshots"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip(
            "SKIPPED LOUDLY: /usr/bin/chromium is missing: install the Debian package "
            "'chromium' (debian-packages.txt; `make test` does as root) to run the browser tests"
        )
    async_api = pytest.importorskip(
        "playwright.async_api", reason="the 'playwright' Python package (test extra) is missing"
    )
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


def _held_job(conn: sqlite3.Connection, gw: Gateway, raw: bytes) -> str:
    """A job as the SMTP handler makes it, then held as claim() holds one interrupted
    queue.max_pickups times; on the store's one thread, so no worker claims it in between."""
    job_id = new_job_id()
    spool_path = gw.spool.write(job_id, raw)
    create_job(
        conn,
        NewJob(
            id=job_id,
            sender="alice@example.com",
            auth_user=None,
            client_address="127.0.0.1",
            subject="Held one",
            message_id="<held-1@example.com>",
            from_number="+12015550100",
            spool_path=spool_path,
            recipients=("+12015550123",),
        ),
    )
    with transaction(conn):
        conn.execute(
            "UPDATE jobs SET state = 'held', pickups = 3,"
            " error = 'interrupted 3 times while preparing' WHERE id = ?",
            (job_id,),
        )
    return job_id


async def _shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"ui-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def test_the_status_pages_in_chromium(
    browser: Any,
    gateway: GatewayFactory,
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    tmp_path: Path,
) -> None:
    """Log in, find a mailed fax and its timeline, retry a held job, requeue a dead letter,
    send a fax whose report reaches the relay, log out and be refused."""
    # Documents kept an hour after their faxes end, so the detail page can show page 1.
    overrides = merge(ui_overrides(tmp_path), {"storage": {"retention_seconds": 3600}})
    async with gateway(overrides) as gw:
        base = f"http://127.0.0.1:{gw.http.port}"
        job_id = await send(
            gw,
            fax_mail("12015550123@fax.local", (samples.pdf(2), "application/pdf", "a.pdf")),
        )
        await relay_server.wait_for(1, timeout=30)
        held_id = await gw.db.run(
            _held_job,
            gw,
            fax_mail(
                "12015550123@fax.local",
                (samples.pdf(1), "application/pdf", "h.pdf"),
                subject="Held one",
            ).as_bytes(),
        )
        # An inbound fax whose mail the relay refuses for good: a dead letter.
        relay_server.reject_next(1, at="RCPT")
        sandbox.inbound(OUR_FAX_LINE, "+15556668888", samples.pdf(1))

        async def dead() -> bool:
            faxes = [f for f in sandbox.faxes() if f["direction"] == "inbound"]
            if not faxes:
                return False
            found = await gw.db.run(inbound_by_carrier_id, faxes[0]["id"])
            return found is not None and found.state is InboundState.DEAD

        await until(dead, 30)

        context = await browser.new_context(viewport={"width": 1100, "height": 900})
        page = await context.new_page()
        await page.goto(f"{base}/ui/faxes")
        assert "/ui/login" in page.url
        await _shot(page, "login")
        # By keyboard alone: the name field has the focus, Tab to the password, Enter sends.
        await page.keyboard.type(ADMIN)
        await page.keyboard.press("Tab")
        await page.keyboard.type(PASSWORD)
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{base}/ui/faxes")

        await _shot(page, "faxes-before")
        # The overview counts the held job and the dead letter (README shows this screenshot).
        await page.get_by_role("link", name="Overview").click()
        assert "Held jobs (1)" in await page.get_by_role("heading", name="Held jobs").inner_text()
        assert await page.get_by_role("heading", name="Dead letters (1)").count() == 1
        assert await page.locator("svg[role=img]").count() == 1
        overview = await _shot(page, "overview")
        await page.get_by_role("link", name="Faxes").click()

        # The fax sent by SMTP is listed; its detail has the timeline and page 1.
        row = (
            page.get_by_role("row")
            .filter(has_text="alice@example.com")
            .filter(has_text="delivered")
        )
        await row.first.get_by_role("link").click()
        await page.wait_for_url(f"{base}/ui/jobs/{job_id}")
        timeline = page.locator("ol.timeline")
        for step in ("received", "submitted to", "webhook", "delivered report sent"):
            assert step in await timeline.inner_text(), step
        picture = page.get_by_role("img", name=f"Page 1 of fax {job_id}")
        assert await picture.evaluate("img => img.complete && img.naturalWidth") == 300
        await _shot(page, "fax-detail")

        # Retry the held job behind its confirmation; it goes out and is reported.
        await page.goto(f"{base}/ui/jobs/{held_id}")
        await page.get_by_role("link", name="Retry").click()
        await _shot(page, "confirm-retry")
        await page.get_by_role("button", name="Retry").click()
        assert "again" in await page.get_by_role("status").inner_text()

        async def held_done() -> bool:
            job = await gw.db.run(jobs.get_job, held_id)
            return job is not None and job.state is JobState.DONE

        await until(held_done, 30)
        await relay_server.wait_for(2, timeout=30)

        # Requeue the dead letter from the overview's list; its mail then reaches the relay.
        await page.goto(f"{base}/ui/")
        await page.get_by_role("link", name="Inbound fax").first.click()
        await _shot(page, "dead-letter")
        await page.get_by_role("link", name="Requeue this dead letter").click()
        await page.get_by_role("button", name="Requeue").click()
        assert "again" in await page.get_by_role("status").inner_text()
        [inbound_mail] = [
            m
            for m in await relay_server.wait_for(3, timeout=30)
            if "office@example.com" in m.rcpt_tos
        ]
        assert inbound_mail.message.get_payload() is not None

        # Send a fax from the browser; the report goes to the logged-in user.
        document = tmp_path / "letter.pdf"
        document.write_bytes(samples.pdf(1))
        await page.get_by_role("link", name="Send a fax").click()
        await page.get_by_label("Fax number").fill("+1 201 555 0123")
        await page.get_by_label("Document").set_input_files(str(document))
        await page.get_by_label("Cover text").fill("Hello from the browser <b>&</b>")
        await _shot(page, "send")
        await page.get_by_role("button", name="Send the fax").click()
        await page.wait_for_url(f"{base}/ui/jobs/*")
        [report] = [m for m in await relay_server.wait_for(4, timeout=30) if ADMIN in m.rcpt_tos]
        assert "delivered" in str(report.message["Subject"])

        await page.goto(f"{base}/ui/")
        await _shot(page, "overview-after")
        await page.goto(f"{base}/ui/faxes")
        await _shot(page, "faxes")
        await page.set_viewport_size({"width": 390, "height": 844})
        await _shot(page, "faxes-phone")

        await page.get_by_role("button", name="Log out").click()
        await page.wait_for_url(f"{base}/ui/login")
        await page.goto(f"{base}/ui/jobs/{job_id}")
        assert "/ui/login" in page.url
        await _shot(page, "logged-out")
        await context.close()
        assert overview.stat().st_size > 0
