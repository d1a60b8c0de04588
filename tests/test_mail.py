"""Mail rendering and building: every kind renders, HTML is escaped, no value reaches a header."""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from gateway.mailout.message import (
    InlineImage,
    MailAttachment,
    RenderedMail,
    build_message,
    clean_filename,
    clean_subject,
)
from gateway.mailout.templates import KINDS, MailRenderer, MailTemplateError

WHEN = datetime(2024, 6, 19, 15, 38, tzinfo=UTC)

OUTBOUND: dict[str, Any] = {
    "number": "+15551234567",
    "pages": 3,
    "duration": 125,
    "attempts": 2,
    "fax_id": "a1b2c3d4-0000-4000-8000-1234567890ab",
    "time": WHEN,
    "subject": "Signed contract",
    "sender": "alice@example.com",
    "job_id": "20240619-153800-abcdef",
    "document_attached": True,
}
FAILED: dict[str, Any] = {
    **OUTBOUND,
    "error_code": 5109,
    "error_description": "far end is not able to receive",
    "retry_may_help": True,
}
RECEIVED: dict[str, Any] = {
    "from_number": "+15556668888",
    "to_number": "+12015550100",
    "pages": 2,
    "duration": 61,
    "time": WHEN,
    "fax_id": "in-42",
    "attachments": ["fax-2024-06-19-1538-from-15556668888.pdf"],
    "preview_cid": "page1.in-42@fax.local",
}
CONTEXTS: dict[str, dict[str, Any]] = {
    "delivered": OUTBOUND,
    "queued": OUTBOUND,
    "failed": FAILED,
    "received": RECEIVED,
}
ALWAYS = {"From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version"}
ALWAYS |= {"X-Auto-Response-Suppress", "Content-Type"}


def parse(message: EmailMessage) -> EmailMessage:
    """The message as a recipient sees it: serialised with CRLF and parsed back."""
    parsed = BytesParser(policy=policy.default).parsebytes(message.as_bytes(policy=policy.SMTP))
    assert isinstance(parsed, EmailMessage)
    return parsed


def build(rendered: RenderedMail, **options: Any) -> EmailMessage:
    values: dict[str, Any] = {
        "from_address": "fax-gateway@example.com",
        "to": ["alice@example.com"],
        "rendered": rendered,
        "message_id_domain": "fax.example.com",
    }
    values.update(options)
    return parse(build_message(**values))


@pytest.fixture(scope="module")
def renderer() -> MailRenderer:
    return MailRenderer(None)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_subject_text_and_html(renderer: MailRenderer, kind: str) -> None:
    """Each built-in kind renders a one-line subject, a text body and an HTML body."""
    mail = renderer.render(kind, CONTEXTS[kind])
    assert "\n" not in mail.subject and mail.subject
    assert mail.text.strip() and mail.html is not None and "<html" in mail.html
    if kind == "received":
        assert mail.subject == "Fax from +1 555-666-8888, 2 pages"
        assert "+1 201-555-0100" in mail.text and "1 min 1 s" in mail.text
        assert 'src="cid:page1.in-42@fax.local"' in mail.html
    else:
        assert "+1 555-123-4567" in mail.subject and "Signed contract" in mail.subject
        assert "a1b2c3d4-0000-4000-8000-1234567890ab" in mail.text
        assert "2024-06-19 15:38 UTC" in mail.text and "Job:          20240619" in mail.text


def test_report_subjects_read_as_the_issue_asks(renderer: MailRenderer) -> None:
    """Delivered and failed subjects name number, outcome, pages or reason, and the subject."""
    delivered = renderer.render("delivered", {**OUTBOUND, "subject": ""})
    assert delivered.subject == "Fax to +1 555-123-4567 delivered, 3 pages"
    failed = renderer.render("failed", {**FAILED, "subject": ""})
    assert failed.subject == "Fax to +1 555-123-4567 failed: far end is not able to receive"
    assert "5109" in failed.text and "again later may work" in failed.text
    assert "2 min 5 s" in delivered.text and "Attempts:     2" in delivered.text
    final = renderer.render("failed", {**FAILED, "retry_may_help": False, "error_code": None})
    assert "fail the same way" in final.text and "error None" not in final.text


