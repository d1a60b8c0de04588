"""`fax-gateway queue ...` each run a process of its own on a real store file in tmp.

Jobs, inbound faxes and mails are made with the store's own functions (as the daemon would),
the command is run beside the open store (as beside a running daemon), and the store is read
again afterwards to prove what the command changed.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.carrier.status import Outcome
from gateway.datadir import DataDir
from gateway.inbound.files import mail_key
from gateway.store import Database
from gateway.store import faxes as fax_store
from gateway.store import inbound as inbound_store
from gateway.store import jobs as store
from gateway.store import outbox as outbox_store
from gateway.store.inbound import InboundState
from gateway.store.outbox import OutboxState
from gateway.store.postgres import PostgresDatabase
from gateway.store.records import Fax, FaxState, JobState, NewJob, new_job_id
from gateway.store.spool import Spool
from tests.conftest import merge, run_cli
from tests.servers.postgres import PostgresServer

LONG_ERROR = "the carrier answered 503 Service Unavailable " + "and then nothing useful " * 5


@dataclass
class Gateway:
    """A configuration file and the store it names, open as a daemon would have it."""

    config_path: Path
    data_dir: Path
    db: Database

    @property
    def spool(self) -> Spool:
        return Spool(DataDir(self.data_dir).spool)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("queue", *args, "--config", str(self.config_path))

    def job(
        self,
        *recipients: str,
        sender: str = "alice@example.com",
        age: float = 120.0,
        subject: str = "Contract",
    ) -> str:
        job_id = new_job_id()
        spool = self.spool.write(job_id, b"Subject: test\r\n\r\nhello\r\n")
        new = NewJob(
            id=job_id,
            sender=sender,
            auth_user=None,
            client_address="127.0.0.1",
            subject=subject,
            message_id=f"<{job_id}@example.com>",
            from_number="+12015550100",
            spool_path=spool,
            recipients=recipients or ("+12015550123",),
        )
        self.db.run_sync(store.create_job, new, time.time() - age)
        return job_id

    def prepare(self, job_id: str, pages: int = 2) -> Path:
        document = self.data_dir / "documents" / f"{job_id}.pdf"
        document.parent.mkdir(parents=True, exist_ok=True)
        document.write_bytes(b"%PDF-1.4\n")
        moved = self.db.run_sync(
            store.advance,
            job_id,
            JobState.RECEIVED,
            JobState.PREPARED,
            document_path=document,
            document_type="application/pdf",
            pages=pages,
        )
        assert moved
        return document

    def hold(self, job_id: str, state: JobState) -> None:
        """Crash-hold the job in `state`: a pickup that never finished, then the limit."""
        assert [j.id for j in self.db.run_sync(store.claim_jobs, state, max_pickups=1)] == [job_id]
        assert self.db.run_sync(store.claim_jobs, state, max_pickups=1) == []
        assert self.state(job_id) is JobState.HELD

    def upload(self, job_id: str) -> None:
        moved = self.db.run_sync(
            store.advance,
            job_id,
            JobState.PREPARED,
            JobState.UPLOADED,
            storage_key=f"faxes/{job_id}.pdf",
            document_url=f"https://files.example.com/{job_id}.pdf",
            url_expires_at=time.time() + 3600,
        )
        assert moved

    def submit(self, fax_id: int, carrier_id: str) -> None:
        assert self.db.run_sync(fax_store.begin_submit, fax_id) == 1
        assert self.db.run_sync(fax_store.mark_submitted, fax_id, carrier_id, "queued")

    def faxes(self, job_id: str) -> list[Fax]:
        return self.db.run_sync(fax_store.faxes_of, job_id)

    def state(self, job_id: str) -> JobState:
        job = self.db.run_sync(store.get_job, job_id)
        assert job is not None
        return job.state


@pytest.fixture
def gateway(
    write_config: Callable[..., Path], config_data: dict[str, Any], tmp_path: Path
) -> Iterator[Gateway]:
    data_dir = tmp_path / "data"
    path = write_config(merge(config_data, {"queue": {"scan_interval_seconds": 30}}))
    db = Database(data_dir / "store.db").open_sync()
    try:
        yield Gateway(path, data_dir, db)
    finally:
        db.close()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def user_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def rows(table: str) -> dict[str, list[str]]:
    """Table lines by their first cell, split on the header's column starts."""
    lines = table.splitlines()
    header = lines[0]
    starts = [
        i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 2 : i] == "  ")
    ]
    result: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        result[cells[0]] = cells
    return result


