"""The Jinja2 environment of the status pages: autoescaped templates and the filters they use."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from gateway.numbers import pretty

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def _number(value: str | None) -> str:
    return pretty(value) if value else "-"


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        # Every template escapes everything it prints, .svg.j2 included.
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["number"] = _number
    return env


class Pages:
    def __init__(self) -> None:
        self.env = environment()

    def render(self, name: str, context: dict[str, Any], *, status: int = 200) -> web.Response:
        text = self.env.get_template(name).render(**context)
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
