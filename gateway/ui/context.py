"""What every view of the status pages shares: the parts of the gateway, route marks, and the
page helper that gives each template the session, its CSRF token and the navigation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.config import Config
from gateway.ops.flood import Tally
from gateway.ops.health import Health
from gateway.store import Database
from gateway.ui.actions import Actions
from gateway.ui.auth import Logins, Role
from gateway.ui.queries import Scope, scope_for
from gateway.ui.render import Pages
from gateway.ui.send import WebSender
from gateway.ui.session import SESSION_COOKIE, Session, Sessions
from gateway.ui.thumbnail import Thumbnails

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Route marks, read by the guard middleware (gateway/ui/app.py).
PUBLIC = "public"  # no session needed (the login page and the stylesheet only)
ADMIN = "admin"  # the admin role only
MULTIPART = "multipart"  # a file upload: the view checks the CSRF token of its form itself
LOGIN_FORM = "login_form"  # its POST carries the pre-login token instead of a session's


@dataclass
class Ui:
    config: Config
    db: Database
    health: Health | None
    sessions: Sessions
    logins: Logins
    pages: Pages
    actions: Actions
    sender: WebSender
    thumbnails: Thumbnails
    # Forms refused for their token: anyone can post those as fast as we answer, so the
    # first of a minute is logged, then a count (a line each would fill the log).
    forged_forms: Tally = field(
        default_factory=lambda: Tally("ui.csrf_refused", "ui.csrf_refusals", level="info")
    )


UI = web.AppKey("faxgw.ui", Ui)


def mark(*marks: str) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        handler.ui_marks = frozenset(marks)  # type: ignore[attr-defined]
        return handler

    return decorate


def marks_of(handler: Any) -> frozenset[str]:
    return getattr(handler, "ui_marks", frozenset())


def ui_of(request: web.Request) -> Ui:
    return request.app[UI]


def current_session(request: web.Request) -> Session | None:
    """The live session the request's cookie names, if any."""
    return ui_of(request).sessions.find(request.cookies.get(SESSION_COOKIE))


def session_of(request: web.Request) -> Session:
    """The session of a request the guard let through (every view but the public ones)."""
    session = current_session(request)
    if session is None:  # ended between the guard's look and the view's (logout elsewhere)
        raise web.HTTPSeeOther("/ui/login")
    return session


def is_admin(session: Session) -> bool:
    return session.role == Role.ADMIN


def scope_of(request: web.Request) -> Scope:
    session = session_of(request)
    return scope_for(ui_of(request).config, None if is_admin(session) else session.user)


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    session = current_session(request)
    base = {
        "session": session,
        "csrf": session.csrf if session is not None else "",
        "is_admin": session is not None and is_admin(session),
        "path": request.path,
    }
    return ui_of(request).pages.render(template, {**base, **context}, status=status)


def problem(request: web.Request, status: int, title: str, text: str) -> web.Response:
    return page(request, "problem.html.j2", status=status, title=title, text=text)
