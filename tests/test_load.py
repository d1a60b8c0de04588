"""Load with crashes: many SMTP clients and webhooks, 3 random kill -9 and restarts, then count.

LOAD_MESSAGES (default 60) messages, each with a 200 KB PDF for its own fax number, from 20
SMTP clients at once, and as many extra webhooks (the sandbox sends a fax's webhook again)
meanwhile; the daemon is killed (SIGKILL) three times at random moments and started again.
Clients behave like MTAs: a 4xx or a lost connection is tried again later with the same bytes
(same Message-ID), so the dedupe window recognises a message whose 250 was lost. Afterwards:
every message answered 250, every number faxed exactly once, every fax reported exactly once
(a relay copy of the same Message-ID is allowed only from a kill between the relay's answer
and the outbox's record), and the peak memory of the daemon and its document workers
(VmHWM / VmRSS from /proc) is printed as one `LOAD {...}` line. docs/RELIABILITY.md has the
figures of a full run (LOAD_MESSAGES=1000).
"""

from __future__ import annotations

import io
import json
import os
import random
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests import samples
from tests.conftest import merge
from tests.servers.gateway import serve_config_data
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.servers.seaweed import S3Server
from tests.test_daemon import GatewayProcess, worker_pids

pytestmark = pytest.mark.slow

MESSAGES = int(os.environ.get("LOAD_MESSAGES", "60"))
CLIENTS = 20
KILLS = 3
# One run's whole bound: the slowest part is this shared machine.
SETTLE_SECONDS = max(180.0, 1.5 * MESSAGES)


