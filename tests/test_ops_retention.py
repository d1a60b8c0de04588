"""Retention: finished rows and files older than data.retention_days go, once a day, and by hand.

A real store in a real data.dir, brought to each state by the store's own functions; the
daily worker runs on a movable clock; the command runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from gateway.config import Config, ConfigError, config_from_dict
from gateway.datadir import DataDir
from gateway.ops.metrics import Metrics
from gateway.ops.retention import DAY, RetentionWorker, purge
from gateway.store import Database
from gateway.store import events as event_store
from gateway.store import faxes as fax_store
from gateway.store import inbound as inbound_store
from gateway.store import jobs as job_store
from gateway.store import outbox as outbox_store
from gateway.store.inbound import InboundState
from gateway.store.records import JobState, NewJob, new_job_id
from gateway.store.retention import referenced_among
from gateway.store.spool import Spool
from tests.conftest import merge, run_cli
from tests.helpers import Clock

NOW = time.time()
OLD = NOW - 40 * DAY
RECENT = NOW - 2 * DAY


@dataclass
class Store:
    config: Config
    db: Database
    data: DataDir

    def job(self, at: float, *, final: bool = True, reported: bool = True) -> str:
        """A job with one fax at `at`: failed (and reported and cleaned if `reported`) if
        `final`, else prepared with its fax pending."""
        job_id = new_job_id(at)
        spool = Spool(self.data.spool).write(job_id, b"Subject: x\r\n\r\nbody\r\n")
        run = self.db.run_sync
        run(
            job_store.create_job,
            NewJob(
                id=job_id,
                sender="alice@example.com",
                auth_user=None,
                client_address="127.0.0.1",
                subject="Contract",
                message_id=f"<{job_id}@example.com>",
                from_number="+12015550100",
                spool_path=spool,
                recipients=("+12015550123",),
            ),
            at,
        )
        document = self.data.documents / f"{job_id}.pdf"
        document.parent.mkdir(parents=True, exist_ok=True)
        document.write_bytes(b"%PDF-1.4\n")
        run(
            job_store.advance,
            job_id,
            JobState.RECEIVED,
            JobState.PREPARED,
            now=at,
            document_path=document,
            document_type="application/pdf",
            pages=1,
        )
        if final:
            [fax] = run(job_store.fail_job, job_id, "too many pages", at)
            if reported:
                assert run(fax_store.mark_reported, fax.id, at)
                spool.unlink()
                document.unlink()
                run(job_store.mark_document_deleted, job_id, at)
        return job_id

    def jobs(self) -> set[str]:
        return {j.id for j in self.db.run_sync(job_store.list_jobs, None, -1)}

    def file(self, path: Path, at: float | None = None) -> Path:
        """A file at `path`, last modified at `at` (default: now)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%PDF-1.4\n")
        if at is not None:
            os.utime(path, (at, at))
        return path


@pytest.fixture
def store(make_config: Callable[..., Config]) -> Iterator[Store]:
    config = make_config()
    data = DataDir(config.data.dir)
    opened = Store(config, Database(data.store).open_sync(), data)
    try:
        yield opened
    finally:
        opened.db.close()


