"""The status pages over a real aiohttp server: sessions, CSRF, throttling, scope, escaping,
actions, search and sending from the browser (tests/test_ui_browser.py drives Chromium)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Callable
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData, web
from structlog.testing import capture_logs

from gateway.config import Config, ConfigError
from gateway.smtp.users import read_users, verify_password
from gateway.store.inbound import announce_inbound, get_inbound, mark_dead
from gateway.store.jobs import advance, create_job, defer_job, fail_job, get_job
from gateway.store.records import JobState, NewJob, new_job_id
from gateway.ui.app import reconfigure
from gateway.ui.context import PUBLIC, marks_of
from gateway.ui.queries import Scope
from gateway.ui.thumbnail import Thumbnails, may_show_thumbnail
from tests import samples
from tests.conftest import merge, run_cli
from tests.servers.gateway import GatewayFactory
from tests.ui_site import (
    ADMIN,
    OTHER,
    PASSWORD,
    VIEWER,
    Site,
    csrf_of,
    running_site,
    ui_overrides,
    write_users_file,
)

MakeConfig = Callable[..., Config]


@pytest.fixture
def overrides(tmp_path: Path) -> dict[str, Any]:
    return ui_overrides(tmp_path)


def make_job(
    db_conn: Any,
    config: Config,
    *,
    sender: str = VIEWER,
    to: str = "+12015550123",
    subject: str = "Contract",
    now: float | None = None,
) -> str:
    job_id = new_job_id(now)
    spool = config.data.dir / "spool" / f"{job_id}.eml"
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    create_job(
        db_conn,
        NewJob(
            id=job_id,
            sender=sender,
            auth_user=None,
            client_address="127.0.0.1",
            subject=subject,
            message_id="",
            from_number="+12015550100",
            spool_path=spool,
            recipients=(to,),
        ),
        now=now,
    )
    return job_id


def _sample(canonical: str) -> str:
    return re.sub(
        r"\{(\w+)(:[^}]*)?\}",
        lambda m: {"job_id": "J0000000000AAAAAAAAAA", "inbound_id": "1"}.get(m.group(1), "retry"),
        canonical,
    )


async def test_every_route_refuses_without_a_session(
    make_config: MakeConfig, overrides: dict
) -> None:
    """Logged out, every registered /ui/ route but the login page and stylesheet refuses."""
    async with running_site(make_config, overrides) as site:
        [sub] = [
            r.get_info()["app"]
            for r in site.client.server.app.router.resources()
            if isinstance(r, web.PrefixedSubAppResource)
        ]
        walked = 0
        for route in sub.router.routes():
            if route.method == "HEAD":
                continue
            path = _sample(route.resource.canonical)
            response = await site.client.request(route.method, path, allow_redirects=False)
            if PUBLIC in marks_of(route.handler):
                assert response.status in (200, 401, 403), path
                continue
            walked += 1
            if route.method == "GET":
                assert response.status == 303, path
                assert response.headers["Location"].startswith("/ui/login?next="), path
            else:
                assert response.status == 403, (route.method, path)
        assert walked >= 12
        unknown = await site.client.get("/ui/no-such-page", allow_redirects=False)
        assert unknown.status == 303


async def test_login_cookie_is_secure_httponly_strict(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The session cookie is Secure, HttpOnly and SameSite=Strict by default, path /ui/."""
    async with running_site(make_config, ui_overrides(tmp_path, secure_cookies=True)) as site:
        form = await site.client.get("/ui/login")
        login = form.cookies["faxgw_login"]
        assert login["secure"] and login["httponly"] and login["samesite"] == "Strict"
        # Over plain HTTP the client keeps Secure cookies to itself: sent by hand here.
        response = await site.client.post(
            "/ui/login",
            data={"csrf": csrf_of(await form.text()), "user": ADMIN, "password": PASSWORD},
            headers={"Cookie": f"faxgw_login={login.value}"},
            allow_redirects=False,
        )
        assert response.status == 303
        cookie = response.cookies["faxgw_session"]
        assert cookie["secure"] and cookie["httponly"]
        assert cookie["samesite"] == "Strict" and cookie["path"] == "/ui/"
        secret = site.config.data.dir / "secret.key"
        assert secret.stat().st_mode & 0o777 == 0o600


