"""The inbound archive: a PDF copy and a JSON sidecar of every received fax, before its mail.

Real components: the media server and store of test_inbound_worker's fixtures, the real outbox
and capturing relay, and SeaweedFS for the S3 archive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pypdf import PdfReader
from structlog.testing import capture_logs

from gateway.inbound.archive import Archive, archive_name
from gateway.inbound.worker import InboundWorker
from gateway.mailout.templates import MailRenderer
from gateway.ops.retention import DAY, purge
from gateway.storage import S3Storage, create_storage
from gateway.store.inbound import InboundState, revive
from tests import samples, test_inbound_worker
from tests.servers.seaweed import S3Server
from tests.test_inbound_worker import CALLER, ROUTED, Inbound

# The media server and the inbound worker's set-up, shared with the worker's own tests.
media = test_inbound_worker.media
start_inbound = test_inbound_worker.start_inbound


def archived(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


async def test_every_received_fax_is_archived_as_pdf_with_its_sidecar_before_it_is_mailed(
    start_inbound: Callable[..., Any], tmp_path: Path
) -> None:
    """A TIFF fax is archived as a PDF with a sidecar naming caller, number, pages, time,
    carrier id and recipients, while its mail is not queued yet; then it is mailed."""
    folder = tmp_path / "archive"
    inbound: Inbound = await start_inbound({"inbound": {"archive_dir": str(folder)}})
    inbound.media.files["scan"] = samples.tiff(2)
    fax_id = await inbound.announce("scan")
    # Download, then archive: one step each, and no mail before the copy is there.
    with capture_logs() as logs:
        await inbound.worker.run_once()
    archived_lines = [line for line in logs if line["event"] == "inbound.archived"]
    assert len(archived_lines) == 1
    assert not any("%PDF" in str(value) for line in logs for value in line.values())
    row = await inbound.row(fax_id)
    assert row.state in (InboundState.ARCHIVED, InboundState.MAILED)
    name = archive_name(row)
    assert archived(folder) == [Path(name + ".json"), Path(name + ".pdf")]
    assert len(PdfReader(folder / (name + ".pdf")).pages) == 2
    sidecar = json.loads((folder / (name + ".json")).read_text())
    assert sidecar == {
        "from": CALLER,
        "to": ROUTED,
        "pages": 2,
        "time": "2024-06-19T15:38:17.140000+00:00",
        "carrier_id": "in-scan",
        "recipients": ["fax-desk@example.com"],
        "document": Path(name).name + ".pdf",
    }
    await inbound.settle()
    assert (await inbound.row(fax_id)).state is InboundState.MAILED
    assert [m.rcpt_tos for m in inbound.relay.messages] == [("fax-desk@example.com",)]
    assert archived(folder) == [Path(name + ".json"), Path(name + ".pdf")]


async def test_a_fax_archived_again_after_an_interruption_is_one_copy(
    start_inbound: Callable[..., Any], tmp_path: Path
) -> None:
    """The archive step repeated for a fax (a crash before its row said archived, a requeued
    dead letter) overwrites its own copy: one PDF and one sidecar, and one mail."""
    folder = tmp_path / "archive"
    inbound: Inbound = await start_inbound({"inbound": {"archive_dir": str(folder)}})
    inbound.media.files["twice"] = samples.pdf(1)
    fax_id = await inbound.announce("twice")
    await inbound.worker.run_once()
    first = archived(folder)
    row = await inbound.row(fax_id)
    assert row.state is not InboundState.STORED and len(first) == 2
    # The row back at stored with its file, as a crash after the copy leaves it.
    await inbound.db.run(revive, fax_id, InboundState.STORED, row.file_path, inbound.clock())
    await inbound.settle()
    assert archived(folder) == first
    assert (await inbound.row(fax_id)).state is InboundState.MAILED
    assert len(inbound.relay.messages) == 1


async def test_a_fax_whose_copy_cannot_be_written_is_not_mailed_until_it_is(
    start_inbound: Callable[..., Any], tmp_path: Path
) -> None:
    """An archive that cannot be written (a file where its folder should be) defers the fax
    by the schedule, unmailed; once it can be written the fax is archived and mailed."""
    blocker = tmp_path / "archive"
    blocker.write_bytes(b"not a folder")
    inbound: Inbound = await start_inbound({"inbound": {"archive_dir": str(blocker)}})
    inbound.media.files["blocked"] = samples.pdf(1)
    fax_id = await inbound.announce("blocked")
    await inbound.settle()
    row = await inbound.row(fax_id)
    assert row.state is InboundState.STORED and "archive" in (row.error or "")
    assert row.next_attempt_at > inbound.clock() and inbound.relay.messages == []
    blocker.unlink()
    inbound.clock.advance(inbound.config.queue.max_backoff_seconds)
    await inbound.settle()
    assert (await inbound.row(fax_id)).state is InboundState.MAILED
    assert len(archived(blocker)) == 2 and len(inbound.relay.messages) == 1


async def test_the_s3_archive_keeps_copies_under_its_prefix_and_purges_them_by_age(
    start_inbound: Callable[..., Any], s3_env: S3Server
) -> None:
    """With archive_s3_prefix the copy and sidecar are objects in storage.bucket under the
    prefix (SeaweedFS); archive_retention_days removes them once older, and only them."""
    overrides = s3_env.config_overrides()
    overrides["inbound"] = {"archive_s3_prefix": "archive/", "archive_retention_days": 10}
    inbound: Inbound = await start_inbound(overrides)
    storage = create_storage(inbound.config, None)
    assert isinstance(storage, S3Storage)
    archive = Archive(storage)
    inbound.worker = InboundWorker(
        config=inbound.config,
        db=inbound.db,
        documents=inbound.worker.documents,
        renderer=MailRenderer(None),
        outbox_dir=inbound.config.data.dir / "outbox",
        clock=inbound.clock,
        archive=archive,
    )
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="other/keep.txt", Body=b"not ours to purge")
    try:
        inbound.media.files["s3"] = samples.pdf(2)
        fax_id = await inbound.announce("s3")
        await inbound.settle()
        row = await inbound.row(fax_id)
        assert row.state is InboundState.MAILED
        name = "archive/" + archive_name(row)
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_env.bucket)["Contents"])
        assert keys == [name + ".json", name + ".pdf", "other/keep.txt"]
        body = client.get_object(Bucket=s3_env.bucket, Key=name + ".json")["Body"].read()
        assert json.loads(body)["carrier_id"] == "in-s3"
        config = inbound.config
        now = inbound.clock()
        # Younger than 10 days: kept. Dry run past it: counted, kept.
        counts = await purge(
            inbound.db, config, older_than=None, now=now + 9 * DAY, archive=archive
        )
        assert counts["archived"] == 0
        dry = await purge(
            inbound.db, config, older_than=None, now=now + 11 * DAY, dry_run=True, archive=archive
        )
        assert dry["archived"] == 1
        assert len(client.list_objects_v2(Bucket=s3_env.bucket)["Contents"]) == 3
        counts = await purge(
            inbound.db, config, older_than=None, now=now + 11 * DAY, archive=archive
        )
        assert counts["archived"] == 1
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_env.bucket)["Contents"]]
        assert keys == ["other/keep.txt"]
    finally:
        await storage.close()


async def test_the_archive_folder_is_purged_by_archive_retention_days_only(
    start_inbound: Callable[..., Any], tmp_path: Path
) -> None:
    """A copy older than archive_retention_days goes with its sidecar and empty day folders;
    without archive_retention_days copies stay however old (the default: forever)."""
    folder = tmp_path / "archive"
    inbound: Inbound = await start_inbound(
        {"inbound": {"archive_dir": str(folder), "archive_retention_days": 3}}
    )
    inbound.media.files["old"] = samples.pdf(1)
    await inbound.announce("old")
    await inbound.settle()
    assert len(archived(folder)) == 2
    now = inbound.clock()
    forever = inbound.config.model_copy(
        update={
            "inbound": inbound.config.inbound.model_copy(update={"archive_retention_days": None})
        }
    )
    assert (await purge(inbound.db, forever, older_than=None, now=now + 400 * DAY))["archived"] == 0
    assert (await purge(inbound.db, inbound.config, older_than=None, now=now + 2 * DAY))[
        "archived"
    ] == 0
    counts = await purge(inbound.db, inbound.config, older_than=None, now=now + 4 * DAY)
    assert counts["archived"] == 1
    assert archived(folder) == [] and list(folder.iterdir()) == []
