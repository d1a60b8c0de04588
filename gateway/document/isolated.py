"""A document worker process: reads a caller's message and builds its fax, under a budget.

Started by `gateway.document.pool.WorkerPool` as

    python -m gateway.document.isolated <memory bytes> <daemon pid>

and never by hand. Parsing MIME, reading PDFs and decoding images are where a hostile or
merely odd document costs memory and time out of proportion to its size; here that cost falls
on a process the daemon can kill, never on the daemon. At start, before anything is imported:

- RLIMIT_AS is set to the memory budget, so an allocation past it fails (MemoryError) instead
  of taking the machine;
- PR_SET_PDEATHSIG makes the kernel SIGKILL this process when the daemon dies, however it
  dies (kill -9 included), and it exits at once if the daemon is already gone;
- SIGINT and SIGTERM are ignored: the daemon decides when its workers end (it kills them at
  stop), and a terminal's Ctrl-C or systemd's SIGTERM to the whole unit reaches it first;
- file descriptor 1 is pointed at /dev/null and the frames use a private copy of it, so a
  library that prints cannot corrupt the protocol. stderr is /dev/null (the daemon starts
  workers with close_fds, so they hold none of its descriptors, its log pipe included).

Then it answers frames (gateway/document/wire.py) one at a time until its stdin ends. Each
request names a task: "check" (the DATA check: extract and validate, the raw message as the
blob or the path of the file holding it), "prepare" (the prepare stage: read the spool file,
assemble, write the document under documents/), "inbound" (an inbound fax's attachments and
preview, the document as the blob, the files as blobs of the answer) or "transmission" (a
transmission report: its values, and the path of the document whose page 1 it shows). An answer
carries the task's result or an error: "document" (the sender's DocumentError),
"cover_template" (the operator's template), "os" (errno, for the queue's resource errors),
"memory" (the budget) or "crash" (a bug, with its type). After a MemoryError, or when its
resident memory stays above a quarter of the budget, the process exits after answering
("recycle"), so what one document cost is given back to the system.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

PR_SET_PDEATHSIG = 1
# Log events a request made, sent back with its answer for the daemon to log (this process
# has no log of its own); at most this many per request.
MAX_EVENTS = 20
_events: list[dict[str, Any]] = []

Result = tuple[dict[str, Any], list[bytes]]


def _limit_memory(budget: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))


def _die_with(parent: int) -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: stdin's end still ends the process
        pass
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os._exit(0)


def _private_stdout() -> BinaryIO:
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return frames


def _collect_logs() -> None:
    """structlog here keeps each event for the answer instead of printing it."""
    import structlog

    def keep(_logger: Any, method: str, event: dict[str, Any]) -> Any:
        if len(_events) < MAX_EVENTS:
            plain = (str, int, float, bool, type(None))
            _events.append(
                {k: v if isinstance(v, plain) else str(v) for k, v in event.items()}
                | {"level": method}
            )
        raise structlog.DropEvent

    structlog.configure(processors=[keep], cache_logger_on_first_use=False)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settings(header: dict[str, Any]) -> dict[str, Any]:
    from gateway.config import CoverConfig

    settings = header["settings"]
    templates = settings["templates_dir"]
    return {
        "max_pages": settings["max_pages"],
        "paper": settings["paper"],
        "cover": CoverConfig.model_validate(settings["cover"]),
        "templates_dir": Path(templates) if templates else None,
    }


def _faxable(header: dict[str, Any], raw: bytes, known_blobs: list[bytes]) -> Any:
    """The message's parts with text and office attachments as PDFs, or the office files
    still to convert: `("convert", answer, blobs)` for the daemon, which runs LibreOffice
    (gateway/document/workers.py `_converting`)."""
    from gateway.config import DocumentsConfig
    from gateway.document.conversion import CONVERTIBLE, check_office_count, to_faxable
    from gateway.document.kinds import OFFICE_TYPES
    from gateway.document.mime import extract
    from gateway.document.office import OfficeConverter

    settings = header["settings"]
    known = dict(zip((int(i) for i in header.get("known", [])), known_blobs, strict=True))
    extracted = extract(raw, convertible=CONVERTIBLE)
    office_on = bool(settings.get("convert_office"))
    if office_on:
        check_office_count(extracted, int(settings["max_office_files"]))
        missing = [
            (index, attachment)
            for index, attachment in enumerate(extracted.attachments)
            if attachment.content_type in OFFICE_TYPES and index not in known
        ]
        if missing:
            answer = {"convert": [[i, a.filename, a.content_type] for i, a in missing]}
            return ("convert", answer, [a.data for _, a in missing])
    # Every office file has its PDF (or conversion is off, and they are named unsupported):
    # this converter is never run here.
    office = OfficeConverter(DocumentsConfig(convert_office=office_on))
    return to_faxable(
        extracted,
        office=office,
        paper=settings["paper"],
        max_pages=settings["max_pages"],
        known=known,
    ).extracted


def check(header: dict[str, Any], blobs: list[bytes]) -> Result:
    """DATA: can the message be faxed, and with how many pages."""
    from gateway.document.assemble import validate
    from gateway.failpoints import failpoint

    failpoint("document_check")
    path = header.get("message_path")
    if path is not None:  # the SMTP session's draft in the spool: read here, not piped
        raw, known = Path(path).read_bytes(), blobs
    else:
        raw, known = blobs[0], blobs[1:]
    extracted = _faxable(header, raw, known)
    if isinstance(extracted, tuple):
        return extracted[1], extracted[2]
    pages = validate(extracted, **_settings(header))
    return {"subject": extracted.subject, "message_id": extracted.message_id, "pages": pages}, []


def prepare(header: dict[str, Any], blobs: list[bytes]) -> Result:
    """The prepare stage: the job's document, written durably under documents/."""
    from gateway.document.assemble import assemble
    from gateway.document.cover import CoverContext
    from gateway.document.kinds import extension
    from gateway.failpoints import failpoint
    from gateway.fsutil import write_atomic
    from gateway.store.spool import Spool

    failpoint("document_prepare")
    raw = Spool(Path(header["spool_dir"])).read(Path(header["spool_path"]))
    extracted = _faxable(header, raw, blobs)
    if isinstance(extracted, tuple):
        return extracted[1], extracted[2]
    context = CoverContext(
        sender=header["sender"],
        recipient=header["recipient"],
        # The job's: for mail to the shared address, the Subject without its numbers.
        subject=header["subject"],
        body=extracted.body_text,
        pages=0,
        date=datetime.fromtimestamp(header["created_at"], UTC),
    )
    settings = _settings(header)
    document = assemble(
        extracted,
        paper=settings["paper"],
        max_pages=settings["max_pages"],
        cover=settings["cover"],
        cover_context=context,
        templates_dir=settings["templates_dir"],
    )
    path = Path(header["documents_dir"]) / f"{header['job_id']}{extension(document.content_type)}"
    write_atomic(path, document.data)
    return {"path": str(path), "content_type": document.content_type, "pages": document.pages}, []


