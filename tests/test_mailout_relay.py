"""The relay against a real SMTP server (plain, STARTTLS, implicit TLS, AUTH) and a real Maildir."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib.protocol import normalize_message_line_endings
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.mailout.message import MailAttachment, RenderedMail, build_message
from gateway.mailout.relay import (
    MaildirRelay,
    RecipientsRefused,
    Relay,
    RelayError,
    SmtpRelay,
    _wire_length,
    create_relay,
)
from tests.servers.relay import CapturingRelay, RelayFactory

ConfigFactory = Callable[..., Config]


def make_message(to: list[str], subject: str = "Fax to +1 555-123-4567 delivered") -> EmailMessage:
    return build_message(
        from_address="fax-gateway@example.com",
        to=to,
        rendered=RenderedMail(subject=subject, text="Delivered.\n", html="<p>Delivered.</p>"),
        attachments=[MailAttachment("fax.pdf", "application/pdf", b"%PDF-1.4\n" + b"x" * 5000)],
        message_id_domain="fax.example.com",
    )


def wire(message: EmailMessage) -> bytes:
    """The message as the outbox stores it and hands it to a relay."""
    return message.as_bytes(policy=policy.SMTP)


def mail(to: list[str]) -> bytes:
    return wire(make_message(to))


_opened: list[Relay] = []


@pytest.fixture(autouse=True)
async def _close_relays(make_relay_server: RelayFactory) -> AsyncIterator[None]:
    """Every relay a test opened lets go of its kept session at the end, before the relay
    servers stop (no socket left open)."""
    yield
    for relay in _opened:
        await relay.close()
    _opened.clear()
    # A TLS client's socket closes a few loop turns after its close() (the TLS shutdown, then
    # the transport's own close): let them run before the test's loop is closed.
    await asyncio.sleep(0.2)


def opened(relay: Relay) -> Relay:
    _opened.append(relay)
    return relay


def smtp_relay(make_config: ConfigFactory, server: CapturingRelay, **overrides: Any) -> SmtpRelay:
    config = make_config({"relay": {**server.relay_config_overrides(), **overrides}})
    tls = server.client_tls_context() if server.tls != "none" else None
    relay = create_relay(config, tls_context=tls)
    assert isinstance(relay, SmtpRelay)
    opened(relay)
    return relay


async def test_plain_smtp_delivers_with_our_envelope_sender(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """The relay receives the message, from relay.from_address, for exactly the recipients."""
    relay = smtp_relay(make_config, relay_server)
    message = make_message(["alice@example.com"])
    await relay.send(wire(message), ["alice@example.com", "boss@example.com"])
    [captured] = relay_server.messages
    assert captured.mail_from == "fax-gateway@example.com"
    assert captured.rcpt_tos == ("alice@example.com", "boss@example.com")
    assert captured.message["Message-ID"] == message["Message-ID"]
    attachment = next(captured.message.iter_attachments())
    assert attachment.get_content() == b"%PDF-1.4\n" + b"x" * 5000
    assert captured.path.read_bytes() == captured.data
    assert not captured.tls


async def test_display_name_from_keeps_a_bare_envelope_sender(
    make_config: ConfigFactory, relay_server: CapturingRelay, tmp_path: Path
) -> None:
    """With relay.from_address = 'Name <addr>', MAIL FROM is the bare addr, From shows the name."""
    from_address = "Fax Gateway <fax-gateway@example.com>"
    config = make_config(
        {"relay": {**relay_server.relay_config_overrides(), "from_address": from_address}}
    )
    message = build_message(
        from_address=config.relay.from_address,
        to=["alice@example.com"],
        rendered=RenderedMail(subject="Fax delivered", text="Delivered.\n", html=None),
        message_id_domain="fax.example.com",
    )
    await opened(create_relay(config)).send(wire(message), ["alice@example.com"])
    [captured] = relay_server.messages
    assert captured.mail_from == "fax-gateway@example.com"
    [mailbox] = captured.message["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == ("Fax Gateway", "fax-gateway@example.com")

    maildir = tmp_path / "Maildir"
    config = make_config(
        {"relay": {"backend": "maildir", "maildir": str(maildir), "from_address": from_address}}
    )
    await opened(create_relay(config)).send(wire(message), ["alice@example.com"])
    [copy] = read_maildir(maildir)
    assert copy["Return-Path"] == "<fax-gateway@example.com>"


async def test_starttls_and_auth(
    make_config: ConfigFactory, make_relay_server: RelayFactory
) -> None:
    """STARTTLS with a verified certificate, then AUTH, then delivery."""
    server = make_relay_server(tls="starttls", users={"gateway": "s3cret-pass"})
    relay = smtp_relay(make_config, server)
    await relay.check()
    await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    [captured] = server.messages
    assert captured.tls and captured.auth_user == "gateway"


async def test_implicit_tls_and_auth(
    make_config: ConfigFactory, make_relay_server: RelayFactory
) -> None:
    """relay.tls (port-465 style): TLS from the first byte, then AUTH, then delivery."""
    server = make_relay_server(tls="implicit", users={"gateway": "s3cret-pass"})
    relay = smtp_relay(make_config, server)
    await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    [captured] = server.messages
    assert captured.tls and captured.auth_user == "gateway"


async def test_wrong_password_is_temporary_and_logged_loudly(
    make_config: ConfigFactory, make_relay_server: RelayFactory
) -> None:
    """535 is a configuration error: mail waits (temporary) and an error line says why."""
    server = make_relay_server(tls="starttls", users={"gateway": "s3cret-pass"})
    relay = smtp_relay(make_config, server, password="wrong-password")
    with capture_logs() as logs, pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert info.value.transient and info.value.relay_unavailable
    assert info.value.code == 535
    # aiosmtplib tries each mechanism the server offers before giving up.
    assert server.auth_failures >= 1 and server.messages == []
    assert any(e["event"] == "relay.auth_failed" and e["log_level"] == "error" for e in logs)
    assert "wrong-password" not in str(info.value)
    with pytest.raises(RelayError) as checked:
        await relay.check()
    assert "login" in str(checked.value)


async def test_missing_login_is_temporary(
    make_config: ConfigFactory, make_relay_server: RelayFactory
) -> None:
    """A relay that demands AUTH (530 at MAIL FROM) is a configuration problem, not a verdict."""
    server = make_relay_server(tls="starttls", users={"gateway": "s3cret-pass"})
    relay = smtp_relay(make_config, server, username=None, password=None)
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert info.value.code == 530 and info.value.transient


async def test_untrusted_certificate_is_temporary(
    make_config: ConfigFactory, make_relay_server: RelayFactory
) -> None:
    """A certificate we cannot verify stops the relay (not the message) and is logged."""
    server = make_relay_server(tls="starttls")
    config = make_config({"relay": server.relay_config_overrides()})
    relay = opened(create_relay(config))  # system trust store: does not know the test CA
    with capture_logs() as logs, pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert info.value.transient and info.value.relay_unavailable
    assert any(e["event"] == "relay.tls_failed" for e in logs)
    assert server.messages == []


async def test_4xx_at_data_is_temporary(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """451 after DATA: temporary, with the server's reply; the next try goes through."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.fail_next(1, code=451, message="4.3.0 Queue full")
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert info.value.transient and not info.value.relay_unavailable
    assert info.value.code == 451 and "Queue full" in info.value.reply
    await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert len(relay_server.messages) == 1