def fill(store: Store) -> dict[str, Any]:
    """One of each: what must go (old and finished) and what must stay."""
    run = store.db.run_sync
    kept: dict[str, Any] = {}
    old_done = store.job(OLD)
    kept["pending"] = store.job(OLD, final=False)  # old but not finished
    kept["unreported"] = store.job(OLD, reported=False)  # final, outcome not told yet
    kept["recent"] = store.job(RECENT)
    # Events: processed long ago (go), never processed (stay).
    done_event = run(event_store.record_event, "c-1", "failed", "outbound", {}, OLD)
    run(event_store.mark_processed, done_event, OLD)
    run(event_store.record_event, "c-2", "queued", "outbound", {}, OLD)
    # Mail: sent long ago (goes), pending with its file (stays).
    sent_file = store.data.outbox / "sent.eml"
    run(outbox_store.enqueue, key="k-sent", kind="failed", recipients=["a@example.com"],
        message_path=sent_file, now=OLD)  # fmt: skip
    run(outbox_store.mark_sent, run(outbox_store.get_by_key, "k-sent").id, OLD)
    pending_file = store.file(store.data.outbox / "pending.eml", OLD)
    run(outbox_store.enqueue, key="k-pending", kind="failed", recipients=["a@example.com"],
        message_path=pending_file, now=OLD)  # fmt: skip

    # Inbound: delivered long ago (goes), a dead letter with its file (goes, file too), one
    # still stored (stays).
    def inbound(name: str, state: InboundState, file: Path | None) -> int:
        inbound_id = run(inbound_store.announce_inbound, carrier_id=name, from_number="+1555",
                         to_number="+1201", pages=1, duration=1, fax_time=None, media_url=None,
                         now=OLD)  # fmt: skip
        assert inbound_id is not None
        if state is InboundState.DEAD:
            run(inbound_store.mark_dead, inbound_id, str(file) if file else None, "550", OLD)
        elif state is InboundState.MAILED:
            run(inbound_store.mark_stored, inbound_id, "x", OLD)
            run(inbound_store.mark_mailed, inbound_id, OLD)
            run(inbound_store.set_file_path, inbound_id, None, OLD)
        else:
            run(inbound_store.mark_stored, inbound_id, str(file), OLD)
        return inbound_id

    dead_file = store.file(store.data.dead_letter / "000002-dead.pdf")
    stored_file = store.file(store.data.inbound / "000003-stored.pdf", OLD)
    inbound("mailed", InboundState.MAILED, None)
    inbound("dead", InboundState.DEAD, dead_file)
    kept["stored"] = inbound("stored", InboundState.STORED, stored_file)
    # Files no row names: an old one (swept) and one just written (never swept).
    orphan = store.file(store.data.spool / "orphan.eml", OLD)
    young = store.file(store.data.spool / "young.eml")
    kept.update(old_done=old_done, dead_file=dead_file, stored_file=stored_file,
                pending_file=pending_file, orphan=orphan, young=young)  # fmt: skip
    return kept


async def test_a_purge_removes_what_is_finished_and_old_and_nothing_else(store: Store) -> None:
    """Old finished jobs, faxes, processed events, sent mail, delivered inbound faxes and dead
    letters (with their files) and old unreferenced files go; unfinished, unreported, recent
    and still-referenced ones stay. A dry run counts the same and removes nothing."""
    kept = fill(store)
    before = store.jobs()
    dry = await purge(store.db, store.config, older_than=30 * DAY, now=NOW, dry_run=True)
    expected = {"jobs": 1, "faxes": 1, "events": 1, "outbox": 1, "inbound": 1,
                "dead_letters": 1, "files": 2, "archived": 0}  # fmt: skip
    assert dry == expected
    assert store.jobs() == before and kept["orphan"].exists() and kept["dead_file"].exists()

    counts = await purge(store.db, store.config, older_than=30 * DAY, now=NOW)
    assert counts == expected
    assert store.jobs() == before - {kept["old_done"]}
    assert {kept["pending"], kept["unreported"], kept["recent"]} <= store.jobs()
    assert not kept["orphan"].exists() and not kept["dead_file"].exists()
    assert kept["young"].exists() and kept["stored_file"].exists()
    assert kept["pending_file"].exists()
    run = store.db.run_sync
    assert [e.carrier_id for e in run(event_store.pending_events)] == ["c-2"]
    assert run(outbox_store.get_by_key, "k-sent") is None
    assert run(outbox_store.get_by_key, "k-pending") is not None
    left = [f.carrier_id for s in InboundState for f in run(inbound_store.inbound_in_state, s)]
    assert left == ["stored"]
    assert await purge(store.db, store.config, older_than=30 * DAY, now=NOW) == dict.fromkeys(
        expected, 0
    )


async def test_a_live_jobs_converted_pdfs_are_kept_with_its_message(store: Store) -> None:
    """The PDFs LibreOffice made of a live job's office files (spool/<job>.<n>.pdf) stay as
    long as its message does, however old; an old one whose message no row names goes."""
    spool = Spool(store.data.spool)
    job_id = store.job(OLD, final=False)
    converted = spool.write_converted(job_id, 0, b"%PDF-1.4\n")
    stray = spool.write_converted(new_job_id(OLD), 1, b"%PDF-1.4\n")
    for path in (spool.path_for(job_id), converted, stray):
        os.utime(path, (OLD, OLD))
    counts = await purge(store.db, store.config, older_than=30 * DAY, now=NOW)
    assert counts["files"] == 1
    assert spool.path_for(job_id).exists() and converted.exists()
    assert not stray.exists()
    assert spool.read_converted(spool.path_for(job_id)) == {0: b"%PDF-1.4\n"}


