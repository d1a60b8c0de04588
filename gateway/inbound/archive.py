"""The inbound archive: a copy of every received fax (PDF) with a JSON sidecar, kept for records.

Written by the inbound worker's archive step (gateway/inbound/worker.py: stored -> archived),
before the fax's mail is queued, to `inbound.archive_dir` and/or under `inbound.archive_s3_prefix`
in storage.bucket. Each fax has one name, derived from its row (`YYYY/MM/DD/<id>-<carrier id>`),
so a step repeated after a crash overwrites its own copy: no duplicate, and the row only says
archived once both writes are done, so no lost copy either. The sidecar is written after the
PDF: a sidecar names a complete PDF.

`purge` removes copies older than `inbound.archive_retention_days` (the daily purge calls it;
unset: kept forever).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import InboundConfig
from gateway.document import kinds
from gateway.fsutil import write_atomic
from gateway.inbound.compose import fax_moment, shown_number
from gateway.inbound.files import stored_name
from gateway.storage.s3 import S3Storage
from gateway.store.inbound import InboundFax

SIDECAR = ".json"


def archive_name(fax: InboundFax) -> str:
    """`2024/06/19/000042-<carrier id>`: by the day we heard of the fax, unique by row."""
    day = datetime.fromtimestamp(fax.created_at, UTC)
    return f"{day:%Y/%m/%d}/{stored_name(fax, None).removesuffix(kinds.extension(''))}"


def sidecar(fax: InboundFax, recipients: Sequence[str], document: str) -> dict[str, Any]:
    """What is known of the fax, beside its document."""
    return {
        "from": shown_number(fax.from_number),
        "to": shown_number(fax.to_number),
        "pages": fax.pages,
        "time": fax_moment(fax).isoformat(),
        "carrier_id": fax.carrier_id,
        "recipients": list(recipients),
        "document": document,
    }


class Archive:
    """Where archived faxes go: a folder, objects in the storage bucket, or both."""

    def __init__(self, s3: S3Storage | None = None) -> None:
        self.s3 = s3

    @staticmethod
    def wanted(settings: InboundConfig) -> bool:
        return settings.archive_dir is not None or settings.archive_s3_prefix is not None

    async def keep(
        self,
        settings: InboundConfig,
        fax: InboundFax,
        document: bytes,
        content_type: str,
        recipients: Sequence[str],
    ) -> list[str]:
        """Write the fax's copy (`document`, as PDF where it could be made one) and sidecar
        everywhere configured; where they went. Raises OSError or StorageError (the step is
        retried)."""
        name = archive_name(fax)
        filename = name + kinds.extension(content_type)
        meta = sidecar(fax, recipients, filename.rsplit("/", 1)[-1])
        meta_bytes = json.dumps(meta, indent=2, ensure_ascii=False).encode() + b"\n"
        places: list[str] = []
        if settings.archive_dir is not None:
            folder = settings.archive_dir
            await asyncio.to_thread(write_atomic, folder / filename, document)
            await asyncio.to_thread(write_atomic, folder / (name + SIDECAR), meta_bytes)
            places.append(str(folder / filename))
        if settings.archive_s3_prefix is not None:
            if self.s3 is None:
                raise RuntimeError("inbound.archive_s3_prefix is set but storage is not S3")
            prefix = settings.archive_s3_prefix
            await self.s3.put_object(prefix + filename, document, content_type)
            await self.s3.put_object(prefix + name + SIDECAR, meta_bytes, "application/json")
            places.append(f"s3://{self.s3.bucket}/{prefix}{filename}")
        return places

    async def purge(self, settings: InboundConfig, older_than: float, *, dry_run: bool) -> int:
        """Remove (or with `dry_run` count) archived faxes written before `older_than`."""
        removed = 0
        if settings.archive_dir is not None:
            removed += await asyncio.to_thread(
                _purge_folder, settings.archive_dir, older_than, dry_run
            )
        if settings.archive_s3_prefix is not None and self.s3 is not None:
            removed += await self._purge_bucket(settings.archive_s3_prefix, older_than, dry_run)
        return removed

    async def _purge_bucket(self, prefix: str, older_than: float, dry_run: bool) -> int:
        assert self.s3 is not None
        objects = await self.s3.objects_under(prefix)
        # One fax is its sidecar and its document: judged by the sidecar, written last.
        stems = {
            key[: -len(SIDECAR)]
            for key, modified in objects
            if key.endswith(SIDECAR) and modified < older_than
        }
        if not dry_run:
            for key, _modified in objects:
                if key.rsplit(".", 1)[0] in stems:
                    await self.s3.delete_object(key)
        return len(stems)


def _purge_folder(folder: Path, older_than: float, dry_run: bool) -> int:
    if not folder.is_dir():
        return 0
    removed = 0
    for meta in sorted(folder.rglob("*" + SIDECAR)):
        try:
            if meta.stat().st_mtime >= older_than:
                continue
        except FileNotFoundError:
            continue
        removed += 1
        if dry_run:
            continue
        # The document first: a sidecar left alone still marks a copy to purge next time.
        for document in meta.parent.glob(meta.stem + ".*"):
            if document != meta:
                document.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        # Day, month and year folders left empty go too, never archive_dir itself.
        parent = meta.parent
        while parent != folder and folder in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
    return removed
