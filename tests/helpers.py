"""Plain helpers shared by test modules: polling, a movable clock, mail readers, numbers.

Test modules import from here (and from tests/harness.py), never from one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.datadir import DataDir
from gateway.mailout.message import RenderedMail, build_message
from gateway.store import Database
from gateway.store.jobs import create_job
from gateway.store.records import NewJob, new_job_id
from gateway.store.spool import Spool
from tests import samples

# -- sandbox carrier numbers -------------------------------------------------------------------

FROM_NUMBER = "+12015550100"
DELIVERS = "+12015550123"  # any unscripted sandbox number is delivered
BUSY = "+12015550166"  # 5109 far end is not able to receive
INCOMPATIBLE = "+12015550188"  # 5108 far end is not compatible
OUR_FAX_LINE = "+12015550142"
OTHER_FAX_LINE = "+12015550143"
CALLER = "+15556668888"


# -- waiting and time --------------------------------------------------------------------------


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    """Poll an async condition (the gateway works on this same loop) until true or timeout."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Clock:
    """Wall-clock time plus an offset tests move forward instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# -- reading mail ------------------------------------------------------------------------------


def subject_of(message: EmailMessage) -> str:
    """The Subject as a reader sees it (a long one is folded onto a continuation line)."""
    return " ".join(str(message["Subject"]).split())


def attachments(message: EmailMessage) -> list[tuple[str, str, bytes]]:
    return [
        (part.get_filename() or "", part.get_content_type(), part.get_content())
        for part in message.iter_attachments()
    ]


# -- mail rendering and building: contexts for every kind --------------------------------------

WHEN = datetime(2024, 6, 19, 15, 38, tzinfo=UTC)

OUTBOUND: dict[str, Any] = {
    "number": "+15551234567",
    "pages": 3,
    "duration": 125,
    "attempts": 2,
    "carrier_id": "a1b2c3d4-0000-4000-8000-1234567890ab",
    "time": WHEN,
    "subject": "Signed contract",
    "sender": "alice@example.com",
    "job_id": "20240619-153800-abcdef",
    "document_attached": True,
    "transmission_report_attached": True,
    "attach": "pdf",
    "status_url": None,
}
FAILED: dict[str, Any] = {
    **OUTBOUND,
    "error_code": 5109,
    "error_description": "far end is not able to receive",
    "retry_may_help": True,
}
# A mail to the shared address faxed to one of its Subject's numbers (smtp.subject_partial).
REFUSED: dict[str, Any] = {
    "subject": "Signed contract",
    "refused": [
        {"number": "19005550100", "reason": "numbers starting +1900 are blocked on this gateway"}
    ],
    "reason": "Not faxed to 19005550100: numbers starting +1900 are blocked on this gateway",
    "faxed": ["+15551234567"],
    "job_id": "J0123456789ABCDEFGHJK",
    "all_or_nothing": False,
}
RETRY: dict[str, Any] = {
    **FAILED,
    "tries": 1,
    "tries_left": 2,
    "next_try": WHEN + timedelta(minutes=10),
    "document_attached": False,
}
RECEIVED: dict[str, Any] = {
    "from_number": "+15556668888",
    "to_number": "+12015550100",
    "pages": 2,
    "duration": 61,
    "time": WHEN,
    "carrier_id": "in-42",
    "attachments": ["fax-2024-06-19-1538-from-15556668888.pdf"],
    "preview_cid": "page1.in-42@fax.local",
    "attach": "pdf",
    "status_url": None,
}


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


# -- a disk that really fills up -------------------------------------------------------------


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the test: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: a real full disk needs a tmpfs mount, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"SKIPPED LOUDLY: cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the file system of `path` up: the next write there fails with ENOSPC."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


# -- a job waiting for prepare -------------------------------------------------------------------


async def queued_job(config: Config, raw: bytes | None = None) -> tuple[Database, Spool, str]:
    """A received job of one fax whose message `raw` (default: a mail with a one-page PDF) is
    spooled, in the store of `config`: the store (open: the caller closes it), spool, job id."""
    message = raw if raw is not None else samples.mail(samples.attachment(samples.pdf(1), "a.pdf"))
    db, spool, [job_id] = await queued_jobs(config, [message])
    return db, spool, job_id


async def queued_jobs(
    config: Config, messages: Sequence[bytes]
) -> tuple[Database, Spool, list[str]]:
    """A received job of one fax for each of `messages`, spooled, in the store of `config`, in
    that order: the store (open: the caller closes it), spool, job ids."""
    data = DataDir(config.data.dir)
    db = await Database(data.store).open()
    spool = Spool(data.spool)
    ids = []
    for message in messages:
        job_id = new_job_id()
        path = spool.write(job_id, message)
        await db.run(
            create_job,
            NewJob(
                id=job_id,
                sender="alice@example.com",
                auth_user=None,
                client_address=None,
                subject="Fax",
                message_id="",
                from_number=FROM_NUMBER,
                spool_path=path,
                recipients=(DELIVERS,),
            ),
        )
        ids.append(job_id)
    return db, spool, ids
