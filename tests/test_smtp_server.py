"""The SMTP server end to end: real sessions (smtplib, aiosmtplib, raw streams) against a real
SmtpServer on port 0, a real SQLite store and spool on disk."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import sqlite3
import ssl
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog

from gateway.config import Config, ConfigError
from gateway.document.office import OfficeConverter
from gateway.document.workers import DocumentWorkers
from gateway.smtp.users import hash_password
from gateway.ui.send import Upload, WebSender
from tests import samples
from tests.servers.smtp import Certs, running_smtp

CLIENT_NAME = "client.example"
SENDER = "alice@example.com"
RCPT = "12015550123@fax.local"
PASSWORD = "correct horse battery"


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(
        f"alice@example.com:{hash_password(PASSWORD, log2_n=4)}\n"
        f"scanner:{hash_password(PASSWORD, log2_n=4)}\n"
    )
    return path


def tls_override(certs: Certs, users: Path | None = None, **smtp: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"tls_cert": str(certs.cert), "tls_key": str(certs.key), **smtp}
    if users is not None:
        section["users_file"] = str(users)
    return {"smtp": section}


# -- a blocking client, run in a thread ----------------------------------------------------------


@dataclass
class Outcome:
    """Every reply of one transaction: (code, text) each; data is None if never reached."""

    mail: tuple[int, str]
    rcpt: list[tuple[int, str]]
    data: tuple[int, str] | None

    @property
    def job_id(self) -> str:
        assert self.data is not None and self.data[0] == 250, self
        prefix = "2.0.0 queued as "
        assert self.data[1].startswith(prefix), self.data
        return self.data[1].removeprefix(prefix)


def _text(reply: tuple[int, bytes]) -> tuple[int, str]:
    return reply[0], reply[1].decode("utf-8", "replace").replace("\n", " ")


def transact(
    client: smtplib.SMTP,
    message: bytes,
    sender: str = SENDER,
    recipients: tuple[str, ...] = (RCPT,),
    mail_options: tuple[str, ...] = (),
) -> Outcome:
    """MAIL, RCPT each, DATA if any recipient was accepted; replies recorded, none raised."""
    mail = _text(client.mail(sender, list(mail_options)))
    rcpt = [_text(client.rcpt(r)) for r in recipients] if mail[0] == 250 else []
    data = None
    if any(code == 250 for code, _ in rcpt):
        data = _text(client.data(message))
    else:
        client.rset()
    return Outcome(mail, rcpt, data)


def send(port: int, message: bytes, **kwargs: Any) -> Outcome:
    """One plain session: EHLO, one transaction, QUIT (blocking)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=30) as client:
        client.ehlo()
        return transact(client, message, **kwargs)


async def asend(port: int, message: bytes, **kwargs: Any) -> Outcome:
    return await asyncio.to_thread(send, port, message, **kwargs)


def pdf_mail(**kwargs: Any) -> bytes:
    return samples.mail(samples.attachment(samples.pdf(1), "report.pdf"), **kwargs)


# -- a raw client for protocol details -----------------------------------------------------------


