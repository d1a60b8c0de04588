"""Retry, cancel, requeue and download, each a confirmation page (GET) and the act (POST).

Admins only. A download is logged with who took which document.
"""

from __future__ import annotations

from aiohttp import web

from gateway import log
from gateway.ui.context import ADMIN, mark, page, session_of, ui_of
from gateway.ui.views.detail import inbound_document, job_document, load_inbound, load_job

logger = log.get_logger(__name__)

# action -> (the question, the button)
JOB_ACTIONS = {
    "retry": ("Send this job back to work? Its failed and held faxes are sent again.", "Retry"),
    "cancel": (
        "Cancel this job? Faxes not yet at the carrier are not sent; the sender is not told.",
        "Cancel the job",
    ),
    "download": ("Download the document of this fax? The download is logged.", "Download"),
}
INBOUND_ACTIONS = {
    "requeue": (
        "Try this dead letter again? Its mail is sent (or its document fetched) anew.",
        "Requeue",
    ),
    "download": ("Download the document of this fax? The download is logged.", "Download"),
}


def _confirm(
    request: web.Request, question: str, button: str, back: str, what: str
) -> web.Response:
    return page(
        request,
        "confirm.html.j2",
        title=f"{button}: {what}",
        question=question,
        button=button,
        action=request.path,
        back=back,
    )


def _done(request: web.Request, ok: bool, message: str, back: str) -> web.Response:
    return page(
        request,
        "done.html.j2",
        status=200 if ok else 409,
        title="Done" if ok else "Not done",
        ok=ok,
        message=message,
        back=back,
    )


def _download(path, user: str, **what: object) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    if path is None:
        raise web.HTTPNotFound(text="the document is no longer kept")
    logger.info("ui.download", user=user, file=path.name, **what)
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": f'attachment; filename="{path.name}"',
            "Content-Type": "application/octet-stream",
        },
    )


@mark(ADMIN)
async def job_confirm(request: web.Request) -> web.StreamResponse:
    job = await load_job(request)
    question, button = JOB_ACTIONS[request.match_info["action"]]
    return _confirm(request, question, button, f"/ui/jobs/{job.id}", f"fax {job.id}")


@mark(ADMIN)
async def job_act(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    user = session_of(request).user
    job = await load_job(request)
    action = request.match_info["action"]
    back = f"/ui/jobs/{job.id}"
    if action == "download":
        return _download(await job_document(request, job), user, job_id=job.id)
    outcome = await (ui.actions.retry if action == "retry" else ui.actions.cancel)(job.id, user)
    return _done(request, outcome.ok, outcome.message, back)


@mark(ADMIN)
async def inbound_confirm(request: web.Request) -> web.StreamResponse:
    fax = await load_inbound(request)
    question, button = INBOUND_ACTIONS[request.match_info["action"]]
    return _confirm(request, question, button, f"/ui/inbound/{fax.id}", f"inbound fax {fax.id}")


@mark(ADMIN)
async def inbound_act(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    user = session_of(request).user
    fax = await load_inbound(request)
    if request.match_info["action"] == "download":
        return _download(await inbound_document(request, fax), user, inbound_id=fax.id)
    outcome = await ui.actions.requeue(fax.id, user)
    return _done(request, outcome.ok, outcome.message, f"/ui/inbound/{fax.id}")


def add_routes(router: web.UrlDispatcher) -> None:
    job = "/jobs/{job_id}/{action:retry|cancel|download}"
    inbound = r"/inbound/{inbound_id:\d{1,18}}/{action:requeue|download}"
    router.add_get(job, job_confirm, name="job_confirm")
    router.add_post(job, job_act, name="job_act")
    router.add_get(inbound, inbound_confirm, name="inbound_confirm")
    router.add_post(inbound, inbound_act, name="inbound_act")
