"""Options in the address (`+nocover`, `+fine`, `+notify=none`...) and per-sender settings:
parsed, refused at RCPT when unknown, and recorded in the job. Real SMTP sessions (smtplib)
against a real SmtpServer and SQLite store."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.commands.queueview import job_settings
from gateway.config import Config, ConfigError
from gateway.smtp.options import MessageOptions, OptionError, message_settings, split_options
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.jobs import get_job
from gateway.store.spool import Spool
from tests import samples

KNOWN = "known: cover, nocover, fine, standard, notify=none, notify=failure, notify=all"


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "base", "options"),
    [
        ("12015550123", "12015550123", MessageOptions()),
        ("12015550123+nocover", "12015550123", MessageOptions(cover=False)),
        ("+12015550123+Cover", "+12015550123", MessageOptions(cover=True)),
        ("fax+fine+notify=none", "fax", MessageOptions(resolution="fine", notify="none")),
        ("1+standard+notify=all", "1", MessageOptions(resolution="standard", notify="all")),
        ("12015550123+cover+cover", "12015550123", MessageOptions(cover=True)),
    ],
)
def test_options_are_split_from_the_local_part(
    local: str, base: str, options: MessageOptions
) -> None:
    """A leading '+' belongs to the number; every later '+word' is an option (any case)."""
    assert split_options(local) == (base, options)


@pytest.mark.parametrize(
    ("local", "reason"),
    [
        ("12015550123+x", f"unknown option 'x'; {KNOWN}"),
        ("12015550123+notify=sometimes", f"unknown option 'notify=sometimes'; {KNOWN}"),
        ("12015550123+", f"unknown option ''; {KNOWN}"),
        ("12015550123+cover+nocover", "option 'nocover' contradicts 'cover'"),
        ("12015550123+fine+standard", "option 'standard' contradicts 'fine'"),
    ],
)
def test_unknown_and_contradicting_options(local: str, reason: str) -> None:
    """An unknown option is named with the known ones; a contradiction names both."""
    with pytest.raises(OptionError) as caught:
        split_options(local)
    assert str(caught.value).startswith(reason)


def test_the_option_wins_over_the_sender_which_wins_over_the_configuration(
    make_config: Callable[..., Config],
) -> None:
    """[senders] cover and cover_template apply unless an address option says otherwise."""
    config = make_config(
        {"senders": {"Legal@example.com": {"cover": True, "cover_template": "legal.txt.j2"}}}
    )
    plain = message_settings(config, "legal@example.com", MessageOptions())
    assert (plain.cover, plain.cover_template) == (True, "legal.txt.j2")
    assert plain.from_number == config.voxtelesys.from_number  # no from_number of its own
    opted = message_settings(config, "LEGAL@example.com", MessageOptions(cover=False))
    assert opted.cover is False
    other = message_settings(config, "bob@example.com", MessageOptions(notify="none"))
    assert (other.cover, other.cover_template, other.notify) == (None, None, "none")
    effective = config.cover.for_message(plain.cover, plain.cover_template)
    assert (effective.enabled, effective.template) == (True, "legal.txt.j2")
    assert config.cover.for_message(None, None) is config.cover


def test_subject_address_must_be_a_plain_local_part(make_config: Callable[..., Config]) -> None:
    """smtp.subject_address is a local part with a letter: never a number, '+' or '@'."""
    assert make_config({"smtp": {"subject_address": "Fax"}}).smtp.subject_address == "fax"
    for bad in ("12345", "fax+x", "fax@fax.local", ""):
        with pytest.raises(ConfigError, match=r"smtp\.subject_address"):
            make_config({"smtp": {"subject_address": bad}})


# -- real SMTP -----------------------------------------------------------------------------------


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[SmtpServer, Database]]:
    db = await Database(config.data.dir / "store.db").open()
    server = SmtpServer(config, db, Spool(config.data.dir / "spool"), lambda: None)
    try:
        await server.start()
        yield server, db
    finally:
        await server.stop()
        await asyncio.to_thread(db.close)


def transact(
    port: int, recipients: tuple[str, ...], sender: str = "alice@example.com"
) -> tuple[list[tuple[int, str]], tuple[int, str] | None]:
    """RCPT replies, and the DATA reply if any recipient was accepted."""
    raw = samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail(sender)
        rcpt = [(code, text.decode()) for code, text in (client.rcpt(r) for r in recipients)]
        data = None
        if any(code == 250 for code, _ in rcpt):
            code, text = client.data(raw)
            data = (code, text.decode())
    return rcpt, data


async def job_rows(db: Database) -> list[dict[str, Any]]:
    rows = await db.run(
        lambda conn: conn.execute("SELECT * FROM jobs ORDER BY created_at, id").fetchall()
    )
    return [dict(row) for row in rows]


async def job_row(db: Database) -> dict[str, Any]:
    [row] = await job_rows(db)
    return row


async def test_unknown_option_is_refused_at_rcpt(make_config: Callable[..., Config]) -> None:
    """`+x` gets 501 5.1.3 naming it and the known options, after a number or the shared
    address; a foreign domain is still refused as relaying first."""
    config = make_config({"smtp": {"subject_address": "fax"}})
    async with running(config) as (server, _):
        rcpt, data = await asyncio.to_thread(
            transact,
            server.port,
            ("12015550123+x@fax.local", "fax+Draft@fax.local", "1201555012+x@example.com"),
        )
    assert rcpt[0] == (501, f"5.1.3 unknown option 'x'; {KNOWN}")
    assert rcpt[1] == (501, f"5.1.3 unknown option 'Draft'; {KNOWN}")
    assert rcpt[2][0] == 550 and "Relaying denied" in rcpt[2][1]
    assert data is None


async def test_options_are_kept_in_the_job(make_config: Callable[..., Config]) -> None:
    """`+nocover+fine+notify=failure` is recorded in the job; the number is the fax's."""
    async with running(make_config()) as (server, db):
        rcpt, data = await asyncio.to_thread(
            transact, server.port, ("12015550123+nocover+fine+notify=failure@fax.local",)
        )
        assert rcpt == [(250, "2.1.5 Recipient OK")]
        assert data is not None and data[0] == 250, data
        job = await job_row(db)
        stored = await db.run(get_job, job["id"])
    assert (job["cover"], job["resolution"], job["notify"]) == (0, "fine", "failure")
    assert job["cover_template"] is None
    # `fax-gateway queue show` lists them as the address wrote them.
    assert stored is not None and stored.cover is False
    assert job_settings(stored) == "nocover, fine, notify=failure"


