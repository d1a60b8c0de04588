"""Failpoints: the daemon killed at each named point, restarted, and everything counted.

Each end-to-end case runs the real daemon (`fax-gateway serve`) as a subprocess against the
in-process sandbox carrier and capturing relay, with FAXGW_FAILPOINT naming one point. The
same traffic each time: 3 messages for 4 fax numbers (so 4 delivery reports), and 2 inbound
faxes, one routed to two inboxes and one to the default inbox. The daemon dies at the point;
it is started again without the variable; messages it never answered are sent again, as a
client would, byte for byte (same Message-ID). Then the counts: faxes per number at the
carrier, reports per fax and inbound mails per inbox at the relay (by Message-ID, so a relay
that sees one mail twice is told apart from two mails), and the store with nothing left over.

The figures go into docs/RELIABILITY.md ("Faults: kill at every failpoint"); run with `-s` to
see the FAILPOINT line each case prints.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway import failpoints
from tests import samples
from tests.conftest import ROOT, cli_env, merge
from tests.servers.gateway import serve_config_data
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.servers.seaweed import S3Server
from tests.test_daemon import GatewayProcess, wait_until

SENDER = "alice@example.com"
# Fictional numbers (555-01xx), one per fax, so the carrier's faxes can be counted per number.
OUTBOUND = [["+12015550111", "+12015550112"], ["+12015550113"], ["+12015550114"]]
ROUTED_INBOXES = ["a@example.com", "b@example.com"]
DEFAULT_INBOX = "office@example.com"
# (number called, caller): the first is routed to two inboxes, the second to the default one.
INBOUND = [("+12015550121", "+12015550131"), ("+12015550122", "+12015550132")]
INBOXES = {"+12015550131": ROUTED_INBOXES, "+12015550132": [DEFAULT_INBOX]}

# The carrier's error for a document it could not fetch (the gateway serving it was dead).
DOCUMENT_UNREACHABLE = 4203

# Bounds of every wait: the daemon reaching its failpoint, and the restart finishing the work.
DIE_WITHIN = 60.0
SETTLE_WITHIN = 90.0


# -- the module itself (fast) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "armed"),
    [
        ("", {}),
        ("after_upload", {"after_upload": ("kill", 1)}),
        ("after_upload=kill", {"after_upload": ("kill", 1)}),
        ("after_post@3", {"after_post": ("kill", 3)}),
        ("after_post=kill@2", {"after_post": ("kill", 2)}),
        (
            "after_spool, after_relay_send@2",
            {"after_spool": ("kill", 1), "after_relay_send": ("kill", 2)},
        ),
        ("document_prepare=hang", {"document_prepare": ("hang", 1)}),
    ],
)
def test_the_variable_names_points_and_hits(value: str, armed: dict[str, tuple[str, int]]) -> None:
    """FAXGW_FAILPOINT reads name[=kill|hang][@N], comma-separated; @N is the hit that acts."""
    assert failpoints.parse(value) == armed


@pytest.mark.parametrize(
    "value", ["after_uplaod", "after_post=explode", "after_post@0", "after post", "=kill"]
)
def test_a_misspelt_failpoint_is_refused(value: str) -> None:
    """A name that is no point, another action or a bad count raises: no silent pass."""
    with pytest.raises(ValueError, match=failpoints.ENV):
        failpoints.parse(value)


def test_every_point_is_placed_once_in_the_code() -> None:
    """Each point in POINTS is called exactly once in gateway/, and no call names another."""
    calls = Counter(
        name
        for path in (ROOT / "gateway").rglob("*.py")
        for name in re.findall(r'\bfailpoint\("([a-z_]+)"\)', path.read_text())
    )
    assert calls == dict.fromkeys(failpoints.POINTS, 1)


def test_unset_it_does_nothing() -> None:
    """Without FAXGW_FAILPOINT every point is passed (this process runs the suite)."""
    assert failpoints._ARMED == {}
    for name in failpoints.POINTS:
        failpoints.failpoint(name)


def test_the_nth_hit_kills_the_process_at_once() -> None:
    """name@2: the first pass goes on, the second is SIGKILL, announced on stderr first."""
    code = (
        "from gateway.failpoints import failpoint\n"
        "failpoint('after_post'); print('passed once', flush=True)\n"
        "failpoint('after_post'); print('passed twice', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=cli_env(FAXGW_FAILPOINT="after_post@2"),
        cwd=ROOT,
        timeout=30,
    )
    assert result.returncode == -signal.SIGKILL
    assert result.stdout == "passed once\n"
    hit = json.loads(result.stderr.strip().splitlines()[-1])
    assert (hit["event"], hit["failpoint"], hit["hit"]) == ("failpoint.hit", "after_post", 2)


# -- kill at every point, restart, count (slow) ---------------------------------------------


@dataclass(frozen=True)
class Case:
    spec: str  # FAXGW_FAILPOINT for the first run
    overrides: dict[str, Any] = field(default_factory=dict)
    # Messages (indexes into OUTBOUND) that become two jobs: committed, the 250 never seen,
    # sent again by the client, and no dedupe window to recognise the copy.
    duplicate_jobs: tuple[int, ...] = ()
    # Mails the failpoint itself leaves in the relay's hands (taken by the relay, the process
    # killed before the outbox recorded it, so sent again after the restart; same Message-ID).
    # Any mail may be caught so by the kill, whatever the point: the relay's 250 and the
    # outbox's record of it are two steps, and SMTP cannot ask a relay what it has. The test
    # counts those from the relay and the store at the kill (`in_relay_hands`).
    relay_copies: int = 0
    # Where documents are stored. S3 (SeaweedFS) keeps them fetchable while the gateway is
    # dead; local storage serves them from the gateway's own HTTP server, so a fetch by the
    # carrier during the downtime fails that fax (error 4203, reported once, never resent).
    storage: str = "s3"
    # The log event that shows the restart's remedy at work, if it has one to show.
    remedy: str | None = None
    # With the inbound archive (inbound.archive_dir): one copy and sidecar per fax at the end.
    archive: bool = False


CASES = [
    Case("after_spool"),
    Case("after_commit", remedy="smtp.resent"),
    Case("after_commit", {"smtp": {"dedupe_window_seconds": 0}}, duplicate_jobs=(0,)),
    Case("after_upload@2"),
    Case("after_post@2", remedy="fax.adopted"),
    Case("after_post", storage="local", remedy="fax.adopted"),
    Case("after_report_queued@2"),
    Case("after_download"),
    Case("after_inbound_stored@2"),
    Case("after_inbound_archived", archive=True),
    Case("after_relay_send@2", relay_copies=1),
]


def _case_id(case: Case) -> str:
    return (
        case.spec
        + ("-no-dedupe" if case.overrides else "")
        + ("-archive" if case.archive else "")
        + f"-{case.storage}"
    )


@pytest.fixture
def failpoint_config(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    s3_env: S3Server,
    write_config: Callable[..., Path],
) -> Callable[..., tuple[Path, dict[str, Any]]]:
    """make(case): a configuration file for the case; S3 credentials are in os.environ, so
    in the daemon's environment too (cli_env copies it)."""

    def make(case: Case) -> tuple[Path, dict[str, Any]]:
        data = serve_config_data(
            config_data,
            sandbox,
            relay_server,
            {
                "inbound": {
                    "routes": {INBOUND[0][0]: ROUTED_INBOXES},
                    "default_recipients": [DEFAULT_INBOX],
                },
                # Webhooks sent while the daemon was dead are found by the reconciler.
                "webhooks": {"reconcile_after_seconds": 1, "reconcile_interval_seconds": 1},
            },
        )
        if case.storage == "s3":
            data = merge(data, s3_env.config_overrides())
        data = merge(data, case.overrides)
        if case.archive:
            data["inbound"]["archive_dir"] = str(Path(data["data"]["dir"]).parent / "archive")
        token = data["http"]["webhook_token"]
        sandbox.set_webhook(f"{data['http']['public_url']}/webhooks/fax/{token}")
        return write_config(data), data

    return make


