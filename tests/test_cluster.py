"""Two gateway processes on one PostgreSQL store and one S3 bucket; one is killed mid-flow.

Each node has its own data.dir (the files rows name are shared through the store,
gateway/store/blobs.py) and its own SMTP and HTTP port. Messages go to both
nodes' SMTP ports; the carrier's webhooks go to node B. Node A is killed with SIGKILL while the
work is under way; the messages it had not answered are sent to B, as an MTA with both nodes as
next hops would. B must finish everything: each 250 exactly one fax per recipient, each fax
reported exactly once (one Message-ID; the relay may see that mail twice if A was killed between
the relay's 250 and recording it, the copy tests/test_failpoints.py allows a single node too).
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import samples
from tests.conftest import cli_env, free_port, merge
from tests.servers.gateway import FAST_QUEUE
from tests.servers.postgres import PostgresServer
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.servers.seaweed import S3Server
from tests.test_daemon import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SENDER = "alice@example.com"
MESSAGES = 24
# A's claims come free after this (the default 60 s would only make the test slow).
LEASE_SECONDS = 3
SETTLE_WITHIN = 150.0


@pytest.fixture
def started() -> Iterator[list[GatewayProcess]]:
    processes: list[GatewayProcess] = []
    yield processes
    for process in processes:
        if process.proc.poll() is None:
            process.kill()
        process.close()


def number(index: int) -> str:
    return f"+1201555{1000 + index:04d}"


def message(index: int) -> bytes:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = f"{number(index).lstrip('+')}@fax.local"
    mail["Subject"] = f"cluster {index}"
    mail["Message-ID"] = f"<cluster-{index}@example.com>"
    mail.set_content("see attachment")
    mail.add_attachment(samples.pdf(1), "application", "pdf", filename="doc.pdf")
    return mail.as_bytes(policy=email.policy.SMTP)


def send(port: int, index: int) -> str | None:
    """One SMTP transaction; the job id of its 250, None if the node is gone or said 4xx."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            client.ehlo()
            client.mail(SENDER)
            code, _ = client.rcpt(f"{number(index).lstrip('+')}@fax.local")
            if code != 250:
                return None
            code, reply = client.data(message(index))
    except (OSError, smtplib.SMTPException):
        return None
    return reply.decode().rsplit(" ", 1)[1] if code == 250 else None


def settled(dsn: str, jobs: int) -> bool:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM jobs")]
        unreported = conn.execute("SELECT count(*) FROM faxes WHERE reported_at IS NULL")
        outbox = [r[0] for r in conn.execute("SELECT state FROM outbox")]
        waiting = unreported.fetchone()
        return (
            states == ["done"] * jobs
            and waiting is not None
            and waiting[0] == 0
            and outbox == ["sent"] * jobs
        )


