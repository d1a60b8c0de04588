"""Finding the faxable parts, the subject and the body text of mail messages."""

from __future__ import annotations

import base64
import contextlib
import email.policy
import random
import time
from email.message import Message

import pytest

from gateway.document import headers
from gateway.document.htmltext import html_to_text
from gateway.document.mime import DocumentError, extract, one_line_ascii
from tests import samples


def logo_mail(*attachments: samples.Message, logo_disposition: str | None = "inline") -> bytes:
    """HTML mail whose signature shows a logo by cid:, plus attachments."""
    html = '<p>Hello</p><p>--<br><img src="cid:logo.123@example.com" alt="ACME"></p>'
    related = samples.multipart(
        "related",
        samples.part(html, "text/html", disposition=None),
        samples.part(
            samples.png(80, 40),
            "image/png",
            filename="logo.png",
            disposition=logo_disposition,
            content_id="logo.123@example.com",
        ),
    )
    body = samples.multipart(
        "alternative", samples.part("Hello\n-- \nACME", "text/plain", disposition=None), related
    )
    return samples.to_bytes(samples.multipart("mixed", body, *attachments))


def test_single_pdf_attachment() -> None:
    """A PDF attachment is found with its name, type and exact bytes, and the body is kept."""
    document = samples.pdf(2)
    extracted = extract(samples.mail(samples.attachment(document, "report.pdf"), body="Hi"))
    assert len(extracted.attachments) == 1
    found = extracted.attachments[0]
    assert (found.filename, found.content_type, found.data) == (
        "report.pdf",
        "application/pdf",
        document,
    )
    assert extracted.body_text == "Hi"
    assert extracted.unsupported == ()


def test_octet_stream_named_pdf_is_a_pdf() -> None:
    """application/octet-stream with a .pdf name is faxed as a PDF."""
    raw = samples.mail(samples.attachment(samples.pdf(), "scan.pdf", "application/octet-stream"))
    assert [a.content_type for a in extract(raw).attachments] == ["application/pdf"]


def test_bytes_decide_over_a_wrong_declared_type() -> None:
    """A PNG declared as image/jpeg and named .jpg is recognised as PNG."""
    raw = samples.mail(samples.attachment(samples.png(), "photo.jpg", "image/jpeg"))
    assert [a.content_type for a in extract(raw).attachments] == ["image/png"]


def test_octet_stream_without_name_is_recognised_by_bytes() -> None:
    """An unnamed octet-stream part that is a TIFF is faxable."""
    raw = samples.mail(samples.part(samples.tiff(1), "application/octet-stream"))
    found = extract(raw).attachments
    assert [(a.filename, a.content_type) for a in found] == [(None, "image/tiff")]


def test_cid_logo_of_html_signature_is_not_faxed() -> None:
    """An image the HTML shows by cid: is skipped; the real attachment is kept."""
    raw = logo_mail(samples.attachment(samples.pdf(), "contract.pdf"))
    extracted = extract(raw)
    assert [a.filename for a in extracted.attachments] == ["contract.pdf"]
    assert extracted.unsupported == ()


def test_cid_logo_is_skipped_even_when_marked_attachment() -> None:
    """Clients that mark cid images as attachments still do not get their logo faxed."""
    extracted = extract(logo_mail(logo_disposition="attachment"))
    assert extracted.attachments == ()


def test_logo_only_mail_has_nothing_to_fax_and_names_nothing() -> None:
    """A mail whose only image is its signature logo has no document and no unsupported part."""
    extracted = extract(logo_mail())
    assert extracted.attachments == ()
    assert extracted.unsupported == ()
    assert extracted.body_text == "Hello\n--\nACME"


def test_image_named_by_content_location_is_not_faxed() -> None:
    """An image the HTML shows by Content-Location is a body resource, not a document."""
    html = '<img src="http://example.com/banner.png">'
    related = samples.multipart(
        "related",
        samples.part(html, "text/html", disposition=None),
        samples.part(
            samples.png(),
            "image/png",
            disposition=None,
            content_location="http://example.com/banner.png",
        ),
    )
    raw = samples.to_bytes(
        samples.multipart("mixed", related, samples.attachment(samples.jpeg(), "a.jpg"))
    )
    assert [a.filename for a in extract(raw).attachments] == ["a.jpg"]