async def test_wrong_password_refused_then_locked_out(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """Failed logins are refused alike and, past smtp.auth_max_failures, even the right one."""
    over = merge(ui_overrides(tmp_path), {"smtp": {"auth_max_failures": 2}})
    async with running_site(make_config, over) as site:
        for _ in range(2):
            response = await site.login(password="wrong")
            assert response.status == 401
            assert "Wrong user name or password" in await response.text()
        response = await site.login()
        assert response.status == 401
        assert "Too many failed logins" in await response.text()
        assert "faxgw_session" not in response.cookies


async def test_floods_of_forged_and_locked_out_logins_are_one_log_line_each(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """30 forged login forms and 30 logins past the lockout log one line each, not 60."""
    over = merge(ui_overrides(tmp_path), {"smtp": {"auth_max_failures": 1}})
    async with running_site(make_config, over) as site:
        assert (await site.login(password="wrong")).status == 401
        with capture_logs() as logs:
            for _ in range(30):
                forged = await site.client.post(
                    "/ui/login", data={"user": ADMIN, "password": "x"}, allow_redirects=False
                )
                assert forged.status == 403
                assert (await site.login()).status == 401
        events = [e["event"] for e in logs]
        assert events.count("ui.csrf_refused") == 1
        assert events.count("ui.login_refused") == 1


async def test_login_form_needs_its_token(make_config: MakeConfig, overrides: dict) -> None:
    """A login POST without the login page's token (a forged form) is refused unchecked."""
    async with running_site(make_config, overrides) as site:
        response = await site.client.post(
            "/ui/login", data={"user": ADMIN, "password": PASSWORD}, allow_redirects=False
        )
        assert response.status == 403
        assert "faxgw_session" not in response.cookies


async def test_actions_need_the_sessions_csrf_token(
    make_config: MakeConfig, overrides: dict
) -> None:
    """A retry without the CSRF token, or with a wrong one, changes nothing; with it, it works."""
    async with running_site(make_config, overrides) as site:
        job_id = await site.db.run(make_job, site.config)
        await site.db.run(fail_job, job_id, "the carrier refused")
        await site.login()
        url = f"/ui/jobs/{job_id}/retry"
        for data in ({}, {"csrf": "0" * 64}):
            response = await site.client.post(url, data=data, allow_redirects=False)
            assert response.status == 403
            assert (await site.db.run(get_job, job_id)).state is JobState.FAILED
        evil = await site.client.post(
            url, data={"csrf": await site.token()}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status == 403
        token = csrf_of(await (await site.client.get(url)).text())
        response = await site.client.post(url, data={"csrf": token})
        assert response.status == 200
        assert (await site.db.run(get_job, job_id)).state is JobState.RECEIVED
        assert site.wakes


async def test_everything_shown_is_escaped(make_config: MakeConfig, overrides: dict) -> None:
    """A subject and sender full of markup appear as text on the list and detail pages."""
    async with running_site(make_config, overrides) as site:
        job_id = await site.db.run(
            make_job,
            site.config,
            sender='"<b>x</b>"@example.com',
            subject="<script>alert(1)</script>",
        )
        await site.login()
        detail = await (await site.client.get(f"/ui/jobs/{job_id}")).text()
        assert "<script>alert" not in detail and "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
        listing = await (await site.client.get("/ui/faxes")).text()
        assert "<b>x</b>" not in listing and "&lt;b&gt;x&lt;/b&gt;" in listing


async def test_the_detail_page_shows_every_deferred_attempt(
    make_config: MakeConfig, overrides: dict
) -> None:
    """Each deferral of the job (store/attempts.py) is a line of the page's timeline with its
    stage and reason, the earlier one too, not only the last."""
    async with running_site(make_config, overrides) as site:
        job_id = await site.db.run(make_job, site.config)
        await site.db.run(defer_job, job_id, "document worker died", 1.0)
        await site.db.run(defer_job, job_id, "no space left on device", 1.0)
        await site.login()
        detail = await (await site.client.get(f"/ui/jobs/{job_id}")).text()
        timeline = detail[detail.index('<ol class="timeline">') :]
        timeline = timeline[: timeline.index("</ol>")]
        for reason in ("document worker died", "no space left on device"):
            assert f"<strong>prepare deferred</strong>: {reason}" in timeline, timeline
        assert "last error" not in timeline


async def test_viewer_sees_only_own_faxes_and_no_actions(
    make_config: MakeConfig, overrides: dict
) -> None:
    """A viewer lists their own faxes and their routed inbox only, gets 404 for another's
    fax and 403 for admin actions."""
    routes = {"inbound": {"routes": {"+12015550142": [VIEWER], "+12015550143": [OTHER]}}}
    async with running_site(make_config, merge(overrides, routes)) as site:
        mine = await site.db.run(make_job, site.config, sender=VIEWER, to="+12015550111")
        theirs = await site.db.run(make_job, site.config, sender=OTHER, to="+12015550122")
        inbox = {}
        for line in ("+12015550142", "+12015550143"):
            inbox[line] = await site.db.run(
                announce_inbound, carrier_id=f"in-{line}", from_number="+15556668888",
                to_number=line, pages=1, duration=30, fax_time=None, media_url=None,
                now=time.time(),
            )  # fmt: skip
        await site.login(VIEWER)
        listing = await (await site.client.get("/ui/faxes")).text()
        assert mine in listing and theirs not in listing
        assert f'/ui/inbound/{inbox["+12015550142"]}"' in listing
        assert f'/ui/inbound/{inbox["+12015550143"]}"' not in listing
        assert (await site.client.get(f"/ui/inbound/{inbox['+12015550143']}")).status == 404
        assert (await site.client.get(f"/ui/jobs/{theirs}")).status == 404
        assert (await site.client.get(f"/ui/jobs/{mine}")).status == 200
        response = await site.client.get(f"/ui/jobs/{mine}/cancel", allow_redirects=False)
        assert response.status == 403


async def test_search_filters_and_pages(make_config: MakeConfig, tmp_path: Path) -> None:
    """Number, sender, recipient, status, direction and date filters; pages of ui.page_size."""
    routed = {"inbound": {"routes": {"+12015550142": ["desk@example.com"]}}}
    over = merge(ui_overrides(tmp_path, page_size=5), routed)
    async with running_site(make_config, over) as site:
        yesterday = time.time() - 86400
        for n in range(7):
            await site.db.run(make_job, site.config, sender=OTHER, to=f"+1201555020{n}")
        old = await site.db.run(make_job, site.config, to="+12015550299", now=yesterday - 86400)
        await site.db.run(fail_job, old, "busy")
        await site.db.run(
            announce_inbound, carrier_id="in-1", from_number="+15556668888",
            to_number="+12015550142", pages=1, duration=30, fax_time=None, media_url=None,
            now=time.time(),
        )  # fmt: skip
        await site.login()

        async def total(query: str) -> int:
            text = await (await site.client.get(f"/ui/faxes?{query}")).text()
            match = re.search(r"(\d+) fax\(es\)", text)
            assert match, text
            return int(match.group(1))

        assert await total("") == 9
        assert await total("number=201-555-0299") == 1
        assert await total("sender=bob@") == 7
        assert await total("status=failed") == 1
        assert await total("direction=inbound") == 1
        assert await total("number=555-666-8888") == 1
        assert await total("recipient=desk@") == 1
        assert await total("recipient=nobody@") == 0
        assert await total("recipient=2015550299") == 1
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert await total(f"since={today}") == 8
        first = await (await site.client.get("/ui/faxes")).text()
        assert "page 1 of 2" in first and 'rel="next"' in first


async def test_a_page_number_past_any_store_integer_shows_a_page(
    make_config: MakeConfig, overrides: dict
) -> None:
    """A page number too large for an SQL integer answers the list, not a 500."""
    async with running_site(make_config, overrides) as site:
        await site.db.run(make_job, site.config)
        await site.login()
        for page in ("99999999999999999999", "9" * 4000):
            response = await site.client.get(f"/ui/faxes?page={page}")
            assert response.status == 200, page
            assert "fax(es)" in await response.text()


async def test_requeue_dead_letter(make_config: MakeConfig, overrides: dict) -> None:
    """An admin requeues a dead inbound fax behind a confirmation page."""
    async with running_site(make_config, overrides) as site:
        now = time.time()
        inbound_id = await site.db.run(
            announce_inbound, carrier_id="in-dead", from_number="+15556668888",
            to_number="+12015550142", pages=1, duration=30, fax_time=None, media_url=None, now=now,
        )  # fmt: skip
        await site.db.run(mark_dead, inbound_id, None, "could not fetch", now)
        await site.login()
        confirm = await site.client.get(f"/ui/inbound/{inbound_id}/requeue")
        assert "Requeue" in await confirm.text()
        response = await site.client.post(
            f"/ui/inbound/{inbound_id}/requeue", data={"csrf": csrf_of(await confirm.text())}
        )
        assert response.status == 200
        assert (await site.db.run(get_inbound, inbound_id)).state.value == "announced"


async def test_download_is_for_admins_and_logged(make_config: MakeConfig, overrides: dict) -> None:
    """An admin downloads a job's document after confirming; the download is logged."""
    async with running_site(make_config, overrides) as site:
        job_id = await site.db.run(make_job, site.config)
        document = site.config.data.dir / "documents" / f"{job_id}.pdf"
        document.parent.mkdir(parents=True, exist_ok=True)
        document.write_bytes(samples.pdf(1))
        await site.db.run(
            advance, job_id, JobState.RECEIVED, JobState.PREPARED, document_path=document,
            document_type="application/pdf", pages=1,
        )  # fmt: skip
        await site.login()
        detail = await (await site.client.get(f"/ui/jobs/{job_id}")).text()
        assert f"/ui/jobs/{job_id}/page1.png" in detail
        png = await site.client.get(f"/ui/jobs/{job_id}/page1.png")
        assert (await png.read()).startswith(b"\x89PNG")
        token = await site.token(f"/ui/jobs/{job_id}/download")
        with capture_logs() as logs:
            response = await site.client.post(f"/ui/jobs/{job_id}/download", data={"csrf": token})
            body = await response.read()
        assert response.status == 200 and body == document.read_bytes()
        assert "attachment" in response.headers["Content-Disposition"]
        [line] = [entry for entry in logs if entry["event"] == "ui.download"]
        assert line["user"] == ADMIN and line["job_id"] == job_id


async def _send(
    site: Site,
    form_id: str,
    number: str,
    document: bytes,
    filename: str = "contract.pdf",
    content_type: str = "application/pdf",
) -> Any:
    token = await site.token("/ui/send")
    data = FormData()
    data.add_field("csrf", token)
    data.add_field("form_id", form_id)
    data.add_field("number", number)
    data.add_field("subject", "Signed contract")
    data.add_field("cover", "Please sign page 2.")
    data.add_field("document", document, filename=filename, content_type=content_type)
    return await site.client.post("/ui/send", data=data, allow_redirects=False)


async def test_send_from_the_browser_queues_a_job_once(
    make_config: MakeConfig, overrides: dict
) -> None:
    """The upload becomes a spooled job from the logged-in user; the same form twice, one job."""
    async with running_site(make_config, overrides) as site:
        await site.login(VIEWER)
        form_id = "F" * 24
        first = await _send(site, form_id, "(201) 555-0123", samples.pdf(2))
        assert first.status == 303, await first.text()
        job_id = first.headers["Location"].split("/")[3].split("?")[0]
        job = await site.db.run(get_job, job_id)
        assert job is not None and job.sender == VIEWER and job.auth_user == VIEWER
        assert job.spool_path.is_file() and b"Please sign page 2." in job.spool_path.read_bytes()
        assert site.wakes
        again = await _send(site, form_id, "(201) 555-0123", samples.pdf(2))
        assert again.headers["Location"] == first.headers["Location"]


async def test_send_takes_a_text_file_as_a_mail_would(
    make_config: MakeConfig, overrides: dict
) -> None:
    """A .txt upload passes the same DATA check as mail (text becomes pages) and is queued; the
    form names text among the files it takes."""
    async with running_site(make_config, overrides) as site:
        await site.login(VIEWER)
        form = await (await site.client.get("/ui/send")).text()
        assert "PDF, TIFF, PNG, JPEG or text" in form and ".txt" in form
        notes = b"Line one of the notes\nLine two\n" * 40
        sent = await _send(site, "T" * 24, "+12015550123", notes, "notes.txt", "text/plain")
        assert sent.status == 303, await sent.text()
        job_id = sent.headers["Location"].split("/")[3].split("?")[0]
        job = await site.db.run(get_job, job_id)
        assert job is not None
        spooled = message_from_bytes(job.spool_path.read_bytes(), policy=email_policy.default)
        [part] = spooled.iter_attachments()  # type: ignore[attr-defined]
        assert (part.get_filename(), part.get_content_type()) == ("notes.txt", "text/plain")
        assert part.get_payload(decode=True) == notes


async def test_send_refusals_are_the_mail_policys(make_config: MakeConfig, overrides: dict) -> None:
    """A premium number, a file that is not a document, and a missing token are refused."""
    async with running_site(make_config, overrides) as site:
        await site.login(VIEWER)
        premium = await _send(site, "P" * 24, "+1 900 555 0100", samples.pdf(1))
        assert premium.status == 422 and "blocked" in await premium.text()
        junk = await _send(site, "Q" * 24, "+12015550123", b"not a document at all")
        assert junk.status == 422
        data = FormData()
        data.add_field("number", "+12015550123")
        data.add_field("document", samples.pdf(1), filename="a.pdf")
        forged = await site.client.post("/ui/send", data=data)
        assert forged.status == 403


async def test_send_takes_a_file_name_with_line_breaks_as_a_plain_name(
    make_config: MakeConfig, overrides: dict
) -> None:
    """An upload named with CR LF (filename*=...%0D%0A...) is queued under a one-line name."""
    async with running_site(make_config, overrides) as site:
        await site.login(VIEWER)
        token = await site.token("/ui/send")
        boundary = "probeboundary"
        fields = {"csrf": token, "form_id": "N" * 24, "number": "+12015550123", "subject": "x"}
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
            for name, value in fields.items()
        )
        body += (
            f"--{boundary}\r\nContent-Disposition: form-data; name=document;"
            " filename*=UTF-8''contract%0D%0ABcc%3A%20eve%40evil.example.pdf\r\n"
            f"Content-Type: application/pdf\r\n\r\n"
        ).encode()
        body += samples.pdf(1) + f"\r\n--{boundary}--\r\n".encode()
        sent = await site.client.post(
            "/ui/send",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            allow_redirects=False,
        )
        assert sent.status == 303, await sent.text()
        job_id = sent.headers["Location"].split("/")[3].split("?")[0]
        job = await site.db.run(get_job, job_id)
        assert job is not None
        spooled = message_from_bytes(job.spool_path.read_bytes(), policy=email_policy.default)
        assert spooled["Bcc"] is None
        [part] = spooled.iter_attachments()  # type: ignore[attr-defined]
        assert part.get_filename() == "contract Bcc_ eve@evil.example.pdf"


async def test_logout_ends_the_session(make_config: MakeConfig, overrides: dict) -> None:
    """After logging out, the old session cookie no longer opens any page."""
    async with running_site(make_config, overrides) as site:
        response = await site.login()
        cookie = response.cookies["faxgw_session"].value
        token = await site.token()
        out = await site.client.post("/ui/logout", data={"csrf": token}, allow_redirects=False)
        assert out.status == 303
        again = await site.client.get(
            "/ui/", cookies={"faxgw_session": cookie}, allow_redirects=False
        )
        assert again.status == 303 and again.headers["Location"].startswith("/ui/login")


async def test_reload_gives_sessions_new_roles_and_ends_removed_users(
    make_config: MakeConfig, overrides: dict, tmp_path: Path
) -> None:
    """After SIGHUP's reconfigure a viewer made admin is one at once; a removed user is out."""
    async with running_site(make_config, overrides) as site:
        await site.login(VIEWER)
        assert "Held jobs" not in await (await site.client.get("/ui/")).text()
        reconfigure(site.ui, make_config(merge(overrides, {"ui": {"admins": [ADMIN, VIEWER]}})))
        assert "Held jobs" in await (await site.client.get("/ui/")).text()
        write_users_file(Path(overrides["ui"]["users_file"]), (ADMIN,))
        reconfigure(site.ui, make_config(overrides))
        response = await site.client.get("/ui/", allow_redirects=False)
        assert response.status == 303


async def test_overview_shows_counts_chart_and_health_to_admins(
    make_config: MakeConfig, overrides: dict
) -> None:
    """The overview counts today's faxes and draws the SVG chart; queues for admins only."""
    async with running_site(make_config, overrides) as site:
        await site.db.run(make_job, site.config)
        await site.login()
        text = await (await site.client.get("/ui/")).text()
        assert "<svg" in text and "1 out and 0 in" in text and "Held jobs" in text
        await site.client.post("/ui/logout", data={"csrf": csrf_of(text)})
        await site.login(OTHER)
        text = await (await site.client.get("/ui/")).text()
        assert "0 out and 0 in" in text and "Held jobs" not in text


async def test_thumbnail_follows_the_privacy_mode(tmp_path: Path) -> None:
    """Page 1 renders for a fax kept as "pdf"; never for "encrypted-pdf" or "none"."""
    path = tmp_path / "doc.pdf"
    path.write_bytes(samples.pdf(1))
    thumbnails = Thumbnails()
    png = await thumbnails.thumbnail(path, "application/pdf", "pdf")
    assert png is not None and png.startswith(b"\x89PNG")
    assert not may_show_thumbnail("encrypted-pdf") and not may_show_thumbnail("none")
    assert await thumbnails.thumbnail(path, "application/pdf", "encrypted-pdf") is None
    assert await thumbnails.thumbnail(tmp_path / "gone.pdf", "application/pdf", "pdf") is None


async def test_thumbnails_render_once_per_file_version_and_keep_only_the_last_few(
    tmp_path: Path,
) -> None:
    """Many requests for one page render it once; a changed file renders anew; the oldest
    pictures are forgotten past the cache size."""
    paths = [tmp_path / f"doc{n}.pdf" for n in range(3)]
    for path in paths:
        path.write_bytes(samples.pdf(1))
    thumbnails = Thumbnails(cached=2)
    pictures = await asyncio.gather(
        *(thumbnails.thumbnail(paths[0], None, "pdf") for _ in range(20))
    )
    assert all(p is not None and p is pictures[0] for p in pictures)  # one render, shared
    paths[0].write_bytes(samples.pdf(2))
    os.utime(paths[0], ns=(1, 1))
    changed = await thumbnails.thumbnail(paths[0], None, "pdf")
    assert changed is not None and changed is not pictures[0]
    await thumbnails.thumbnail(paths[1], None, "pdf")
    await thumbnails.thumbnail(paths[2], None, "pdf")
    assert len(thumbnails._pictures) == 2


def test_ui_needs_a_users_file(make_config: MakeConfig) -> None:
    """ui.enabled without ui.users_file or smtp.users_file is a configuration error."""
    with pytest.raises(ConfigError, match=r"ui\.users_file or smtp\.users_file"):
        make_config({"ui": {"enabled": True}})


def test_scope_of_an_admin_is_everything() -> None:
    """An admin's scope has no user, so no query is narrowed."""
    assert Scope(None).user is None


async def test_the_daemon_mounts_the_pages_only_when_enabled(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    """`fax-gateway serve` serves /ui/ with ui.enabled, and nothing there without it."""
    async with aiohttp.ClientSession() as client:
        async with gateway() as gw:
            url = f"http://127.0.0.1:{gw.http.port}/ui/login"
            async with client.get(url) as response:
                assert response.status == 404
        async with gateway(ui_overrides(tmp_path)) as gw:
            base = f"http://127.0.0.1:{gw.http.port}"
            async with client.get(f"{base}/ui/login") as response:
                assert response.status == 200
                assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            async with client.get(f"{base}/ui", allow_redirects=False) as response:
                assert response.headers["Location"] == "/ui/"
            async with client.get(f"{base}/ui/", allow_redirects=False) as response:
                assert response.status == 303
            async with client.get(f"{base}/healthz") as response:
                assert response.status == 200


def test_user_command_manages_the_ui_users_file(
    config_data: dict[str, Any], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """`fax-gateway user add --ui` writes ui.users_file; without that key --ui is refused."""

    def user(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("user", *args, "--config", str(config), input="a-long-password\n")

    config_data["smtp"]["users_file"] = str(tmp_path / "smtp-users")
    without = write_config(config_data, "without.toml")
    refused = user(without, "add", "--ui", VIEWER, "--password-stdin")
    assert refused.returncode != 0 and "ui.users_file is not set" in refused.stderr
    config_data["ui"] = {"users_file": str(tmp_path / "ui-users")}
    with_ui = write_config(config_data, "with.toml")
    added = user(with_ui, "add", "--ui", VIEWER, "--password-stdin")
    assert added.returncode == 0, added.stderr
    assert verify_password(b"a-long-password", read_users(tmp_path / "ui-users")[VIEWER])
    assert not (tmp_path / "smtp-users").exists()
