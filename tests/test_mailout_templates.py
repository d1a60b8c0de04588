"""Mail rendering: every kind renders, HTML is escaped, override templates and reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.mailout.templates import KINDS, MailRenderer, MailTemplateError
from tests.helpers import FAILED, OUTBOUND, RECEIVED, RETRY, build

CONTEXTS: dict[str, dict[str, Any]] = {
    "delivered": OUTBOUND,
    "queued": OUTBOUND,
    "failed": FAILED,
    "retry": RETRY,
    "inbound": RECEIVED,
}


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
    mail = renderer.render(kind, context)
    assert mail.html is not None
    for part in (mail.html, mail.text, mail.subject):
        assert not set(BIDI) & set(part), [hex(ord(c)) for c in set(BIDI) & set(part)]
    assert "invoicefdp.exe" in mail.html and "invoicefdp.exe" in mail.text
    if kind != "inbound":
        assert legit in mail.html and legit in mail.text and legit in mail.subject