def progress(dsn: str) -> dict[str, Any]:
    """What the store holds, for a failure's message."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return {
            "jobs": conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall(),
            "faxes": conn.execute(
                "SELECT state, reported_at IS NULL, count(*) FROM faxes GROUP BY 1, 2"
            ).fetchall(),
            "outbox": conn.execute(
                "SELECT state, error FROM outbox WHERE state != 'sent'"
            ).fetchall(),
            "errors": conn.execute("SELECT error FROM jobs WHERE error IS NOT NULL").fetchall(),
        }


@pytest.fixture
def node_config(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    s3_env: S3Server,
    postgres_server: PostgresServer,
    postgres_schema: str,
    write_config: Callable[..., Path],
) -> Callable[[str], tuple[Path, dict[str, Any]]]:
    """make(name): the configuration file of one node (its own data.dir; shared store and
    bucket)."""

    def make(name: str) -> tuple[Path, dict[str, Any]]:
        http_port = free_port()
        data = merge(
            config_data,
            {
                "data": {"dir": f"{config_data['data']['dir']}-{name}"},
                "smtp": {"listen": f"127.0.0.1:{free_port()}"},
                "http": {
                    "listen": f"127.0.0.1:{http_port}",
                    "public_url": f"http://127.0.0.1:{http_port}",
                },
                "relay": relay_server.relay_config_overrides(),
                "queue": FAST_QUEUE,
                "webhooks": {"reconcile_after_seconds": 2, "reconcile_interval_seconds": 1},
                "store": {
                    "backend": "postgresql",
                    "dsn": postgres_server.dsn(postgres_schema),
                    "lease_seconds": LEASE_SECONDS,
                },
            },
        )
        data = merge(merge(data, sandbox.config_override()), s3_env.config_overrides())
        # A fax A was submitting is B's after its submit lease, 10 carrier timeouts (so that a
        # POST still in flight is never made twice): 20 s here instead of 300.
        data = merge(data, {"voxtelesys": {"timeout_seconds": 2}})
        return write_config(data, f"{name}.toml"), data

    return make


def test_two_nodes_one_killed_the_other_finishes_everything_exactly_once(
    node_config: Callable[[str], tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    postgres_server: PostgresServer,
    postgres_schema: str,
    started: list[GatewayProcess],
) -> None:
    """Mail to both nodes, node A killed mid-flow, its unanswered mail sent to B: every 250 is
        one fax, every fax one report (a mail A had handed to the relay when killed may arrive
    twice, as with one node), and B alone finishes what A had claimed."""
    path_a, data_a = node_config("a")
    path_b, data_b = node_config("b")
    token = data_b["http"]["webhook_token"]
    sandbox.set_webhook(f"{data_b['http']['public_url']}/webhooks/fax/{token}")
    ports = {
        "a": int(data_a["smtp"]["listen"].rsplit(":", 1)[1]),
        "b": int(data_b["smtp"]["listen"].rsplit(":", 1)[1]),
    }
    node_a = GatewayProcess(path_a, env=cli_env())
    started.append(node_a)
    node_a.wait_for("daemon.ready", timeout=60)
    node_b = GatewayProcess(path_b, env=cli_env())
    started.append(node_b)
    node_b.wait_for("daemon.ready", timeout=60)

    answered: dict[int, str] = {}
    for index in range(MESSAGES):
        if index == MESSAGES // 2:
            node_a.kill()  # SIGKILL, with half the mail in its queues and claims
            node_a.proc.wait(10)
        target = "a" if index % 2 == 0 and index < MESSAGES // 2 else "b"
        job = send(ports[target], index)
        if job is None:
            job = send(ports["b"], index)  # the MTA's next hop
        assert job is not None, f"message {index} refused by both nodes"
        answered[index] = job

    dsn = postgres_server.dsn(postgres_schema)
    deadline = time.monotonic() + SETTLE_WITHIN
    while not settled(dsn, MESSAGES):
        assert time.monotonic() < deadline, f"B did not finish the work: {progress(dsn)}"
        assert node_b.proc.poll() is None, node_b.lines[-20:]
        time.sleep(0.5)
    assert node_b.terminate() == 0

    faxed = Counter("+" + f["to"] for f in sandbox.faxes() if f["direction"] == "outbound")
    assert faxed == Counter(number(i) for i in range(MESSAGES)), "one fax per 250, never two"
    # Reports told apart by Message-ID: a copy is one mail seen again (the relay took it, A was
    # killed before recording that, B sent it again: what SMTP cannot tell, as for one node).
    ids_per_subject: dict[str, set[str]] = {}
    copies = 0
    seen: set[str] = set()
    for captured in relay_server.messages:
        parsed = email.message_from_bytes(captured.data, policy=email.policy.default)
        message_id = str(parsed["Message-ID"])
        ids_per_subject.setdefault(str(parsed["Subject"]), set()).add(message_id)
        copies += message_id in seen
        seen.add(message_id)
    assert len(ids_per_subject) == MESSAGES, "every fax reported"
    assert all(len(ids) == 1 for ids in ids_per_subject.values()), "each fax reported once"
    assert copies <= 1, f"{copies} mails sent again: more than the one A may have had in hand"
