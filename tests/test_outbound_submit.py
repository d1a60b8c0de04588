"""The submit stage against the sandbox carrier: exactly one fax per recipient across crashes.

Real SQLite store, real local storage (signed, expiring links), the sandbox carrier on a free
port; a crash between a POST and the record of its answer is reproduced by making the POST
with the client and not recording it, as a killed process would leave things.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from gateway.carrier.client import VoxtelesysClient
from gateway.carrier.status import Outcome
from gateway.config import Config
from gateway.outbound.submit import SubmitWorker
from gateway.queue.backoff import RetryPolicy
from gateway.queue.runner import run_until_idle
from gateway.storage.local import LocalStorage
from gateway.store import Database
from gateway.store.faxes import begin_submit, faxes_of, get_fax, record_carrier_status
from gateway.store.jobs import advance, create_job, get_job, set_document_url
from gateway.store.records import Fax, FaxState, JobState, NewJob, new_job_id
from tests import samples
from tests.helpers import Clock, until
from tests.servers.sandbox import Sandbox

FROM_NUMBER = "+12015550100"
TTL = 7200


@dataclass
class Stage:
    config: Config
    db: Database
    client: VoxtelesysClient
    storage: LocalStorage
    clock: Clock
    worker: SubmitWorker

    async def uploaded_job(self, *recipients: str) -> list[Fax]:
        """A job with its document stored and signed, ready to be POSTed."""
        job_id = new_job_id()
        path = self.config.data.dir / "documents" / f"{job_id}.pdf"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = samples.pdf(1)
        path.write_bytes(data)
        new = NewJob(
            id=job_id,
            sender="alice@example.com",
            auth_user=None,
            client_address="127.0.0.1",
            subject="",
            message_id="",
            from_number=FROM_NUMBER,
            spool_path=path,
            recipients=recipients,
        )
        await self.db.run(create_job, new, self.clock())
        await self.db.run(
            advance,
            job_id,
            JobState.RECEIVED,
            JobState.PREPARED,
            now=self.clock(),
            document_path=path,
            document_type="application/pdf",
            pages=1,
        )
        stored = await self.storage.put(job_id, data, "application/pdf")
        await self.db.run(
            advance,
            job_id,
            JobState.PREPARED,
            JobState.UPLOADED,
            now=self.clock(),
            storage_key=stored.key,
            document_url=stored.url,
            url_expires_at=stored.expires_at,
        )
        return list(await self.db.run(faxes_of, job_id))

    async def post_then_crash(self, fax: Fax) -> str:
        """What a process killed after its POST leaves: the fax at the carrier, not recorded."""
        job = await self.db.run(get_job, fax.job_id)
        assert job is not None and job.document_url is not None
        assert await self.db.run(begin_submit, fax.id, self.clock(), job.document_url) is not None
        created = await self.client.send_fax(fax.recipient, FROM_NUMBER, job.document_url)
        return created.id

    async def fax(self, fax_id: int) -> Fax:
        fax = await self.db.run(get_fax, fax_id)
        assert fax is not None
        return fax


@pytest.fixture
async def stage(make_config: Callable[..., Config], sandbox: Sandbox) -> AsyncIterator[Stage]:
    config = make_config(
        {
            **sandbox.config_override(),
            "storage": {"url_ttl_seconds": TTL},
            "queue": {"min_backoff_seconds": 1, "max_backoff_seconds": 2},
        }
    )
    clock = Clock()
    db = await Database(config.data.dir / "store.db").open()
    client = VoxtelesysClient.from_config(config.voxtelesys, retry=RetryPolicy.never())
    storage = LocalStorage(
        config.data.dir / "media", config.http.public_url, b"k" * 32, TTL, clock=clock
    )
    worker = SubmitWorker(config=config, db=db, clock=clock, client=client, storage=storage)
    try:
        yield Stage(config, db, client, storage, clock, worker)
    finally:
        await client.close()
        db.close()


async def test_a_fax_posted_before_a_crash_is_adopted_after_its_link_was_renewed(
    stage: Stage, sandbox: Sandbox
) -> None:
    """The search for an unrecorded POST uses the link that POST sent, not a renewed one."""
    [fax] = await stage.uploaded_job("+12015550123")
    carrier_id = await stage.post_then_crash(fax)
    # Restarted when the link is close to expiry: it is signed afresh, and the carrier's list
    # cannot be read this time, so the fax waits.
    stage.clock.advance(TTL - 1800)
    sandbox.fail_next(1, status=503, method="GET", path="/api/v1/faxes")
    await run_until_idle([stage.worker])
    assert (await stage.fax(fax.id)).state is FaxState.PENDING
    stage.clock.advance(10)
    await run_until_idle([stage.worker])
    # Adopted with whatever outcome the carrier has for it (here: it could not fetch the link).
    assert (await stage.fax(fax.id)).carrier_id == carrier_id
    assert len(sandbox.requests("/faxes", method="POST")) == 1


async def test_a_fax_posted_before_a_crash_is_adopted_after_a_sibling_renewed_the_link(
    stage: Stage, sandbox: Sandbox
) -> None:
    """A link renewed for another fax of the job does not hide the first fax's POST."""
    first, second = await stage.uploaded_job("+12015550123", "+12015550124")
    carrier_id = await stage.post_then_crash(first)
    stage.clock.advance(TTL - 1800)
    # The first fax's search fails; its sibling is then sent with a renewed link.
    sandbox.fail_next(1, status=503, method="GET", path="/api/v1/faxes")
    await run_until_idle([stage.worker])
    job = await stage.db.run(get_job, first.job_id)
    assert job is not None and (await stage.fax(second.id)).carrier_id is not None
    stage.clock.advance(10)
    await run_until_idle([stage.worker])
    assert (await stage.fax(first.id)).carrier_id == carrier_id
    assert len(sandbox.requests("/faxes", method="POST")) == 2