def test_unreferenced_image_inside_related_is_a_body_resource() -> None:
    """An image in multipart/related that the HTML no longer shows is still not faxed."""
    related = samples.multipart(
        "related",
        samples.part("<p>reply</p>", "text/html", disposition=None),
        samples.part(samples.png(), "image/png", disposition="inline", content_id="old@x"),
    )
    assert extract(samples.to_bytes(related)).attachments == ()


def test_inline_photo_of_plain_text_mail_is_faxed() -> None:
    """An inline image nothing refers to (iOS Mail photo) is the content: it is faxed."""
    photo = samples.jpeg()
    raw = samples.to_bytes(
        samples.multipart(
            "mixed",
            samples.part("See photo", "text/plain", disposition=None),
            samples.part(photo, "image/jpeg", filename="IMG_0001.JPG", disposition="inline"),
        )
    )
    extracted = extract(raw)
    assert [(a.filename, a.data) for a in extracted.attachments] == [("IMG_0001.JPG", photo)]


def test_docx_only_is_named_as_unsupported() -> None:
    """A Word document is not faxable and is named so the sender can be told."""
    raw = samples.mail(samples.attachment(samples.docx(), "report.docx"))
    extracted = extract(raw)
    assert extracted.attachments == ()
    assert extracted.unsupported == ("report.docx",)


def test_unnamed_unsupported_part_is_named_by_type() -> None:
    """An unsupported part without a filename is named by its declared type."""
    raw = samples.mail(samples.part(samples.gif(), "image/gif"))
    assert extract(raw).unsupported == ("image/gif",)


def test_text_attachment_is_unsupported_not_body() -> None:
    """A .txt attachment is not mistaken for the body; it cannot be faxed."""
    raw = samples.mail(
        samples.part(samples.text_file().decode(), "text/plain", filename="notes.txt"),
        body="Body here",
    )
    extracted = extract(raw)
    assert extracted.body_text == "Body here"
    assert extracted.unsupported == ("notes.txt",)


def test_no_attachment() -> None:
    """A text-only mail has no attachments and nothing unsupported, and keeps its text."""
    extracted = extract(samples.mail(body="Line one\r\nLine two\r\n\r\n"))
    assert extracted.attachments == ()
    assert extracted.unsupported == ()
    assert extracted.body_text == "Line one\nLine two"


@pytest.mark.parametrize("style", ["rfc2231", "encoded-word"])
def test_non_ascii_filename_and_subject(style: str) -> None:
    """Non-ASCII filenames (RFC 2231 or encoded words) and subjects are decoded."""
    attachment = samples.part(
        samples.pdf(),
        "application/pdf",
        filename="Überweisung März €.pdf",
        filename_style=style,
    )
    raw = samples.to_bytes(
        samples.multipart("mixed", samples.part("x", "text/plain", disposition=None), attachment),
        subject="Grüße aus Köln — 東京",
    )
    extracted = extract(raw)
    assert [a.filename for a in extracted.attachments] == ["Überweisung März €.pdf"]
    assert extracted.subject == "Grüße aus Köln — 東京"


def test_windows_path_in_filename_is_reduced_to_the_name() -> None:
    """A filename sent with the sender's folder path keeps only the file's name."""
    raw = samples.mail(samples.attachment(samples.pdf(), "C:\\Users\\ann\\Documents\\q3.pdf"))
    assert extract(raw).attachments[0].filename == "q3.pdf"