class Raw:
    """A bare TCP SMTP client: write lines, read whole replies (all lines of a multi-line one)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, **kwargs: Any) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **kwargs)
        raw = cls(reader, writer)
        greeting = await raw.reply()
        assert greeting[0].startswith("220 "), greeting
        return raw

    async def reply(self) -> list[str]:
        lines = []
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 10)).decode().rstrip("\r\n")
            if not line:
                raise EOFError("connection closed")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def command(self, line: str) -> list[str]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


# -- EHLO ----------------------------------------------------------------------------------------


async def test_ehlo_advertises_extensions(smtp: Callable[..., Any]) -> None:
    """EHLO lists SIZE with the limit, 8BITMIME, SMTPUTF8, PIPELINING, ENHANCEDSTATUSCODES."""
    async with smtp({"smtp": {"max_message_bytes": 1234567}}) as gw:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=gw.port, start_tls=False)
        async with client:
            await client.ehlo(hostname=CLIENT_NAME)
            features = client.esmtp_extensions
        assert features["size"] == "1234567"
        for keyword in ("8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert keyword in features, features
        assert "starttls" not in features
        assert "auth" not in features


async def test_greeting_and_hostname(smtp: Callable[..., Any]) -> None:
    """The greeting and EHLO name smtp.hostname; the greeting has no version number."""
    async with smtp({"smtp": {"hostname": "fax.example.net"}}) as gw:
        raw = await Raw.connect(gw.port)
        ehlo = await raw.command("EHLO client.example")
        assert ehlo[0] == "250-fax.example.net"
        await raw.close()


async def test_starttls_only_with_certificate_and_auth_only_after_it(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """STARTTLS is offered with a certificate; AUTH appears only once TLS is on."""
    async with smtp(tls_override(certs, users_file)) as gw:

        def features() -> tuple[dict[str, str], dict[str, str], tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", gw.port, local_hostname=CLIENT_NAME) as client:
                client.ehlo()
                before = dict(client.esmtp_features)
                early_auth = client.docmd("AUTH", "PLAIN AGFsaWNlAHB3")
                client.starttls(context=certs.client_context())
                client.ehlo()
                return before, dict(client.esmtp_features), early_auth

        before, after, early_auth = await asyncio.to_thread(features)
    assert "starttls" in before and "auth" not in before
    assert early_auth[0] == 538
    assert "starttls" not in after
    assert set(after["auth"].split()) == {"PLAIN", "LOGIN"}


async def test_no_auth_without_users_file(smtp: Callable[..., Any], certs: Certs) -> None:
    """With TLS but no users file, AUTH is neither advertised nor accepted."""
    async with smtp(tls_override(certs)) as gw:

        def probe() -> tuple[dict[str, str], tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", gw.port, local_hostname=CLIENT_NAME) as client:
                client.starttls(context=certs.client_context())
                client.ehlo()
                return dict(client.esmtp_features), client.docmd("AUTH", "PLAIN")

        features, reply = await asyncio.to_thread(probe)
    assert "auth" not in features
    assert reply[0] == 502
    assert reply[1].startswith(b"5.5.1")


async def test_library_replies_get_enhanced_codes(smtp: Callable[..., Any]) -> None:
    """Replies aiosmtpd writes itself carry enhanced codes after EHLO, not after HELO."""
    async with smtp() as gw:
        raw = await Raw.connect(gw.port)
        await raw.command("EHLO client.example")
        assert await raw.command("RSET") == ["250 2.0.0 OK"]
        assert (await raw.command("DATA"))[0].startswith("503 5.5.1 ")
        assert (await raw.command("NOOP"))[0].startswith("250 2.0.0")
        await raw.command("HELO client.example")
        assert await raw.command("RSET") == ["250 OK"]
        assert (await raw.command("QUIT"))[0].startswith("221")
        await raw.close()


async def test_pipelined_commands(smtp: Callable[..., Any]) -> None:
    """Commands sent in one write are answered in order (PIPELINING)."""
    async with smtp() as gw:
        raw = await Raw.connect(gw.port)
        await raw.command("EHLO client.example")
        raw.writer.write(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<sales@fax.local>\r\nRCPT TO:<{RCPT}>\r\n"
            "DATA\r\n".encode()
        )
        assert (await raw.reply())[0].startswith("250 2.1.0")
        assert (await raw.reply())[0].startswith("550 5.1.1")
        assert (await raw.reply())[0].startswith("250 2.1.5")
        assert (await raw.reply())[0].startswith("354")
        body = pdf_mail().replace(b"\r\n.", b"\r\n..")
        raw.writer.write(body + b"\r\n.\r\nQUIT\r\n")
        queued = await raw.reply()
        assert queued[0].startswith("250 2.0.0 queued as "), queued
        assert (await raw.reply())[0].startswith("221")
        await raw.close()
        [job] = await gw.jobs()
        assert job["recipients"] == ["+12015550123"]


# -- RCPT ----------------------------------------------------------------------------------------


async def test_foreign_domain_is_refused(smtp: Callable[..., Any]) -> None:
    """A recipient in another domain gets 550 5.7.1 Relaying denied."""
    async with smtp() as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=("12015550123@example.com",))
    assert outcome.rcpt[0][0] == 550
    assert outcome.rcpt[0][1].startswith("5.7.1 Relaying denied")


async def test_invalid_number_reason_in_reply(smtp: Callable[..., Any]) -> None:
    """A local part that is no fax number gets 550 5.1.1 with the reason."""
    async with smtp() as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=("12345@fax.local",))
    code, text = outcome.rcpt[0]
    assert code == 550
    assert text.startswith("5.1.1 ")
    assert "'12345'" in text


async def test_national_number_becomes_e164(smtp: Callable[..., Any]) -> None:
    """A national-format number is faxed in E.164; upper-case domain is the same domain."""
    async with smtp() as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=("201.555.0123@FAX.LOCAL",))
        assert outcome.rcpt == [(250, "2.1.5 Recipient OK")]
        job_id = outcome.job_id
        [job] = await gw.jobs()
    assert job["id"] == job_id
    assert job["recipients"] == ["+12015550123"]


async def test_blocked_prefix_1900(smtp: Callable[..., Any]) -> None:
    """A +1 900 number is refused with 550 5.7.1 naming the blocked prefix."""
    async with smtp() as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=("19005550123@fax.local",))
    code, text = outcome.rcpt[0]
    assert code == 550
    assert text.startswith("5.7.1 ") and "+1900" in text


async def test_disallowed_country(smtp: Callable[..., Any]) -> None:
    """A number outside fax.allowed_countries is refused with 550 5.7.1."""
    async with smtp({"fax": {"allowed_countries": ["US", "CA"]}}) as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=("442071838750@fax.local",))
    code, text = outcome.rcpt[0]
    assert code == 550
    assert text.startswith("5.7.1 ") and "GB" in text


async def test_too_many_recipients(smtp: Callable[..., Any]) -> None:
    """Past smtp.max_recipients a RCPT gets 452 4.5.3; the accepted ones are faxed."""
    recipients = ("12015550123@fax.local", "12015550124@fax.local", "12015550125@fax.local")
    async with smtp({"smtp": {"max_recipients": 2}}) as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=recipients)
        assert [code for code, _ in outcome.rcpt] == [250, 250, 452]
        assert outcome.rcpt[2][1].startswith("4.5.3 Too many recipients")
        outcome.job_id  # noqa: B018 (asserts the 250)
        [job] = await gw.jobs()
    assert job["recipients"] == ["+12015550123", "+12015550124"]


async def test_duplicate_recipients_are_one_fax(smtp: Callable[..., Any]) -> None:
    """Two spellings of one number make one fax, and do not count twice toward the limit."""
    recipients = ("12015550123@fax.local", '"+1 201 555 0123"@fax.local', "2015550124@fax.local")
    async with smtp({"smtp": {"max_recipients": 2}}) as gw:
        outcome = await asend(gw.port, pdf_mail(), recipients=recipients)
        assert [code for code, _ in outcome.rcpt] == [250, 250, 250]
        outcome.job_id  # noqa: B018
        [job] = await gw.jobs()
    assert job["recipients"] == ["+12015550123", "+12015550124"]


async def test_daily_limit_per_sender(smtp: Callable[..., Any]) -> None:
    """limits.faxes_per_sender_per_day counts stored faxes and this message's; 452 4.7.1 past it."""
    async with smtp({"limits": {"faxes_per_sender_per_day": 3}}) as gw:
        first = await asend(
            gw.port, pdf_mail(), recipients=("12015550123@fax.local", "12015550124@fax.local")
        )
        first.job_id  # noqa: B018
        second = await asend(
            gw.port,
            pdf_mail(),
            sender="ALICE@example.com",
            recipients=("12015550125@fax.local", "12015550126@fax.local"),
        )
        assert [code for code, _ in second.rcpt] == [250, 452]
        assert second.rcpt[1][1].startswith("4.7.1 ")
        second.job_id  # noqa: B018
        other = await asend(gw.port, pdf_mail(), sender="bob@example.com")
        other.job_id  # noqa: B018 (another sender has a limit of its own)
        refused = await asend(gw.port, pdf_mail(), recipients=("12015550127@fax.local",))
        assert refused.rcpt[0][0] == 452
        assert refused.data is None
        assert len(await gw.jobs()) == 3


