"""The address of MAIL FROM and RCPT TO, read without the email package when it is plain.

aiosmtpd reads each path with the email package's RFC 5322 header parser (`get_angle_addr`),
which builds a token tree of a dozen objects and, in aiosmtpd 1.4, a new `typing.Protocol`
class on every call: about a tenth of the CPU an SMTP session spends on a small message. Almost
every path is `<local@domain>`, both halves dot-atoms of plain ASCII, maybe followed by ESMTP
parameters; for those the parser's answer is the text between the brackets and the rest after
the whitespace that follows them. `plain_path` gives that answer for exactly those, and None
for anything else (quoted local parts, comments, domain literals, source routes, encoded words,
non-ASCII, `<>`), which goes to aiosmtpd's parser as before. tests/test_smtp_mailpaths.py holds
the two to the same answers on generated and mutated paths.
"""

from __future__ import annotations

import re

# RFC 5322 atext, ASCII only (the parser takes more; those paths take the slow way).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")
# What the parser takes as the start of folding white space or a comment after the '>'.
_WSP = (" ", "\t")


def plain_path(arg: str) -> tuple[str, str] | None:
    """(address, rest) for `<dot-atom@dot-atom>` at the start of `arg`, as
    `email._header_value_parser.get_angle_addr` reads it; None for any other path."""
    match = _PLAIN.match(arg)
    if match is None:
        return None
    address = match.group(1)
    if "=?" in address:  # an atom starting "=?" may be read as an encoded word
        return None
    rest = arg[match.end() :]
    if rest.startswith(_WSP):
        rest = rest.lstrip()  # the parser's folding white space: str.lstrip, as there
    if rest.startswith("("):  # a comment: the parser reads it
        return None
    return address, rest