async def test_options_of_all_recipients_add_up_and_may_not_contradict(
    make_config: Callable[..., Config],
) -> None:
    """Options apply to the whole message: those of each recipient add up, and one that
    contradicts an earlier recipient's is refused 501 5.1.3 (the others still go)."""
    async with running(make_config()) as (server, db):
        rcpt, data = await asyncio.to_thread(
            transact,
            server.port,
            (
                "12015550123+cover@fax.local",
                "12015550124+nocover@fax.local",
                "12015550125+notify=none@fax.local",
            ),
        )
        assert [code for code, _ in rcpt] == [250, 501, 250]
        assert rcpt[1][1].startswith("5.1.3 option 'nocover' contradicts 'cover'")
        assert data is not None and data[0] == 250
        job = await job_row(db)
    assert (job["cover"], job["notify"]) == (1, "none")


async def test_sender_settings_are_kept_and_the_option_wins(
    make_config: Callable[..., Config], tmp_path: Any
) -> None:
    """[senders] cover/cover_template go into the sender's jobs; +nocover overrides cover;
    the sender's own from_number is optional."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "cover-legal.txt.j2").write_text("LEGAL COVER {{ subject }}\n")
    config = make_config(
        {
            "templates": {"dir": str(templates)},
            "senders": {
                "alice@example.com": {"cover": True, "cover_template": "cover-legal.txt.j2"}
            },
        }
    )
    async with running(config) as (server, db):
        _, data = await asyncio.to_thread(transact, server.port, ("12015550123@fax.local",))
        assert data is not None and data[0] == 250, data
        _, data = await asyncio.to_thread(transact, server.port, ("12015550123+nocover@fax.local",))
        assert data is not None and data[0] == 250, data
        first, second = await job_rows(db)
    assert (first["cover"], first["cover_template"]) == (1, "cover-legal.txt.j2")
    assert first["from_number"] == "+12015550100"
    assert (second["cover"], second["cover_template"]) == (0, "cover-legal.txt.j2")
