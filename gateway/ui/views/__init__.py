"""The views of the status pages, one module per page; `add_routes` registers them all."""

from __future__ import annotations

from aiohttp import web

from gateway.ui.views import actions, detail, faxes, login, overview, send


def add_routes(router: web.UrlDispatcher) -> None:
    for module in (login, overview, faxes, detail, actions, send):
        module.add_routes(router)
