"""One fax in detail: its fields, page 1, the timeline, and the actions that make sense."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.commands.queue import RETRYABLE
from gateway.inbound.files import locate
from gateway.mailout.privacy import inbound_privacy, report_privacy
from gateway.store import jobs as jobs_store
from gateway.store.blobs import SharedFiles
from gateway.store.faxes import faxes_of
from gateway.store.inbound import InboundFax, InboundState, get_inbound
from gateway.store.records import FINAL_JOB_STATES, Job
from gateway.ui import queries, thumbnail, timeline
from gateway.ui.context import page, scope_of, ui_of


def privacy_mode(request: web.Request, fax: Job | InboundFax) -> str:
    """The privacy mode of a fax's mail: its sender's for a job, its route's for an inbound fax.

    The page shows what the mail would: no page 1 of a fax mailed encrypted or not at all.
    """
    config = ui_of(request).config
    if isinstance(fax, Job):
        return report_privacy(config, fax.sender).attach
    return inbound_privacy(config, fax.to_number).attach


async def load_job(request: web.Request) -> Job:
    """The job named in the path, if this user may see it (else 404, as if there were none)."""
    ui = ui_of(request)
    job_id = request.match_info["job_id"].strip().upper()
    job = await ui.db.run(jobs_store.get_job, job_id)
    if job is None or not await ui.db.run(queries.may_see_job, scope_of(request), job.id):
        raise web.HTTPNotFound(text="no such fax")
    return job


async def load_inbound(request: web.Request) -> InboundFax:
    ui = ui_of(request)
    inbound_id = int(request.match_info["inbound_id"])
    fax = await ui.db.run(get_inbound, inbound_id)
    if fax is None or not await ui.db.run(queries.may_see_inbound, scope_of(request), fax.id):
        raise web.HTTPNotFound(text="no such fax")
    return fax


async def job_document(request: web.Request, job: Job) -> Path | None:
    """The job's document on this node (fetched from the store where nodes share it)."""
    if job.document_path is None:
        return None
    ui = ui_of(request)
    path = await SharedFiles.of(ui.config, ui.db).fetch(job.document_path)
    return path if path.is_file() else None


async def inbound_document(request: web.Request, fax: InboundFax) -> Path | None:
    """The received fax's file on this node (fetched from the store where nodes share it)."""
    if fax.file_path is None:
        return None
    ui = ui_of(request)
    files = SharedFiles.of(ui.config, ui.db)
    found = locate(files.local(Path(fax.file_path)), ui.config)
    if found is None and files.shared:
        fetched = await files.fetch(Path(fax.file_path))
        found = fetched if fetched.is_file() else None
    return found


async def job_detail(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    job = await load_job(request)
    faxes = await ui.db.run(faxes_of, job.id)
    entries = await ui.db.run(timeline.job_timeline, job, faxes)
    document = await job_document(request, job)
    return page(
        request,
        "job.html.j2",
        title=f"Fax {job.id}",
        job=job,
        faxes=faxes,
        entries=entries,
        has_thumbnail=document is not None
        and thumbnail.may_show_thumbnail(privacy_mode(request, job)),
        has_document=document is not None,
        can_retry=job.state in RETRYABLE,
        can_cancel=job.state not in FINAL_JOB_STATES,
    )


async def inbound_detail(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    fax = await load_inbound(request)
    entries = await ui.db.run(timeline.inbound_timeline, fax)
    document = await inbound_document(request, fax)
    return page(
        request,
        "inbound.html.j2",
        title=f"Inbound fax {fax.id}",
        fax=fax,
        mailed_to=queries.mailed_to(ui.config, fax.to_number),
        entries=entries,
        has_thumbnail=document is not None
        and thumbnail.may_show_thumbnail(privacy_mode(request, fax)),
        has_document=document is not None,
        can_requeue=fax.state is InboundState.DEAD,
    )


def _png(data: bytes | None) -> web.Response:
    if data is None:
        raise web.HTTPNotFound(text="no picture of this fax")
    return web.Response(body=data, content_type="image/png")


async def job_thumbnail(request: web.Request) -> web.StreamResponse:
    job = await load_job(request)
    return _png(
        await ui_of(request).thumbnails.thumbnail(
            await job_document(request, job), job.document_type, privacy_mode(request, job)
        )
    )


async def inbound_thumbnail(request: web.Request) -> web.StreamResponse:
    fax = await load_inbound(request)
    return _png(
        await ui_of(request).thumbnails.thumbnail(
            await inbound_document(request, fax), None, privacy_mode(request, fax)
        )
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/jobs/{job_id}", job_detail, name="job")
    router.add_get("/jobs/{job_id}/page1.png", job_thumbnail, name="job_thumbnail")
    router.add_get(r"/inbound/{inbound_id:\d{1,18}}", inbound_detail, name="inbound")
    router.add_get(
        r"/inbound/{inbound_id:\d{1,18}}/page1.png", inbound_thumbnail, name="inbound_thumbnail"
    )
