"""Mail building: structure, threading, sanitised names, and no value reaches a header."""

from __future__ import annotations

from email import policy

import pytest

from gateway.mailout.message import (
    InlineImage,
    MailAttachment,
    build_message,
    clean_filename,
    clean_subject,
)
from gateway.mailout.templates import MailRenderer
from tests.helpers import FAILED, OUTBOUND, RECEIVED, build, parse

ALWAYS = {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version"}
ALWAYS |= {"X-Auto-Response-Suppress", "Content-Type"}


@pytest.fixture(scope="module")
def renderer() -> MailRenderer:
    return MailRenderer(None)


def test_clean_subject_removes_every_control_character() -> None:
    """CR, LF, NUL, tabs, line separators and bidi overrides never survive in a subject."""
    dirty = "a\r\nb\rc\nd\te\x00f\x1bg\u2028h\u2029i\u202ej\x85k"
    assert clean_subject(dirty) == "a b c d e f g h ij k"
    long = "word " * 100
    capped = clean_subject(long)
    assert len(capped) <= 200 and capped.endswith("\u2026")


def test_message_structure_text_html_related_mixed(renderer: MailRenderer) -> None:
    """Text is always there; HTML alternative; inline image related to HTML; attachment mixed."""
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    message = build(
        renderer.render("inbound", RECEIVED),
        attachments=[MailAttachment("fax.pdf", "application/pdf", pdf)],
        inline_images=[InlineImage("page1.in-42@fax.local", "image/png", png)],
    )
    types = [part.get_content_type() for part in message.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and "+1 555-666-8888" in body.get_content()
    image = next(p for p in message.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<page1.in-42@fax.local>"
    assert image.get_content() == png
    attachment = next(message.iter_attachments())
    assert attachment.get_filename() == "fax.pdf"
    assert attachment.get_content() == pdf
    assert set(message.keys()) == ALWAYS


def test_threading_headers_and_automatic_mail_markers(renderer: MailRenderer) -> None:
    """In-Reply-To/References thread under the original; Auto-Submitted marks a robot's mail."""
    message = build(
        renderer.render("delivered", OUTBOUND),
        cc=["boss@example.com"],
        in_reply_to="<orig.123@mail.example.com>",
        references="<older@mail.example.com>",
    )
    assert message["In-Reply-To"] == "<orig.123@mail.example.com>"
    assert message["References"] == "<older@mail.example.com> <orig.123@mail.example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Cc"] == "boss@example.com"
    assert message["Message-ID"].endswith("@fax.example.com>")
    # A bare id (stored without brackets) is put in brackets rather than lost.
    bare = build(renderer.render("delivered", OUTBOUND), in_reply_to="orig.9@mail.example.com")
    assert bare["In-Reply-To"] == "<orig.9@mail.example.com>"


@pytest.mark.parametrize(
    "field",
    ["subject", "number", "carrier_id", "error_description"],
)
def test_header_injection_through_rendered_values_is_impossible(
    renderer: MailRenderer, field: str
) -> None:
    """CR/LF in any carrier or user value never adds a header to the built message."""
    payload = "x\r\nBcc: victim@example.org\r\nX-Injected: yes\n\nbody"
    context = {**FAILED, field: payload}
    message = build(renderer.render("failed", context))
    assert set(message.keys()) == ALWAYS
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert "\n" not in message["Subject"]


def test_header_injection_through_threading_ids_and_filenames_is_impossible(
    renderer: MailRenderer,
) -> None:
    """Malformed In-Reply-To/References are dropped; attachment names lose CR/LF and paths."""
    message = build(
        renderer.render("delivered", OUTBOUND),
        in_reply_to="<a@b>\r\nBcc: victim@example.org",
        references="<ok@example.com>\r\nX-Injected: yes <also ok@x>",
        attachments=[
            MailAttachment(
                '../../etc/pass"wd\r\nX-Injected: yes.pdf', "application/pdf", b"%PDF-1.4\n"
            )
        ],
    )
    assert message["In-Reply-To"] is None
    assert message["References"] == "<ok@example.com>"
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert set(message.keys()) == ALWAYS | {"References"}
    attachment = next(message.iter_attachments())
    assert set(attachment.keys()) == {
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
    }
    assert attachment.get_filename() == "pass_wd X-Injected_ yes.pdf"


@pytest.mark.parametrize(
    "address",
    [
        "victim@example.org\r\nBcc: other@example.org",
        "a@example.org, b@example.org",
        "Alice <alice@example.org>",
        "no-at-sign",
        "",
        "<alice@example.org>",
        "ops@example.org)",
        "(x@example.org",
    ],
)
def test_addresses_must_each_be_one_plain_addr_spec(renderer: MailRenderer, address: str) -> None:
    """A recipient with a line break, a list, a display name or no domain is refused; so is
    such a From, except that a From may have a display name (or just angle brackets)."""
    mail = renderer.render("delivered", OUTBOUND)
    with pytest.raises(ValueError):
        build(mail, to=[address])
    with pytest.raises(ValueError):
        build(mail, cc=[address])
    if address in ("Alice <alice@example.org>", "<alice@example.org>"):
        return
    with pytest.raises(ValueError):
        build(mail, from_address=address)


@pytest.mark.parametrize(
    ("from_address", "name"),
    [
        ("Fax Gateway <fax-gateway@example.com>", "Fax Gateway"),
        ('"Acme, Fax Desk" <fax-gateway@example.com>', "Acme, Fax Desk"),
        ("Faxdienst M\u00fcller <fax-gateway@example.com>", "Faxdienst M\u00fcller"),
    ],
)
def test_from_header_shows_the_display_name(
    renderer: MailRenderer, from_address: str, name: str
) -> None:
    """The From header carries the configured name (encoded if need be) and one address."""
    built = build_message(
        from_address=from_address,
        to=["alice@example.com"],
        rendered=renderer.render("delivered", OUTBOUND),
        message_id_domain="fax.example.com",
    )
    wire = built.as_bytes(policy=policy.SMTP)
    assert all(byte < 128 for byte in wire)  # a non-ASCII name is RFC 2047 encoded
    [line] = [raw for raw in wire.split(b"\r\n") if raw.startswith(b"From:")]
    assert line.endswith(b" <fax-gateway@example.com>")
    message = parse(built)
    [mailbox] = message["From"].addresses
    assert mailbox.display_name == name
    assert mailbox.addr_spec == "fax-gateway@example.com"


@pytest.mark.parametrize(
    "from_address",
    [
        "Fax\r\nBcc: victim@example.org <fax-gateway@example.com>",
        "Fax\n <fax-gateway@example.com>",
        "Fax <fax-gateway@example.com>, Other <other@example.org>",
        "Fax <fax-gateway@example.com> <other@example.org>",
        '"Fax" Bcc: <fax-gateway@example.com>',
        "Fax: x; <fax-gateway@example.com>",
        "Fax\u202e <fax-gateway@example.com>",
    ],
)
def test_from_display_name_cannot_inject_headers_or_addresses(
    renderer: MailRenderer, from_address: str
) -> None:
    """A line break, a second address or header syntax in the From's name is refused."""
    with pytest.raises(ValueError):
        build(renderer.render("delivered", OUTBOUND), from_address=from_address)


def test_filenames_are_sanitised() -> None:
    """Paths, control characters and shell-hostile characters leave a plain file name."""
    assert clean_filename("C:\\Users\\x\\scan.pdf") == "scan.pdf"
    assert clean_filename("../../.bashrc") == "bashrc"
    assert clean_filename("\x00\r\n", "application/pdf") == "attachment.pdf"
    assert clean_filename("a<b>|c?.tif") == "a_b__c_.tif"
    long = clean_filename("x" * 300 + ".pdf")
    assert len(long) == 100 and long.endswith(".pdf")
    assert clean_filename("Fax von Müller.pdf") == "Fax von Müller.pdf"


def test_non_ascii_survives_the_round_trip(renderer: MailRenderer) -> None:
    """Accents and non-Latin text in a subject come back intact, encoded as the RFCs want."""
    subject = "Vertrag f\u00fcr J\u00fcrgen \u2013 \u5951\u7d04"
    mail = renderer.render("delivered", {**OUTBOUND, "subject": subject})
    built = build_message(
        from_address="fax-gateway@example.com",
        to=["alice@example.com"],
        rendered=mail,
        message_id_domain="fax.example.com",
    )
    assert all(byte < 128 for byte in built.as_bytes(policy=policy.SMTP))  # 7-bit clean
    message = parse(built)
    assert subject in message["Subject"]
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and subject in body.get_content()