def inbound(header: dict[str, Any], blobs: list[bytes]) -> Result:
    """An inbound fax's files to mail (TIFF->PDF as inbound.attach_format asks) and page-1
    preview, each a blob: "attachments" and "preview" name them in order."""
    from gateway.inbound.compose import attachments_for, preview_of
    from gateway.store.inbound import InboundFax, InboundState

    fields = dict(header["fax"])
    fax = InboundFax(**{**fields, "state": InboundState(fields["state"])})
    from gateway.mailout.privacy import PrivacyError

    data = blobs[0]
    # The privacy mode decides what is wanted: no files under "none", no preview unless "pdf",
    # only a PDF for "encrypted-pdf" (encrypted by the daemon, which alone has the password).
    try:
        files = (
            attachments_for(
                fax,
                data,
                header["attach_format"],
                max_pages=header["max_pages"],
                pdf_only=header["pdf_only"],
            )
            if header["files"]
            else []
        )
    except PrivacyError as exc:
        return {"privacy_error": str(exc)}, []
    preview = preview_of(fax, data) if header["preview"] else None
    answer: dict[str, Any] = {
        "attachments": [[a.filename, a.content_type] for a in files],
        "preview": [preview.cid, preview.content_type] if preview else None,
    }
    return answer, [a.data for a in files] + ([preview.data] if preview else [])