def test_mixed_nested_in_alternative() -> None:
    """Apple Mail's layout (mixed inside alternative) yields the attachment and the plain text."""
    document = samples.pdf(3)
    rich = samples.multipart(
        "mixed",
        samples.part("<p>Please fax</p>", "text/html", disposition=None),
        samples.part(document, "application/pdf", filename="a.pdf", disposition="inline"),
        samples.part("<p>Thanks</p>", "text/html", disposition=None),
    )
    alternative = samples.multipart(
        "alternative", samples.part("Please fax\n\nThanks", "text/plain", disposition=None), rich
    )
    extracted = extract(samples.to_bytes(alternative))
    assert [a.data for a in extracted.attachments] == [document]
    assert extracted.body_text == "Please fax\n\nThanks"


def test_attachment_repeated_in_each_alternative_is_taken_once() -> None:
    """When alternatives both carry a file, it is faxed once (from the richest alternative)."""
    document = samples.pdf()
    plain = samples.multipart(
        "mixed",
        samples.part("text", "text/plain", disposition=None),
        samples.attachment(document, "a.pdf"),
    )
    rich = samples.multipart(
        "mixed",
        samples.part("<b>text</b>", "text/html", disposition=None),
        samples.attachment(document, "a.pdf"),
    )
    extracted = extract(samples.to_bytes(samples.multipart("alternative", plain, rich)))
    assert len(extracted.attachments) == 1


def test_attachments_keep_message_order() -> None:
    """Faxable parts come out in the order they appear in the message."""
    raw = samples.mail(
        samples.attachment(samples.png(), "1.png"),
        samples.attachment(samples.pdf(), "2.pdf"),
        samples.attachment(samples.docx(), "skip.docx"),
        samples.attachment(samples.tiff(2), "3.tif"),
        samples.attachment(samples.jpeg(), "4.jpg"),
    )
    extracted = extract(raw)
    assert [a.filename for a in extracted.attachments] == ["1.png", "2.pdf", "3.tif", "4.jpg"]
    assert extracted.unsupported == ("skip.docx",)


def test_forwarded_message_contributes_its_attachments_not_its_body() -> None:
    """A mail forwarded as an attachment gives its documents; its text is not the body."""
    document = samples.pdf(2)
    inner = samples.mail(samples.attachment(document, "invoice.pdf"), body="inner text")
    raw = samples.to_bytes(
        samples.multipart(
            "mixed",
            samples.part("outer text", "text/plain", disposition=None),
            samples.forwarded(inner),
        )
    )
    extracted = extract(raw)
    assert [a.data for a in extracted.attachments] == [document]
    assert extracted.body_text == "outer text"


def test_forwarded_message_without_documents_is_named() -> None:
    """A forwarded mail with nothing faxable is named (by its subject) as unsupported."""
    inner = samples.mail(body="just text", subject="Lunch?")
    raw = samples.to_bytes(
        samples.multipart(
            "mixed",
            samples.part("fyi", "text/plain", disposition=None),
            samples.forwarded(inner),
        )
    )
    extracted = extract(raw)
    assert extracted.attachments == ()
    assert extracted.unsupported == ('forwarded message "Lunch?"',)


def test_html_only_body_becomes_plain_text() -> None:
    """With only HTML, the body text is derived from it: tags, scripts and styles gone."""
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<p>Dear&nbsp;Bob,</p><p>please <b>fax</b> this.</p><script>alert(1)</script>"
        "<div>Caf&eacute;</div></body></html>"
    )
    raw = samples.to_bytes(samples.part(html, "text/html", disposition=None))
    assert extract(raw).body_text == "Dear Bob,\n\nplease fax this.\n\nCafé"


def test_declared_pdf_with_other_bytes_is_kept_as_a_pdf_to_report_corrupt() -> None:
    """A file named .pdf that is not a PDF stays an attachment, so validation calls it corrupt."""
    raw = samples.mail(samples.attachment(b"<html>not a pdf</html>", "scan.pdf", "application/pdf"))
    extracted = extract(raw)
    assert [(a.filename, a.content_type) for a in extracted.attachments] == [
        ("scan.pdf", "application/pdf")
    ]