async def test_daily_limit_holds_across_parallel_sessions(smtp: Callable[..., Any]) -> None:
    """Recipients accepted in other open sessions of the sender count toward the limit too."""
    numbers = iter(range(12015550130, 12015550140))
    async with smtp({"limits": {"faxes_per_sender_per_day": 3}}) as gw:
        sessions = [await Raw.connect(gw.port) for _ in range(3)]
        try:
            codes = []
            for raw in sessions:
                await raw.command(f"EHLO {CLIENT_NAME}")
                assert (await raw.command(f"MAIL FROM:<{SENDER}>"))[0].startswith("250")
                for _ in range(2):
                    reply = await raw.command(f"RCPT TO:<{next(numbers)}@fax.local>")
                    codes.append(int(reply[0][:3]))
            assert codes == [250, 250, 250, 452, 452, 452]
            for raw in sessions:
                if (await raw.command("DATA"))[0].startswith("354"):
                    raw.writer.write(pdf_mail().replace(b"\n.", b"\n..") + b"\r\n.\r\n")
                    assert (await raw.reply())[0].startswith("250")
        finally:
            for raw in sessions:
                await raw.close()
        faxes = sum(len(job["recipients"]) for job in await gw.jobs())
    assert faxes == 3


async def test_the_browsers_send_counts_the_senders_open_smtp_transactions(
    smtp: Callable[..., Any],
) -> None:
    """A fax sent from the status pages passes no daily limit that open SMTP transactions of
    the same sender have already reached; once they are reset, it goes."""
    async with smtp({"limits": {"faxes_per_sender_per_day": 2}}) as gw:
        config = gw.server.config
        documents = DocumentWorkers(config)
        sender = WebSender(
            config,
            gw.db,
            gw.spool,
            lambda: None,
            documents=documents,
            office=OfficeConverter.for_gateway(config),
            daily_limit=lambda: gw.server.handler.daily_limit,
        )
        raw = await Raw.connect(gw.port)
        try:
            await raw.command(f"EHLO {CLIENT_NAME}")
            await raw.command(f"MAIL FROM:<{SENDER}>")
            for number in ("12015550130", "12015550131"):
                assert (await raw.command(f"RCPT TO:<{number}@fax.local>"))[0].startswith("250")

            def upload(form_id: str) -> Upload:
                return Upload(
                    "+12015550132", "a.pdf", "application/pdf", samples.pdf(1), "", "", form_id
                )

            refused = await sender.send(SENDER, None, upload("A" * 24))
            assert refused.job_id is None and "4.7.1" not in (refused.problem or "")
            assert (refused.problem or "").startswith("Daily limit of 2 faxes reached")
            await raw.command("RSET")
            sent = await sender.send(SENDER, None, upload("B" * 24))
            assert sent.job_id is not None, sent.problem
        finally:
            await raw.close()
            await documents.stop()