def transmission(header: dict[str, Any], blobs: list[bytes]) -> Result:
    """A transmission report's PDF (gateway/outbound/transmission.py), as the one blob."""
    from gateway.document import kinds
    from gateway.outbound.transmission import Transmission, render_report

    document = None
    path = header["document_path"]
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            pass  # gone (cleaned up, another node's): the report says it is no longer kept
        else:
            kind = kinds.sniff(data) or header["document_type"] or "application/octet-stream"
            document = (data, kind)
    pdf = render_report(
        Transmission.from_wire(header["transmission"]),
        document,
        paper=header["paper"],
        carries_document=header["carries_document"],
    )
    return {}, [pdf]


TASKS = {"check": check, "prepare": prepare, "inbound": inbound, "transmission": transmission}


def _out_of_memory(exc: BaseException) -> bool:
    """Whether a MemoryError is behind `exc`: the readers turn any failure of a part into
    "damaged" (`raise DocumentError(...) from None` keeps the original as __context__), but
    a part that is merely over the budget is no damaged part, and the sender is told so."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            return False
        if isinstance(seen, MemoryError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def run(header: dict[str, Any], blobs: list[bytes]) -> tuple[Result, bool]:
    """One request's answer, and whether this process must end after sending it."""
    from gateway.document.cover import CoverTemplateError
    from gateway.document.mime import DocumentError

    task = TASKS.get(header.get("task", ""))
    if task is None:
        return (
            {"error": {"kind": "crash", "type": "ValueError", "message": "no such task"}},
            [],
        ), False
    try:
        return task(header, blobs), False
    except DocumentError as exc:
        if _out_of_memory(exc):
            return ({"error": {"kind": "memory"}}, []), True
        error: dict[str, Any] = {"kind": "document", "document_kind": exc.kind, "message": str(exc)}
    except CoverTemplateError as exc:
        error = {"kind": "cover_template", "message": str(exc)}
    except MemoryError:
        return ({"error": {"kind": "memory"}}, []), True
    except OSError as exc:
        filename = None if exc.filename is None else str(exc.filename)
        error = {
            "kind": "os",
            "errno": exc.errno,
            "strerror": exc.strerror,
            "filename": filename,
            "message": str(exc),
        }
    except Exception as exc:  # a bug: the daemon treats it as one (its crash guard counts it)
        error = {"kind": "crash", "type": type(exc).__name__, "message": str(exc)[:500]}
    return ({"error": error}, []), False


def main(argv: list[str] | None = None) -> int:
    budget_text, parent_text = (sys.argv[1:] if argv is None else argv)[:2]
    budget = int(budget_text)
    _limit_memory(budget)
    _die_with(int(parent_text))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    from gateway.document import wire

    frames = _private_stdout()
    _collect_logs()
    # Imported now, while the daemon has nothing for this worker yet: the first request of a
    # worker started ahead is then as quick as the others.
    import gateway.document.assemble
    import gateway.inbound.compose
    import gateway.outbound.transmission
    import gateway.store.spool  # noqa: F401

    requests = sys.stdin.buffer
    while True:
        try:
            request = wire.read_frame(requests)
        except (EOFError, wire.WireError):
            return 1
        if request is None:
            return 0
        (header, blobs), last = run(*request)
        del request
        if not last and _resident_bytes() > budget // 4:
            last = True
        header["recycle"] = last
        header["log"], _events[:] = list(_events), []
        try:
            frames.write(wire.encode(header, blobs))
        except BrokenPipeError:
            return 1
        if last:
            return 0


if __name__ == "__main__":
    sys.exit(main())