async def test_5xx_at_data_is_permanent(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """554 after DATA: permanent."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.reject_next(1, code=554, message="5.6.0 Content rejected", at="DATA")
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert not info.value.transient and info.value.code == 554
    assert relay_server.messages == []


async def test_5xx_at_mail_from_is_permanent(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """A refused envelope sender (550) ends the message."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.reject_next(1, code=550, message="5.7.1 Sender denied", at="MAIL")
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert not info.value.transient and info.value.code == 550


async def test_some_recipients_refused(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """Partial refusal: the message goes to the accepted; the refused are listed by code."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.refuse_recipient("gone@example.com", 550, "5.1.1 No such user")
    relay_server.refuse_recipient("full@example.com", 452, "4.2.2 Mailbox full")
    recipients = ["alice@example.com", "gone@example.com", "full@example.com"]
    with pytest.raises(RecipientsRefused) as info:
        await relay.send(mail(recipients), recipients)
    assert info.value.accepted == ("alice@example.com",)
    assert info.value.permanently_refused == ("gone@example.com",)
    assert info.value.temporary == ("full@example.com",)
    assert info.value.transient
    [captured] = relay_server.messages
    assert captured.rcpt_tos == ("alice@example.com",)


async def test_all_recipients_refused_permanently(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """Every recipient refused with 5xx: permanent, nothing delivered."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.reject_next(2, code=550, at="RCPT")
    recipients = ["a@example.com", "b@example.com"]
    with pytest.raises(RecipientsRefused) as info:
        await relay.send(mail(recipients), recipients)
    assert not info.value.transient and info.value.accepted == ()
    assert relay_server.messages == []


async def test_relay_down_is_temporary_and_unavailable(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """A refused connection is temporary and marks the relay unavailable; check() says so."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.go_down()
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert info.value.transient and info.value.relay_unavailable
    with pytest.raises(RelayError, match="unreachable"):
        await relay.check()
    relay_server.come_up()
    await relay.check()
    await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert len(relay_server.messages) == 1


async def test_malformed_recipient_is_permanent(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """A recipient with a line break never reaches the wire."""
    relay = smtp_relay(make_config, relay_server)
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["a@example.com"]), ["a@example.com\r\nRCPT TO:<x@y>"])
    assert not info.value.transient
    assert relay_server.sessions == 0


# -- one session for many messages -------------------------------------------------------------


async def test_messages_in_quick_succession_share_one_session(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """Three messages, one connection and one EHLO; close() ends it with QUIT."""
    relay = smtp_relay(make_config, relay_server)
    for n in range(3):
        await relay.send(mail([f"user{n}@example.com"]), [f"user{n}@example.com"])
    assert [m.rcpt_tos for m in relay_server.messages] == [
        (f"user{n}@example.com",) for n in range(3)
    ]
    assert relay_server.sessions == 1 and relay.sessions_opened == 1
    assert relay_server.quits == 0
    await relay.close()
    assert relay_server.quits == 1


async def test_a_session_the_relay_closed_costs_a_connection_not_the_message(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """The relay restarted between two messages: the second finds the kept session dead (its
    RSET fails) and goes out over a new one, delivered once."""
    relay = smtp_relay(make_config, relay_server)
    await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    relay_server.go_down()
    relay_server.come_up()
    await relay.send(mail(["bob@example.com"]), ["bob@example.com"])
    assert [m.rcpt_tos for m in relay_server.messages] == [
        ("alice@example.com",),
        ("bob@example.com",),
    ]
    assert relay.sessions_opened == 2


async def test_a_session_that_saw_an_error_is_not_kept(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """After a refused DATA the next message starts on a new session."""
    relay = smtp_relay(make_config, relay_server)
    relay_server.fail_next(1, code=451, message="4.3.0 Queue full")
    with pytest.raises(RelayError):
        await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    await relay.send(mail(["alice@example.com"]), ["alice@example.com"])
    assert relay.sessions_opened == 2 and len(relay_server.messages) == 1


async def test_stored_bytes_go_out_as_they_are(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """The relay receives exactly the bytes the outbox stored, byte for byte."""
    relay = smtp_relay(make_config, relay_server)
    stored = mail(["alice@example.com"])
    await relay.send(stored, ["alice@example.com"])
    [captured] = relay_server.messages
    assert captured.data == stored


async def test_the_declared_size_is_the_one_aiosmtplib_would_declare(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """MAIL FROM's SIZE= for a stored mail (CRLF line ends) is aiosmtplib's count of it, made
    without a pass of its regex; one with bare line ends falls back to that count."""
    relay = smtp_relay(make_config, relay_server)
    stored = mail(["alice@example.com"])
    bare = stored.replace(b"\r\n", b"\n")
    for message in (stored, stored.rstrip(b"\r\n"), bare, bare + b"\rtrailing"):
        await relay.send(message, ["alice@example.com"])
        expected = len(normalize_message_line_endings(message))
        assert _wire_length(message) == expected
        assert f"SIZE={expected}" in [o.upper() for o in relay_server.messages[-1].mail_options]


def _eight_bit_message() -> bytes:
    """A stored mail with an 8-bit text part (ours are quoted-printable; a mail of another
    making need not be)."""
    message = EmailMessage()
    message["From"] = "fax-gateway@example.com"
    message["To"] = "alice@example.com"
    message["Subject"] = "Fax für Jürgen"
    message.set_content("Zugestellt: 3 Seiten, grüß dich.\n")
    assert message["Content-Transfer-Encoding"] == "8bit"
    return wire(message)


async def test_8bit_text_is_declared_to_a_relay_with_8bitmime(
    make_config: ConfigFactory, relay_server: CapturingRelay
) -> None:
    """8-bit text goes as it is, announced with BODY=8BITMIME."""
    relay = smtp_relay(make_config, relay_server)
    stored = _eight_bit_message()
    await relay.send(stored, ["alice@example.com"])
    [captured] = relay_server.messages
    assert captured.data == stored and "BODY=8BITMIME" in captured.mail_options


async def test_a_relay_without_8bitmime_gets_seven_bits(
    make_config: ConfigFactory, make_relay_server: RelayFactory
) -> None:
    """A relay that does not offer 8BITMIME gets the 8-bit text re-encoded, its words intact."""
    server = make_relay_server(eight_bit=False)
    relay = smtp_relay(make_config, server)
    await relay.send(_eight_bit_message(), ["alice@example.com"])
    [captured] = server.messages
    assert captured.data.isascii() and "BODY=8BITMIME" not in captured.mail_options
    # Base64 of the canonical form (CRLF line ends), as aiosmtplib's own downgrade made it.
    assert captured.message.get_content().splitlines() == ["Zugestellt: 3 Seiten, grüß dich."]
    assert captured.message["Subject"] == "Fax für Jürgen"


def read_maildir(directory: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted((directory / "new").iterdir()):
        parsed = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert isinstance(parsed, EmailMessage)
        messages.append(parsed)
    return messages


async def test_maildir_writes_one_complete_file_per_recipient(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """Maildir delivery: complete files in new/, none left in tmp/, recipients told apart."""
    maildir = tmp_path / "Maildir"
    config = make_config({"relay": {"backend": "maildir", "maildir": str(maildir)}})
    relay = create_relay(config)
    assert isinstance(relay, MaildirRelay)
    await relay.check()
    message = make_message(["alice@example.com", "bob@example.com"])
    await relay.send(wire(message), ["alice@example.com", "bob@example.com", "ALICE@example.com"])
    assert list((maildir / "tmp").iterdir()) == []
    delivered = read_maildir(maildir)
    assert sorted(m["Delivered-To"] for m in delivered) == ["alice@example.com", "bob@example.com"]
    for copy in delivered:
        assert copy["X-Original-To"] == copy["Delivered-To"]
        assert copy["Return-Path"] == "<fax-gateway@example.com>"
        assert copy["Message-ID"] == message["Message-ID"]
        attachment = next(copy.iter_attachments())
        assert attachment.get_content() == b"%PDF-1.4\n" + b"x" * 5000
    names = os.listdir(maildir / "new")
    assert len(set(names)) == 2 and all(not n.startswith(".") for n in names)


async def test_maildir_not_writable_is_temporary(tmp_path: Path) -> None:
    """A Maildir we cannot write to is temporary (the operator fixes it), not lost mail."""
    maildir = tmp_path / "Maildir"
    maildir.mkdir()
    # A file where tmp/ should be: unwritable even for root, unlike a chmod.
    (maildir / "tmp").write_bytes(b"")
    relay = MaildirRelay(maildir, envelope_sender="fax-gateway@example.com")
    with pytest.raises(RelayError) as info:
        await relay.send(mail(["a@example.com"]), ["a@example.com"])
    assert info.value.transient
    with pytest.raises(RelayError, match="not writable"):
        await relay.check()
    (maildir / "tmp").unlink()
    await relay.check()
    await relay.send(mail(["a@example.com"]), ["a@example.com"])
    assert len(read_maildir(maildir)) == 1