# -- list and show ----------------------------------------------------------------------------


def test_list_shows_an_aligned_table_newest_first(gateway: Gateway) -> None:
    """Each job is one aligned row: id, state, age, sender, numbers, pages, attempts, error."""
    old = gateway.job("+12015550123", age=3 * 3600 + 5 * 60)
    gateway.prepare(old, pages=3)
    gateway.db.run_sync(store.defer_job, old, LONG_ERROR, 60)
    many = gateway.job(
        "+12015550124", "+12015550125", "+12015550126", sender="bob@example.com", age=90
    )
    out = ok(gateway.run("list"))
    lines = out.splitlines()
    assert lines[0].split() == [
        "JOB", "STATE", "AGE", "SENDER", "NUMBERS", "PAGES", "ATTEMPTS", "LAST", "ERROR",
    ]  # fmt: skip
    table = rows(out)
    assert list(table) == [many, old]
    assert table[old][:7] == [
        old, "prepared", "3h05m", "alice@example.com", "+1 201-555-0123", "3", "1",
    ]  # fmt: skip
    assert table[old][7].startswith("the carrier answered 503 Service Unavailable and then")
    assert table[old][7].endswith("...") and len(table[old][7]) <= 60
    assert table[many][:6] == [
        many, "received", "1m", "bob@example.com", "+1 201-555-0124, +1 201-555-0125 +1 more", "-",
    ]  # fmt: skip
    assert "unfinished: received 1, prepared 1, uploaded 0, submitted 0, held 0" in out


def test_list_filters_by_state_limits_and_prints_json(gateway: Gateway) -> None:
    """--state keeps one state, --limit the newest N, --json gives the full rows."""
    held = gateway.job(age=300)
    gateway.hold(held, JobState.RECEIVED)
    first = gateway.job(age=200)
    second = gateway.job("+12015550124", "+12015550125", age=100)

    assert list(rows(ok(gateway.run("list", "--state", "held")))) == [held]
    assert list(rows(ok(gateway.run("list", "--limit", "2")))) == [second, first]
    assert ok(gateway.run("list", "--state", "failed")).startswith("no jobs in state failed")

    listed = json.loads(ok(gateway.run("list", "--state", "received", "--json")))
    assert [entry["id"] for entry in listed] == [second, first]
    entry = listed[0]
    assert entry["state"] == "received"
    assert entry["numbers"] == ["+12015550124", "+12015550125"]
    assert entry["sender"] == "alice@example.com"
    assert entry["subject"] == "Contract"
    assert 100 <= entry["age_seconds"] < 160
    assert [fax["state"] for fax in entry["faxes"]] == ["pending", "pending"]
    held_entry = json.loads(ok(gateway.run("list", "--state", "held", "--json")))[0]
    assert held_entry["error"] == "crashed 1 times while preparing; held for an operator"

    assert user_error(gateway.run("list", "--state", "lost"))
    assert "not a whole number" in user_error(gateway.run("list", "--limit", "-3"))


def test_show_prints_the_job_and_its_faxes(gateway: Gateway) -> None:
    """show lists the job's fields, its files and one row per fax with the carrier's id."""
    job_id = gateway.job("+12015550123", "+12015550124")
    document = gateway.prepare(job_id)
    gateway.upload(job_id)
    first, second = gateway.faxes(job_id)
    gateway.submit(first.id, "fx-111")
    gateway.db.run_sync(fax_store.fail_fax, second.id, 5148, "busy line")

    out = ok(gateway.run("show", job_id.lower()))
    assert f"job          {job_id}" in out
    assert "state        submitted" in out
    assert "sender       alice@example.com" in out
    assert "subject      Contract" in out
    assert f"document     {document}\n" in out
    faxes = rows(out.split("\n\n", 1)[1])
    assert faxes[str(first.id)][1:6] == ["+1 201-555-0123", "submitted", "fx-111", "queued", "1"]
    assert faxes[str(second.id)][1:3] == ["+1 201-555-0124", "failed"]
    assert faxes[str(second.id)][6] == "5148 busy line"

    shown = json.loads(ok(gateway.run("show", job_id, "--json")))
    assert shown["id"] == job_id and shown["pages"] == 2
    assert shown["document_path"] == str(document)
    assert shown["last_error"] == "5148 busy line"
    assert [(f["recipient"], f["carrier_id"]) for f in shown["faxes"]] == [
        ("+12015550123", "fx-111"),
        ("+12015550124", None),
    ]


