"""Property tests: hostile or broken input never crashes extraction or page counting.

Whatever a client sends at DATA, the SMTP server must be able to answer with a clear 5xx (a
DocumentError) and never with a traceback. Example counts are kept moderate so the suite is fast.
"""

from __future__ import annotations

import base64
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.document.assemble import count_pages
from gateway.document.kinds import FAXABLE_TYPES
from gateway.document.mime import DocumentError, Extracted, extract
from tests import samples

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PDF = samples.pdf(2)
PNG = samples.png(40, 30)
JPEG = samples.jpeg(40, 30)
TIFF = samples.tiff(2, size=(64, 40))


def check(raw: bytes) -> Extracted | None:
    """Run extract; only DocumentError may escape, and then as one ASCII line of kind malformed."""
    try:
        result = extract(raw)
    except DocumentError as exc:
        text = str(exc)
        assert exc.kind == "malformed"
        assert text.isascii() and "\n" not in text and "\r" not in text and text
        return None
    assert all(a.content_type in FAXABLE_TYPES for a in result.attachments)
    assert all(isinstance(a.data, bytes) for a in result.attachments)
    assert "\n" not in result.subject and "\r" not in result.subject
    assert "\n" not in result.message_id
    assert all(isinstance(name, str) and name for name in result.unsupported)
    return result


@FUZZ
@given(st.binary(max_size=3000))
@example(b"")
@example(b"Content-Type: multipart/mixed\r\n\r\n--\r\n")
@example(b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n")
@example(b"Content-Type: message/rfc822\r\n\r\n")
@example(b"Subject: =?utf-8?b?====?=\r\nContent-Disposition: attachment; filename*=x''%ff\r\n\r\n")
def test_arbitrary_bytes(raw: bytes) -> None:
    """extract() on any bytes returns or raises DocumentError, nothing else."""
    check(raw)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from([b"mixed", b"related", b"alternative"]))
def test_arbitrary_bytes_inside_a_multipart(body: bytes, subtype: bytes) -> None:
    """Random bytes as the body of a multipart message (the parser's busiest path)."""
    check(b'MIME-Version: 1.0\r\nContent-Type: multipart/%s; boundary="b"\r\n\r\n' % subtype + body)


# --- structured MIME ----------------------------------------------------------------------------

_texty = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30
) | st.sampled_from(["", '"', ";", "=?utf-8?b?w5w=?=", "=?x?q?=ff?=", "utf-8''%ff%00", "\\", "*"])

_types = st.sampled_from(
    [
        "text/plain",
        "text/html",
        "application/pdf",
        "image/png",
        "image/jpeg",
        "image/tiff",
        "image/gif",
        "application/octet-stream",
        "message/rfc822",
        "message/delivery-status",
        "multipart/mixed",
        "multipart/alternative",
        "multipart/related",
        "multipart/signed",
        "application/pkcs7-signature",
        "",
        "garbage",
        "multipart/",
        "/",
        "text/plain; charset=utf-7",
        "text/plain; charset=bogus-charset",
        "text/html; charset=utf-16",
    ]
)
_param_names = st.sampled_from(
    ["name", "filename", "filename*", "filename*0*", "filename*1", "charset", "boundary", "start"]
)
_encodings = st.sampled_from(
    ["base64", "quoted-printable", "7bit", "8bit", "binary", "x-uuencode", "bogus", ""]
)
_payloads = st.sampled_from([PDF, PNG, JPEG, TIFF, samples.docx(), samples.corrupt_pdf()]) | (
    st.binary(max_size=200)
)
_html = st.builds(
    lambda cid, text: f'<p>{text}</p><img src="cid:{cid}"><img src="{cid}">',
    st.sampled_from(["logo@x", "a", "", "%40"]),
    _texty,
)


def _header(name: str, value: str) -> str:
    return f"{name}: {value}\r\n"


