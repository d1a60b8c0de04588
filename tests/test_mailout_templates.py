"""Mail rendering: every kind renders, HTML is escaped, override templates and reload."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.mailout.templates import KINDS, MailRenderer, MailTemplateError
from tests.helpers import FAILED, OUTBOUND, RECEIVED, REFUSED, RETRY, build

WHEN = datetime(2024, 6, 19, 15, 38, tzinfo=UTC)
CONTEXTS: dict[str, dict[str, Any]] = {
    "delivered": OUTBOUND,
    "queued": OUTBOUND,
    "failed": FAILED,
    "retry": RETRY,
    "inbound": RECEIVED,
    "held": {
        "job_id": "J01HELD",
        "sender": "alice@example.com",
        "subject": "Signed contract",
        "numbers": ["+15551234567"],
        "error": "held: every attempt was interrupted",
        "time": WHEN,
    },
    "dead_letter": {
        "inbound_id": 7,
        "carrier_id": "in-42",
        "from_number": "+15556668888",
        "to_number": "+12015550100",
        "pages": 2,
        "received": WHEN,
        "error": "mail not delivered: 550 no such user",
        "kept": True,
        "time": WHEN,
    },
    "summary": {
        "day": "2024-06-18",
        "start": WHEN,
        "end": WHEN,
        "delivered": 12,
        "failed": 3,
        "pages_out": 40,
        "received": 5,
        "pages_in": 9,
        "failures": [{"code": 5109, "description": "line busy", "faxes": 3}],
        "top_senders": [{"sender": "alice@example.com", "faxes": 7}],
        "queues": [{"queue": "jobs", "state": "held", "items": 1}],
        "dead_letters": 1,
        "new_dead_letters": 1,
    },
    "refused": REFUSED,
}
# The kinds that report on a sender's fax (the others go to notify.admin).
REPORT_KINDS = ("delivered", "queued", "failed")


@pytest.fixture(scope="module")
def renderer() -> MailRenderer:
    return MailRenderer(None)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_subject_text_and_html(renderer: MailRenderer, kind: str) -> None:
    """Each built-in kind renders a one-line subject, a text body and an HTML body."""
    mail = renderer.render(kind, CONTEXTS[kind])
    assert "\n" not in mail.subject and mail.subject
    assert mail.text.strip() and mail.html is not None and "<html" in mail.html
    if kind == "inbound":
        assert mail.subject == "Fax from +1 555-666-8888, 2 pages"
        assert "+1 201-555-0100" in mail.text and "1 min 1 s" in mail.text
        assert 'src="cid:page1.in-42@fax.local"' in mail.html
    elif kind == "held":
        assert mail.subject == "Fax job J01HELD held: held: every attempt was interrupted"
        assert "+1 555-123-4567" in mail.text and "queue retry J01HELD" in mail.text
    elif kind == "dead_letter":
        assert "550 no such user" in mail.subject and "+1 555-666-8888" in mail.subject
        assert "dead-letter requeue 7" in mail.text and "2024-06-19 15:38 UTC" in mail.html
    elif kind == "summary":
        assert mail.subject.startswith("Fax gateway summary for 2024-06-18: 12 delivered")
        assert "5109: line busy" in mail.text and "7 x alice@example.com" in mail.text
        assert '<td style="padding:3px 16px 3px 0;">line busy</td>' in mail.html
    elif kind == "refused":
        assert mail.subject == "Fax sent to only 1 of its numbers (Re: Signed contract)"
        assert "19005550100: numbers starting +1900 are blocked" in mail.text
        assert "Faxed to:     +1 555-123-4567" in mail.text and "J0123456789" in mail.text
        assert "19005550100" in mail.html and "+1 555-123-4567" in mail.html
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


# Every Unicode bidi control: embeddings, overrides, isolates and marks (U+061C included).
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


@pytest.mark.parametrize("kind", KINDS)
def test_bidi_controls_are_stripped_from_subject_text_and_html(
    renderer: MailRenderer, kind: str
) -> None:
    """No bidi control in any value reaches a rendered part; other non-ASCII text is kept."""
    # Accents, a dash, RTL letters, CJK and an emoji ZWJ sequence: all kept.
    legit = "Müller \u2013 שלום عربي 中文 👩\u200d💻"
    spoof = f"invoice{BIDI}fdp.exe {legit}"
    context = dict(CONTEXTS[kind])
    for key in ("subject", "error_description", "sender", "carrier_id", "from_number"):
        if key in context:
            context[key] = spoof
    if kind == "inbound":
        context["attachments"] = [f"fax{BIDI}.pdf"]
    if kind == "summary":
        context["top_senders"] = [{"sender": spoof, "faxes": 1}]
    mail = renderer.render(kind, context)
    assert mail.html is not None
    for part in (mail.html, mail.text, mail.subject):
        assert not set(BIDI) & set(part), [hex(ord(c)) for c in set(BIDI) & set(part)]
    assert "invoicefdp.exe" in mail.html and "invoicefdp.exe" in mail.text
    if kind in REPORT_KINDS:
        assert legit in mail.html and legit in mail.text and legit in mail.subject