def test_terminal_controls_from_mail_are_shown_escaped_not_obeyed(gateway: Gateway) -> None:
    """A Subject and sender carrying ESC sequences (retitle, clear screen) print as text."""
    hostile = "Invoice\x1b]0;owned\x07\x1b[2J\u202egnp.exe"
    job_id = gateway.job(sender="eve\x1b[8m@example.com", subject=hostile)
    for out in (ok(gateway.run("show", job_id)), ok(gateway.run("list"))):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "eve\\x1b[8m@example.com" in out
    assert "Invoice\\x1b]0;owned\\x07\\x1b[2J\\u202egnp.exe" in ok(gateway.run("show", job_id))
    assert json.loads(ok(gateway.run("show", job_id, "--json")))["subject"] == hostile


def test_show_of_an_unknown_job_is_a_user_error(gateway: Gateway) -> None:
    """An id that is not in the store exits 2 with a message naming it."""
    err = user_error(gateway.run("show", "J000NOSUCHJOB"))
    assert "no job 'J000NOSUCHJOB' in the queue" in err


def test_a_missing_store_is_not_created(
    write_config: Callable[..., Path], config_data: dict[str, Any], tmp_path: Path
) -> None:
    """A data.dir without a store (a typo, say) is reported, not silently made empty."""
    path = write_config(merge(config_data, {"data": {"dir": str(tmp_path / "typo")}}))
    err = user_error(run_cli("queue", "list", "--config", str(path)))
    assert f"no store at {tmp_path / 'typo' / 'store.db'}" in err
    assert not (tmp_path / "typo" / "store.db").exists()


def test_list_reads_beside_a_daemon_mid_write(gateway: Gateway) -> None:
    """With another connection inside a write transaction, list shows what is committed."""
    committed = gateway.job(age=60)
    conn = sqlite3.connect(gateway.data_dir / "store.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE jobs SET state = 'held' WHERE id = ?", (committed,))
        assert rows(ok(gateway.run("list")))[committed][1] == "received"
        conn.execute("ROLLBACK")
    finally:
        conn.close()


# -- retry and cancel -------------------------------------------------------------------------


def test_retry_sends_a_held_job_back_to_its_stage(gateway: Gateway) -> None:
    """A job held while uploading goes back to prepared, and the output says when."""
    job_id = gateway.job()
    gateway.prepare(job_id)
    gateway.hold(job_id, JobState.PREPARED)

    out = ok(gateway.run("retry", job_id))
    assert out.strip() == (
        f"job {job_id}: held -> prepared; 1 fax(es) to send, "
        "picked up within 30 s by the running gateway"
    )
    job = gateway.db.run_sync(store.get_job, job_id)
    assert job is not None
    assert (job.state, job.pickups, job.error) == (JobState.PREPARED, 0, None)


def test_retry_prepares_again_when_the_document_is_gone(gateway: Gateway) -> None:
    """Without its document file the job restarts from the spooled message."""
    job_id = gateway.job()
    gateway.prepare(job_id).unlink()
    gateway.hold(job_id, JobState.PREPARED)

    out = ok(gateway.run("retry", job_id))
    assert "held -> received (its document is gone: it is prepared again" in out
    job = gateway.db.run_sync(store.get_job, job_id)
    assert job is not None
    assert (job.state, job.document_path) == (JobState.RECEIVED, None)


def test_retry_refuses_a_job_whose_files_are_all_gone(gateway: Gateway) -> None:
    """No message and no document: exit 2 with advice, and the job stays held."""
    job_id = gateway.job()
    gateway.prepare(job_id).unlink()
    gateway.hold(job_id, JobState.PREPARED)
    job = gateway.db.run_sync(store.get_job, job_id)
    assert job is not None
    gateway.spool.remove(job.spool_path)

    err = user_error(gateway.run("retry", job_id))
    assert f"job {job_id} cannot be retried" in err
    assert "ask the sender to send it again" in err
    assert gateway.state(job_id) is JobState.HELD