def document() -> bytes:
    """A one-page PDF of about 200 KB (random pixels do not compress)."""
    image = Image.frombytes("RGB", (400, 400), random.Random(7).randbytes(400 * 400 * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PDF", resolution=100, quality=95)
    return buffer.getvalue()


def number(index: int) -> str:
    return f"+1201{7000000 + index:07d}"


class Memory:
    """Samples VmHWM of the daemon and VmRSS of its children (the document workers)."""

    def __init__(self) -> None:
        self.daemon_kb = 0
        self.worker_kb = 0
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _field(pid: int, name: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            pid = self.pid
            if pid is None:
                continue
            self.daemon_kb = max(self.daemon_kb, self._field(pid, "VmHWM"))
            for child in worker_pids(pid):
                self.worker_kb = max(self.worker_kb, self._field(child, "VmHWM"))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def load_config(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    s3_env: S3Server,
    write_config: Callable[..., Path],
) -> tuple[Path, dict[str, Any]]:
    data = serve_config_data(
        config_data,
        sandbox,
        relay_server,
        {
            "smtp": {"max_connections_per_ip": 40},
            "queue": {"max_pickups": 10},
            "fax": {"number_check": "possible"},
            "limits": {"faxes_per_sender_per_day": 0},
            "webhooks": {"reconcile_after_seconds": 2, "reconcile_interval_seconds": 2},
        },
    )
    data = merge(data, s3_env.config_overrides())
    sandbox.set_webhook(
        f"{data['http']['public_url']}/webhooks/fax/{data['http']['webhook_token']}"
    )
    return write_config(data), data


@pytest.mark.timeout(int(SETTLE_SECONDS) + 300)
def test_load_with_three_kills_faxes_and_reports_each_message_once(
    load_config: tuple[Path, dict[str, Any]],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    started: list[GatewayProcess],
) -> None:
    """LOAD_MESSAGES messages from 20 clients plus as many webhooks, 3 kill -9 at random:
    each message one fax, each fax one report; peak memory printed."""
    path, data = load_config
    port = int(data["smtp"]["listen"].rsplit(":", 1)[1])
    pdf = document()
    rng = random.Random(int(os.environ.get("LOAD_SEED", "11")))
    kill_after = sorted(rng.sample(range(MESSAGES // 8, MESSAGES * 7 // 8), KILLS))
    accepted: dict[int, str] = {}
    tries: Counter[str] = Counter()
    lock = threading.Lock()
    todo = list(range(MESSAGES))
    deadline = time.monotonic() + SETTLE_SECONDS

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if not todo:
                    return
                index = todo.pop(0)
            raw = samples.traffic_mail(
                "load",
                index,
                [number(index)],
                sender=f"client{index % CLIENTS}@example.com",
                document=pdf,
            )
            while time.monotonic() < deadline:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                        smtp.ehlo()
                        smtp.sendmail(
                            f"client{index % CLIENTS}@example.com",
                            [f"{number(index).lstrip('+')}@fax.local"],
                            raw,
                        )
                    with lock:
                        accepted[index] = number(index)
                    break
                except smtplib.SMTPResponseException as exc:
                    tries[f"{exc.smtp_code}"] += 1
                except (OSError, smtplib.SMTPException) as exc:
                    tries[type(exc).__name__] += 1
                time.sleep(0.2 + rng.random() * 0.3)

    webhooks_sent = 0

    def webhooks() -> None:
        nonlocal webhooks_sent
        while webhooks_sent < MESSAGES and time.monotonic() < deadline:
            faxes = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
            if not faxes:
                time.sleep(0.2)
                continue
            for fax in faxes[: MESSAGES - webhooks_sent]:
                try:
                    sandbox.resend_webhook(fax["id"])
                except Exception:  # the sandbox refuses a fax still being walked: next one
                    continue
                webhooks_sent += 1
            time.sleep(0.1)

    memory = Memory()
    first = GatewayProcess(path)
    started.append(first)
    first.wait_for("daemon.ready", timeout=60)
    memory.pid = first.proc.pid
    began = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    threads.append(threading.Thread(target=webhooks, daemon=True))
    for thread in threads:
        thread.start()
    current = first
    for at in kill_after:
        while len(accepted) < at and time.monotonic() < deadline:
            time.sleep(0.05)
        current.kill()
        current = GatewayProcess(path)
        started.append(current)
        current.wait_for("daemon.ready", timeout=60)
        memory.pid = current.proc.pid
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 1))
    accepted_seconds = time.monotonic() - began
    assert len(accepted) == MESSAGES, f"{len(accepted)} of {MESSAGES} answered 250: {tries}"

    expected = sorted(accepted.values())

    def reported() -> bool:
        mails = {m.message["Message-ID"] for m in relay_server.messages}
        return len(mails) >= MESSAGES

    def all_final() -> bool:
        faxes = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
        return len(faxes) >= MESSAGES and all(f["status"] in ("delivered", "failed") for f in faxes)

    sandbox.wait_for(all_final, timeout=max(deadline - time.monotonic(), 30), what="every fax")
    relay_server.wait_for_sync(MESSAGES, timeout=max(deadline - time.monotonic(), 30))
    wait = time.monotonic() + max(deadline - time.monotonic(), 30)
    while not reported() and time.monotonic() < wait:
        time.sleep(0.2)
    total_seconds = time.monotonic() - began
    assert current.terminate(timeout=30) == 0
    memory.stop()

    faxed = Counter("+" + f["to"] for f in sandbox.faxes() if f["direction"] == "outbound")
    assert {n: faxed[n] for n in expected} == dict.fromkeys(expected, 1)
    assert sum(faxed.values()) == MESSAGES
    reports = Counter(str(m.message["Message-ID"]) for m in relay_server.messages)
    distinct = len(reports)
    copies = sum(reports.values()) - distinct
    assert distinct == MESSAGES
    assert copies <= KILLS
    figures = {
        "messages": MESSAGES,
        "clients": CLIENTS,
        "kills": KILLS,
        "accepted": len(accepted),
        "smtp_retries": dict(tries),
        "webhooks_resent": webhooks_sent,
        "faxes": sum(faxed.values()),
        "duplicate_faxes": sum(faxed.values()) - len(expected),
        "reports": distinct,
        "relay_copies": copies,
        "accepted_seconds": round(accepted_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "daemon_peak_rss_mb": round(memory.daemon_kb / 1024, 1),
        "worker_peak_rss_mb": round(memory.worker_kb / 1024, 1),
    }
    print("LOAD " + json.dumps(figures))
