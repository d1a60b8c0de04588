"""Property tests: whatever a client sends through DATA, the session answers and lives on.

The server runs on its own event loop in a background thread for the whole module (hypothesis
calls the test body many times; smtplib blocks), with a real store and spool.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import config_from_dict
from gateway.smtp.server import SmtpServer
from gateway.store import Database
from gateway.store.spool import Spool
from tests import samples
from tests.conftest import BASE_CONFIG, merge

MAX_BYTES = 300_000
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ThreadedSmtp:
    """An SmtpServer on a loop of its own in a daemon thread."""

    def __init__(self, root: Path) -> None:
        data = merge(
            BASE_CONFIG,
            {
                "data": {"dir": str(root)},
                # Every example is sent with one Message-ID: each 250 must still be its own job.
                "smtp": {"max_message_bytes": MAX_BYTES, "dedupe_window_seconds": 0},
                "limits": {"faxes_per_sender_per_day": 0},
                "fax": {"max_pages": 20},
            },
        )
        self.config = config_from_dict(data, env={})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(root / "store.db")
        self.server = SmtpServer(
            self.config, self.db, Spool(root / "spool"), lambda: None, drain_timeout=2
        )
        self._call(self._start())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _start(self) -> None:
        await self.db.open()
        await self.server.start()

    def jobs(self) -> int:
        return int(
            self.db.run_sync(lambda conn: conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
        )

    def close(self) -> None:
        self._call(self.server.stop())
        self.db.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedSmtp]:
    server = ThreadedSmtp(tmp_path_factory.mktemp("fuzz"))
    yield server
    server.close()


def deliver(port: int, message: bytes) -> tuple[int, str]:
    """One session: the final reply to DATA (or to whatever refused the message first)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="fuzz.example", timeout=60) as client:
        client.ehlo()
        code, text = client.mail(samples.DEFAULT_SENDER)
        assert code == 250, text
        code, text = client.rcpt("12015550123@fax.local")
        assert code == 250, text
        code, text = client.data(message)
        return code, text.decode("utf-8", "replace")


def assert_answered_and_alive(gateway: ThreadedSmtp, message: bytes) -> None:
    jobs_before = gateway.jobs()
    code, text = deliver(gateway.server.port, message)
    event(f"reply {code}")  # --hypothesis-show-statistics: how often each reply came
    # 250 or a deliberate 5xx refusal. 451 would be an exception escaping our parsing: a bug
    # that makes clients retry a message that can never succeed.
    assert code == 250 or 500 <= code < 600, (code, text)
    assert gateway.jobs() == jobs_before + (1 if code == 250 else 0)
    # The server still serves the next session.
    with smtplib.SMTP("127.0.0.1", gateway.server.port, local_hostname="next.example") as client:
        assert client.noop()[0] == 250


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash_the_session(gateway: ThreadedSmtp, data: bytes) -> None:
    """Any bytes as message content get 250 or a 5xx, and the server keeps serving."""
    assert_answered_and_alive(gateway, data)


# -- structured junk: MIME that looks right and is wrong in every way -----------------------------

_CONTENT_TYPES = st.sampled_from(
    [
        "application/pdf",
        "application/octet-stream",
        "image/png",
        "image/jpeg",
        "image/tiff",
        "image/gif",
        "text/plain",
        "text/html",
        "message/rfc822",
        "multipart/mixed",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "x/garbage",
        "",
    ]
)
_ENCODINGS = st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", "binary", "x-uue", ""])
_NAMES = st.one_of(
    st.none(),
    st.sampled_from(["scan.pdf", "photo.PNG", "fax.tif", "report.docx", "x.jpg", ".pdf"]),
    st.text(max_size=40),
)


@st.composite
def _payload(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return samples.pdf(draw(st.integers(1, 3)))
    if choice == 1:
        document = samples.pdf(2)
        return document[: draw(st.integers(0, len(document)))]
    if choice == 2:
        return samples.png(draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    if choice == 3:
        image = samples.tiff(1)
        cut = draw(st.integers(0, len(image)))
        return image[:cut] + draw(st.binary(max_size=64))
    if choice == 4:
        return samples.corrupt_pdf()
    return draw(st.binary(max_size=512))


@st.composite
def _leaf(draw: st.DrawFn) -> Message:
    data = draw(_payload())
    content_type = draw(_CONTENT_TYPES) or "application/octet-stream"
    if content_type.startswith(("multipart/", "message/")):
        content_type = "application/octet-stream"
    leaf = samples.part(
        data if not content_type.startswith("text/") else data.decode("latin-1"),
        content_type,
        filename=draw(_NAMES),
        disposition=draw(st.sampled_from(["attachment", "inline", None])),
        content_id=draw(st.one_of(st.none(), st.text(min_size=1, max_size=10))),
        filename_style=draw(st.sampled_from(["rfc2231", "encoded-word"])),
    )
    encoding = draw(_ENCODINGS)
    if encoding and draw(st.booleans()):
        # Lie about the transfer encoding of the (already encoded) payload.
        del leaf["Content-Transfer-Encoding"]
        leaf["Content-Transfer-Encoding"] = encoding
    return leaf


def _tree(depth: int) -> st.SearchStrategy[Message]:
    if depth == 0:
        return _leaf()
    return st.one_of(
        _leaf(),
        st.builds(
            # The boundary is drawn too: the email package would otherwise pick it with the
            # random module, out of hypothesis's control.
            lambda subtype, parts, boundary: samples.multipart(subtype, *parts, boundary=boundary),
            st.sampled_from(["mixed", "alternative", "related", "signed", "x-junk"]),
            st.lists(_tree(depth - 1), min_size=0, max_size=3),
            st.from_regex(r"[A-Za-z0-9'()+_,./:=?-]{1,40}", fullmatch=True).map(lambda b: "=_" + b),
        ),
    )


@st.composite
def junk_mime(draw: st.DrawFn) -> bytes:
    root = draw(_tree(2))
    raw = samples.to_bytes(
        root, subject=draw(st.text(max_size=60)), message_id="<fuzz@example.com>"
    )
    # Damage the bytes a little: drop a boundary line, cut the message, or splice in garbage.
    damage = draw(st.sampled_from(["none", "truncate", "splice", "no-boundary-end"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif damage == "splice":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(max_size=200)) + raw[at:]
    elif damage == "no-boundary-end":
        raw = raw.rsplit(b"--\r\n", 1)[0]
    return raw


@FUZZ
@given(junk_mime())
def test_junk_mime_never_crashes_the_session(gateway: ThreadedSmtp, message: bytes) -> None:
    """Structured but damaged MIME gets 250 or a 5xx, and the server keeps serving."""
    assert_answered_and_alive(gateway, message)