def test_signature_parts_are_ignored() -> None:
    """In multipart/signed the S/MIME signature is neither faxed nor named."""
    content = samples.multipart(
        "mixed",
        samples.part("signed text", "text/plain", disposition=None),
        samples.attachment(samples.pdf(), "a.pdf"),
    )
    signature = samples.part(
        b"\x30\x82garbage", "application/pkcs7-signature", filename="smime.p7s"
    )
    raw = samples.to_bytes(samples.multipart("signed", content, signature))
    extracted = extract(raw)
    assert [a.filename for a in extracted.attachments] == ["a.pdf"]
    assert extracted.unsupported == ()


def test_whole_message_is_a_pdf() -> None:
    """A single-part message whose content is a PDF (some scanners) is faxable."""
    document = samples.pdf()
    raw = (
        b"From: scanner@example.com\r\nSubject: scan\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(document)
    )
    assert [a.data for a in extract(raw).attachments] == [document]


def test_unknown_charset_body_is_decoded_anyway() -> None:
    """A body in an unknown charset is decoded as UTF-8 (or Latin-1) instead of failing."""
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-unknown-7\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"
    )
    assert extract(raw).body_text == "Grüße"


def test_message_id_and_subject() -> None:
    """The Message-ID is kept verbatim and an encoded-word subject is decoded to one line."""
    raw = (
        b"Message-ID: <abc.123@example.com>\r\n"
        b"Subject: =?utf-8?q?Caf=C3=A9?=\r\n  menu\r\n\r\nbody\r\n"
    )
    extracted = extract(raw)
    assert extracted.message_id == "<abc.123@example.com>"
    assert extracted.subject == "Café menu"


def test_raw_8bit_header_bytes_become_text_that_can_be_stored() -> None:
    """Undeclared 8-bit bytes in headers read as text (UTF-8, else U+FFFD), never surrogates."""
    raw = (
        b"Message-ID:\x80 <fuzz@example.com>\r\n"
        b"Subject: Caf\xc3\xa9 \xff =?bogus?q?x?=\r\n\r\nbody\r\n"
    )
    extracted = extract(raw)
    assert extracted.message_id == "\ufffd <fuzz@example.com>"
    extracted.subject.encode("utf-8")  # a lone surrogate cannot be stored or mailed
    assert "Caf" in extracted.subject


def test_garbage_is_not_an_error_but_has_nothing_to_fax() -> None:
    """Random non-MIME bytes parse as a text message without attachments."""
    extracted = extract(bytes(range(256)) * 4)
    assert extracted.attachments == ()


def test_absurd_nesting_is_malformed() -> None:
    """A message nested deeper than any client nests is refused as malformed, not crashed on."""
    depth = 200
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(depth)
    )
    with pytest.raises(DocumentError) as caught:
        extract(b"Subject: deep\r\nMIME-Version: 1.0\r\n" + head + b"\r\nx\r\n")
    assert caught.value.kind == "malformed"


def test_document_error_is_one_ascii_line() -> None:
    """DocumentError text is a single ASCII line of bounded length, whatever it was given."""
    error = DocumentError(
        "Überweisung.pdf:\r\n the PDF\tis damaged 東" + "x" * 1000, kind="corrupt"
    )
    text = str(error)
    assert text.isascii() and "\n" not in text and "\r" not in text
    assert text.startswith("Uberweisung.pdf: the PDF is damaged ?")
    assert len(text) <= 400
    assert error.kind == "corrupt"
    with pytest.raises(ValueError):
        DocumentError("x", kind="nonsense")


def test_one_line_ascii_and_html_to_text_helpers() -> None:
    """The helpers flatten text to ASCII and HTML to readable lines."""
    assert one_line_ascii("a\nb\x00c  é") == "a b c e"
    assert html_to_text("<p>a</p><p>b<br>c</p>") == "a\n\nb\nc"
    assert html_to_text("Hello <b>world</b>") == "Hello world"


def _encoded_word_subject(count: int) -> bytes:
    """A Subject of `count` adjacent RFC 2047 encoded words, folded to 900-character lines."""
    lines, line = [], ""
    for _ in range(count):
        if len(line) > 900:
            lines.append(line)
            line = ""
        line += ("" if not line else " ") + "=?utf-8?q?a?="
    lines.append(line)
    return "\r\n ".join(lines).encode()


