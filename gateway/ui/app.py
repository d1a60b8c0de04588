"""The status pages' aiohttp sub-application, mounted at /ui/ on the gateway's HTTP server.

`add_ui(app, ...)` builds the parts (users and throttle, sessions, pages, actions, the web
sender) and mounts the sub-app; the daemon calls it only when `ui.enabled = true`. One
middleware, `guard`, stands before every view:

- a request without a live session is refused: GET/HEAD are sent to /ui/login (with the page
  asked for, to return to), every other method gets 403; only routes marked PUBLIC (the login
  page, the stylesheet) are exempt, and unknown paths are refused like the others;
- routes marked ADMIN answer 403 to viewers;
- every POST must carry the form's CSRF token (the session's, or the login page's pre-login
  token) and, if the browser sends an Origin, come from this origin; file uploads (MULTIPART)
  have their token checked by their view as it reads the form;
- every answer has a strict Content-Security-Policy (no scripts at all), no caching, no
  framing, no referrer to other sites.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from aiohttp import web

from gateway import log
from gateway.config import Config
from gateway.document.office import OfficeConverter
from gateway.document.workers import DocumentWorkers
from gateway.ops.health import Health
from gateway.smtp.limits import DailyLimit
from gateway.storage.secret import load_or_create_secret
from gateway.store import Database
from gateway.store.spool import Spool
from gateway.ui import views
from gateway.ui.actions import Actions
from gateway.ui.auth import Logins, Role, role_of
from gateway.ui.context import (
    ADMIN,
    LOGIN_FORM,
    MULTIPART,
    PUBLIC,
    UI,
    Handler,
    Ui,
    marks_of,
    problem,
)
from gateway.ui.render import Pages
from gateway.ui.send import WebSender
from gateway.ui.session import LOGIN_COOKIE, SESSION_COOKIE, Sessions, Signer
from gateway.ui.thumbnail import Thumbnails

logger = log.get_logger(__name__)

PREFIX = "/ui"
LOGIN_PATH = f"{PREFIX}/login"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer browsers send "Origin: null" on POSTs.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:  # older browsers send none on same-origin POSTs; the token still counts
        return True
    parts = urlsplit(origin)
    return parts.netloc == request.host


def _login_redirect(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"{LOGIN_PATH}?next={quote(request.path_qs, safe='')}")


async def _form_token_ok(request: web.Request, marks: frozenset[str]) -> bool:
    if request.content_type != "application/x-www-form-urlencoded":
        return False
    form = await request.post()
    token = form.get("csrf")
    if not isinstance(token, str):
        return False
    ui = request.app[UI]
    if LOGIN_FORM in marks:
        expected = ui.sessions.login_token(request.cookies.get(LOGIN_COOKIE))
        return expected is not None and hmac.compare_digest(expected, token)
    session = ui.sessions.find(request.cookies.get(SESSION_COOKIE))
    return session is not None and ui.sessions.check_csrf(session, token)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    ui = request.app[UI]
    marks = marks_of(request.match_info.handler)
    session = ui.sessions.find(request.cookies.get(SESSION_COOKIE))
    if PUBLIC not in marks:
        if session is None:
            if request.method in ("GET", "HEAD"):
                raise _login_redirect(request)
            return problem(request, 403, "Not logged in", "Log in first.")
        if ADMIN in marks and session.role != Role.ADMIN:
            return problem(request, 403, "Not allowed", "This needs the admin role.")
    if request.method not in ("GET", "HEAD"):
        if not _same_origin(request):
            return problem(request, 403, "Refused", "The form came from another site.")
        if MULTIPART not in marks and not await _form_token_ok(request, marks):
            ui.forged_forms.add(
                request.path,
                client=request.remote,
                path=request.path,
                user=session.user if session else None,
            )
            return problem(
                request, 403, "Form expired", "The form was too old or not ours; open it again."
            )
    return await handler(request)


def create_ui_app(ui: Ui) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[UI] = ui
    views.add_routes(app.router)
    return app


def add_ui(
    app: web.Application,
    *,
    config: Config,
    db: Database,
    spool: Spool,
    wake: Callable[[], None],
    documents: DocumentWorkers,
    office: OfficeConverter,
    health: Health | None = None,
    daily_limit: Callable[[], DailyLimit | None] | None = None,
) -> Ui:
    """Mount the status pages at /ui/ on `app` (blocking: reads the users file and the
    secret); the Ui, whose `config` a reload may replace."""
    secret = load_or_create_secret(config.data.dir)
    logins = Logins(config)
    logins.load()
    ui = Ui(
        config=config,
        db=db,
        health=health,
        sessions=Sessions(
            Signer(secret),
            idle_seconds=config.ui.session_idle_seconds,
            max_seconds=config.ui.session_max_seconds,
        ),
        logins=logins,
        pages=Pages(),
        actions=Actions(config, db, wake),
        sender=WebSender(
            config, db, spool, wake, documents=documents, office=office, daily_limit=daily_limit
        ),
        thumbnails=Thumbnails(),
    )

    async def to_overview(_request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(f"{PREFIX}/")

    app.router.add_get(PREFIX, to_overview)
    app.add_subapp(f"{PREFIX}/", create_ui_app(ui))
    logger.info("ui.enabled", users=len(logins.users.names()), admins=len(config.ui.admins))
    return ui


def reconfigure(ui: Ui, config: Config) -> None:
    """SIGHUP: new settings and the users file read again (blocking)."""
    ui.config = config
    ui.sessions.idle_seconds = config.ui.session_idle_seconds
    ui.sessions.max_seconds = config.ui.session_max_seconds
    ui.actions.config = config
    ui.sender.config = config
    ui.logins.config = config
    ui.logins.load()
    known = set(ui.logins.users.names())
    ui.sessions.revise(lambda user: role_of(config, user).value if user in known else None)
