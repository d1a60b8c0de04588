"""Document work in worker processes: the tasks the daemon's callers hand them.

The SMTP handler's DATA check (`check`), the prepare stage (`prepare`), the inbound worker's
conversion of a received fax (`inbound`: TIFF to PDF, page-1 preview) and the reports' rendering
of a transmission report (`transmission_report`) hand the document to a worker process
(gateway/document/isolated.py) instead of reading it on the daemon's threads.

The processes, their budgets and what a caller gets when one is exceeded (DocumentError
kind too_costly, WorkerDied, WorkersStopped) are gateway/document/pool.py's (`WorkerPool`,
which `DocumentWorkers` is).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import Config, CoverConfig
from gateway.document.mime import Attachment
from gateway.document.office import OfficeConverter
from gateway.document.pool import WorkerDied, WorkerPool
from gateway.mailout.privacy import PrivacyError
from gateway.store.inbound import InboundFax
from gateway.store.spool import Spool

if TYPE_CHECKING:  # the report's module imports this one
    from gateway.outbound.transmission import Transmission


@dataclass(frozen=True)
class Checked:
    """What the DATA check learnt: the headers the job keeps, and the fax's page count."""

    subject: str
    message_id: str
    pages: int
    # The PDFs LibreOffice made of its office files, by attachment index (spooled with it).
    converted: dict[int, bytes] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Converted:
    """An inbound fax's files to mail, (filename, content type, bytes) each, and its page-1
    preview as (content id, content type, bytes), or None."""

    attachments: list[tuple[str, str, bytes]]
    preview: tuple[str, str, bytes] | None


@dataclass(frozen=True)
class Prepared:
    """The document a job faxes, written durably by the worker."""

    path: Path
    content_type: str
    pages: int


def _settings(config: Config, cover: CoverConfig | None = None) -> dict[str, Any]:
    templates = config.templates.dir
    return {
        "max_pages": config.fax.max_pages,
        "paper": config.fax.paper,
        "cover": (cover or config.cover).model_dump(mode="json"),
        "templates_dir": str(templates) if templates else None,
        "convert_office": config.documents.convert_office,
        "max_office_files": config.documents.max_office_files,
    }


class DocumentWorkers(WorkerPool):
    """The daemon's document worker processes (a component: `start()`, `stop()`), and the
    document work they do for its callers."""

    async def check(
        self,
        message: bytes | Path,
        *,
        cover: CoverConfig | None = None,
        office: OfficeConverter | None = None,
    ) -> Checked:
        """The DATA check in a worker: DocumentError if the message cannot be faxed (with
        `cover`, the message's own cover settings), ConversionBusy when LibreOffice had no
        slot in time. `message`: its bytes, or the file the worker reads it from (the SMTP
        session's spool draft: the message does not cross the pipe)."""
        header: dict[str, Any] = {"task": "check", "settings": _settings(self.config, cover)}
        blobs: list[bytes] = []
        if isinstance(message, Path):
            header["message_path"] = str(message)
        else:
            blobs.append(message)
        answer, converted = await self._converting(header, blobs, {}, office)
        return Checked(
            subject=str(answer["subject"]),
            message_id=str(answer["message_id"]),
            pages=int(answer["pages"]),
            converted=converted,
        )

    async def prepare(
        self,
        *,
        job_id: str,
        spool: Spool,
        spool_path: Path,
        documents_dir: Path,
        sender: str,
        recipient: str,
        subject: str,
        created_at: float,
        cover: CoverConfig | None = None,
        office: OfficeConverter | None = None,
    ) -> Prepared:
        """Build a job's document in a worker and have it written to documents_dir (`cover`:
        the job's own cover settings; `subject`, the job's, is the cover page's)."""
        header = {
            "task": "prepare",
            "settings": _settings(self.config, cover),
            "job_id": job_id,
            "spool_dir": str(spool.root),
            "spool_path": str(spool_path),
            "documents_dir": str(documents_dir),
            "sender": sender,
            "recipient": recipient,
            "subject": subject,
            "created_at": created_at,
        }
        # The PDFs made at DATA are in the spool; one missing (a message spooled by an older
        # version) is made now and kept there too.
        known = await asyncio.to_thread(spool.read_converted, spool_path)
        answer, converted = await self._converting(header, [], known, office)
        for index in converted.keys() - known.keys():
            await asyncio.to_thread(spool.write_converted, job_id, index, converted[index])
        return Prepared(
            path=Path(answer["path"]),
            content_type=str(answer["content_type"]),
            pages=int(answer["pages"]),
        )

    async def _converting(
        self,
        header: dict[str, Any],
        blobs: list[bytes],
        known: dict[int, bytes],
        office: OfficeConverter | None,
    ) -> tuple[dict[str, Any], dict[int, bytes]]:
        """Run a task whose message may hold office files. LibreOffice runs here, not in the
        worker (its address space alone exceeds a worker's budget; it has its own time limit
        and slots): the worker names the office files it has no PDF of, they are converted
        in a thread, and the task runs again with the PDFs. The PDFs are returned."""
        known = dict(known)
        office = office or OfficeConverter.for_gateway(self.config)
        for _ in range(2):
            indices = sorted(known)
            answer, wanted = await self._run(
                {**header, "known": indices}, [*blobs, *(known[i] for i in indices)]
            )
            if "convert" not in answer:
                return answer, known
            for (index, filename, content_type), data in zip(
                answer["convert"], wanted, strict=True
            ):
                attachment = Attachment(filename, content_type, data)
                known[int(index)] = await asyncio.to_thread(office.convert, attachment)
        raise WorkerDied("the worker asked again for conversions it was given")

    async def inbound(
        self,
        fax: InboundFax,
        data: bytes,
        *,
        files: bool = True,
        pdf_only: bool = False,
        preview: bool = True,
        attach_format: str | None = None,
    ) -> Converted:
        """An inbound fax's files to mail (`files`, in `attach_format`, by default
        inbound.attach_format; only a PDF with `pdf_only`) and its page-1 preview (`preview`),
        made in a worker; PrivacyError when `pdf_only` cannot be met."""
        inbound = self.config.inbound
        header = {
            "task": "inbound",
            "fax": dataclasses.asdict(fax),
            "attach_format": attach_format or inbound.attach_format,
            "max_pages": inbound.max_pages,
            "files": files,
            "pdf_only": pdf_only,
            "preview": preview,
        }
        answer, blobs = await self._run(header, [data])
        if "privacy_error" in answer:
            raise PrivacyError(str(answer["privacy_error"]))
        names = [(str(name), str(kind)) for name, kind in answer["attachments"]]
        files = [(name, kind, blob) for (name, kind), blob in zip(names, blobs, strict=False)]
        preview = answer["preview"]
        shown = (str(preview[0]), str(preview[1]), blobs[len(names)]) if preview else None
        return Converted(attachments=files, preview=shown)

    async def transmission_report(
        self,
        transmission: Transmission,
        *,
        document_path: Path | None,
        document_type: str | None,
        paper: str,
        carries_document: bool,
    ) -> bytes:
        """A transmission report's PDF (gateway/outbound/transmission.py), rendered in a
        worker: page 1 of the document at `document_path` (read there; None: no longer kept)
        when `carries_document`."""
        header = {
            "task": "transmission",
            "transmission": transmission.to_wire(),
            "document_path": None if document_path is None else str(document_path),
            "document_type": document_type,
            "paper": paper,
            "carries_document": carries_document,
        }
        _answer, blobs = await self._run(header, [])
        return blobs[0]