def test_retry_of_a_job_held_before_its_document_needs_its_message(gateway: Gateway) -> None:
    """Held while preparing: back to received from the message; with the message gone, exit 2."""
    kept = gateway.job(age=60)
    gateway.hold(kept, JobState.RECEIVED)
    lost = gateway.job(age=30)
    gateway.hold(lost, JobState.RECEIVED)
    lost_job = gateway.db.run_sync(store.get_job, lost)
    assert lost_job is not None
    gateway.spool.remove(lost_job.spool_path)

    out = ok(gateway.run("retry", kept))
    assert out.startswith(f"job {kept}: held -> received; 1 fax(es) to send")
    assert gateway.state(kept) is JobState.RECEIVED
    assert f"job {lost} cannot be retried" in user_error(gateway.run("retry", lost))
    assert gateway.state(lost) is JobState.HELD


def test_retry_of_a_failed_job_resends_only_its_failed_faxes(gateway: Gateway) -> None:
    """A failed fax is pending again; the delivered sibling stays delivered."""
    job_id = gateway.job("+12015550123", "+12015550124")
    gateway.prepare(job_id)
    gateway.upload(job_id)
    first, _ = gateway.faxes(job_id)
    gateway.submit(first.id, "fx-1")
    gateway.db.run_sync(fax_store.record_carrier_status, "fx-1", "delivered", Outcome.SUCCEEDED)
    # The second fax never reached the carrier: its job failed (a refused upload, say).
    assert gateway.db.run_sync(store.fail_job, job_id, "storage refused the document")
    assert gateway.state(job_id) is JobState.FAILED

    out = ok(gateway.run("retry", job_id))
    assert f"job {job_id}: failed -> uploaded; 1 fax(es) to send" in out
    assert [fax.state for fax in gateway.faxes(job_id)] == [FaxState.DELIVERED, FaxState.PENDING]


def test_retry_refuses_jobs_that_are_not_held_or_failed(gateway: Gateway) -> None:
    """A job still moving, or an unknown id, is exit 2 and changes nothing."""
    job_id = gateway.job()
    err = user_error(gateway.run("retry", job_id))
    assert f"job {job_id} is received, still in the queue" in err
    assert gateway.state(job_id) is JobState.RECEIVED
    assert "no job 'JNOPE'" in user_error(gateway.run("retry", "JNOPE"))


def test_cancel_stops_unsent_faxes_and_says_what_cannot_be_stopped(gateway: Gateway) -> None:
    """Pending faxes are cancelled, the one at the carrier stays; a second cancel is exit 2."""
    job_id = gateway.job("+12015550123", "+12015550124")
    gateway.prepare(job_id)
    gateway.upload(job_id)
    first, _ = gateway.faxes(job_id)
    gateway.submit(first.id, "fx-9")

    out = ok(gateway.run("cancel", job_id))
    assert f"job {job_id}: cancelled (1 fax(es) will not be sent)" in out
    assert "1 fax(es) already at the carrier cannot be called back" in out
    assert gateway.state(job_id) is JobState.CANCELLED
    assert [fax.state for fax in gateway.faxes(job_id)] == [FaxState.SUBMITTED, FaxState.CANCELLED]

    err = user_error(gateway.run("cancel", job_id))
    assert f"job {job_id} is already cancelled" in err
    assert "no job 'JNOPE'" in user_error(gateway.run("cancel", "JNOPE"))


# -- dead letters and the outbox --------------------------------------------------------------


def _inbound(gateway: Gateway, carrier_id: str, *, with_file: bool) -> int:
    now = time.time() - 600
    inbound_id = gateway.db.run_sync(
        inbound_store.announce_inbound,
        carrier_id=carrier_id,
        from_number="+12015550177",
        to_number="+12015550100",
        pages=4,
        duration=60,
        fax_time=None,
        media_url=f"https://media.example.com/{carrier_id}",
        now=now,
    )
    assert inbound_id is not None
    if not with_file:
        gateway.db.run_sync(
            inbound_store.mark_dead, inbound_id, None, "download failed: 404 Not Found", now
        )
        return inbound_id
    dead = dead_letter_dir_of(gateway) / f"{inbound_id:06d}-{carrier_id}.pdf"
    dead.parent.mkdir(parents=True, exist_ok=True)
    dead.write_bytes(b"%PDF-1.4\n")
    message = gateway.data_dir / "outbox" / f"{carrier_id}.eml"
    message.parent.mkdir(parents=True, exist_ok=True)
    message.write_bytes(b"Subject: fax\r\n\r\nfax\r\n")
    gateway.db.run_sync(
        outbox_store.enqueue,
        key=mail_key(carrier_id),
        kind="inbound",
        recipients=["office@example.com"],
        message_path=message,
        now=now,
    )
    entry = gateway.db.run_sync(outbox_store.get_by_key, mail_key(carrier_id))
    assert entry is not None
    gateway.db.run_sync(outbox_store.mark_dead, entry.id, "relay refused: 451 try later", now)
    gateway.db.run_sync(
        inbound_store.mark_dead, inbound_id, str(dead), "mail undeliverable: 451 try later", now
    )
    return inbound_id


