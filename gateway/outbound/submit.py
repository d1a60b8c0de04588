"""uploaded -> submitted: POST /faxes for each recipient, exactly once.

Exactly once across crashes: `begin_submit` is committed before each POST. A fax picked up with
an earlier POST on record may already exist at the carrier (the process died before storing
its id), so the carrier's list is searched for it by document URL and number first, and it is
adopted if found. Within one call the client does the same after an ambiguous failure.

The steps a client waits on go through the group commit (store/commit.py), as prepare's and
upload's do: `begin_submit` (answered only once committed, so still before the POST) and
`mark_submitted`, which the POSTs ending together share, ahead of the queue workers' claims on
the store's thread. A step that recorded an outcome (submitted, deferred, failed) ended its
pickup with it; only one that did not (its job went back to upload, it was cancelled
meanwhile) ends it on its own.

A fax the carrier failed on the line may come back pending (`record_carrier_status`,
fax.resubmit_attempts): its first POST of the new round is made with a freshly signed document
URL, different from every URL an earlier try sent, so that the carrier fetches the document
anew and so that a search by URL after a crash finds this try and never the failed one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from gateway import log
from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.errors import AuthError, CarrierError, Rejected
from gateway.carrier.models import CarrierFax
from gateway.carrier.status import Outcome, classify
from gateway.config import Config
from gateway.failpoints import failpoint
from gateway.ops.metrics import Metrics
from gateway.outbound.reports import Reporter
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import CLAIM_BATCH, Clock
from gateway.storage.base import DocumentMissing, Storage, StorageError
from gateway.store import Database
from gateway.store import faxes as fax_store
from gateway.store import jobs as store
from gateway.store.commit import GroupCommit
from gateway.store.db import StoreUnavailable
from gateway.store.records import Fax, Job, JobState

logger = log.get_logger(__name__)

# Carrier timeouts a POST (with the client's retries) may take: the lease of a fax being sent.
_LEASE_TIMEOUTS = 10

# A URL about to expire is signed afresh first: the carrier may fetch it again on a redial.
_URL_MARGIN_SECONDS = 3600


class SubmitWorker(QueueWorker):
    name = "submit"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        client: VoxtelesysClient,
        storage: Storage,
        metrics: Metrics | None = None,
        reporter: Reporter | None = None,
        commits: GroupCommit | None = None,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.client = client
        self.storage = storage
        self.metrics = metrics
        self.commits = commits or GroupCommit(db)
        # For the interim report of a fax whose POST's answer already says it failed on the
        # line (a fax adopted after an unknown outcome may have been tried meanwhile).
        self.reporter = reporter

    async def next_due(self) -> float | None:
        return await self.db.run(fax_store.next_submit_due)

    async def run_once(self) -> int:
        """Submit what is due, up to voxtelesys.max_concurrent_posts faxes at once; a fax
        slow at the carrier (or retrying a 500) holds only its own slot."""
        slots = self.config.voxtelesys.max_concurrent_posts
        running: set[asyncio.Task[None]] = set()
        started = 0
        try:
            while True:
                while len(running) < slots:
                    try:
                        claimed = await self.db.run(
                            fax_store.claim_faxes,
                            self.schedule.clock(),
                            CLAIM_BATCH,
                            self.config.queue.max_pickups,
                            self.lease,
                        )
                    except Exception:
                        # The store failed (it may be down): the POSTs under way finish first,
                        # a POST cut short would leave its outcome unknown.
                        await asyncio.gather(*running, return_exceptions=True)
                        raise
                    if not claimed:
                        break
                    for fax, job in claimed:
                        running.add(asyncio.create_task(self._one(fax, job)))
                        started += 1
                if not running:
                    return started
                _done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Stopping: the POSTs under way are cut short; their pickups stay counted, which is
            # what the crash guard is for, and their leases keep them until they have surely
            # ended at the carrier.
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    @property
    def lease(self) -> float:
        """How long a fax being submitted is not claimed again: longer than a POST with the
        client's own retries can take. A dead process's claims are released at start-up; a
        claim whose step a store outage interrupted is handed back when the store returns
        (queue/runner.py), the POST it may have made found by its URL."""
        return _LEASE_TIMEOUTS * self.config.voxtelesys.timeout_seconds

    async def _one(self, fax: Fax, job: Job) -> None:
        with log.bound(job_id=job.id, fax_id=fax.id, to=fax.recipient):
            try:
                ended = await self._submit(fax, job)
            except StoreUnavailable as exc:
                # The store went away mid-step (a POST may have been made): the runner hands
                # the claim back once it is there again, and the next pickup looks for it.
                logger.warning("fax.submit_interrupted", error=str(exc))
                return
            except Exception:
                # A bug or a surprise: logged, and the fax's pickup stays counted (the guard
                # holds it after queue.max_pickups); the other POSTs go on.
                logger.exception("fax.submit_crashed")
                return
            if not ended:
                try:
                    await self.commits.run(fax_store.end_pickup_in, fax.id, self.schedule.clock())
                except StoreUnavailable as exc:
                    # As above: the claim is handed back when the store returns (nothing of
                    # this step is lost: it recorded no outcome).
                    logger.warning("fax.submit_interrupted", error=str(exc))

    async def _submit(self, fax: Fax, job: Job) -> bool:
        """One fax's step; whether it recorded an outcome (which ended the pickup)."""
        # What an earlier, unrecorded POST sent: the job's URL may have been signed afresh since
        # (for a sibling, or near its expiry), and only the URL that POST carried finds it.
        earlier_url = fax.submit_url or job.document_url
        resubmission = fax.resubmits > 0 and fax.submit_attempts == 0
        if resubmission and self.reporter is not None:
            # The round's interim report, queued once (its outbox key) before the POST that
            # ends the round: the event whose application queues it finds the fax by the
            # failed try's carrier id, which this POST replaces, so one applied again after it
            # (its first application ended between recording the failure and the mail) could
            # no longer tell it. Not for an operator's round (Reporter.resubmitting).
            try:
                await self.reporter.resubmitting(fax, self.schedule.clock())
            except StoreUnavailable:
                raise  # the claim is handed back (_one): nothing was sent
            except Exception:
                # The fax goes first: a mail that cannot be made (an override template that
                # does not render, a full disk) must not crash this step on every pickup until
                # the guard holds a fax that could have been sent. Chosen: that interim mail is
                # then not sent (its event, applied again, no longer finds the fax either); the
                # error line says so, and the fax's final report goes its own way.
                logger.exception("report.retry_not_queued")
        url = await self._fresh_url(fax, job, renew=resubmission)
        if url is None or earlier_url is None:
            return False
        if resubmission and url == fax.submit_url:
            # Signed within the same second as the failed try's URL: a moment later it differs.
            return await self.db.run(
                fax_store.defer_fax,
                fax.id,
                "waiting for a new document URL",
                1.0,
                self.schedule.clock(),
            )
        if fax.submit_attempts > 0 and fax.submit_started_at is not None:
            # A fax found there is adopted whatever its status, failed included: it is the
            # fax we sent, and its outcome is what the sender must be told.
            try:
                found = await self.client.find_fax_by_url(
                    earlier_url,
                    fax.recipient,
                    since=datetime.fromtimestamp(fax.submit_started_at - 60, UTC),
                )
            except CarrierError as exc:
                return await self._carrier_error(fax, job, exc)
            if found is not None:
                logger.warning("fax.adopted", carrier_id=found.id, status=found.status)
                return await self._record(fax, job, found)
        started = await self.commits.run(
            fax_store.begin_submit_in, fax.id, self.schedule.clock(), url
        )
        if started is None:
            return False  # cancelled meanwhile
        try:
            # job.resolution (`+fine` / `+standard` in the address) is not sent: POST /faxes
            # takes to, from, url and attempts only (the Voxtelesys Fax API documentation). The
            # hint stays in the job for the day the carrier takes one.
            created = await self.client.send_fax(
                fax.recipient, job.from_number, url, self.config.voxtelesys.attempts
            )
        except CarrierError as exc:
            return await self._carrier_error(fax, job, exc)
        failpoint("after_post")
        return await self._record(fax, job, created)

    async def _fresh_url(self, fax: Fax, job: Job, *, renew: bool = False) -> str | None:
        assert job.document_url is not None and job.storage_key is not None
        expires = job.url_expires_at or 0
        if not renew and expires - self.schedule.clock() > _URL_MARGIN_SECONDS:
            return job.document_url
        try:
            stored = await self.storage.url_for(job.storage_key, job.document_type or "")
        except DocumentMissing as exc:
            # Gone from the bucket (a lifecycle rule, an operator): upload it again.
            if job.state is JobState.UPLOADED and await self.db.run(
                store.advance, job.id, JobState.UPLOADED, JobState.PREPARED, error=str(exc)
            ):
                logger.warning("job.reupload", error=str(exc))
                return None
            await self._defer(fax, job, f"storage: {exc}")
            return None
        except StorageError as exc:
            await self._defer(fax, job, f"storage: {exc}")
            return None
        await self.db.run(
            store.set_document_url, job.id, stored.url, stored.expires_at, self.schedule.clock()
        )
        logger.info("job.url_renewed", expires_at=stored.expires_at)
        return stored.url

    async def _record(self, fax: Fax, job: Job, created: CarrierFax) -> bool:
        now = self.schedule.clock()
        marked = await self.commits.run(
            fax_store.mark_submitted_in, fax.id, created.id, created.status, now
        )
        if not marked:
            return False
        logger.info("fax.submitted", carrier_id=created.id, status=created.status)
        if self.metrics is not None and fax.resubmits == 0:
            # A resubmission's wait was chosen (fax.resubmit_delay_seconds), not suffered.
            self.metrics.received_to_submitted.observe(max(0.0, now - job.created_at))
        outcome = classify(
            created.status,
            created.error_code is not None,
            self.config.voxtelesys.success_statuses,
        )
        if outcome is not Outcome.PENDING:
            result = await self.db.run(
                fax_store.record_carrier_status,
                created.id,
                created.status,
                outcome,
                created.pages,
                created.duration,
                created.attempts,
                created.error_code,
                created.error_description,
                now,
                self.config.fax.resubmit_attempts,
                self.config.fax.resubmit_delay_seconds,
            )
            if result is not None and self.reporter is not None:
                await self.reporter.resubmission(result[0], outcome, created.id)
        return True

    async def _carrier_error(self, fax: Fax, job: Job, exc: CarrierError) -> bool:
        if isinstance(exc, Rejected):
            # 422: this request will never be accepted; the sender learns the carrier's words.
            message = f"the carrier refused the fax: {exc.message}"
            logger.warning("fax.failed", stage="submit", error=message)
            return await self.db.run(
                fax_store.fail_fax, fax.id, None, message, self.schedule.clock()
            )
        if isinstance(exc, AuthError):
            # Every fax would fail the same way: keep them queued for the operator to fix the
            # key, and say so loudly.
            logger.error("carrier.auth_failed", error=str(exc))
        return await self._defer(fax, job, f"carrier: {exc}")

    async def _defer(self, fax: Fax, job: Job, error: str) -> bool:
        """Tried again later, or failed once its lifetime is over; whether it was recorded."""
        schedule = self.schedule
        now = schedule.clock()
        due = schedule.retry(max(fax.submit_attempts, 1), job.created_at)
        if due is None:
            # Expired: the fax fails, and the sender is told why.
            message = f"the fax could not be submitted for {schedule.lifetime_text()}: {error}"
            logger.error("fax.expired", stage="submit", error=message)
            return await self.db.run(fax_store.fail_fax, fax.id, None, message, now)
        delay = due - now
        deferred = await self.db.run(fax_store.defer_fax, fax.id, error, delay, now)
        logger.warning("fax.deferred", stage="submit", error=error, delay=round(delay))
        return deferred
