"""Parse a raw message into a compat32 tree without reading its large bodies line by line.

The email package's feed parser looks at every line of a message to find boundaries, in Python:
a 1 MB attachment (some 18,000 base64 lines) took ~30 ms, against ~5 ms to decode it. Bodies
cannot hide a boundary in a run of lines none of which starts with "--", so such a run, when
large, is cut out of the text before the parser sees it and put back into its part afterwards:
the tree is the one the parser alone would build, part for part and byte for byte.

Only the bodies of leaf parts are cut (a part whose own headers declare neither multipart nor
message/*: the parser must see those bodies). Each cut leaves a token line carrying a random
nonce; if the parser does not hand back every token, exactly, as the whole payload of one leaf
(hostile or odd input: headers without a blank line, a token split by a lone CR), the message is
parsed again in full. So the shortcut can only be taken when it changes nothing.
"""

from __future__ import annotations

import email
import email.policy
import re
import secrets
from collections.abc import Iterator
from email.message import Message

# Bodies shorter than this are left to the parser: cutting them saves less than it costs.
MIN_CUT = 4 * 1024
MAX_HEADER_SCAN = 512 * 1024

_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_CONTENT_TYPE = re.compile(rb"(?:\A|[\r\n])content-type[ \t]*:[ \t]*([^;\r\n]*)", re.IGNORECASE)


def parse(raw: bytes) -> Message:
    """The compat32 tree of `raw`, as `email.message_from_bytes(raw, policy=compat32)`."""
    nonce = secrets.token_hex(16)
    text, cuts = _cut(raw, nonce)
    if not cuts:
        return _parse(raw)
    message = _parse(text)
    if _restore(message, nonce, cuts):
        return message
    return _parse(raw)


def _parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _token(nonce: str, number: int) -> str:
    return f"faxgw-body-{nonce}-{number}."


def _cut(raw: bytes, nonce: str) -> tuple[bytes, list[memoryview]]:
    """`raw` with whole lines of each large leaf body replaced by a token; the bodies cut
    (views into `raw`, not copies: a 10 MB attachment is 14 MB of base64)."""
    view = memoryview(raw)
    cuts: list[memoryview] = []
    pieces: list[bytes] = []
    start = 0  # where the current stretch (from one "--" line to the next) begins
    done = 0  # how much of raw is already in pieces
    for end in _dash_lines(raw):
        if end - start >= MIN_CUT:
            cut = _leaf_lines(raw, start, end)
            if cut is not None:
                cut_start, cut_end = cut
                pieces += [raw[done:cut_start], _token(nonce, len(cuts)).encode()]
                cuts.append(view[cut_start:cut_end])
                done = cut_end
        start = end + 1
    if not cuts:
        return raw, cuts
    pieces.append(raw[done:])
    return b"".join(pieces), cuts


def _dash_lines(raw: bytes) -> Iterator[int]:
    """The line break before each line starting with "--", in order; then len(raw).

    bytes.find, twice, each searching on only once passed: a regex class like [\r\n]-- is
    scanned byte by byte, some 20x slower."""
    size = len(raw)
    after_n, after_r = raw.find(b"\n--"), raw.find(b"\r--")
    while after_n >= 0 or after_r >= 0:
        if after_r < 0 or 0 <= after_n < after_r:
            yield after_n
            after_n = raw.find(b"\n--", after_n + 1)
        else:
            yield after_r
            after_r = raw.find(b"\r--", after_r + 1)
    yield size


def _leaf_lines(raw: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Whole lines, from one line start to another, inside the body of the part whose headers
    begin the stretch [start, end), if it declares a leaf type; None otherwise."""
    # Header blocks past MAX_HEADER_SCAN are refused anyway (mime.MAX_HEADER_BLOCK_CHARS).
    blank = _BLANK_LINE.search(raw, start, min(end, start + MAX_HEADER_SCAN))
    if blank is None:
        return None
    declared = _CONTENT_TYPE.search(raw, start, blank.start())
    if declared is None:
        # No type: text/plain, or message/rfc822 in a digest, whose headers come next.
        return None
    kind = declared.group(1).strip().lower()
    if not kind or kind.startswith((b"multipart/", b"message/")):
        return None
    # From the first line start after the blank line to the start of the stretch's last line:
    # every line cut is complete, and the token is followed by the line that followed them.
    cut_start = raw.find(b"\n", blank.end() - 1, end) + 1
    cut_end = raw.rfind(b"\n", cut_start, end) + 1
    if cut_start <= 0 or cut_end - cut_start < MIN_CUT:
        return None
    return cut_start, cut_end


# Any token: the nonce is checked per match, so this is compiled once, not per message (a
# pattern with the nonce in it missed re's cache every time, ~0.3 ms a message).
_TOKENS = re.compile(r"faxgw-body-([0-9a-f]{32})-(\d+)\.")


def _restore(message: Message, nonce: str, cuts: list[memoryview]) -> bool:
    """Put every cut back where its token is; False unless every token is found once, in the
    payload of a leaf (anywhere else, the parser read those lines in another state)."""
    marker = f"faxgw-body-{nonce}-"
    seen: set[int] = set()

    def body(match: re.Match[str]) -> str:
        if match.group(1) != nonce:  # the same words with another nonce: the sender's text
            return match.group(0)
        return str(cuts[int(match.group(2))], "ascii", "surrogateescape")

    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part._payload  # compat32 keeps the text as parsed: no decoding here
        if not isinstance(payload, str) or marker not in payload:
            continue
        numbers = [int(n) for found, n in _TOKENS.findall(payload) if found == nonce]
        if not numbers or any(n >= len(cuts) or n in seen for n in numbers):
            return False
        seen.update(numbers)
        part._payload = _TOKENS.sub(body, payload)
    return len(seen) == len(cuts) and _nowhere_else(message, marker)


def _nowhere_else(message: Message, marker: str) -> bool:
    """No token left in any header, preamble or epilogue."""
    for part in message.walk():
        texts = [part.preamble or "", part.epilogue or ""]
        texts += [v if isinstance(v, str) else str(v) for _, v in part._headers]
        if any(marker in text for text in texts):
            return False
    return True
