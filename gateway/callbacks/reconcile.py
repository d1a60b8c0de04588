"""The reconciler: what webhooks missed, found by asking the carrier.

Webhooks get lost: the gateway was down or unreachable when the carrier called, the carrier
gave up retrying, a proxy ate the request. Every webhooks.reconcile_interval_seconds:

- Outbound: each of our faxes submitted more than webhooks.reconcile_after_seconds ago and
  still without a final status is fetched with GET /faxes/{id}. What the carrier says goes into
  `events` as a synthetic event, so it takes the same path as a webhook (the events worker
  records it, the reports worker reports it) and is deduplicated against the real webhook.
- Inbound: the carrier's list of faxes (newest first) is walked back to the bookmark, the
  newest fax seen by the previous walk (table `meta`); every finished inbound fax found on the
  way becomes a synthetic event. An inbound fax still being received holds the bookmark
  behind it, so the next walk sees it again. The very first walk only sets the bookmark: the
  account's history from before this gateway is not mailed out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway import log
from gateway.callbacks.events import fax_payload
from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.errors import CarrierError, NotFound
from gateway.carrier.models import CarrierFax
from gateway.carrier.status import Outcome
from gateway.config import Config
from gateway.ops.metrics import Metrics
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import Clock
from gateway.store import Database
from gateway.store.events import record_event, record_or_reopen_event
from gateway.store.faxes import fail_fax, faxes_awaiting_final
from gateway.store.meta import get_meta, set_meta
from gateway.store.records import Fax

logger = log.get_logger(__name__)

BOOKMARK = "reconcile.inbound_bookmark"

# What the sender of a fax the carrier lost is told (its failure report's description).
LOST_BY_CARRIER = "the carrier has no record of this fax"

# Faxes created this long before the bookmark are still looked at: the list is ordered by
# creation time, and two faxes created in the same instant may be listed in either order.
# Looking at a few extra faxes costs nothing; their events are deduplicated.
_OVERLAP = timedelta(minutes=5)


@dataclass(frozen=True)
class Bookmark:
    """The newest fax a walk covered: its id and creation time (either may be unknown)."""

    fax_id: str | None
    created_at: datetime | None

    def dump(self) -> str:
        return json.dumps(
            {
                "id": self.fax_id,
                "created_at": self.created_at.isoformat() if self.created_at else None,
            }
        )

    @classmethod
    def load(cls, text: str | None) -> Bookmark | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            created = data.get("created_at")
            return cls(data.get("id"), datetime.fromisoformat(created) if created else None)
        except (ValueError, AttributeError, TypeError):
            logger.warning("reconcile.bookmark_unreadable", value=text[:200])
            return None

    @classmethod
    def of(cls, fax: CarrierFax) -> Bookmark:
        return cls(fax.id, fax.created_at)

    def reached_by(self, fax: CarrierFax) -> bool:
        """Whether the walk (going back in time) has reached what the last walk covered."""
        if self.fax_id is not None and fax.id == self.fax_id:
            return True
        return (
            self.created_at is not None
            and fax.created_at is not None
            and fax.created_at < self.created_at - _OVERLAP
        )


class Reconciler(QueueWorker):
    """A worker whose `run_once` does a round at most every reconcile_interval_seconds."""

    name = "reconciler"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        client: VoxtelesysClient,
        wake: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.client = client
        self.wake = wake
        self.metrics = metrics
        self._next_round = 0.0  # the first round runs at start: catch up on a downtime

    async def next_due(self) -> float | None:
        return self._next_round

    async def run_once(self) -> int:
        """One round when it is due; how many events it stored (0 when not due)."""
        now = self.clock()
        if now < self._next_round:
            return 0
        self._next_round = now + self.config.webhooks.reconcile_interval_seconds
        found = 0
        for part in (self._outbound, self._inbound):
            try:
                found += await part(now)
            except CarrierError as exc:
                # Next round, as scheduled: nothing is lost by waiting, only delayed.
                logger.warning("reconcile.carrier_unavailable", part=part.__name__, error=str(exc))
        if found:
            logger.info("reconcile.found", events=found)
            if self.wake is not None:
                self.wake()
        return found

    async def _outbound(self, now: float) -> int:
        before = now - self.config.webhooks.reconcile_after_seconds
        found = 0
        for ours in await self.db.run(faxes_awaiting_final, before):
            if ours.carrier_id is None:
                continue
            with log.bound(fax_id=ours.id, carrier_id=ours.carrier_id):
                try:
                    fax = await self.client.get_fax(ours.carrier_id)
                except NotFound:
                    found += await self._unknown_to_carrier(ours, now)
                    continue
                outcome = fax.outcome(self.config.voxtelesys.success_statuses)
                if outcome is Outcome.PENDING:
                    stored = await self.db.run(
                        record_event, fax.id, fax.status, fax.direction, fax_payload(fax), now
                    )
                    found += stored is not None
                    continue
                # Final at the carrier but not here: an event with this status may have been
                # applied before the carrier said so; make it due again.
                if await self.db.run(
                    record_or_reopen_event,
                    fax.id,
                    fax.status,
                    fax.direction,
                    fax_payload(fax),
                    now,
                ):
                    logger.info("reconcile.outbound_final", status=fax.status)
                    found += 1
        return found

    async def _unknown_to_carrier(self, ours: Fax, now: float) -> int:
        """The carrier accepted this fax and now says it has no such fax. For a while that may
        be its own lag (a fresh fax not yet listed); past webhooks.unknown_fax_after_seconds
        since the POST the fax is lost, and its sender is told once that it failed."""
        bound = self.config.webhooks.unknown_fax_after_seconds
        submitted = ours.submitted_at or ours.created_at
        if now - submitted < bound:
            logger.warning("reconcile.fax_unknown_to_carrier", waiting_until=submitted + bound)
            return 0
        if not await self.db.run(fail_fax, ours.id, None, LOST_BY_CARRIER, now):
            return 0  # final meanwhile (a late webhook): nothing to say
        logger.error(
            "reconcile.fax_lost_by_carrier",
            seconds_since_submitted=round(now - submitted),
            hint="reported to the sender as failed",
        )
        if self.metrics is not None:
            self.metrics.faxes_lost_by_carrier.inc()
        return 1

    async def _inbound(self, now: float) -> int:
        bookmark = Bookmark.load(await self.db.run(get_meta, BOOKMARK))
        found = 0
        # The next bookmark: the newest fax older than every unfinished inbound fax seen, so
        # the next walk reaches those again.
        candidate: Bookmark | None = None
        success = self.config.voxtelesys.success_statuses
        async with aclosing(self.client.list_faxes()) as faxes:
            async for fax in faxes:
                if bookmark is not None and bookmark.reached_by(fax):
                    break
                unfinished = fax.direction == "inbound" and fax.outcome(success) is Outcome.PENDING
                if unfinished:
                    candidate = None
                    continue
                if candidate is None:
                    candidate = Bookmark.of(fax)
                if bookmark is None:
                    break  # first walk: only the bookmark
                if fax.direction == "inbound":
                    stored = await self.db.run(
                        record_event, fax.id, fax.status, "inbound", fax_payload(fax), now
                    )
                    if stored is not None:
                        logger.info("reconcile.inbound_found", carrier_id=fax.id)
                        found += 1
        if bookmark is None:
            # An empty account (or one with only faxes still arriving) starts from now.
            start = candidate or Bookmark(None, datetime.fromtimestamp(now, UTC))
            await self.db.run(set_meta, BOOKMARK, start.dump())
            logger.info("reconcile.bookmark_set", carrier_id=start.fax_id)
        elif candidate is not None:
            await self.db.run(set_meta, BOOKMARK, candidate.dump())
        return found