def test_an_encoded_word_bomb_in_the_subject_is_refused_cheaply_and_named() -> None:
    """10,000 encoded words in the Subject (the probe's 1.4 GB message) are refused as
    malformed, naming the header, before the modern parser sees them; in well under a second."""
    raw = samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))
    raw = raw.replace(b"Subject: Fax", b"Subject: " + _encoded_word_subject(10_000), 1)
    started = time.thread_time()  # CPU, not wall time: a loaded machine slows the clock
    with pytest.raises(DocumentError) as caught:
        extract(raw)
    assert time.thread_time() - started < 1.0
    assert caught.value.kind == "malformed"
    assert "Subject header is too long" in str(caught.value)


def test_a_long_subject_of_real_mail_still_reads() -> None:
    """A subject of a few dozen encoded words (a long non-Latin subject) is decoded as before."""
    words = " ".join(["=?utf-8?b?0J/RgNC40LLQtdGC?="] * 40)
    raw = samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))
    raw = raw.replace(b"Subject: Fax", b"Subject: " + words.encode(), 1)
    assert extract(raw).subject.startswith("ПриветПривет")


def test_an_encoded_word_bomb_in_a_nested_part_header_is_refused() -> None:
    """The bound holds for every part's headers, not only the top-level Subject."""
    bomb = _encoded_word_subject(500).decode()
    attachment = samples.attachment(samples.pdf(1), "a.pdf")
    attachment["Content-Description"] = bomb
    with pytest.raises(DocumentError, match="Content-Description header is too long"):
        extract(samples.mail(attachment))


# Header text made of what mail clients write, what the shortcuts leave to the parser (encoded
# words, folding, non-ASCII, RFC 2231, quoting, comments) and odd characters.
_HEADER_PIECES = [
    "Fax", "to", "ACME", " ", "  ", "\t", "\r\n ", "\n", "\r", "=?utf-8?q?caf=C3=A9?=",
    "=?", "?=", "é", "\udce9", "\x0b", "(c)", '"', '"a b"', "\\", ";", "=", "name", "NAME",
    "filename", "FileName*0*=utf-8''a%20b", "name*=x", "application/pdf", "text/plain",
    "attachment", "inline", "charset=utf-8", "scan.pdf", "Kelvin\u212a", "F\u0130LENAME",
]  # fmt: skip


def _header_value(rng: random.Random) -> str:
    return "".join(rng.choice(_HEADER_PIECES) for _ in range(rng.randrange(0, 8)))


def test_a_plain_subject_reads_as_the_header_parser_reads_it() -> None:
    """Every Subject the shortcut reads (ASCII, no encoded word, no line break) is the text
    policy.default's parser gives, on one line, for 5,000 generated values."""
    rng = random.Random(1201)
    taken = 0
    for _ in range(5_000):
        value = _header_value(rng)
        fast = headers._plain_text(value)
        if fast is None:
            continue
        taken += 1
        parsed = str(email.policy.default.header_fetch_parse("subject", value))
        assert fast == " ".join(headers._without_surrogates(parsed).split()), repr(value)
    assert taken > 500


def test_a_part_whose_headers_name_nothing_has_no_filename() -> None:
    """When neither Content-Disposition nor Content-Type mentions "name", neither parser
    (policy.default's parameters, compat32's get_filename) finds a filename, on 5,000
    generated header pairs; and the shortcut is taken for a good share of them."""
    rng = random.Random(1202)
    taken = 0
    for _ in range(5_000):
        part = Message()
        part["Content-Type"] = _header_value(rng)
        if rng.random() < 0.7:
            part["Content-Disposition"] = _header_value(rng)
        if not headers._names_nothing(part):
            continue
        taken += 1
        assert headers._param(part, "content-disposition", "filename") is None
        assert headers._param(part, "content-type", "name") is None
        # An exception here is what headers.filename reads as no name too.
        with contextlib.suppress(UnicodeError):
            assert part.get_filename() is None
    assert taken > 1_000