async def test_an_abandoned_transaction_stops_counting_toward_the_limit(
    smtp: Callable[..., Any],
) -> None:
    """Recipients of a transaction reset, or of a session that hung up, no longer count."""
    async with smtp({"limits": {"faxes_per_sender_per_day": 2}}) as gw:
        first = await Raw.connect(gw.port)
        await first.command(f"EHLO {CLIENT_NAME}")
        for _ in range(2):
            await first.command(f"MAIL FROM:<{SENDER}>")
            for number in ("12015550130", "12015550133"):
                assert (await first.command(f"RCPT TO:<{number}@fax.local>"))[0].startswith("250")
            await first.command("RSET")
        await first.command(f"MAIL FROM:<{SENDER}>")
        assert (await first.command("RCPT TO:<12015550130@fax.local>"))[0].startswith("250")
        await first.command("QUIT")
        await first.close()
        outcome = await asend(
            gw.port, pdf_mail(), recipients=("12015550131@fax.local", "12015550132@fax.local")
        )
        assert [code for code, _ in outcome.rcpt] == [250, 250]


# -- MAIL: who may send --------------------------------------------------------------------------


async def test_a_sender_address_that_is_not_utf8_is_refused_for_good(
    smtp: Callable[..., Any],
) -> None:
    """Raw 8-bit bytes in MAIL FROM get a permanent 553, not a 451 the client retries forever."""
    async with smtp() as gw:
        raw = await Raw.connect(gw.port)
        try:
            await raw.command(f"EHLO {CLIENT_NAME}")
            raw.writer.write(b"MAIL FROM:<al\xffice@example.com>\r\n")
            [reply] = await raw.reply()
            assert reply.startswith("553 5.1.7 "), reply
            reply.encode("utf-8")
        finally:
            await raw.close()
        assert await gw.jobs() == []


async def test_unauthorized_network(smtp: Callable[..., Any]) -> None:
    """A client outside allowed_networks gets 550 5.7.1 naming its address at MAIL."""
    async with smtp({"smtp": {"allowed_networks": ["10.0.0.0/8"]}}) as gw:
        outcome = await asend(gw.port, pdf_mail())
        assert await gw.jobs() == []
    code, text = outcome.mail
    assert code == 550
    assert text.startswith("5.7.1 ") and "127.0.0.1" in text


async def test_unauthorized_network_asked_to_authenticate(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """With AUTH available, a client outside allowed_networks gets 530 5.7.0 at MAIL."""
    override = tls_override(certs, users_file, allowed_networks=["10.0.0.0/8"])
    async with smtp(override) as gw:
        outcome = await asend(gw.port, pdf_mail())
    assert outcome.mail == (530, "5.7.0 Authentication required")


async def test_unauthorized_sender(smtp: Callable[..., Any]) -> None:
    """A MAIL FROM outside allowed_senders gets 550 5.7.1; a matching one is accepted."""
    async with smtp({"smtp": {"allowed_senders": ["*@example.com"]}}) as gw:
        refused = await asend(gw.port, pdf_mail(), sender="mallory@evil.example")
        accepted = await asend(gw.port, pdf_mail(), sender="Carol@EXAMPLE.com")
        assert refused.mail[0] == 550
        assert refused.mail[1].startswith("5.7.1 ")
        accepted.job_id  # noqa: B018
        [job] = await gw.jobs()
    assert job["sender"] == "carol@example.com"


# -- AUTH ----------------------------------------------------------------------------------------


def _auth_session(
    port: int, certs: Certs, login: Callable[[smtplib.SMTP], Any], message: bytes, sender: str
) -> tuple[Any, Outcome]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=30) as client:
        client.starttls(context=certs.client_context())
        client.ehlo()
        result = login(client)
        return result, transact(client, message, sender=sender)


