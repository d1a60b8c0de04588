"""What the daemon does at start-up, before it accepts mail: it tidies what a crash left."""

from __future__ import annotations

from typing import Any

from gateway.config import config_from_dict
from gateway.daemon import Gateway
from gateway.datadir import DataDir
from gateway.store import Database
from gateway.store.jobs import create_job
from gateway.store.records import NewJob, new_job_id
from gateway.store.spool import Spool
from tests import samples
from tests.conftest import free_port
from tests.servers.gateway import gateway_config_data
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox


async def test_spool_files_a_crash_orphaned_are_removed_and_jobs_files_kept(
    config_data: dict[str, Any], sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A message spooled by a process killed before its job row (its client got no 250 and
    resends) is removed at the next start; a queued job's message stays."""
    config = config_from_dict(
        gateway_config_data(config_data, sandbox, relay_server, free_port()), env={}
    )
    data = DataDir(config.data.dir)
    spool = Spool(data.spool)
    orphan = spool.write(new_job_id(), samples.mail(samples.attachment(samples.pdf(1), "a.pdf")))
    kept_id = new_job_id()
    kept = spool.write(kept_id, samples.mail(samples.attachment(samples.pdf(1), "b.pdf")))
    db = await Database(data.store).open()
    try:
        job = NewJob(
            id=kept_id,
            sender="alice@example.com",
            auth_user=None,
            client_address=None,
            subject="",
            message_id="",
            from_number="+12015550100",
            spool_path=kept,
            recipients=("+12015550123",),
        )
        await db.run(create_job, job)
        # Held for an operator: nothing moves it during this test.
        await db.run(lambda conn: conn.execute("UPDATE jobs SET state = 'held'"))
    finally:
        db.close()
    gw = Gateway(config)
    await gw.start()
    try:
        assert not orphan.exists()
        assert kept.exists()
    finally:
        await gw.stop()
