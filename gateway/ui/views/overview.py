"""The overview: this day's and week's faxes, the queues, what is stuck, health, the chart."""

from __future__ import annotations

import calendar
import time

from aiohttp import web

from gateway.inbound.files import list_dead_letters
from gateway.store import jobs as jobs_store
from gateway.store import outbox as outbox_store
from gateway.store.inbound import state_counts as inbound_counts
from gateway.store.records import JobState
from gateway.ui import chart, queries
from gateway.ui.context import is_admin, page, scope_of, session_of, ui_of

HELD_SHOWN = 20


def day_and_week_start(now: float) -> tuple[float, float]:
    """Midnight UTC today, and Monday's midnight UTC of this week."""
    today = time.gmtime(now)
    midnight = calendar.timegm((today.tm_year, today.tm_mon, today.tm_mday, 0, 0, 0))
    return float(midnight), float(midnight - today.tm_wday * 86400)


async def overview(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    config, db = ui.config, ui.db
    scope = scope_of(request)
    now = time.time()
    day, week = day_and_week_start(now)
    today = await db.run(queries.period, config, scope, day)
    this_week = await db.run(queries.period, config, scope, week)
    start = chart.hour_start(now)
    out_counts, in_counts = await db.run(queries.hourly, config, scope, start)
    context: dict[str, object] = {
        "title": "Overview",
        "today": today,
        "week": this_week,
        "chart": chart.build(start, out_counts, in_counts),
        "admin_view": is_admin(session_of(request)),
    }
    if is_admin(session_of(request)):
        held = await db.run(jobs_store.list_jobs, JobState.HELD, HELD_SHOWN)
        depth = await db.run(jobs_store.queue_depth)
        context.update(
            jobs_depth=depth,
            inbound_depth=await db.run(inbound_counts),
            outbox_depth=await db.run(outbox_store.state_counts),
            outbox_backlog=await db.run(outbox_store.pending_count),
            held=held,
            held_count=depth.get(JobState.HELD.value, 0),
            dead=await db.run(list_dead_letters),
            health=(await ui.health.readiness()).checks if ui.health is not None else {},
        )
    return page(request, "overview.html.j2", **context)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", overview, name="overview")
