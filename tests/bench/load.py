"""The benchmarks' clients: SMTP sessions that stay open, HTTP connections, sized documents."""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
from pypdf import PdfReader, PdfWriter

from tests import samples
from tests.conftest import ROOT, cli_env

SENDER = "alice@example.com"
RECIPIENT = "12015550123@fax.local"


def sized_pdf(size: int) -> bytes:
    """A valid 1-page PDF of about `size` bytes: the page, plus an embedded file of random
    bytes (which no compression shrinks), as a scan's image data would weigh."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(samples.pdf(1))))
    base = len(samples.pdf(1)) + 600
    if size > base:
        writer.add_attachment("padding.bin", os.urandom(size - base))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def mails(count: int, document: bytes, *, tag: str = "") -> list[bytes]:
    """`count` distinct mails (own subjects and Message-IDs), each with `document` attached."""
    return [
        samples.mail(samples.attachment(document, f"scan-{n}.pdf"), subject=f"Fax {tag}{n}")
        for n in range(count)
    ]


@dataclass(frozen=True)
class Sent:
    """One message's 250: when (time.time()), and the job id the reply named."""

    at: float
    job_id: str


async def send(
    port: int,
    messages: Sequence[bytes],
    sessions: int,
    *,
    rate: float | None = None,
) -> list[Sent]:
    """Send `messages` over `sessions` persistent SMTP sessions; each 250 in order of sending.

    Without `rate` every session sends its next message as soon as the last is answered; with
    it, message i goes out at i / rate seconds (a steady load). Anything but 250 raises: a
    refused message would flatter the figure.
    """
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for item in enumerate(messages):
        queue.put_nowait(item)
    results: list[Sent | None] = [None] * len(messages)
    start = time.perf_counter()

    async def session() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120, start_tls=False)
        await smtp.connect()
        try:
            while not queue.empty():
                index, raw = queue.get_nowait()
                if rate is not None:
                    delay = start + index / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                refused, reply = await smtp.sendmail(SENDER, [RECIPIENT], raw)
                if refused:
                    raise RuntimeError(f"recipient refused: {refused}")
                results[index] = Sent(time.time(), reply.rsplit(" ", 1)[-1])
        finally:
            await smtp.quit()

    await asyncio.gather(*(session() for _ in range(min(sessions, len(messages)))))
    return [r for r in results if r is not None]


async def accept_rate(port: int, messages: Sequence[bytes], sessions: int) -> float:
    """Messages a second answered 250 over `sessions` sessions."""
    started = time.perf_counter()
    await send(port, messages, sessions)
    return len(messages) / (time.perf_counter() - started)


async def accept_rate_apart(port: int, messages: Sequence[bytes], sessions: int) -> float:
    """`accept_rate`, with the clients in a process of their own, as a mail server's clients
    are: the benchmark's process also runs the sandbox carrier and the capturing relay, whose
    threads (answering the daemon's pipeline: its POSTs, GETs and report mails) took the
    clients' GIL while the daemon was measured and not while a baseline was (the clients'
    CPU per message: 0.6 ms against the durable aiosmtpd, 1.6 to 2.4 ms against the daemon)."""
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as directory:
        path = Path(directory) / "messages"
        path.write_bytes(b"".join(len(m).to_bytes(4, "big") + m for m in messages))
        command = [sys.executable, "-m", "tests.bench.load", str(port), str(sessions), str(path)]
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, check=True, env=cli_env(), cwd=ROOT
        )
    return float(done.stdout.split()[-1])


def _read_messages(path: Path) -> list[bytes]:
    data, messages, at = path.read_bytes(), [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        messages.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return messages


def main(argv: list[str]) -> int:
    """`python -m tests.bench.load PORT SESSIONS FILE`: print accept_rate of FILE's messages."""
    port, sessions, path = int(argv[0]), int(argv[1]), Path(argv[2])
    print(asyncio.run(accept_rate(port, _read_messages(path), sessions)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0.5 = median) of `values`, by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[int(fraction * 1000) - 1]
