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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests import samples
from tests.servers.cluster import Node, fax_number, job_of, query, send, wait_until
from tests.servers.postgres import PostgresServer
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.servers.upstream import UpstreamProxy
from tests.test_daemon import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MESSAGES = int(os.environ.get("FAXGW_CLUSTER_MESSAGES", "200"))
# Inbound faxes, to the one routed line, each from its own caller.
INBOUND = max(MESSAGES // 10, 2)
OUR_LINE = "+12015550100"
DESK = ("fax-desk@example.com", "archive@example.com")
CLIENTS = 4
SETTLE_WITHIN = 360.0
# The same on both nodes: the inbound line's route; a relay timeout of 2 s makes a mail A was
# sending B's after 30 s (its lease is 15 relay timeouts) instead of 75.
NODE_SETTINGS: dict[str, Any] = {
    "inbound": {"routes": {OUR_LINE: list(DESK)}},
    "relay": {"timeout_seconds": 2},
    # All CLIENTS send from 127.0.0.1, and a message refused 451 by both nodes fails the test.
    "smtp": {"max_concurrent_data_per_ip": 4},
}


def number(index: int) -> str:
    return fax_number(index, 1000)


def caller(index: int) -> str:
    return f"+1555777{index:04d}"


def deliver_once(port: int, index: int) -> str | None:
    """One SMTP transaction; the job id of its 250, None if the node is gone or said 4xx."""
    try:
        code, reply = send(
            port, number(index), samples.traffic_mail("cluster", index, [number(index)])
        )
    except (OSError, smtplib.SMTPException):
        return None
    return job_of(reply) if code == 250 else None


def settled(dsn: str, jobs: int, inbound: int) -> bool:
    unreported = query(dsn, "SELECT count(*) FROM faxes WHERE reported_at IS NULL")
    return (
        [r[0] for r in query(dsn, "SELECT state FROM jobs")] == ["done"] * jobs
        and unreported == [(0,)]
        and [r[0] for r in query(dsn, "SELECT state FROM inbound")] == ["mailed"] * inbound
        and [r[0] for r in query(dsn, "SELECT state FROM outbox")] == ["sent"] * (jobs + inbound)
    )


def unfinished(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM jobs WHERE state != 'done'")[0][0])


def progress(dsn: str) -> dict[str, Any]:
    """What the store holds, for a failure's message."""
    return {
        "jobs": query(dsn, "SELECT state, count(*) FROM jobs GROUP BY state"),
        "faxes": query(dsn, "SELECT state, reported_at IS NULL, count(*) FROM faxes GROUP BY 1, 2"),
        "inbound": query(dsn, "SELECT state, count(*) FROM inbound GROUP BY 1"),
        "outbox": query(dsn, "SELECT state, error FROM outbox WHERE state != 'sent'"),
        "errors": query(dsn, "SELECT error FROM jobs WHERE error IS NOT NULL"),
    }


def test_two_nodes_one_killed_the_other_finishes_everything_exactly_once(
    cluster_node: Callable[..., Node],
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
    a = cluster_node("a", NODE_SETTINGS)
    b = cluster_node("b", NODE_SETTINGS)
    proxy = upstream_proxy([a.data["http"]["public_url"], b.data["http"]["public_url"]])
    token = b.data["http"]["webhook_token"]
    assert a.data["http"]["webhook_token"] == token
    sandbox.set_webhook(f"{proxy.url}/webhooks/fax/{token}")
    ports = {"a": a.smtp_port, "b": b.smtp_port}
    node_a = a.start(started)
    node_b = b.start(started)
    dsn = postgres_server.dsn(postgres_schema)

    answered: dict[int, str] = {}
    lock = threading.Lock()
    half = threading.Event()

    def deliver(index: int) -> None:
        # Spread over both nodes; once A is gone, its share goes to B, the MTA's next hop.
        job = deliver_once(ports["a" if index % 2 == 0 else "b"], index)
        if job is None:
            job = deliver_once(ports["b"], index)
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

    wait_until(
        "B finishing the work",
        lambda: settled(dsn, MESSAGES, INBOUND),
        SETTLE_WITHIN,
        lambda: progress(dsn),
        alive=node_b,
        pause=0.5,
    )
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