@st.composite
def _headers(draw: st.DrawFn, content_type: str, boundary: str | None) -> str:
    params = "".join(
        f'; {draw(_param_names)}="{draw(_texty)}"' for _ in range(draw(st.integers(0, 3)))
    )
    if boundary is not None:
        params += f'; boundary="{boundary}"' if draw(st.booleans()) else f"; boundary={boundary}"
    lines = [_header("Content-Type", content_type + params)]
    if draw(st.booleans()):
        disposition = draw(st.sampled_from(["attachment", "inline", "", "bogus"]))
        name = draw(_texty)
        lines.append(_header("Content-Disposition", f'{disposition}; filename="{name}"'))
    if draw(st.booleans()):
        lines.append(_header("Content-ID", f"<{draw(st.sampled_from(['logo@x', 'a', '']))}>"))
    if draw(st.booleans()):
        lines.append(_header("Content-Transfer-Encoding", draw(_encodings)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(["Subject", "Message-ID", "X-Junk", "Content-Location"]))
        lines.append(_header(name, draw(_texty)))
    order = draw(st.permutations(lines))
    return "".join(order)


@st.composite
def _leaf(draw: st.DrawFn) -> bytes:
    content_type = draw(_types.filter(lambda t: not t.startswith(("multipart/", "message/"))))
    headers = draw(_headers(content_type, None))
    if content_type.startswith("text/html"):
        body = draw(_html).encode("utf-8", "surrogatepass")
    elif content_type.startswith("text/"):
        body = draw(_texty).encode("utf-8", "surrogatepass")
    else:
        body = draw(_payloads)
    if "base64" in headers and draw(st.booleans()):
        body = base64.encodebytes(body)
    return headers.encode("utf-8", "surrogatepass") + b"\r\n" + body


def _container(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        boundary = draw(st.sampled_from(["b1", "=_x", "a b", "", "--", "b1"]))
        kind = draw(
            st.sampled_from(
                ["multipart/mixed", "multipart/alternative", "multipart/related", "message/rfc822"]
            )
        )
        headers = draw(_headers(kind, boundary if kind.startswith("multipart/") else None))
        parts = draw(st.lists(children, max_size=4))
        if kind == "message/rfc822":
            body = parts[0] if parts else b""
        else:
            sep = b"\r\n--" + boundary.encode() + b"\r\n"
            body = b"preamble" + b"".join(sep + p for p in parts)
            if draw(st.booleans()):
                body += b"\r\n--" + boundary.encode() + b"--\r\nepilogue"
        return headers.encode("utf-8", "surrogatepass") + b"\r\n" + body

    return build()


_messages = st.recursive(_leaf(), _container, max_leaves=8)


@FUZZ
@given(_messages, st.data())
def test_structured_mime_with_random_damage(message: bytes, data: st.DataObject) -> None:
    """Plausible MIME trees with random headers, encodings and boundaries, then cut or spliced."""
    raw = b"From: a@example.com\r\nMIME-Version: 1.0\r\n" + message
    damage = data.draw(st.sampled_from(["none", "truncate", "splice"]))
    if damage == "truncate" and raw:
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    elif damage == "splice" and raw:
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=20)) + raw[at:]
    check(raw)


# --- well-formed mail with hostile names ---------------------------------------------------------


_documents = st.sampled_from(
    [("application/pdf", PDF), ("image/png", PNG), ("image/jpeg", JPEG), ("image/tiff", TIFF)]
)


# Filenames as a client would write them: any text, but no raw control characters (a client
# encodes those; a raw CR in a header is a broken message, which the other tests cover).
_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=30
) | st.sampled_from(["", '"', ";", "=?utf-8?b?w5w=?=", "=?x?q?=ff?=", "utf-8''%ff%00", "*"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_documents, _names, st.booleans()), min_size=1, max_size=5))
def test_every_attached_document_is_found_in_order(
    files: list[tuple[tuple[str, bytes], str, bool]],
) -> None:
    """Whatever the filenames and declared types, each attached document is found, in order."""
    parts = [
        samples.attachment(data, name or None, None if honest else "application/octet-stream")
        for (_, data), name, honest in files
    ]
    result = check(samples.mail(*parts))
    assert result is not None
    assert [(a.content_type, a.data) for a in result.attachments] == [kind for kind, _, _ in files]
    for found, (_, name, _) in zip(result.attachments, files, strict=True):
        if "=?" not in name:  # an encoded word written literally is decoded, as clients do
            assert found.filename == _as_extracted(name)


def _as_extracted(name: str) -> str | None:
    """What extraction makes of a filename: last path component, whitespace collapsed."""
    last = re.split(r"[\\/]", name)[-1]
    last = "".join(c if c.isprintable() else " " for c in last)
    return " ".join(last.split())[:255] or None


# --- page counting on damaged documents ---------------------------------------------------------


@FUZZ
@given(
    st.sampled_from(
        [("application/pdf", PDF), ("image/png", PNG), ("image/jpeg", JPEG), ("image/tiff", TIFF)]
    ),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(0, 10_000),
)
def test_count_pages_on_damaged_documents(
    document: tuple[str, bytes], flips: list[tuple[int, int]], cut: int
) -> None:
    """Flipped bytes and truncation give a page count or a DocumentError, never a crash."""
    content_type, original = document
    data = bytearray(original)
    for position, value in flips:
        data[position % len(data)] = value
    damaged = bytes(data[: max(1, len(data) - cut)])
    try:
        pages = count_pages(damaged, content_type)
    except DocumentError as exc:
        assert exc.kind in ("corrupt", "unsupported")
        assert str(exc).isascii()
    else:
        assert pages >= 1