async def test_auth_plain_over_starttls(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """AUTH PLAIN after STARTTLS lets an outside client send; the job records the user."""
    override = tls_override(certs, users_file, allowed_networks=["10.0.0.0/8"])
    async with smtp(override) as gw:
        with structlog.testing.capture_logs() as logs:
            result, outcome = await asyncio.to_thread(
                _auth_session,
                gw.port,
                certs,
                lambda c: c.docmd(
                    "AUTH",
                    "PLAIN " + base64.b64encode(f"\0scanner\0{PASSWORD}".encode()).decode(),
                ),
                pdf_mail(),
                SENDER,
            )
        assert result[0] == 235
        [job] = await gw.jobs()
    assert job["id"] == outcome.job_id
    assert job["auth_user"] == "scanner"
    assert PASSWORD not in repr(logs)
    assert any(entry["event"] == "smtp.auth_ok" for entry in logs)


async def test_daily_limit_binds_a_login_whatever_sender_it_names(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """A service login sending as ever new senders still stops at the daily limit."""
    override = tls_override(certs, users_file, allowed_networks=["10.0.0.0/8"])
    override["limits"] = {"faxes_per_sender_per_day": 2}
    async with smtp(override) as gw:
        outcomes = [
            (
                await asyncio.to_thread(
                    _auth_session,
                    gw.port,
                    certs,
                    lambda c: c.login("scanner", PASSWORD),
                    pdf_mail(),
                    f"user{n}@example.com",
                )
            )[1]
            for n in range(3)
        ]
        assert len(await gw.jobs()) == 2
    assert [o.rcpt[0][0] for o in outcomes] == [250, 250, 452]
    assert "scanner" in outcomes[2].rcpt[0][1]


async def test_auth_login_over_starttls(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """AUTH LOGIN (two 334 rounds) works too; an address login sends only as itself."""
    override = tls_override(certs, users_file, allowed_networks=["10.0.0.0/8"])

    def login(client: smtplib.SMTP) -> list[tuple[int, bytes]]:
        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        first = client.docmd("AUTH", "LOGIN")
        second = client.docmd(b64("alice@example.com"))
        third = client.docmd(b64(PASSWORD))
        return [first, second, third]

    async with smtp(override) as gw:
        rounds, outcome = await asyncio.to_thread(
            _auth_session, gw.port, certs, login, pdf_mail(), "bob@example.com"
        )
        assert [code for code, _ in rounds] == [334, 334, 235]
        assert base64.b64decode(rounds[0][1]) == b"Username:"
        assert outcome.mail[0] == 550
        assert "may not send as" in outcome.mail[1]

        _, own = await asyncio.to_thread(
            _auth_session, gw.port, certs, login, pdf_mail(), "alice@example.com"
        )
        own.job_id  # noqa: B018


async def test_aiosmtplib_login_and_send(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """aiosmtplib upgrades with STARTTLS, logs in and sends: the fax is queued."""
    override = tls_override(certs, users_file, allowed_networks=["10.0.0.0/8"])
    async with smtp(override) as gw:
        errors, response = await aiosmtplib.send(
            pdf_mail(),
            sender=SENDER,
            recipients=[RCPT],
            hostname="127.0.0.1",
            port=gw.port,
            start_tls=True,
            tls_context=certs.client_context(),
            username="alice@example.com",
            password=PASSWORD,
        )
        assert errors == {}
        assert response.startswith("2.0.0 queued as ")
        [job] = await gw.jobs()
    assert job["auth_user"] == "alice@example.com"


async def test_wrong_passwords_are_throttled(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """After auth_max_failures failures an address gets 454 4.7.0, even with the right password."""
    override = tls_override(certs, users_file, auth_max_failures=2, auth_lockout_seconds=300)

    def attempts() -> list[tuple[int, bytes]]:
        replies = []
        for password in ("wrong-1", "wrong-2", PASSWORD):
            with smtplib.SMTP("127.0.0.1", gw.port, local_hostname=CLIENT_NAME) as client:
                client.starttls(context=certs.client_context())
                client.ehlo()
                blob = base64.b64encode(f"\0scanner\0{password}".encode()).decode()
                replies.append(client.docmd("AUTH", f"PLAIN {blob}"))
        return replies

    async with smtp(override) as gw:
        with structlog.testing.capture_logs() as logs:
            replies = await asyncio.to_thread(attempts)
    assert [code for code, _ in replies] == [535, 535, 454]
    assert replies[2][1].startswith(b"4.7.0 ")
    assert any(entry["event"] == "smtp.auth_locked" for entry in logs)
    assert "wrong-1" not in repr(logs) and PASSWORD not in repr(logs)


async def test_implicit_tls_listener(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """smtp.tls_listen speaks TLS from the first byte, offers AUTH at once and no STARTTLS."""
    override = tls_override(
        certs, users_file, tls_listen="127.0.0.1:0", allowed_networks=["10.0.0.0/8"]
    )
    async with smtp(override) as gw:
        assert gw.server.tls_port not in (None, gw.port)

        def session() -> tuple[dict[str, str], Outcome]:
            with smtplib.SMTP_SSL(
                "127.0.0.1",
                gw.server.tls_port,
                local_hostname=CLIENT_NAME,
                context=certs.client_context(),
            ) as client:
                client.ehlo()
                features = dict(client.esmtp_features)
                client.login("scanner", PASSWORD)
                return features, transact(client, pdf_mail())

        features, outcome = await asyncio.to_thread(session)
        assert "starttls" not in features
        assert "PLAIN" in features["auth"]
        outcome.job_id  # noqa: B018


async def test_reload_users_takes_new_passwords(
    smtp: Callable[..., Any], certs: Certs, users_file: Path
) -> None:
    """reload_users() (SIGHUP) swaps the users in; a broken file keeps the old ones."""

    def login(port: int, password: str) -> int:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME) as client:
            client.starttls(context=certs.client_context())
            client.ehlo()
            blob = base64.b64encode(f"\0scanner\0{password}".encode()).decode()
            return client.docmd("AUTH", f"PLAIN {blob}")[0]

    async with smtp(tls_override(certs, users_file, auth_max_failures=100)) as gw:
        assert await asyncio.to_thread(login, gw.port, PASSWORD) == 235
        new = f"scanner:{hash_password('new password', log2_n=4)}\n"
        await asyncio.to_thread(users_file.write_text, new)
        assert await asyncio.to_thread(login, gw.port, "new password") == 535
        await gw.server.reload_users()
        assert await asyncio.to_thread(login, gw.port, "new password") == 235
        await asyncio.to_thread(users_file.write_text, "broken line\n")
        await gw.server.reload_users()
        assert await asyncio.to_thread(login, gw.port, "new password") == 235


async def test_missing_users_file_stops_start(
    make_config: Callable[..., Config], certs: Certs, tmp_path: Path
) -> None:
    """A configured users file that does not exist is a configuration error at start."""
    config = make_config(tls_override(certs, tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"smtp\.users_file: .*no such file"):
        async with running_smtp(config):
            pass


async def test_users_without_tls_offer_no_auth(smtp: Callable[..., Any], users_file: Path) -> None:
    """A users file without TLS cannot be used (no AUTH in clear): outsiders get 550, not 530."""
    override = {"smtp": {"users_file": str(users_file), "allowed_networks": ["10.0.0.0/8"]}}
    async with smtp(override) as gw:
        outcome = await asend(gw.port, pdf_mail())
    assert outcome.mail[0] == 550


# -- DATA ----------------------------------------------------------------------------------------


async def test_no_attachment(smtp: Callable[..., Any]) -> None:
    """A message without a faxable part gets 554 5.6.0 naming the supported types."""
    async with smtp() as gw:
        outcome = await asend(gw.port, samples.mail(body="Just text, no document."))
        assert await gw.jobs() == []
    assert outcome.data is not None
    code, text = outcome.data
    assert code == 554
    assert text.startswith("5.6.0 ")
    assert "PDF" in text


async def test_docx_only_names_the_file(smtp: Callable[..., Any]) -> None:
    """A .docx alone gets 554 5.6.0 naming the file that cannot be faxed."""
    message = samples.mail(samples.attachment(samples.docx(), "Quarterly report.docx"))
    async with smtp() as gw:
        outcome = await asend(gw.port, message)
    assert outcome.data is not None
    code, text = outcome.data
    assert code == 554
    assert text.startswith("5.6.0 ")
    assert "Quarterly report.docx" in text


async def test_corrupt_pdf(smtp: Callable[..., Any]) -> None:
    """A PDF no reader can open gets 554 5.6.0 with a message, not a traceback."""
    message = samples.mail(samples.attachment(samples.corrupt_pdf(), "scan.pdf"))
    async with smtp() as gw:
        with structlog.testing.capture_logs() as logs:
            outcome = await asend(gw.port, message)
    assert outcome.data is not None
    code, text = outcome.data
    assert code == 554
    assert text.startswith("5.6.0 ")
    assert "scan.pdf" in text
    assert "Traceback" not in text
    [rejected] = [e for e in logs if e["event"] == "smtp.rejected"]
    assert rejected["reason"] == "corrupt"


async def test_too_many_pages(smtp: Callable[..., Any]) -> None:
    """A document longer than fax.max_pages gets 554 5.3.4."""
    message = samples.mail(samples.attachment(samples.pdf(3), "long.pdf"))
    async with smtp({"fax": {"max_pages": 2}}) as gw:
        outcome = await asend(gw.port, message)
    assert outcome.data is not None
    assert outcome.data[0] == 554
    assert outcome.data[1].startswith("5.3.4 ")


async def test_oversize_refused_at_mail_and_at_data(smtp: Callable[..., Any]) -> None:
    """Over smtp.max_message_bytes: 552 5.3.4 for a declared SIZE and for the data itself."""
    limit = 20_000
    big = samples.mail(samples.attachment(samples.pdf(1) + b"%" * limit, "big.pdf"))
    assert len(big) > limit
    async with smtp({"smtp": {"max_message_bytes": limit}}) as gw:
        declared = await asend(gw.port, big, mail_options=(f"SIZE={len(big)}",))
        undeclared = await asend(gw.port, big)
        assert await gw.jobs() == []
    assert declared.mail[0] == 552
    assert declared.mail[1].startswith("5.3.4 ")
    assert undeclared.data is not None
    assert undeclared.data[0] == 552
    assert undeclared.data[1].startswith("5.3.4 ")


async def test_non_ascii_subject_filename_and_sender(smtp: Callable[..., Any]) -> None:
    """SMTPUTF8: a UTF-8 sender, raw UTF-8 subject and filename are accepted and kept."""
    subject = "Übersicht: 報告"
    message = samples.mail(
        samples.attachment(samples.pdf(1), "Übersicht 報告.pdf"), subject="placeholder"
    ).replace(b"Subject: placeholder", f"Subject: {subject}".encode())
    async with smtp() as gw:
        outcome = await asend(
            gw.port, message, sender="jörg@example.com", mail_options=("SMTPUTF8",)
        )
        outcome.job_id  # noqa: B018
        [job] = await gw.jobs()
    assert job["subject"] == subject
    assert job["sender"] == "jörg@example.com"


async def test_encoded_word_subject(smtp: Callable[..., Any]) -> None:
    """An RFC 2047 subject is stored decoded; the message_id is kept."""
    message = samples.mail(samples.attachment(samples.png(), "scan.png"), subject="Grüße 🙂")
    async with smtp() as gw:
        (await asend(gw.port, message)).job_id  # noqa: B018
        [job] = await gw.jobs()
    assert job["subject"] == "Grüße 🙂"
    assert job["message_id"].endswith("@example.com>")


async def test_250_only_after_spool_file_and_job_row(smtp: Callable[..., Any]) -> None:
    """When 250 arrives the raw message is on disk and the job row with its faxes exists."""
    message = pdf_mail()
    async with smtp({"senders": {"Alice@Example.com": {"from_number": "+12015550199"}}}) as gw:

        def send_and_check() -> tuple[Outcome, bool, list[Any]]:
            outcome = send(gw.port, message, recipients=(RCPT, "12015550124@fax.local"))
            # Checked from this thread, the instant the reply is read, before anything else
            # on the loop could run: a fresh connection to the database file.
            conn = sqlite3.connect(gw.db.path)
            try:
                rows = conn.execute(
                    "SELECT j.spool_path, j.from_number, j.sender, f.recipient "
                    "FROM jobs j JOIN faxes f ON f.job_id = j.id WHERE j.id = ?",
                    (outcome.job_id,),
                ).fetchall()
            finally:
                conn.close()
            spooled = bool(rows) and Path(rows[0][0]).read_bytes() == message
            return outcome, spooled, rows

        outcome, spooled, rows = await asyncio.to_thread(send_and_check)
        assert spooled
        assert {row[3] for row in rows} == {"+12015550123", "+12015550124"}
        assert rows[0][1] == "+12015550199"  # the sender's own number from [senders]
        assert rows[0][2] == "alice@example.com"
        assert len(gw.woken) == 1
        assert outcome.job_id


async def test_default_from_number(smtp: Callable[..., Any]) -> None:
    """A sender without a [senders] entry faxes from voxtelesys.from_number."""
    async with smtp() as gw:
        (await asend(gw.port, pdf_mail())).job_id  # noqa: B018
        [job] = await gw.jobs()
    assert job["from_number"] == "+12015550100"


async def test_closed_store_gives_451_not_500(smtp: Callable[..., Any]) -> None:
    """A failure of our own (the store is gone) answers 451 4.3.0 at DATA and at RCPT."""
    async with smtp({"limits": {"faxes_per_sender_per_day": 0}}) as gw:
        await asyncio.to_thread(gw.db.close)
        with structlog.testing.capture_logs() as logs:
            outcome = await asend(gw.port, pdf_mail())
        assert outcome.data == (451, "4.3.0 Temporary failure, try again later")
        assert any(e["event"] == "smtp.error" and e.get("exc_info") for e in logs)
    async with smtp() as gw:
        await asyncio.to_thread(gw.db.close)

        def two_transactions() -> tuple[Outcome, Outcome]:
            with smtplib.SMTP("127.0.0.1", gw.port, local_hostname=CLIENT_NAME) as client:
                client.ehlo()
                first = transact(client, pdf_mail())
                # The session survives its 451: the next transaction is served.
                return first, transact(client, pdf_mail(), recipients=("1@example.com",))

        first, second = await asyncio.to_thread(two_transactions)
    assert first.rcpt == [(451, "4.3.0 Temporary failure, try again later")]
    assert second.rcpt[0][0] == 550


async def test_log_lines_carry_the_session_id(smtp: Callable[..., Any]) -> None:
    """Every line of a session carries its id; two sessions have two ids."""
    async with smtp() as gw:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            await asend(gw.port, pdf_mail(), recipients=("sales@fax.local", RCPT))
            await asend(gw.port, pdf_mail(), recipients=("12015550124@example.org",))
    rejected = [e for e in logs if e["event"] == "smtp.rejected"]
    [accepted] = [e for e in logs if e["event"] == "smtp.accepted"]
    assert len(rejected) == 2
    assert all(e.get("session") for e in [*rejected, accepted])
    assert rejected[0]["session"] == accepted["session"] != rejected[1]["session"]
    assert rejected[0]["reason"] == "bad_number"
    assert rejected[1]["reason"] == "relay_denied"
    assert accepted["job"]


# -- stop ----------------------------------------------------------------------------------------


async def test_stop_lets_data_finish_and_refuses_new_connections(
    make_config: Callable[..., Config],
) -> None:
    """On stop: new connections refused, idle sessions get 421, DATA in progress gets its 250."""
    async with running_smtp(make_config()) as gw:
        busy = await Raw.connect(gw.port)
        idle = await Raw.connect(gw.port)
        await busy.command("EHLO client.example")
        await idle.command("EHLO client.example")
        await busy.command(f"MAIL FROM:<{SENDER}>")
        await busy.command(f"RCPT TO:<{RCPT}>")
        assert (await busy.command("DATA"))[0].startswith("354")
        message = pdf_mail()
        half = len(message) // 2
        busy.writer.write(message[:half])
        await busy.writer.drain()

        stopping = asyncio.create_task(gw.server.stop())
        assert await idle.reply() == ["421 4.3.2 Service shutting down"]
        assert await idle.closed()
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.close()
        assert not stopping.done()

        busy.writer.write(message[half:] + b"\r\n.\r\n")
        queued = await busy.reply()
        assert queued[0].startswith("250 2.0.0 queued as ")
        assert await busy.reply() == ["421 4.3.2 Service shutting down"]
        assert await busy.closed()
        await asyncio.wait_for(stopping, 10)
        await busy.close()
        await idle.close()
        [job] = await gw.jobs()
        assert queued[0].endswith(job["id"])


async def test_stop_is_bounded_when_data_never_ends(make_config: Callable[..., Config]) -> None:
    """A client stuck in DATA is cut off after the drain timeout, with nothing queued."""
    async with running_smtp(make_config(), drain_timeout=0.3) as gw:
        stuck = await Raw.connect(gw.port)
        await stuck.command("EHLO client.example")
        await stuck.command(f"MAIL FROM:<{SENDER}>")
        await stuck.command(f"RCPT TO:<{RCPT}>")
        await stuck.command("DATA")
        stuck.writer.write(b"Subject: never finished\r\n")
        await stuck.writer.drain()
        started = time.monotonic()
        await asyncio.wait_for(gw.server.stop(), 10)
        assert time.monotonic() - started < 5
        assert await stuck.closed()
        await stuck.close()
        assert await gw.jobs() == []
