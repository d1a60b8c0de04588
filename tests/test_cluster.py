"""Two gateway processes on one PostgreSQL store and one S3 bucket; one is killed mid-flow.

Each node has its own data.dir (the files rows name are shared through the store,
gateway/store/blobs.py) and its own SMTP and HTTP port. Mail goes to both nodes'
SMTP ports (FAXGW_CLUSTER_MESSAGES messages, 200 by default, one recipient each), from several
clients at once; the carrier's webhooks reach both nodes through one URL, a round-robin proxy
in front of the two webhook ports that passes a refused or failed request on to the other
(tests/servers/upstream.py, nginx's upstream with proxy_next_upstream); inbound faxes arrive
meanwhile. Node A is killed with SIGKILL while mail is still coming in and its queues are
full; a client whose transaction with A was cut off sends to B, as an MTA with both nodes as
next hops would. B must finish everything: each 250 exactly one fax per recipient, each fax
reported exactly once, each inbound fax mailed exactly once to each recipient (once per
Message-ID: the relay may see one mail twice if A was killed between the relay's 250 and
recording it, the copy tests/test_failpoints.py allows a single node too).
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from tests.servers.upstream import UpstreamProxy
from tests.test_daemon import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SENDER = "alice@example.com"
MESSAGES = int(os.environ.get("FAXGW_CLUSTER_MESSAGES", "200"))
# Inbound faxes, to the one routed line, each from its own caller.
INBOUND = max(MESSAGES // 10, 2)
OUR_LINE = "+12015550100"
DESK = ("fax-desk@example.com", "archive@example.com")
CLIENTS = 4
# A's claims come free after this (the default 60 s would only make the test slow).
LEASE_SECONDS = 3
SETTLE_WITHIN = 360.0
# The same on both nodes: the inbound line's route; a relay timeout of 2 s makes a mail A was
# sending B's after 30 s (its lease is 15 relay timeouts) instead of 75.
NODE_SETTINGS: dict[str, Any] = {
    "inbound": {"routes": {OUR_LINE: list(DESK)}},
    "relay": {"timeout_seconds": 2},
}


def number(index: int) -> str:
    return f"+1201555{1000 + index:04d}"


def caller(index: int) -> str:
    return f"+1555777{index:04d}"


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
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            client.mail(SENDER)
            code, _ = client.rcpt(f"{number(index).lstrip('+')}@fax.local")
            if code != 250:
                return None
            code, reply = client.data(message(index))
    except (OSError, smtplib.SMTPException):
        return None
    return reply.decode().rsplit(" ", 1)[1] if code == 250 else None


def settled(dsn: str, jobs: int, inbound: int) -> bool:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM jobs")]
        unreported = conn.execute("SELECT count(*) FROM faxes WHERE reported_at IS NULL")
        waiting = unreported.fetchone()
        outbox = [r[0] for r in conn.execute("SELECT state FROM outbox")]
        received = [r[0] for r in conn.execute("SELECT state FROM inbound")]
        return (
            states == ["done"] * jobs
            and waiting is not None
            and waiting[0] == 0
            and received == ["mailed"] * inbound
            and outbox == ["sent"] * (jobs + inbound)
        )


def unfinished(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE state != 'done'").fetchone()
        return 0 if row is None else int(row[0])


def progress(dsn: str) -> dict[str, Any]:
    """What the store holds, for a failure's message."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return {
            "jobs": conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall(),
            "faxes": conn.execute(
                "SELECT state, reported_at IS NULL, count(*) FROM faxes GROUP BY 1, 2"
            ).fetchall(),
            "inbound": conn.execute("SELECT state, count(*) FROM inbound GROUP BY 1").fetchall(),
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
        data = merge(data, NODE_SETTINGS)
        return write_config(data, f"{name}.toml"), data

    return make


