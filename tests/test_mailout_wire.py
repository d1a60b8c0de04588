"""The wire form of outgoing mail (gateway/mailout/wire.py): the email package's bytes, faster."""

from __future__ import annotations

import email
import os
from email import policy
from email.message import EmailMessage

import pytest

from gateway.mailout.message import InlineImage, MailAttachment, RenderedMail, build_message
from gateway.mailout.wire import BASE64_BODIES, wire_bytes
from tests import samples

TEXT = "Your fax to +1 201 555 0123 was delivered.\n\nPages: 3\n-- \nfax-gateway\n"
HTML = '<p>Your fax was <b>delivered</b>.</p>\n<img src="cid:page1@gw">\n'


def _mails() -> dict[str, EmailMessage]:
    """One mail of each shape the gateway sends (reports, inbound faxes, copies, notices)."""
    pdf = samples.pdf(2)
    shapes = {
        "text": {"rendered": RenderedMail("Fax delivered", TEXT, None)},
        "text and html": {"rendered": RenderedMail("Fax delivered", TEXT, HTML)},
        "report": {
            "rendered": RenderedMail("Fax delivered", TEXT, HTML),
            "attachments": [
                MailAttachment("scan.pdf", "application/pdf", pdf + os.urandom(100_000)),
                MailAttachment("report.pdf", "application/pdf", pdf),
            ],
        },
        "inbound fax": {
            "rendered": RenderedMail("Fax from +1 201 555 0100", TEXT, HTML),
            "attachments": [MailAttachment("fax.tif", "image/tiff", os.urandom(57 * 40))],
            "inline_images": [InlineImage("page1@gw", "image/png", os.urandom(5_000))],
        },
        "text attachment": {
            "rendered": RenderedMail("Notice", TEXT, None),
            "attachments": [MailAttachment("notes.txt", "text/plain", b"line\r\nline\n.\n")],
        },
        "empty and odd sizes": {
            "rendered": RenderedMail("Sizes", TEXT, None),
            "attachments": [
                MailAttachment(f"f{n}.bin", "application/octet-stream", os.urandom(n))
                for n in (0, 1, 56, 57, 58, 114, 1_000)
            ],
        },
    }
    return {
        name: build_message(
            from_address="Fax Gateway <fax@gw.example>",
            to=["alice@example.com"],
            cc=["bob@example.com"],
            message_id_domain="gw.example",
            in_reply_to="<orig@example.com>",
            **shape,  # type: ignore[arg-type]
        )
        for name, shape in shapes.items()
    }


@pytest.mark.parametrize("name", list(_mails()))
def test_wire_bytes_are_the_email_package_s(name: str) -> None:
    """Every shape of mail: the same bytes as as_bytes(policy=SMTP) (boundaries set by the first
    flatten), CRLF line ends only, and each attachment reads back as the bytes it was made of."""
    message = _mails()[name]
    wire = wire_bytes(message)
    assert wire == message.as_bytes(policy=policy.SMTP)
    assert b"\n" not in wire.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(wire, policy=policy.default)
    made = [p.get_content() for p in message.iter_attachments()]
    read = [p.get_content() for p in parsed.iter_attachments()]  # type: ignore[attr-defined]
    assert read == made


def test_a_payload_with_a_lone_cr_goes_the_package_s_way() -> None:
    """A lone CR is a line end to the email package: the bulk path leaves such a payload to it."""
    message = EmailMessage()
    message["Subject"] = "CR"
    message.set_payload("one\rtwo\r\nthree\nfour")  # as a parsed message may hold it
    assert wire_bytes(message) == message.as_bytes(policy=policy.SMTP)
    assert b"one\r\ntwo\r\nthree\r\nfour" in wire_bytes(message)


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 171, 100_001])
def test_base64_bodies_match_the_package_s_encoder(size: int) -> None:
    """A bytes body under BASE64_BODIES: headers and 76-character lines as the default manager
    makes them; other transfer encodings are the default manager's own."""
    data = os.urandom(size)
    for cte in ("base64", "quoted-printable"):
        ours, theirs = EmailMessage(), EmailMessage()
        ours.set_content(
            data, "application", "pdf", cte=cte, filename="a.pdf", content_manager=BASE64_BODIES
        )
        theirs.set_content(data, "application", "pdf", cte=cte, filename="a.pdf")
        assert ours.as_bytes() == theirs.as_bytes()
        assert ours.get_content() == data


def test_the_boundaries_chosen_ahead_are_all_different() -> None:
    """A report (mixed > alternative, base64 and quoted-printable bodies): each multipart gets
    a boundary of its own before the generator would search the text for one."""
    message = _mails()["report"]
    wire_bytes(message)
    boundaries = [p.get_boundary() for p in message.walk() if p.is_multipart()]
    assert len(boundaries) == 2 and len(set(boundaries)) == 2 and None not in boundaries