async def test_faxes_waiting_behind_an_interrupted_post_are_not_charged_a_pickup(
    stage: Stage, sandbox: Sandbox
) -> None:
    """A stop or crash during one POST counts a pickup for that fax only, not for the queue
    (one POST at a time here, so the others are waiting, not under way)."""
    stage.worker.config = one_post_at_a_time(stage.config)
    faxes = [(await stage.uploaded_job(f"+1201555013{n}"))[0] for n in range(3)]
    sandbox.slow(2, method="POST", path="/api/v1/faxes")
    running = asyncio.ensure_future(stage.worker.run_once())

    async def posting() -> bool:
        return any([(await stage.fax(fax.id)).submit_attempts for fax in faxes])

    await until(posting)
    running.cancel()  # the daemon's stop timeout, or a kill, in the middle of the POST
    with contextlib.suppress(asyncio.CancelledError):
        await running
    pickups = [(await stage.fax(fax.id)).pickups for fax in faxes]
    assert sorted(pickups) == [0, 0, 1]


# Longer than three other POSTs take on a loaded machine; the test waits for it to end.
SLOW_POST_SECONDS = 5.0


def one_post_at_a_time(config: Config) -> Config:
    voxtelesys = config.voxtelesys.model_copy(update={"max_concurrent_posts": 1})
    return config.model_copy(update={"voxtelesys": voxtelesys})


async def test_a_slow_post_does_not_hold_the_faxes_behind_it(
    stage: Stage, sandbox: Sandbox
) -> None:
    """With the first POST hanging at the carrier, the next faxes are submitted meanwhile
    (voxtelesys.max_concurrent_posts), and each fax is POSTed exactly once."""
    faxes = [(await stage.uploaded_job(f"+1201555014{n}"))[0] for n in range(4)]
    sandbox.slow(SLOW_POST_SECONDS, method="POST", path="/api/v1/faxes")  # the first POST only
    running = asyncio.ensure_future(run_until_idle([stage.worker]))

    async def three_submitted() -> bool:
        states = [(await stage.fax(fax.id)).state for fax in faxes]
        return states.count(FaxState.SUBMITTED) >= 3

    await until(three_submitted, seconds=4 * SLOW_POST_SECONDS)
    # The sandbox logs a request once it is answered: the slow POST is not, it still hangs.
    assert len(sandbox.requests("/faxes", method="POST")) == 3, "submitted after the slow POST"
    await running
    assert [(await stage.fax(fax.id)).state for fax in faxes] == [FaxState.SUBMITTED] * 4
    assert len(sandbox.requests("/faxes", method="POST")) == 4
    carrier_ids = [(await stage.fax(fax.id)).carrier_id for fax in faxes]
    assert len(set(carrier_ids)) == 4


async def fail_on_the_line(
    stage: Stage, carrier_id: str, attempts: int = 2, delay: float = 60.0
) -> Fax:
    """The carrier's "failed, 5109 busy" for `carrier_id`, recorded with resubmission on."""
    result = await stage.db.run(
        record_carrier_status,
        carrier_id,
        "failed",
        Outcome.FAILED,
        0,
        0,
        1,
        5109,
        "far end is not able to receive",
        stage.clock(),
        attempts,
        delay,
    )
    assert result is not None
    fax, final_now = result
    assert not final_now
    return fax


