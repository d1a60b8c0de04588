"""The list of faxes, outbound and inbound, searchable and paginated."""

from __future__ import annotations

import calendar
import time
from urllib.parse import urlencode

from aiohttp import web

from gateway.config import Config
from gateway.ui import queries
from gateway.ui.context import page, scope_of, ui_of

FIELDS = ("number", "sender", "recipient", "status", "direction", "since", "until")
# The highest page number asked of the store: a larger one ("?page=99999999999999999999") would
# make an OFFSET past SQL's 64-bit integers (OverflowError, a 500); this many pages of
# ui.page_size rows is past any store's end.
MAX_PAGE = 10**9


def _date(text: str) -> float | None:
    """Midnight UTC of a YYYY-MM-DD date, or None if it is not one."""
    try:
        parsed = time.strptime(text.strip(), "%Y-%m-%d")
    except ValueError:
        return None
    return float(calendar.timegm(parsed))


def parse_filter(query: dict[str, str]) -> tuple[queries.FaxFilter, list[str]]:
    problems: list[str] = []
    since = until = None
    if query.get("since"):
        since = _date(query["since"])
        if since is None:
            problems.append("The 'from' date must be written YYYY-MM-DD.")
    if query.get("until"):
        until = _date(query["until"])
        if until is None:
            problems.append("The 'to' date must be written YYYY-MM-DD.")
        else:
            until += 86400  # the whole of the last day
    status = query.get("status", "")
    if status and status not in queries.STATUSES:
        problems.append("Unknown status.")
        status = ""
    direction = query.get("direction", "")
    if direction not in ("", queries.OUTBOUND, queries.INBOUND):
        direction = ""
    return (
        queries.FaxFilter(
            number=query.get("number", "")[:64],
            sender=query.get("sender", "")[:254],
            recipient=query.get("recipient", "")[:254],
            status=status,
            direction=direction,
            since=since,
            until=until,
        ),
        problems,
    )


def _who(config: Config, row: queries.FaxRow) -> str:
    """The sender of an outbound fax; where an inbound one is mailed."""
    if row.direction == queries.OUTBOUND:
        return row.sender
    return ", ".join(queries.mailed_to(config, row.to_number))


async def fax_list(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    query = {name: request.query.get(name, "") for name in FIELDS}
    flt, problems = parse_filter(query)
    try:
        page_number = min(max(1, int(request.query.get("page", "1"))), MAX_PAGE)
    except ValueError:
        page_number = 1
    size = ui.config.ui.page_size
    rows, total = await ui.db.run(
        queries.search_faxes,
        ui.config,
        scope_of(request),
        flt,
        limit=size,
        offset=(page_number - 1) * size,
    )
    pages = max(1, -(-total // size))
    kept = {k: v for k, v in query.items() if v}

    def link(number: int) -> str:
        return "/ui/faxes?" + urlencode({**kept, "page": str(number)})

    return page(
        request,
        "faxes.html.j2",
        title="Faxes",
        rows=[(row, _who(ui.config, row)) for row in rows],
        total=total,
        query=query,
        problems=problems,
        statuses=queries.STATUSES,
        page_number=page_number,
        pages=pages,
        previous=link(page_number - 1) if page_number > 1 else None,
        following=link(page_number + 1) if page_number < pages else None,
    )


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/faxes", fax_list, name="faxes")