def test_missing_context_value_is_an_error(renderer: MailRenderer) -> None:
    """StrictUndefined: a template needing a value the caller forgot fails loudly."""
    context = dict(OUTBOUND)
    del context["number"]
    with pytest.raises(MailTemplateError, match="number"):
        renderer.render("delivered", context)
    with pytest.raises(MailTemplateError, match="unknown mail kind"):
        renderer.render("bounced", OUTBOUND)


def test_html_is_autoescaped_and_text_is_not(renderer: MailRenderer) -> None:
    """A subject like <script> is escaped in HTML and left readable in text."""
    nasty = '<script>alert("x")</script> & <b>bold</b>'
    mail = renderer.render("delivered", {**OUTBOUND, "subject": nasty})
    assert mail.html is not None
    assert "<script>" not in mail.html and "<b>bold</b>" not in mail.html
    assert "&lt;script&gt;" in mail.html and "&amp;" in mail.html
    assert nasty in mail.text


def test_values_cannot_forge_lines_in_the_text_body(renderer: MailRenderer) -> None:
    """A newline in a value prints on one line: no fake "Pages:" line in a report."""
    mail = renderer.render("delivered", {**OUTBOUND, "subject": "Hi\r\nPages:        999"})
    assert not any(line.startswith("Pages:        999") for line in mail.text.splitlines())
    assert "Subject:      Hi Pages: 999\n" in mail.text


def test_override_directory_wins_and_reload_picks_up_changes(tmp_path: Path) -> None:
    """Templates in templates.dir replace built-in ones; reload() reads them again."""
    (tmp_path / "delivered.subject.j2").write_text("Custom {{ number }}\n")
    renderer = MailRenderer(tmp_path)
    assert renderer.render("delivered", OUTBOUND).subject == "Custom +15551234567"
    # Other templates still come from the built-in directory.
    assert renderer.render("failed", FAILED).subject.startswith("Fax to +1 555-123-4567 failed")
    (tmp_path / "failed.subject.j2").write_text("Changed {{ error_code }}")
    renderer.reload()
    assert renderer.render("failed", FAILED).subject == "Changed 5109"


def test_broken_override_is_reported_and_old_templates_are_kept(tmp_path: Path) -> None:
    """A syntax error fails at construction, and on reload leaves the working set in use."""
    bad = tmp_path / "queued.txt.j2"
    bad.write_text("{% if %}")
    with pytest.raises(MailTemplateError, match=r"queued\.txt\.j2"):
        MailRenderer(tmp_path)
    bad.write_text("Queued {{ number }}\n")
    renderer = MailRenderer(tmp_path)
    bad.write_text("{% for %}")
    with pytest.raises(MailTemplateError):
        renderer.reload()
    assert renderer.render("queued", OUTBOUND).text == "Queued +15551234567\n"


def test_missing_override_directory_is_an_error(tmp_path: Path) -> None:
    """A mistyped templates.dir is reported instead of silently using the built-in set."""
    with pytest.raises(MailTemplateError, match="not a directory"):
        MailRenderer(tmp_path / "no-such-dir")


def test_empty_html_override_sends_text_only(tmp_path: Path) -> None:
    """An empty HTML template in the override directory means a text-only mail."""
    (tmp_path / "delivered.html.j2").write_text("\n")
    mail = MailRenderer(tmp_path).render("delivered", OUTBOUND)
    assert mail.html is None
    message = build(mail)
    assert message.get_content_type() == "text/plain"
    assert "was delivered" in message.get_content()


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
        renderer.render("received", RECEIVED),
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
    ["subject", "number", "fax_id", "error_description"],
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
    """An address with a line break, a list, a display name or no domain is refused."""
    mail = renderer.render("delivered", OUTBOUND)
    with pytest.raises(ValueError):
        build(mail, to=[address])
    with pytest.raises(ValueError):
        build(mail, cc=[address])
    with pytest.raises(ValueError):
        build(mail, from_address=address)


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
