"""Two gateway nodes, each with its own data.dir, on one PostgreSQL store and one S3 bucket:
node A accepts mail and a fax in while the relay is down and the carrier slow, is killed with
SIGKILL and its data.dir deleted; node B finishes everything from what the store holds.

What A had only on its disk before issue 13 (the raw messages, the prepared documents, the
reports and the inbound fax's mail waiting in its outbox, the received fax itself) must all be
in the store (gateway/store/blobs.py). B must fax each message A answered 250 exactly once per
recipient, send each report exactly once (the relay was down while A lived, so no copy can have
reached it before the kill), mail the inbound fax exactly once; and once everything is told and
cleaned up, the store holds no file any more and B's data.dir no working copy.
"""

from __future__ import annotations

import email
import email.policy
import shutil
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from tests import samples
from tests.helpers import CALLER, OUR_FAX_LINE
from tests.servers.cluster import Node, fax_number, job_of, query, send, wait_until
from tests.servers.postgres import PostgresServer
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.test_daemon import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

OFFICE = "office@example.com"
# Accepted by A before any of its faxes is done, and after some are (so A dies with jobs in
# every state: received, prepared, uploaded, submitted, reported into its outbox).
EARLY, LATE = 4, 3
# The carrier takes this long from a POST to the fax's outcome.
CARRIER_DELAY = 2.0
SETTLE_WITHIN = 150.0
NODE_SETTINGS: dict[str, Any] = {
    "queue": {
        "min_backoff_seconds": 0.2,
        "max_backoff_seconds": 1.0,
        "scan_interval_seconds": 0.2,
        "shutdown_timeout_seconds": 5,
    },
    "inbound": {"default_recipients": [OFFICE], "max_attempts": 1000},
}


def number(index: int) -> str:
    return fax_number(index, 2000)


def accepted(port: int, index: int) -> str:
    """One SMTP transaction that must be answered 250; the job id."""
    code, reply = send(port, number(index), samples.traffic_mail("files", index, [number(index)]))
    assert code == 250, reply
    return job_of(reply)


def progress(dsn: str) -> dict[str, Any]:
    """What the store holds, for a failure's message."""
    return {
        "jobs": query(dsn, "SELECT state, error, files_removed_at IS NULL FROM jobs"),
        "outbox": query(dsn, "SELECT key, state, error FROM outbox"),
        "inbound": query(dsn, "SELECT state, file_path, error FROM inbound"),
        "blobs": query(dsn, "SELECT name FROM blobs ORDER BY name"),
    }


def finished(dsn: str, jobs: int) -> bool:
    """Every job done and cleaned, every fax reported, every mail sent, the fax in mailed and
    delivered (its file gone), and no shared file left."""
    return (
        query(dsn, "SELECT state, files_removed_at IS NOT NULL FROM jobs")
        == [("done", True)] * jobs
        and query(dsn, "SELECT count(*) FROM faxes WHERE reported_at IS NULL") == [(0,)]
        and {row[0] for row in query(dsn, "SELECT state FROM outbox")} == {"sent"}
        and query(dsn, "SELECT state, file_path FROM inbound") == [("mailed", None)]
        and query(dsn, "SELECT count(*) FROM blobs") == [(0,)]
    )


def test_node_a_dies_with_its_disk_and_node_b_finishes_everything_once(
    cluster_node: Callable[..., Node],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    postgres_server: PostgresServer,
    postgres_schema: str,
    started: list[GatewayProcess],
) -> None:
    """A's data.dir deleted after a SIGKILL: B faxes every 250 once, reports each fax once and
    mails the inbound fax once, from the store alone; then no shared file is left."""
    dsn = postgres_server.dsn(postgres_schema)
    a = cluster_node("a", NODE_SETTINGS)
    b = cluster_node("b", NODE_SETTINGS)
    relay_server.go_down()
    sandbox.configure(delay=CARRIER_DELAY)
    sandbox.set_webhook(a.webhook_url)
    node_a = a.start(started)
    port_a = a.smtp_port

    answered = [accepted(port_a, index) for index in range(EARLY)]
    sandbox.inbound(OUR_FAX_LINE, CALLER, samples.pdf(2))
    # A has reports and the inbound fax's mail in its outbox (the relay is down) ...
    wait_until(
        "A's first report and the inbound mail queued",
        lambda: (
            {k[0].split(":")[0] for k in query(dsn, "SELECT key FROM outbox")}
            >= {"report", "inbound"}
        ),
        60,
        lambda: progress(dsn),
    )
    # ... and then mail it has not even prepared.
    answered += [accepted(port_a, index) for index in range(EARLY, EARLY + LATE)]
    node_a.kill()  # SIGKILL
    shutil.rmtree(a.data_dir)
    before = progress(dsn)
    assert before["blobs"], "A's files are in the store"

    relay_server.come_up()
    sandbox.set_webhook(b.webhook_url)
    node_b = b.start(started)
    wait_until(
        "B finishing A's work",
        lambda: finished(dsn, len(answered)),
        SETTLE_WITHIN,
        lambda: progress(dsn),
    )
    assert node_b.terminate() == 0

    faxed = Counter("+" + f["to"] for f in sandbox.faxes() if f["direction"] == "outbound")
    assert faxed == Counter(number(i) for i in range(EARLY + LATE)), "one fax per 250"
    assert sorted(row[0] for row in query(dsn, "SELECT id FROM jobs")) == sorted(answered)
    reports: Counter[str] = Counter()
    inbound: list[EmailMessage] = []
    for captured in relay_server.messages:
        parsed = email.message_from_bytes(captured.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        if OFFICE in captured.rcpt_tos:
            inbound.append(parsed)
        else:
            reports[str(parsed["Subject"])] += 1
    assert len(reports) == EARLY + LATE and set(reports.values()) == {1}, reports
    assert len(inbound) == 1, "the inbound fax mailed exactly once"
    assert any(part.get_content_type() == "application/pdf" for part in inbound[0].walk())
    data_b_dir = b.data_dir
    left = [
        p.relative_to(data_b_dir)
        for folder in ("spool", "documents", "outbox", "inbound", "dead-letter")
        if (data_b_dir / folder).is_dir()
        for p in (data_b_dir / folder).iterdir()
    ]
    assert left == [], f"B kept working copies of finished work: {left}"
