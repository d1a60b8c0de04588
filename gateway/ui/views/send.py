"""Send a fax from the browser: the form, and its upload read as a stream within the limit."""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from gateway.ui.auth import peer_ip
from gateway.ui.context import MULTIPART, mark, page, session_of, ui_of
from gateway.ui.send import Upload, new_form_id

# Longest text field accepted (cover text); more is refused rather than cut.
MAX_FIELD_CHARS = 20000
_TEXT_FIELDS = ("number", "subject", "cover", "form_id")


class FormProblem(Exception):
    pass


def _form(
    request: web.Request,
    *,
    status: int = 200,
    problem: str | None = None,
    values: dict[str, str] | None = None,
) -> web.Response:
    return page(
        request,
        "send.html.j2",
        status=status,
        title="Send a fax",
        form_id=new_form_id(),
        problem=problem,
        values=values or {},
        sender=session_of(request).user,
        office=ui_of(request).config.documents.convert_office,
    )


async def send_form(request: web.Request) -> web.StreamResponse:
    return _form(request)


async def _read_upload(request: web.Request, limit: int) -> tuple[dict[str, str], str, str, bytes]:
    """The text fields, and the file's name, type and bytes. The CSRF token must come first
    (the form puts it first; browsers send fields in their order), so nothing of a forged
    form is read past it."""
    session = session_of(request)
    sessions = ui_of(request).sessions
    if request.content_type != "multipart/form-data":
        raise FormProblem("not a form upload")
    reader = await request.multipart()
    first = await reader.next()
    if not isinstance(first, BodyPartReader) or first.name != "csrf":
        raise FormProblem("no token")
    token = (await first.read(decode=True))[:200].decode("ascii", "replace")
    if not sessions.check_csrf(session, token):
        raise FormProblem("bad token")
    fields: dict[str, str] = {}
    filename, content_type, data = "", "", b""
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise FormProblem("nested form")
        if part.name == "document":
            filename = part.filename or ""
            content_type = part.headers.get("Content-Type", "")
            chunks, size = [], 0
            while chunk := await part.read_chunk(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise FormProblem("The file is too large for this gateway.")
                chunks.append(chunk)
            data = b"".join(chunks)
        elif part.name in _TEXT_FIELDS:
            raw = await part.read(decode=True)
            if len(raw) > MAX_FIELD_CHARS * 4:
                raise FormProblem("A text field is too long.")
            fields[part.name] = raw.decode("utf-8", "replace")
        else:
            await part.release()
    return fields, filename, content_type, data


@mark(MULTIPART)
async def send(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    session = session_of(request)
    try:
        fields, filename, content_type, data = await _read_upload(
            request, ui.config.smtp.max_message_bytes
        )
    except FormProblem as exc:
        text = str(exc)
        if text in ("not a form upload", "no token", "bad token", "nested form"):
            return page(
                request,
                "problem.html.j2",
                status=403,
                title="Form expired",
                text="The form was too old or not ours; open it again.",
            )
        return _form(request, status=413, problem=text)
    upload = Upload(
        number=fields.get("number", ""),
        filename=filename,
        content_type=content_type,
        data=data,
        cover_text=fields.get("cover", "")[:MAX_FIELD_CHARS],
        subject=" ".join(fields.get("subject", "").split())[:200],
        form_id=fields.get("form_id", ""),
    )
    sent = await ui.sender.send(session.user, peer_ip(request.remote), upload)
    if sent.job_id is None:
        return _form(request, status=422, problem=sent.problem, values=fields)
    raise web.HTTPSeeOther(f"/ui/jobs/{sent.job_id}?sent=1")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/send", send_form, name="send")
    router.add_post("/send", send, name="send_post")
