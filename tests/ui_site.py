"""The status pages on a real aiohttp server over loopback, for the fast UI tests.

A store, a spool, document workers and the /ui/ sub-app as the daemon mounts it
(gateway/ui/app.py add_ui), with a users file of one admin and two viewers; `login()` goes
through the real login form.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Config
from gateway.document.office import OfficeConverter
from gateway.document.workers import DocumentWorkers
from gateway.ops.httpd import create_app
from gateway.smtp.users import hash_password, write_users
from gateway.store import Database
from gateway.store.spool import Spool
from gateway.ui.app import add_ui
from gateway.ui.context import Ui

ADMIN = "admin@example.com"
VIEWER = "alice@example.com"
OTHER = "bob@example.com"
PASSWORD = "correct horse battery"
FAST_SCRYPT = 4

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def write_users_file(path: Path, names: tuple[str, ...] = (ADMIN, VIEWER, OTHER)) -> Path:
    write_users(path, {name: hash_password(PASSWORD, log2_n=FAST_SCRYPT) for name in names})
    return path


def ui_overrides(tmp_path: Path, **ui: Any) -> dict[str, Any]:
    users = write_users_file(tmp_path / "ui-users")
    return {
        "ui": {
            "enabled": True,
            "users_file": str(users),
            "admins": [ADMIN],
            "secure_cookies": False,
            **ui,
        },
        "smtp": {"domain": "fax.local"},
        "fax": {"number_check": "possible"},
    }


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, "the page has no form with a CSRF token"
    return match.group(1)


@dataclass
class Site:
    ui: Ui
    client: TestClient
    db: Database
    config: Config
    wakes: list[int] = field(default_factory=list)

    async def login(self, user: str = ADMIN, password: str = PASSWORD) -> ClientResponse:
        page = await self.client.get("/ui/login")
        token = csrf_of(await page.text())
        return await self.client.post(
            "/ui/login",
            data={"csrf": token, "user": user, "password": password, "next": "/ui/"},
            allow_redirects=False,
        )

    async def token(self, path: str = "/ui/") -> str:
        page = await self.client.get(path)
        return csrf_of(await page.text())


@asynccontextmanager
async def running_site(
    make_config: Callable[..., Config], overrides: dict[str, Any]
) -> AsyncIterator[Site]:
    config = make_config(overrides)
    db = await Database(config.data.dir / "store.db").open()
    wakes: list[int] = []
    app = create_app()
    documents = DocumentWorkers(config)
    ui = add_ui(
        app,
        config=config,
        db=db,
        spool=Spool(config.data.dir / "spool"),
        wake=lambda: wakes.append(1),
        documents=documents,
        office=OfficeConverter.for_gateway(config),
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Site(ui=ui, client=client, db=db, config=config, wakes=wakes)
    finally:
        await client.close()
        await documents.stop()
        db.close()