def dead_letter_dir_of(gateway: Gateway) -> Path:
    return gateway.data_dir / "dead-letter"


def test_dead_letters_listed_and_requeued(
    gateway: Gateway, make_config: Callable[..., Any]
) -> None:
    """The list shows both kinds of dead letter; requeue by id mails again, by carrier id fetches
    again, and both leave the list."""
    config = make_config()
    assert DataDir(config.data.dir).dead_letter == dead_letter_dir_of(gateway)
    with_file = _inbound(gateway, "in-aaa", with_file=True)
    without = _inbound(gateway, "in-bbb", with_file=False)

    out = ok(gateway.run("dead-letter"))
    table = rows(out)
    assert table[str(with_file)][1:8] == [
        "in-aaa", "10m", "+1 201-555-0177", "+1 201-555-0100", "4", "0",
        f"{with_file:06d}-in-aaa.pdf",
    ]  # fmt: skip
    assert table[str(with_file)][8] == "mail undeliverable: 451 try later"
    assert table[str(without)][7:] == ["-", "download failed: 404 Not Found"]
    listed = json.loads(ok(gateway.run("dead-letter", "--json")))
    assert [(d["id"], d["file_exists"]) for d in listed] == [(with_file, True), (without, False)]

    out = ok(gateway.run("dead-letter", "requeue", str(with_file)))
    assert out.strip() == (
        f"inbound fax {with_file} (in-aaa): its mail is queued again and goes out "
        "within 30 s by the running gateway"
    )
    fax = gateway.db.run_sync(inbound_store.get_inbound, with_file)
    assert fax is not None and fax.state is InboundState.MAILED
    assert fax.file_path == str(DataDir(config.data.dir).inbound / f"{with_file:06d}-in-aaa.pdf")
    assert Path(fax.file_path).is_file()
    mail = gateway.db.run_sync(outbox_store.get_by_key, mail_key("in-aaa"))
    assert mail is not None and mail.state is OutboxState.PENDING

    out = ok(gateway.run("dead-letter", "requeue", "in-bbb"))
    assert "its document is fetched from the carrier again" in out
    fax = gateway.db.run_sync(inbound_store.get_inbound, without)
    assert fax is not None and fax.state is InboundState.ANNOUNCED

    assert ok(gateway.run("dead-letter")).strip() == "no dead letters"
    err = user_error(gateway.run("dead-letter", "requeue", str(with_file)))
    assert f"inbound fax {with_file} (in-aaa) is mailed, not a dead letter" in err
    assert "no inbound fax '999'" in user_error(gateway.run("dead-letter", "requeue", "999"))


def test_dead_letter_requeue_with_its_file_gone_is_a_user_error(gateway: Gateway) -> None:
    """A dead letter whose file was removed by hand is named, not a traceback; it stays dead."""
    inbound_id = _inbound(gateway, "in-ccc", with_file=True)
    (dead_letter_dir_of(gateway) / f"{inbound_id:06d}-in-ccc.pdf").unlink()
    err = user_error(gateway.run("dead-letter", "requeue", str(inbound_id)))
    assert "is missing" in err
    fax = gateway.db.run_sync(inbound_store.get_inbound, inbound_id)
    assert fax is not None and fax.state is InboundState.DEAD


