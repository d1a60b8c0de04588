"""The events worker: applies stored carrier events (webhooks and the reconciler's findings).

Unprocessed rows of `events` are claimed oldest first, up to a batch at a time (one claim, and
one transaction for the batch's marks; store/events.py says how a batch shares its pickups).
For each event:
- With webhooks.verify (the default) the fax is fetched with GET /faxes/{id} and that record is
  acted upon; the webhook only says "look at this fax". A batch of several faxes first reads
  the newest page of the carrier's list: an outbound fax found there is verified by that
  record, without a GET of its own (EventsWorker._newest_page says why that is sound). The
  events of one fax in a batch (the carrier's queued, sending and delivered in quick
  succession) share that one GET and are applied as one: its record is the fax's latest
  state, whichever event asked for it; its lines carry the oldest event's id and
  `coalesced`, how many. The GETs of the next few faxes are started while one is applied,
  once the carrier has answered in this batch (its page, or the last GET), each one try: the
  first that fails stops them (those under way are cancelled, no other is started), and the
  faxes then go one GET at a time, with the client's retries, until one is answered; so a
  carrier that goes away gets one probe at a time, not the read-ahead and the retries of each.
  A fax the carrier does not know (404) is a forged or misdirected webhook: dropped, logged
  at warning level. A carrier that cannot be reached leaves the event for later, with
  backoff (and the events of the batch not tried yet wait with it, their claims given back);
  so does any other failure, until queue.lifetime_seconds after the event arrived (the
  reconciler still covers the fax). While webhooks pour in, a round first gives way to their
  intake, within a bound (callbacks/intake.py).
- Outbound: the status is classified and recorded on our fax (`record_carrier_status`, which
  never undoes a final state, so an out-of-order `delivering` after `delivered` changes
  nothing). A fax that became final is reported by the reports worker (gateway/outbound/reports.py),
  which is woken; a pending one gets its queued report here when notify.on_queued asks for
  it. Reports are keyed per fax and kind in the outbox, so replaying an event never mails
  twice.
- Inbound: a fax that was received is recorded in `inbound` (once per carrier id) for the
  inbound worker; one still being received is looked at again later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gateway import log
from gateway.callbacks.intake import Intake
from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.errors import CarrierError, NotFound
from gateway.carrier.models import CarrierFax, PayloadError
from gateway.carrier.status import Outcome
from gateway.config import Config
from gateway.inbound.compose import shown_number
from gateway.ops.metrics import Metrics
from gateway.outbound.reports import Reporter
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import DEFERRED, EXPIRED, HELD, Clock
from gateway.store import Database
from gateway.store.claims import give_back_all
from gateway.store.events import (
    EVENTS,
    Event,
    Processed,
    claim_events,
    defer_event,
    mark_events_processed,
    mark_processed,
    next_event_due,
)
from gateway.store.faxes import record_carrier_status
from gateway.store.inbound import announce_inbound

logger = log.get_logger(__name__)

# Events claimed at once (one claim, one commit of their marks).
_BATCH = 50
# GET /faxes/{id} in flight at once for a batch: the documentation names no rate limit; a few
# requests at a time keep both sides busy without flooding a carrier that is struggling.
_AHEAD = 8


class _NotYet(Exception):
    """The event cannot take effect yet (an inbound fax still being received)."""


class EventsWorker(QueueWorker):
    """Applies stored events; `run_once` returns how many it finished or tried."""

    name = "events"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        client: VoxtelesysClient,
        reporter: Reporter,
        wake: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        intake: Intake | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.client = client
        self.reporter = reporter
        self.wake = wake
        self.metrics = metrics
        # The webhook endpoint's: rounds wait while webhooks pour in (callbacks/intake.py).
        self.intake = intake
        # Each event's own retry is in the store. A carrier found unreachable also pauses the
        # whole queue until that event is due again, so an outage costs one failed request per
        # backoff, not one per event; the pause alone lives in memory, since after a restart
        # one request is a fair way to find out whether the carrier is back.
        self._carrier_paused_until = 0.0
        # The current batch's page of the carrier's list (_newest_page), by carrier id, and
        # the GETs started ahead of their turn (_fetch_ahead).
        self._page: dict[str, CarrierFax] = {}
        self._fetches: dict[str, asyncio.Task[CarrierFax]] = {}
        # Whether the carrier answered the batch's last request (the read-ahead goes only
        # then), the GETs read ahead that a failure stopped, and those read ahead that the
        # carrier answered since the last one failed (only such an answer, used in its turn,
        # starts the read-ahead again: one from before the failure says nothing of after).
        self._answering = False
        self._stopped: list[asyncio.Task[CarrierFax]] = []
        self._answered_since_failure: set[asyncio.Task[CarrierFax]] = set()

    async def run_once(self) -> int:
        now = self.clock()
        if now < self._carrier_paused_until:
            return 0
        if self.intake is not None:
            await self.intake.give_way()
            now = self.clock()
        claimed, held = await self.db.run(claim_events, now, _BATCH, self.schedule.max_pickups)
        if self.intake is not None and len(claimed) + len(held) < _BATCH:
            self.intake.caught_up()
        for event in held:
            logger.error(
                "event.held",
                event_id=event.id,
                carrier_id=event.carrier_id,
                pickups=event.pickups,
                hint="applying it kept interrupting the gateway; the reconciler still"
                " looks at its fax",
            )
            self._count(event, HELD)
        processed: list[Processed] = []
        untried: list[Event] = []
        groups = self._groups(claimed)
        self._answering = False
        try:
            self._page = await self._newest_page(groups)
        except CarrierError as exc:
            # The carrier is away: the batch waits as when its first GET fails.
            with log.bound(event_id=groups[0][0].id, carrier_id=groups[0][0].carrier_id):
                await self._carrier_failed(groups[0], exc)
            untried = [event for rest in groups[1:] for event in rest]
            groups = []
        try:
            for number, group in enumerate(groups):
                if self._answering:
                    self._fetch_ahead(groups[number : number + _AHEAD])
                bound = {"event_id": group[0].id, "carrier_id": group[0].carrier_id}
                if len(group) > 1:
                    bound["coalesced"] = len(group)
                with log.bound(**bound):
                    carrier_down = await self._process(group, processed)
                if carrier_down:
                    untried = [event for rest in groups[number + 1 :] for event in rest]
                    break
        finally:
            self._page = {}
            await self._drop_fetches()
        if processed:
            await self.db.run(mark_events_processed, processed, self.clock())
        if untried:
            # Not tried: they wait with the paused queue, their claims' pickups taken back.
            await self.db.run(give_back_all, EVENTS, [event.id for event in untried])
        return len(held) + len(claimed) - len(untried)

    def _groups(self, events: list[Event]) -> list[list[Event]]:
        """The events to apply together, in arrival order: with verification those of one fax
        (one GET tells its latest state), without it each event alone (its payload is what is
        acted upon)."""
        if not self.config.webhooks.verify:
            return [[event] for event in events]
        groups: dict[str, list[Event]] = {}
        for event in events:
            groups.setdefault(event.carrier_id, []).append(event)
        return list(groups.values())

    def _fetch_ahead(self, groups: list[list[Event]]) -> None:
        """Start the GET /faxes/{id} of these groups' faxes (those not on the page, and not
        started yet): the next faxes' records are on their way while one is applied, rather
        than each GET waiting for the carrier in turn (on a carrier 50 ms away, 20 a second).
        They are applied one by one in arrival order as before; only the reading is ahead,
        each record still read after its event was stored."""
        if not self.config.webhooks.verify:
            return
        for group in groups:
            carrier_id = group[0].carrier_id
            if carrier_id in self._page or carrier_id in self._fetches:
                continue
            # Its lines (the client's) carry its own event, as if fetched in its turn. One
            # try: its turn makes the GET again (with retries) if this one fails.
            with log.bound(event_id=group[0].id, carrier_id=carrier_id):
                fetch = asyncio.create_task(self.client.get_fax(carrier_id, retry=False))
            fetch.add_done_callback(self._fetched)
            self._fetches[carrier_id] = fetch

    def _fetched(self, fetch: asyncio.Task[CarrierFax]) -> None:
        """A GET read ahead ended: one the carrier failed stops the read-ahead at once."""
        if fetch.cancelled():
            return
        failure = fetch.exception()
        if failure is None or isinstance(failure, NotFound):
            self._answered_since_failure.add(fetch)
        elif isinstance(failure, CarrierError):
            self._answering = False
            self._answered_since_failure.clear()
            for carrier_id, other in list(self._fetches.items()):
                if not other.done():
                    other.cancel()
                    self._stopped.append(self._fetches.pop(carrier_id))

    async def _drop_fetches(self) -> None:
        """The batch is over: the GETs started for faxes it did not reach are not needed."""
        tasks, self._fetches = list(self._fetches.values()), {}
        tasks += self._stopped
        self._stopped = []
        self._answered_since_failure.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _newest_page(self, groups: list[list[Event]]) -> dict[str, CarrierFax]:
        """The outbound faxes on the first page of the carrier's list, by id, when a batch
        has several faxes to verify: one request verifies each of them found there, instead of
        a GET /faxes/{id} each (the rest still get theirs).

        The documentation is silent on the list's order and page size: its example shows one
        fax a page, the sandbox twenty, newest first. So the page is only a chance: a fax not
        on it is fetched by id as before, and a forged id (never on any page) costs this one
        request shared by its batch. A list entry is the carrier's record as the GET's is (the
        documented fields are the same), read after the events were stored, so it is as fresh
        as the GET would be. Only outbound entries are used: the documentation shows neither
        answer with an inbound fax's media link, so an inbound fax is still read by id, the
        record its mail is downloaded from. A carrier that is away raises (transient, or a
        refused key: CarrierError, as a GET's failure); any other failure of the page is a
        miss: every fax by id.
        """
        if not self.config.webhooks.verify or len(groups) < 2:
            return {}
        try:
            faxes = await self.client.newest_faxes()
        except CarrierError as exc:
            if exc.transient or exc.http_status in (401, 403):
                raise
            self._answering = True
            return {}
        self._answering = True
        return {fax.id: fax for fax in faxes if fax.direction == "outbound"}

    async def next_due(self) -> float | None:
        due = await self.db.run(next_event_due)
        if due is None:
            return None
        return max(due, self._carrier_paused_until)

    async def _process(self, group: list[Event], processed: list[Processed]) -> bool:
        """Apply the events of one fax, each ending in `processed` or deferred; True when the
        carrier is unreachable and the batch should stop."""
        event = group[-1]  # the newest: its payload (no verification), its patience (_NotYet)
        try:
            fax = await self._fax_of(event)
            if isinstance(fax, str):  # dropped, and why
                for each in group:
                    processed.append(Processed(each.id, error=fax))
                    self._count(each, "dropped")
                return False
            if fax.direction == "outbound":
                await self._outbound(event, fax)
            elif fax.direction == "inbound":
                await self._inbound(event, fax)
            else:
                logger.warning("event.unknown_direction", direction=fax.direction)
        except _NotYet as exc:
            for each in group:
                await self._retry_later(each, str(exc), level="info")
            return False
        except CarrierError as exc:
            return await self._carrier_failed(group, exc)
        except Exception as exc:
            logger.exception("event.failed")
            for each in group:
                await self._retry_later(each, f"{type(exc).__name__}: {exc}", level="error")
            return False
        payload = fax_payload(fax)
        for each in group:
            processed.append(Processed(each.id, payload=payload))
            self._count(each, "applied")
        return False

    async def _carrier_failed(self, group: list[Event], exc: CarrierError) -> bool:
        # 5xx, timeouts, a refused key, an unreadable answer: none of them says anything
        # about the fax, so the events wait; a refused key needs the operator, whose fix
        # should not cost the events that arrived meanwhile.
        delay = 0.0
        for each in group:
            delay = await self._retry_later(each, f"carrier: {exc}", level="warning")
        if exc.transient or exc.http_status in (401, 403):
            self._carrier_paused_until = self.clock() + delay
            return True
        return False

    def _count(self, event: Event, outcome: str) -> None:
        if self.metrics is None:
            return
        self.metrics.webhook_events.labels(direction=event.direction, outcome=outcome).inc()
        if outcome != DEFERRED:
            self.metrics.webhook_handling.observe(max(0.0, self.clock() - event.received_at))

    async def _fax_of(self, event: Event) -> CarrierFax | str:
        """The record to act upon, or why the event is dropped."""
        if self.config.webhooks.verify:
            listed = self._page.get(event.carrier_id)
            if listed is not None:
                return listed
            try:
                fax = await self._read(event.carrier_id)
            except NotFound:
                logger.warning(
                    "event.unknown_fax",
                    status=event.status,
                    hint="the carrier has no such fax: a forged or misdirected webhook",
                )
                return "unknown to the carrier"
            if fax.id != event.carrier_id:
                # Our GET by id answered with another fax: never act on it.
                raise CarrierError(f"asked for fax {event.carrier_id}, got {fax.id}")
            return fax
        try:
            return CarrierFax.from_api(event.payload)
        except PayloadError as exc:
            logger.warning("event.unusable", reason=str(exc))
            return f"unusable payload: {exc}"

    async def _read(self, carrier_id: str) -> CarrierFax:
        """GET /faxes/{carrier_id}: read ahead, or now if it was not, or if the read ahead
        failed (this GET is then the probe: the read-ahead waits for its answer). A record
        read ahead starts the read-ahead again only if the carrier gave it after the last
        failure (_fetched)."""
        fetch = self._fetches.pop(carrier_id, None)
        fresh = True
        try:
            fax = None
            if fetch is not None:
                try:
                    fax = await fetch
                except NotFound:
                    fresh = fetch in self._answered_since_failure
                    raise
                except CarrierError:
                    pass  # the read-ahead stopped (_fetched): the GET again, in its turn
                else:
                    fresh = fetch in self._answered_since_failure
            if fax is None:
                fax = await self.client.get_fax(carrier_id)
        except NotFound:
            self._answering = self._answering or fresh
            raise
        self._answering = self._answering or fresh
        return fax

    async def _outbound(self, event: Event, fax: CarrierFax) -> None:
        outcome = fax.outcome(self.config.voxtelesys.success_statuses)
        result = await self.db.run(
            record_carrier_status,
            fax.id,
            fax.status,
            outcome,
            fax.pages,
            fax.duration,
            fax.attempts,
            fax.error_code,
            fax.error_description,
            self.clock(),
            self.config.fax.resubmit_attempts,
            self.config.fax.resubmit_delay_seconds,
        )
        if result is None:
            # A fax that failed at once (a bad document) can call back before the submit
            # worker has recorded its carrier id: wait a while before calling it foreign.
            if self.clock() - event.received_at < self.config.webhooks.reconcile_after_seconds:
                raise _NotYet("no fax of ours has this carrier id (yet)")
            # The account may be shared with other software; its faxes are not ours to report.
            # So is, to this look-up, the failed try of a fax resubmitted since (the next POST
            # gave it a new carrier id): its event, replayed late, changes nothing of the new
            # try, and the round's interim report went out before that POST (outbound/submit.py).
            logger.info("event.foreign_fax", status=fax.status)
            return
        ours, final_now = result
        logger.info(
            "event.applied",
            status=fax.status,
            outcome=outcome.value,
            state=str(ours.state),
            final_now=final_now,
        )
        if final_now:
            # The reports worker tells the outcome (claim_reports finds every final fax not
            # yet reported, so a crash right here still gets its report).
            self._wake()
        elif await self.reporter.resubmission(ours, outcome, fax.id):
            # This try failed on the line and the fax waits to be resubmitted (its interim
            # report queued): the submit worker has it due after the delay.
            self._wake()
        elif outcome is Outcome.PENDING and not ours.final:
            await self.reporter.queued(ours)

    async def _inbound(self, event: Event, fax: CarrierFax) -> None:
        outcome = fax.outcome(self.config.voxtelesys.success_statuses)
        if outcome is Outcome.PENDING:
            raise _NotYet(f"inbound fax is still {fax.status!r}")
        if outcome is Outcome.FAILED:
            info = fax.error_info
            logger.warning(
                "inbound.reception_failed",
                status=fax.status,
                from_number=shown_number(fax.from_),
                to_number=shown_number(fax.to),
                error_code=info.code if info else None,
                error=info.description if info else None,
            )
            return
        media_url = fax.media_url or fax.url
        inbound_id = await self.db.run(
            announce_inbound,
            carrier_id=fax.id,
            from_number=shown_number(fax.from_),
            to_number=shown_number(fax.to),
            pages=fax.pages,
            duration=fax.duration,
            fax_time=fax.time or _iso(fax),
            media_url=media_url,
            now=self.clock(),
        )
        if inbound_id is None:
            logger.info("inbound.already_known")
            return
        logger.info(
            "inbound.announced",
            inbound_id=inbound_id,
            from_number=shown_number(fax.from_),
            to_number=shown_number(fax.to),
            pages=fax.pages,
            has_media=media_url is not None,
        )
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    async def _retry_later(self, event: Event, error: str, *, level: str) -> float:
        """Defer the event by the schedule (or let it expire); the delay, 0 if it expired."""
        now = self.clock()
        due = self.schedule.retry(event.attempts + 1, event.received_at)
        if due is None:
            logger.error("event.expired", attempts=event.attempts + 1, error=error)
            await self.db.run(mark_processed, event.id, now, error=f"{EXPIRED}: {error}")
            self._count(event, EXPIRED)
            return 0.0
        attempts = await self.db.run(defer_event, event.id, error, due, now)
        self._count(event, DEFERRED)
        getattr(logger, level)(
            "event.deferred", attempts=attempts, delay=round(due - now, 1), error=error
        )
        return due - now


def _iso(fax: CarrierFax) -> str | None:
    moment = fax.modified_at or fax.created_at
    return moment.isoformat() if moment is not None else None


def fax_payload(fax: CarrierFax) -> dict[str, Any]:
    """A webhook-shaped payload of a carrier record (synthetic events of the reconciler)."""
    data: dict[str, Any] = {
        "type": "fax",
        "id": fax.id,
        "direction": fax.direction,
        "to": fax.to,
        "from": fax.from_,
        "status": fax.status,
    }
    optional: dict[str, Any] = {
        "time": fax.time,
        "created_at": fax.created_at.isoformat() if fax.created_at else None,
        "modified_at": fax.modified_at.isoformat() if fax.modified_at else None,
        "url": fax.url,
        "pages": fax.pages,
        "duration": fax.duration,
        "attempts": fax.attempts,
    }
    data.update({key: value for key, value in optional.items() if value is not None})
    if fax.has_error:
        data["error"] = {"code": fax.error_code, "description": fax.error_description}
    if fax.media_url:
        data["links"] = {"media": fax.media_url}
    return data