def test_two_nodes_one_killed_the_other_finishes_everything_exactly_once(
    node_config: Callable[[str], tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    postgres_server: PostgresServer,
    postgres_schema: str,
    upstream_proxy: Callable[[list[str]], UpstreamProxy],
    started: list[GatewayProcess],
) -> None:
    """Mail and webhooks to both nodes and inbound faxes, node A killed mid-flow: every 250 is
    one fax, every fax one report, every inbound fax one mail to each of its recipients (a mail
    A had handed to the relay when killed may arrive twice, as with one node), and B alone
    finishes what A had claimed."""
    path_a, data_a = node_config("a")
    path_b, data_b = node_config("b")
    proxy = upstream_proxy([data_a["http"]["public_url"], data_b["http"]["public_url"]])
    token = data_b["http"]["webhook_token"]
    assert data_a["http"]["webhook_token"] == token
    sandbox.set_webhook(f"{proxy.url}/webhooks/fax/{token}")
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
    dsn = postgres_server.dsn(postgres_schema)

    answered: dict[int, str] = {}
    lock = threading.Lock()
    half = threading.Event()

    def deliver(index: int) -> None:
        # Spread over both nodes; once A is gone, its share goes to B, the MTA's next hop.
        job = send(ports["a" if index % 2 == 0 else "b"], index)
        if job is None:
            job = send(ports["b"], index)
        assert job is not None, f"message {index} refused by both nodes"
        with lock:
            answered[index] = job
            if len(answered) >= MESSAGES // 2:
                half.set()

    faxes_in: dict[str, int] = {}
    with ThreadPoolExecutor(CLIENTS) as clients:
        sending = [clients.submit(deliver, index) for index in range(MESSAGES)]
        for index in range(INBOUND // 2):
            faxes_in[sandbox.inbound(OUR_LINE, caller(index), samples.pdf(1))["id"]] = index
        assert half.wait(120), "half the mail was not answered within 120 s"
        assert unfinished(dsn) > 0, "A was to be killed mid-flow, with work in its queues"
        node_a.kill()  # SIGKILL: with mail in its SMTP sessions, queues and claims
        for index in range(INBOUND // 2, INBOUND):
            faxes_in[sandbox.inbound(OUR_LINE, caller(index), samples.pdf(1))["id"]] = index
        for future in sending:
            future.result()
    assert len(answered) == MESSAGES

    deadline = time.monotonic() + SETTLE_WITHIN
    while not settled(dsn, MESSAGES, INBOUND):
        assert time.monotonic() < deadline, f"B did not finish the work: {progress(dsn)}"
        assert node_b.proc.poll() is None, node_b.lines[-20:]
        time.sleep(0.5)
    assert node_b.terminate() == 0

    faxed = Counter("+" + f["to"] for f in sandbox.faxes() if f["direction"] == "outbound")
    assert faxed == Counter(number(i) for i in range(MESSAGES)), "one fax per 250, never two"
    assert len(set(answered.values())) == MESSAGES, "a 250 named another message's job"
    both = proxy.answered_by()
    assert all(both.values()), f"the webhooks did not reach both nodes: {both}"

    # Mail told apart by Message-ID: a copy is one mail seen again (the relay took it, A was
    # killed before recording that, B sent it again: what SMTP cannot tell, as for one node).
    reports: dict[str, set[str]] = {}
    inbound_mail: Counter[tuple[int, str]] = Counter()
    copies = 0
    seen: set[str] = set()
    for captured in relay_server.messages:
        parsed = email.message_from_bytes(captured.data, policy=email.policy.default)
        message_id = str(parsed["Message-ID"])
        copies += message_id in seen
        if message_id in seen:
            continue
        seen.add(message_id)
        body = parsed.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        received = [index for carrier_id, index in faxes_in.items() if carrier_id in text]
        if received:
            inbound_mail.update((received[0], rcpt) for rcpt in captured.rcpt_tos)
        else:
            reports.setdefault(str(parsed["Subject"]), set()).add(message_id)
    assert len(reports) == MESSAGES, "every fax reported"
    assert all(len(ids) == 1 for ids in reports.values()), "each fax reported once"
    expected = Counter((index, rcpt) for index in range(INBOUND) for rcpt in DESK)
    assert inbound_mail == expected, "each inbound fax mailed once to each recipient"
    assert copies <= 1, f"{copies} mails sent again: more than the one A may have had in hand"
