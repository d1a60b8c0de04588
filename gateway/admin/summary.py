"""The daily summary to notify.admin at notify.summary_time: one short mail a day.

The time is read in notify.timezone (07:00 is seven in the morning where the administrator
is, summer and winter alike); the day it covers runs from the moment of the day before.

It covers that day: faxes out (delivered, failed, pages) and in,
failures by code with their descriptions, the senders with the most faxes, the queues as they
are, and the dead letters. The day it was last sent is kept in the store's meta table
(`summary.last_day`) and the mail is queued under `summary:<day>`, so it goes out once a day
across restarts; a gateway that was down at the moment sends the latest day's summary when it
comes back, never a backlog.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

from gateway import log
from gateway.admin.copies import queue_admin_mail
from gateway.carrier.faxerrors import describe
from gateway.config import Config
from gateway.mailout.outbox import MailingWorker
from gateway.store.meta import get_meta, set_meta
from gateway.store.stats import DayNumbers, day_numbers

logger = log.get_logger(__name__)

LAST_DAY = "summary.last_day"
KIND = "summary"
DAY = timedelta(days=1)


def moment_on(config: Config, day: date) -> datetime:
    """The summary moment of `day`: notify.summary_time on that date in notify.timezone."""
    hours, minutes = divmod(config.notify.summary_minutes, 60)
    return datetime.combine(day, clock_time(hours, minutes), tzinfo=config.notify.zone)


def latest_moment(config: Config, now: float) -> datetime:
    """The most recent summary moment at or before `now`."""
    today = datetime.fromtimestamp(now, config.notify.zone).date()
    moment = moment_on(config, today)
    return moment if moment.timestamp() <= now else moment_on(config, today - DAY)


def summary_context(numbers: DayNumbers, moment: datetime) -> dict[str, object]:
    return {
        "day": (moment - DAY).date().isoformat(),
        "start": datetime.fromtimestamp(numbers.start, UTC),
        "end": datetime.fromtimestamp(numbers.end, UTC),
        "delivered": numbers.delivered,
        "failed": numbers.failed,
        "pages_out": numbers.pages_out,
        "received": numbers.received,
        "pages_in": numbers.pages_in,
        "failures": [
            {"code": code, "description": describe(code).description, "faxes": count}
            for code, count in numbers.failures
        ],
        "top_senders": [{"sender": s, "faxes": count} for s, count in numbers.top_senders],
        "queues": [
            {"queue": queue, "state": state, "items": count}
            for queue, states in numbers.queues.items()
            for state, count in states.items()
            if count
        ],
        "dead_letters": numbers.dead_letters,
        "new_dead_letters": numbers.new_dead_letters,
    }


class SummaryWorker(MailingWorker):
    """Sends the daily summary once its moment has come (a once-only task)."""

    name = "summary"

    async def next_due(self) -> float | None:
        if not self.config.notify.admin:
            return None
        moment = latest_moment(self.config, self.clock())
        last = await self.db.run(get_meta, LAST_DAY)
        if last == moment.date().isoformat():
            return moment_on(self.config, moment.date() + DAY).timestamp()
        return moment.timestamp()

    async def run_once(self) -> int:
        if not self.config.notify.admin:
            return 0
        moment = latest_moment(self.config, self.clock())
        day = moment.date().isoformat()
        if await self.db.run(get_meta, LAST_DAY) == day:
            return 0
        start = moment_on(self.config, moment.date() - DAY).timestamp()
        numbers = await self.db.run(day_numbers, start, moment.timestamp())
        context = summary_context(numbers, moment)
        queued = await queue_admin_mail(
            self.db,
            self.config,
            self.renderer,
            self.outbox_dir,
            key=f"{KIND}:{day}",
            kind=KIND,
            context=context,
        )
        await self.db.run(set_meta, LAST_DAY, day)
        logger.info(
            "summary.queued",
            day=context["day"],
            already_queued=not queued,
            delivered=numbers.delivered,
            failed=numbers.failed,
            received=numbers.received,
        )
        return 1
