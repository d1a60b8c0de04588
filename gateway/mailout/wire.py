"""The wire form of the mail the gateway sends, byte for byte the email package's, made faster.

A report mail carries the faxed document and its transmission report (100 KB of PDF make
~1,800 base64 lines), and the email package handles every one of those lines in Python: its
base64 encoder calls binascii once per 57 bytes, and its generator splits each part's payload
into lines and writes each line and each line end on its own (two writes a line, each encoded
to bytes). For one report of a 100 KB fax that was ~15 ms of the daemon's CPU (profile in
docs/benchmarks.md, "Session 22: latency"), under its one GIL. Here the same text is made in
bulk:

- `BASE64_BODIES`, the content manager build_message uses for attachments and inline images:
  the email package's own (headers, parameters and all), with a bytes body encoded by
  `base64.encodebytes`, which makes the same 76-character lines in one call;
- `wire_bytes(message)`: `message.as_bytes(policy=policy.SMTP)`, with a payload that has no
  CR written with one replace of its line ends instead of a split and two writes a line
  (a payload that has a CR goes the email package's way, which treats a lone CR as a line end);
  and, when every body is base64 or quoted-printable (all the gateway makes), each multipart
  given its boundary before the generator would choose one: the generator otherwise searches
  the whole text of the parts for a line that is its boundary (a regex over every attachment
  at each level), and no such line can be there: a boundary line starts "--=" and has "==" in
  it, and neither encoding ever writes "=" but as its escape or a soft line end ("=XX", "=" at
  a line's end); base64 has no "-" at all. The boundaries are the package's own kind, all
  different.

Both rest on how this Python's email package works inside (`_write_lines`, the handler of
bytes bodies), so tests/test_mailout_wire.py holds their output to the package's own for
messages of every shape the gateway sends: a Python whose email package changes fails there.
"""

from __future__ import annotations

import base64
from email import contentmanager, policy
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO
from typing import Any

# The bytes base64.encodebytes puts on a line: the email package's too, whose policies' 78
# characters make lines of 78 // 4 * 3 bytes (76 characters).
_BYTES_PER_LINE = 57


def _set_bytes(msg: Message, data: bytes, maintype: str, subtype: str, **kw: Any) -> None:
    """The email package's bytes handler, with a base64 body made in one call."""
    lines = msg.policy.max_line_length
    if kw.get("cte", "base64") != "base64" or lines is None or lines // 4 * 3 != _BYTES_PER_LINE:
        contentmanager.set_bytes_content(msg, data, maintype, subtype, **kw)
        return
    # Every header as the package sets them (an empty body encodes to nothing)...
    contentmanager.set_bytes_content(msg, b"", maintype, subtype, **kw)
    # ...and the body as its encoder would have made it: 76-character lines, each with "\n".
    msg.set_payload(base64.encodebytes(bytes(data)).decode("ascii"))


BASE64_BODIES = contentmanager.ContentManager()
BASE64_BODIES.get_handlers.update(contentmanager.raw_data_manager.get_handlers)
BASE64_BODIES.set_handlers.update(contentmanager.raw_data_manager.set_handlers)
for _kind in (bytes, bytearray, memoryview):
    BASE64_BODIES.add_set_handler(_kind, _set_bytes)


class _BulkGenerator(BytesGenerator):
    """BytesGenerator writing each payload in one piece."""

    def _write_lines(self, lines: str) -> None:
        if "\r" in lines:
            super()._write_lines(lines)  # type: ignore[misc]
            return
        # The package's split on line ends, each line written and followed by the policy's
        # line end, the last one only if not empty: the same text as one replace.
        if lines:
            self.write(lines.replace("\n", self._NL))  # type: ignore[attr-defined]


# The bodies in which no line can be a boundary line (see above).
_ENCODED = frozenset({"base64", "quoted-printable"})


def _choose_boundaries(message: Message) -> None:
    """A boundary for each multipart that has none, if every body is base64 or QP."""
    parts = list(message.walk())
    multiparts = [part for part in parts if part.get_content_maintype() == "multipart"]
    if not multiparts or any(
        part.get_content_maintype() == "message"  # a message inside: its text is its own
        or part.get("Content-Transfer-Encoding", "").lower() not in _ENCODED
        for part in parts
        if part.get_content_maintype() != "multipart"
    ):
        return
    taken = {part.get_boundary() for part in multiparts}
    for part in multiparts:
        if part.get_boundary() is None:
            boundary = BytesGenerator._make_boundary()  # type: ignore[attr-defined]
            while boundary in taken:
                boundary = BytesGenerator._make_boundary()  # type: ignore[attr-defined]
            taken.add(boundary)
            part.set_boundary(boundary)


def wire_bytes(message: Message) -> bytes:
    """`message.as_bytes(policy=policy.SMTP)`: CRLF line ends, the form it takes on the wire."""
    _choose_boundaries(message)
    out = BytesIO()
    _BulkGenerator(out, mangle_from_=False, policy=policy.SMTP).flatten(message)
    return out.getvalue()