async def test_the_daily_purge_runs_once_a_day_across_restarts_and_is_counted(
    store: Store,
) -> None:
    """The worker purges at once on its first start, not again that day (nor after a
    restart: the last run is in the store), again a day later; each run logs its counts
    and adds them to faxgw_retention_purged_total."""
    fill(store)
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    worker = RetentionWorker(config=store.config, db=store.db, clock=clock, metrics=metrics)
    with capture_logs() as logs:
        assert await worker.run_once() == 1
        assert await worker.run_once() == 0
    [line] = [e for e in logs if e["event"] == "retention.purged"]
    assert (line["jobs"], line["dead_letters"], line["retention_days"]) == (1, 1, 30)
    assert metrics.registry.get_sample_value("faxgw_retention_purged_total", {"kind": "jobs"}) == 1
    restarted = RetentionWorker(config=store.config, db=store.db, clock=clock)
    assert await restarted.run_once() == 0
    due = await restarted.next_due()
    assert due is not None and clock() + DAY - 60 < due <= clock() + DAY
    clock.advance(DAY)
    assert await restarted.run_once() == 1


async def test_retention_days_zero_keeps_everything(store: Store) -> None:
    """data.retention_days = 0: the daily task has nothing to do and is never due."""
    fill(store)
    config = store.config.model_copy(
        update={"data": store.config.data.model_copy(update={"retention_days": 0})}
    )
    worker = RetentionWorker(config=config, db=store.db, clock=Clock())
    assert await worker.next_due() is None
    assert await worker.run_once() == 0
    assert len(store.jobs()) == 4


def test_queue_purge_by_hand_with_a_dry_run_first(
    store: Store, write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """`queue purge --older-than 7d --dry-run` says what would go and removes nothing;
    without --dry-run it removes it; a malformed age is refused."""
    kept = fill(store)
    before = store.jobs()
    store.db.close()  # the command opens the store itself, as beside a daemon
    path = write_config(config_data)
    dry = run_cli("queue", "purge", "--older-than", "7d", "--dry-run", "--config", str(path))
    assert dry.returncode == 0, dry.stderr
    assert "would remove 1 jobs" in dry.stdout and "would remove 1 dead letters" in dry.stdout
    store.db = Database(store.data.store).open_sync()
    assert store.jobs() == before and kept["orphan"].exists()
    store.db.close()
    done = run_cli("queue", "purge", "--older-than", "7d", "--json", "--config", str(path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["dry_run"], result["jobs"], result["older_than_seconds"]) == (False, 1, 7 * DAY)
    store.db = Database(store.data.store).open_sync()
    assert store.jobs() == before - {kept["old_done"]} and not kept["orphan"].exists()
    bad = run_cli("queue", "purge", "--older-than", "7 weeks", "--config", str(path))
    assert bad.returncode != 0 and "is not an age" in bad.stderr


def test_retention_keys_are_checked(config_data: dict[str, Any]) -> None:
    """retention_days cannot be negative; an S3 archive needs S3 storage."""
    with pytest.raises(ConfigError, match=r"data\.retention_days"):
        config_from_dict(merge(config_data, {"data": {"retention_days": -1}}), env={})
    with pytest.raises(ConfigError, match=r"archive_s3_prefix needs storage\.backend"):
        config_from_dict(merge(config_data, {"inbound": {"archive_s3_prefix": "a/"}}), env={})


def test_the_sweep_asks_the_rows_about_its_old_files_only(store: Store) -> None:
    """referenced_among answers with the asked files some row names (each row's path seen
    through the node's `local`), and nothing of the many rows that name other files."""
    run = store.db.run_sync
    named = [store.data.outbox / f"{n}.eml" for n in range(200)]
    for n, path in enumerate(named):
        run(outbox_store.enqueue, key=f"k-{n}", kind="failed", recipients=["a@example.com"],
            message_path=path, now=OLD)  # fmt: skip
    orphan = store.data.outbox / "orphan.eml"
    asked = {named[7], orphan}
    assert run(referenced_among, asked, lambda p: p) == {named[7]}
    moved = store.data.root / "elsewhere"
    assert run(referenced_among, {moved / "7.eml"}, lambda p: moved / p.name) == {moved / "7.eml"}
