"""Log in (GET shows the form, POST checks the password) and log out; the stylesheet."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway import log
from gateway.ui.context import LOGIN_FORM, PUBLIC, current_session, mark, page, session_of, ui_of
from gateway.ui.session import LOGIN_COOKIE, SESSION_COOKIE

logger = log.get_logger(__name__)

STYLESHEET = Path(__file__).resolve().parent.parent / "static" / "ui.css"
COOKIE_PATH = "/ui/"


def _next(value: str | None) -> str:
    """Where to go after login: a page of ours only (never another site)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


def _cookie(request: web.Request, response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=COOKIE_PATH,
        secure=ui_of(request).config.ui.secure_cookies,
        httponly=True,
        samesite="Strict",
    )


def _login_page(
    request: web.Request, *, problem: str | None = None, name: str = "", status: int = 200
) -> web.Response:
    ui = ui_of(request)
    cookie, token = ui.sessions.login_nonce()
    response = page(
        request,
        "login.html.j2",
        status=status,
        title="Log in",
        login_token=token,
        problem=problem,
        name=name,
        next=_next(request.query.get("next")),
    )
    _cookie(request, response, LOGIN_COOKIE, cookie)
    return response


@mark(PUBLIC)
async def login_form(request: web.Request) -> web.StreamResponse:
    if current_session(request) is not None:
        raise web.HTTPSeeOther(_next(request.query.get("next")))
    return _login_page(request)


@mark(PUBLIC, LOGIN_FORM)
async def login(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    form = await request.post()
    name = str(form.get("user", "")).strip()
    password = str(form.get("password", ""))
    result = await ui.logins.login(request.remote, name, password)
    if result.user is None or result.role is None:
        return _login_page(request, problem=result.problem, name=name, status=401)
    _session, cookie = ui.sessions.start(result.user, result.role.value)
    response = web.HTTPSeeOther(_next(str(form.get("next", ""))))
    _cookie(request, response, SESSION_COOKIE, cookie)
    response.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    ui_of(request).sessions.end(session)
    logger.info("ui.logout", user=session.user)
    response = web.HTTPSeeOther("/ui/login")
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    raise response


@mark(PUBLIC)
async def stylesheet(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STYLESHEET, headers={"Content-Type": "text/css; charset=utf-8"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/login", login_form, name="login")
    router.add_post("/login", login)
    router.add_post("/logout", logout, name="logout")
    router.add_get("/ui.css", stylesheet, name="stylesheet")