def send(port: int, numbers: list[str], raw: bytes) -> str | None:
    """One SMTP transaction; the job id of its 250, None if the gateway died or was gone."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as client:
            client.ehlo()
            client.mail(SENDER)
            for number in numbers:
                code, _ = client.rcpt(f"{number.lstrip('+')}@fax.local")
                assert code == 250
            code, reply = client.data(raw)
    except (OSError, smtplib.SMTPException):
        return None
    return reply.decode().rsplit(" ", 1)[1] if code == 250 else None


def store_rows(data_dir: Path, sql: str) -> list[sqlite3.Row]:
    """Rows of a query on the daemon's store.db (WAL: reading beside the daemon is safe)."""
    conn = sqlite3.connect(data_dir / "store.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def settled(data_dir: Path, jobs: int, mails: int) -> bool:
    """Every job done and every fax reported, every inbound fax mailed (its file gone) and
    every mail in the outbox sent: the gateway has nothing left to do."""
    job_states = [r["state"] for r in store_rows(data_dir, "SELECT state FROM jobs")]
    unreported = store_rows(data_dir, "SELECT id FROM faxes WHERE reported_at IS NULL")
    inbound = store_rows(data_dir, "SELECT state, file_path FROM inbound")
    outbox = [r["state"] for r in store_rows(data_dir, "SELECT state FROM outbox")]
    return (
        job_states == ["done"] * jobs
        and not unreported
        and len(inbound) == len(INBOUND)
        and all(r["state"] == "mailed" and r["file_path"] is None for r in inbound)
        and outbox == ["sent"] * mails
    )


def in_relay_hands(data_dir: Path, relay: CapturingRelay) -> set[str]:
    """Message-IDs of the mails the relay has taken whose outbox rows are not sent: the process
    died between the relay's 250 and its record of it (read after the kill, before a restart)."""
    taken = {
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Message-ID"])
        for m in relay.messages
    }
    unsent = set()
    for row in store_rows(data_dir, "SELECT message_path FROM outbox WHERE state != 'sent'"):
        path = Path(row["message_path"])
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        unsent.add(str(parsed["Message-ID"]))
    return taken & unsent


def outbox_lines(*runs: GatewayProcess) -> list[dict[str, Any]]:
    """The outbox's log lines of each run (what a failed count is explained by)."""
    return [
        line for run in runs for line in run.lines if str(line.get("event")).startswith("outbox.")
    ]


_NUMBER = re.compile(r"^Fax (?:to|from) (\+\d[\d \-]*\d)")


def e164_in(subject: str) -> str:
    """The number a report or inbound mail is about, from its subject ("+1 201-555-0111")."""
    match = _NUMBER.match(subject)
    assert match, subject
    return "+" + re.sub(r"\D", "", match[1])


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_a_kill_at_the_failpoint_loses_nothing_and_duplicates_only_what_smtp_cannot_tell(
    case: Case,
    failpoint_config: Callable[..., tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    started: list[GatewayProcess],
) -> None:
    """Killed at the point and restarted: each 250 is one fax per number, each fax one report,
    each inbound fax one mail per inbox; the only copies are the ones SMTP cannot tell."""
    path, data = failpoint_config(case)
    data_dir = Path(data["data"]["dir"])
    port = int(data["smtp"]["listen"].rsplit(":", 1)[1])
    point = case.spec.split("=")[0].split("@")[0]
    raws = [samples.traffic_mail("failpoint", i, numbers) for i, numbers in enumerate(OUTBOUND)]

    # First run: armed. Inbound first, so the inbound points are reached while it lives.
    first = GatewayProcess(path, env=cli_env(FAXGW_FAILPOINT=case.spec))
    started.append(first)
    first.wait_for("daemon.ready")
    for to_number, caller in INBOUND:
        sandbox.inbound(to_number.lstrip("+"), caller.lstrip("+"), samples.pdf(1))
    answered: dict[int, str] = {}
    for index, numbers in enumerate(OUTBOUND):
        job = send(port, numbers, raws[index])
        if job is not None:
            answered[index] = job
    code = first.proc.wait(DIE_WITHIN)
    first.close()
    hits = [line for line in first.lines if line.get("event") == "failpoint.hit"]
    assert code == -signal.SIGKILL, first.lines[-20:]
    assert [h["failpoint"] for h in hits] == [point]
    answered_first = len(answered)
    wait_until(lambda: relay_server.connected == 0, DIE_WITHIN, "the dead run's relay session")
    held = in_relay_hands(data_dir, relay_server)
    assert len(held) >= case.relay_copies, (held, case.relay_copies)

    # Second run: unarmed. The client sends again what it got no 250 for.
    second = GatewayProcess(path)
    started.append(second)
    second.wait_for("daemon.ready")
    resent = [i for i in range(len(OUTBOUND)) if i not in answered]
    for index in resent:
        job = send(port, OUTBOUND[index], raws[index])
        assert job is not None, f"message {index} refused after the restart"
        answered[index] = job

    faxes_wanted = Counter(
        n
        for i, numbers in enumerate(OUTBOUND)
        for n in numbers * (2 if i in case.duplicate_jobs else 1)
    )
    jobs = len(OUTBOUND) + len(case.duplicate_jobs)
    mails = sum(faxes_wanted.values()) + len(INBOUND)
    sandbox.wait_for(
        lambda: settled(data_dir, jobs, mails), timeout=SETTLE_WITHIN, what="the work finished"
    )
    assert second.terminate() == 0  # stopped: nothing more can be sent, the counts are final
    if case.remedy is not None:
        assert any(line.get("event") == case.remedy for line in second.lines), case.remedy

    # Faxes: exactly one per number per job at the carrier, nothing to anyone else.
    faxed = Counter("+" + f["to"] for f in sandbox.faxes() if f["direction"] == "outbound")
    assert faxed == faxes_wanted
    outcomes = Counter(
        (f["status"], (f.get("error") or {}).get("code"))
        for f in sandbox.faxes()
        if f["direction"] == "outbound"
    )
    if case.storage == "s3":
        assert set(outcomes) == {("delivered", None)}, outcomes
    else:
        assert set(outcomes) <= {("delivered", None), ("failed", DOCUMENT_UNREACHABLE)}, outcomes

    # Mails at the relay, told apart by Message-ID: a copy is the same mail seen again.
    copies: Counter[tuple[str, str]] = Counter()
    subjects: dict[str, str] = {}
    for captured in relay_server.messages:
        parsed = email.message_from_bytes(captured.data, policy=email.policy.default)
        message_id = str(parsed["Message-ID"])
        subjects[message_id] = str(parsed["Subject"])
        for rcpt in captured.rcpt_tos:
            copies[(message_id, rcpt.lower())] += 1
    relay_copies = sum(n - 1 for n in copies.values())
    # The mails the relay had taken when the process died, their sends not recorded: each is
    # sent once more after the restart, and nothing else ever is.
    copied = Counter({key: n - 1 for key, n in copies.items() if n > 1})
    expected = Counter({key: 1 for key in copies if key[0] in held})
    assert copied == expected, (copied, held, outbox_lines(first, second))
    reports = Counter(
        e164_in(subjects[mid]) for mid, rcpt in copies if subjects[mid].startswith("Fax to ")
    )
    inbound = Counter(
        (e164_in(subjects[mid]), rcpt)
        for mid, rcpt in copies
        if subjects[mid].startswith("Fax from ")
    )
    inbound_wanted = Counter(
        {(caller, inbox): 1 for caller, inboxes in INBOXES.items() for inbox in inboxes}
    )
    assert reports == faxes_wanted, "every fax reported exactly once"
    assert {key: n for key, n in inbound.items() if key[0] in INBOXES} == inbound_wanted
    assert len(copies) == sum(reports.values()) + sum(inbound_wanted.values()), "no other mail"
    assert all(rcpt == SENDER for mid, rcpt in copies if subjects[mid].startswith("Fax to "))

    # Nothing lost or left behind in the store.
    final = Counter(r["state"] for r in store_rows(data_dir, "SELECT state FROM faxes"))
    assert final == Counter({s: n for (s, _), n in outcomes.items()})
    assert len(store_rows(data_dir, "SELECT id FROM jobs")) == jobs

    if case.archive:
        # Killed after the copy, before its row said so: written again under the same name.
        archive = Path(data["inbound"]["archive_dir"])
        kept = Counter(p.suffix for p in archive.rglob("*") if p.is_file())
        assert kept == Counter({".pdf": len(INBOUND), ".json": len(INBOUND)}), kept

    # No spooled message without its job: a kill between the spool write and the commit
    # (after_spool) leaves one, which the restart removes before SMTP listens. A temp file the
    # kill left is not a message (counted apart, not asserted): one of a write it interrupted
    # goes at a start an hour later or with the daily purge; a draft kept as its job's message
    # (a kill at after_commit of a message too big to be held in memory) goes at the restart
    # (Spool.remove_stale_temp_files).
    referenced = {Path(r["spool_path"]).name for r in store_rows(data_dir, "SELECT * FROM jobs")}
    spooled = list((data_dir / "spool").iterdir())
    spool_orphans = [p.name for p in spooled if not p.name.startswith(".")]
    spool_orphans = [
        name for name in spool_orphans if name.split(".")[0] + ".eml" not in referenced
    ]
    spool_temps = [p.name for p in spooled if p.name.startswith(".")]
    assert spool_orphans == [], spool_orphans
    print(
        "FAILPOINT",
        json.dumps(
            {
                "case": _case_id(case),
                "answered_250_first_run": answered_first,
                "resent_after_restart": len(resent),
                "jobs": jobs,
                "faxes_out": sum(faxed.values()),
                "failed_fetch_4203": outcomes[("failed", DOCUMENT_UNREACHABLE)],
                "fax_duplicates": sum(faxed.values()) - sum(len(n) for n in OUTBOUND),
                "reports": sum(reports.values()),
                "inbound_mails": sum(inbound_wanted.values()),
                "relay_copies": relay_copies,
                "mails_in_relay_hands_at_kill": len(held),
                "lost": 0,
                "spool_orphans": len(spool_orphans),
                "spool_temps": len(spool_temps),
            }
        ),
    )