async def test_a_resubmission_is_posted_once_with_a_new_url(stage: Stage, sandbox: Sandbox) -> None:
    """A fax failed on the line is pending again, due after the delay, and is POSTed once more
    with a freshly signed document URL; a replay of the failure changes nothing."""
    [fax] = await stage.uploaded_job("+12015550123")
    await run_until_idle([stage.worker])
    first = await stage.fax(fax.id)
    assert first.carrier_id is not None and first.submit_url is not None
    waiting = await fail_on_the_line(stage, first.carrier_id)
    assert (waiting.state, waiting.resubmits, waiting.submit_attempts) == (FaxState.PENDING, 1, 0)
    assert waiting.next_attempt_at == pytest.approx(stage.clock() + 60, abs=1)
    assert await fail_on_the_line(stage, first.carrier_id) == waiting  # the event replayed
    await run_until_idle([stage.worker])
    assert len(sandbox.requests("/faxes", method="POST")) == 1  # not due yet
    stage.clock.advance(61)
    await run_until_idle([stage.worker])
    again = await stage.fax(fax.id)
    assert again.state is FaxState.SUBMITTED and again.carrier_id != first.carrier_id
    assert again.submit_url is not None and again.submit_url != first.submit_url
    assert len(sandbox.requests("/faxes", method="POST")) == 2


async def test_a_resubmission_interrupted_after_its_post_is_adopted_not_sent_again(
    stage: Stage, sandbox: Sandbox
) -> None:
    """Killed between the resubmission's POST and its record, the restarted submitter finds
    that POST by its new URL and adopts it; neither it nor the failed try is sent again."""
    [fax] = await stage.uploaded_job("+12015550123")
    await run_until_idle([stage.worker])
    first = await stage.fax(fax.id)
    assert first.carrier_id is not None
    # A short delay: the carrier lists faxes by its own (real) creation time, and the search
    # window starts a minute before the POST by the test's clock.
    await fail_on_the_line(stage, first.carrier_id, delay=1.0)
    stage.clock.advance(1.5)
    # What the submitter does for a resubmission, up to the kill: a new URL, begin_submit, POST.
    job = await stage.db.run(get_job, fax.job_id)
    assert job is not None and job.storage_key is not None
    stored = await stage.storage.url_for(job.storage_key, "application/pdf")
    await stage.db.run(set_document_url, job.id, stored.url, stored.expires_at, stage.clock())
    carrier_id = await stage.post_then_crash(await stage.fax(fax.id))
    await run_until_idle([stage.worker])
    adopted = await stage.fax(fax.id)
    assert adopted.carrier_id == carrier_id and adopted.resubmits == 1
    assert len(sandbox.requests("/faxes", method="POST")) == 2


async def test_a_fax_failed_past_its_resubmissions_is_final(stage: Stage) -> None:
    """After fax.resubmit_attempts resubmissions the next failure on the line is final."""
    [fax] = await stage.uploaded_job("+12015550123")
    for resubmits in (1, 2):
        await run_until_idle([stage.worker])
        sent = await stage.fax(fax.id)
        assert sent.carrier_id is not None
        waiting = await fail_on_the_line(stage, sent.carrier_id)
        assert waiting.resubmits == resubmits
        stage.clock.advance(61)
    await run_until_idle([stage.worker])
    last = await stage.fax(fax.id)
    assert last.carrier_id is not None
    result = await stage.db.run(
        record_carrier_status,
        last.carrier_id,
        "failed",
        Outcome.FAILED,
        error_code=5109,
        now=stage.clock(),
        resubmit_attempts=2,
        resubmit_delay=60.0,
    )
    assert result is not None
    final, final_now = result
    assert final_now and final.state is FaxState.FAILED and final.resubmits == 2


async def test_each_post_is_recorded_through_the_group_commit(
    stage: Stage, sandbox: Sandbox
) -> None:
    """Ten faxes POSTed four at a time: each begin_submit and each record go through the group
    commit (20 writes, no end_pickup beside them), each fax submitted once, its pickup ended."""
    faxes = await stage.uploaded_job(*(f"+1201555{n:04d}" for n in range(10)))
    await run_until_idle([stage.worker])
    assert stage.worker.commits.writes == 20
    for fax in faxes:
        done = await stage.fax(fax.id)
        assert (done.state, done.submit_attempts, done.pickups) == (FaxState.SUBMITTED, 1, 0)
    assert len(sandbox.requests("/faxes", method="POST")) == 10


async def test_a_step_without_an_outcome_ends_its_pickup(stage: Stage) -> None:
    """A fax whose job went back to upload (its document gone from storage) records no outcome:
    its pickup is ended on its own, through the group commit, and it is due as before."""
    [fax] = await stage.uploaded_job("+12015550123")
    job = await stage.db.run(get_job, fax.job_id)
    assert job is not None and job.storage_key is not None
    await stage.storage.delete(job.storage_key)
    stage.clock.advance(TTL)  # the link is renewed first, which finds the document gone
    await stage.worker.run_once()
    job = await stage.db.run(get_job, fax.job_id)
    assert job is not None and job.state is JobState.PREPARED
    left = await stage.fax(fax.id)
    assert (left.state, left.pickups, left.submit_attempts) == (FaxState.PENDING, 0, 0)
    assert stage.worker.commits.writes == 1