def test_outbox_lists_mail_waiting_or_given_up_on(gateway: Gateway) -> None:
    """Sent mail is left out unless asked for; --json has the full rows."""
    ids: dict[str, int] = {}
    for key, state in (("a", "pending"), ("b", "sent"), ("c", "failed")):
        path = gateway.data_dir / "outbox" / f"{key}.eml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        gateway.db.run_sync(
            outbox_store.enqueue,
            key=f"report:{key}:delivered",
            kind="delivered",
            recipients=["alice@example.com"],
            message_path=path,
            now=time.time() - 600,
        )
        entry = gateway.db.run_sync(outbox_store.get_by_key, f"report:{key}:delivered")
        assert entry is not None
        ids[state] = entry.id
        if state == "sent":
            gateway.db.run_sync(outbox_store.mark_sent, entry.id)
        elif state == "failed":
            gateway.db.run_sync(outbox_store.mark_failed, entry.id, "550 5.1.1 no such user")

    table = rows(ok(gateway.run("outbox")))
    assert list(table) == [str(ids["pending"]), str(ids["failed"])]
    assert table[str(ids["pending"])][1:7] == [
        "pending", "delivered", "10m", "alice@example.com", "0", "due",
    ]  # fmt: skip
    assert table[str(ids["failed"])][7] == "550 5.1.1 no such user"
    assert list(rows(ok(gateway.run("outbox", "--state", "sent")))) == [str(ids["sent"])]
    listed = json.loads(ok(gateway.run("outbox", "--state", "failed", "--json")))
    assert [(m["id"], m["key"], m["error"]) for m in listed] == [
        (ids["failed"], "report:c:delivered", "550 5.1.1 no such user")
    ]


# -- where the files are, on a node of a shared store -------------------------------------------


def test_show_and_dead_letters_say_where_each_file_is_on_a_node_of_a_shared_store(
    write_config: Callable[..., Path],
    config_data: dict[str, Any],
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_schema: str,
) -> None:
    """On PostgreSQL, node B (no working copy yet) reads A's message and fax as in the shared
    store, a document no one has as missing, and, once it has its own copy, the message as
    present locally; JSON says the same."""
    dsn = postgres_server.dsn(postgres_schema)
    node_a, node_b = DataDir(tmp_path / "a"), DataDir(tmp_path / "b")
    db = PostgresDatabase(dsn).open_sync()
    try:
        job_id = new_job_id()
        spool = node_a.spool / f"{job_id}.eml"
        new = NewJob(
            id=job_id, sender="alice@example.com", auth_user=None, client_address=None,
            subject="s", message_id=f"<{job_id}@example.com>", from_number="+12015550100",
            spool_path=spool, recipients=("+12015550123",),
        )  # fmt: skip
        db.run_sync(store.create_job, new, time.time(), [(spool, b"Subject: x\r\n\r\nx\r\n")])
        document = node_a.documents / f"{job_id}.pdf"
        assert db.run_sync(
            store.advance, job_id, JobState.RECEIVED, JobState.PREPARED,
            document_path=document, document_type="application/pdf", pages=1,
        )  # fmt: skip
        inbound_id = db.run_sync(
            inbound_store.announce_inbound, carrier_id="in-ddd", from_number="+12015550177",
            to_number="+12015550100", pages=1, duration=30, fax_time=None,
            media_url="https://media.example.com/in-ddd", now=time.time(),
        )  # fmt: skip
        received = node_a.inbound / f"{inbound_id:06d}-in-ddd.pdf"
        db.run_sync(
            inbound_store.mark_stored, inbound_id, str(received), time.time(),
            [(received, b"%PDF-1.4\n")],
        )  # fmt: skip
        dead = node_a.dead_letter / received.name
        db.run_sync(inbound_store.mark_dead, inbound_id, str(dead), "relay refused", time.time())
    finally:
        db.close()
    config = merge(config_data, {"data": {"dir": str(node_b.root)}})
    config = merge(config, {"store": {"backend": "postgresql", "dsn": dsn}})
    path = write_config(config, "b.toml")

    def queue(*args: str) -> str:
        return ok(run_cli("queue", *args, "--config", str(path)))

    out = queue("show", job_id)
    assert f"message      {spool} (in the shared store; no copy on this node yet)\n" in out
    assert f"document     {document} (missing)\n" in out
    shown = json.loads(queue("show", job_id, "--json"))
    assert (shown["spool_whereabouts"], shown["document_whereabouts"]) == ("shared", "missing")
    row = rows(queue("dead-letter"))[str(inbound_id)]
    assert row[7] == f"{received.name} (in the shared store; no copy on this node yet)"
    [listed] = json.loads(queue("dead-letter", "--json"))
    assert (listed["file_exists"], listed["file_whereabouts"]) == (False, "shared")

    # B's own working copy (as SharedFiles.fetch writes it): present locally.
    copy = node_b.spool / spool.name
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"Subject: x\r\n\r\nx\r\n")
    assert f"message      {spool}\n" in queue("show", job_id)
    assert json.loads(queue("show", job_id, "--json"))["spool_whereabouts"] == "local"
