"""The outbox: every mail the gateway sends is queued on disk and handed to the relay from here.

The outbox owns its table: other stages queue mail with `queue_mail` (the rendered message is
written durably, then a row with the caller's idempotency key is committed, so a queued mail
survives a crash and a notification queued twice goes out once; on a store nodes share, the
message goes into the store in that same transaction, gateway/store/blobs.py) and ask after it with
`mail_status`, `give_up_mail` and `requeue_mail`; none of them writes outbox rows itself.
`OutboxWorker` owns every transition after queueing:

- the relay took it: sent (its message file is then removed: the recipient has it); the stored
  bytes are sent as they are, and mails due together share one relay session (relay.py);
- 4xx, relay down, timeout: deferred with doubling backoff and jitter between
  queue.min_backoff_seconds and queue.max_backoff_seconds, in the store, so across restarts;
- 5xx: failed, logged at error level (the operator can requeue it);
- still undelivered after queue.lifetime_seconds: dead, logged at error level.

When the relay as a whole is unavailable (down, refusing our login), the rest of the batch is
deferred without trying: a dead relay costs one timeout per pass, not one per message.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from gateway import log
from gateway.addresses import clean_address
from gateway.config import Config
from gateway.failpoints import failpoint
from gateway.fsutil import write_atomic
from gateway.mailout.relay import RecipientsRefused, Relay, RelayError
from gateway.mailout.templates import MailRenderer
from gateway.mailout.wire import wire_bytes
from gateway.ops.metrics import Metrics
from gateway.queue.backoff import Random
from gateway.queue.foreground import give_way
from gateway.queue.runner import QueueWorker
from gateway.queue.schedule import EXPIRED, Clock
from gateway.store import Database, blobs
from gateway.store import outbox as store
from gateway.store.blobs import SharedFiles
from gateway.store.outbox import OutboxMessage, OutboxState

logger = log.get_logger(__name__)

# Messages sent per pass; the runner calls again at once while a pass found work.
BATCH_SIZE = 20
# Relay timeouts one send may take at most (see OutboxWorker.lease).
_LEASE_STEPS = 15


def message_path_for(outbox_dir: Path, key: str) -> Path:
    """Where the message queued under `key` is kept: a name derived from the key, so a
    second queue_mail for the same key finds the same file instead of making an orphan."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return outbox_dir / f"{digest}.eml"


async def queue_mail(
    db: Database,
    outbox_dir: Path,
    *,
    key: str,
    kind: str,
    message: EmailMessage,
    recipients: Sequence[str],
    now: float | None = None,
) -> bool:
    """Queue `message` for `recipients` once per `key`; False if the key was queued before.

    The file is on disk (fsync'd) before the row is committed: a crash in between leaves at
    most an orphan file, never a row whose message is missing. Raises ValueError for a
    malformed recipient, before anything is written.
    """
    rcpts = [clean_address(r) for r in recipients]
    if not rcpts:
        raise ValueError("a mail needs at least one recipient")
    existing = await db.run(store.get_by_key, key)
    if existing is not None:
        # Already queued (or sent): never rewrite a file a pending row may be about to send.
        return False
    path = message_path_for(outbox_dir, key)
    # Two concurrent calls for one key both get here; both write an equivalent rendering of
    # the same notification to the same path (atomic replace), and the unique key lets one
    # row in.
    data = await asyncio.to_thread(_write_message, path, message)
    # On a store nodes share, the message goes into it with the row (store/blobs.py).
    return await db.run(
        store.enqueue,
        key=key,
        kind=kind,
        recipients=rcpts,
        message_path=path,
        now=time.time() if now is None else now,
        files=[(path, data)],
    )


async def mail_status(db: Database, key: str) -> OutboxMessage | None:
    """The mail queued under `key`, as the outbox knows it (None: never queued)."""
    return await db.run(store.get_by_key, key)


async def give_up_mail(db: Database, key: str, error: str, now: float | None = None) -> bool:
    """Stop trying the mail queued under `key`; False while a send of it is under way (or it
    is no longer pending): the caller asks again later."""
    return await db.run(store.give_up, key, error, now)


async def requeue_mail_anew(
    db: Database, outbox_dir: Path, *, key: str, message: EmailMessage
) -> bool:
    """Send `message` under `key` although the key was queued before: for a caller whose
    earlier mail was given up and whose message file may be gone (a requeued dead letter).

    A mail that was sent, or is pending with its file, is left alone (False): it is on its way
    and rewriting a file a send may be reading would be wrong.
    """
    entry = await db.run(store.get_by_key, key)
    if entry is None or entry.state is OutboxState.SENT:
        return False
    if entry.state is OutboxState.PENDING and await db.run(blobs.present, entry.message_path):
        return False
    path = message_path_for(outbox_dir, key)
    data = await asyncio.to_thread(_write_message, path, message)
    return await db.run(store.requeue_key, key, files=[(path, data)])


def requeue_mail(conn: sqlite3.Connection, key: str, now: float | None = None) -> bool:
    """Try the mail queued under `key` again from scratch; False if it was sent or its message
    file is gone (the caller must queue it anew). Blocking, for the queue tools."""
    return store.requeue_key(conn, key, now)


def _write_message(path: Path, message: EmailMessage) -> bytes:
    # as_bytes(policy=policy.SMTP), made without a write per line (mailout/wire.py): CRLF
    # line endings, the form the message takes on the wire (an .eml file).
    data = wire_bytes(message)
    write_atomic(path, data)
    return data


def _read_message(path: Path) -> bytes:
    # Sent as stored (the wire form _write_message made): parsing it and generating it again
    # for the relay was ~12% of the daemon's CPU under load.
    return path.read_bytes()


class MailingWorker(QueueWorker):
    """A worker whose items become mails in the outbox (reports, inbound faxes, the
    administrator's copies and summary): the renderer of their templates and the outbox's
    folder, beside what every queue worker has."""

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        renderer: MailRenderer,
        outbox_dir: Path,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock)
        self.renderer = renderer
        self.outbox_dir = outbox_dir


class OutboxWorker(QueueWorker):
    """Sends due outbox messages through the relay; one pass per `run_once`."""

    name = "outbox"

    def __init__(
        self,
        *,
        config: Config,
        db: Database,
        clock: Clock = time.time,
        rng: Random = random,
        relay: Relay,
        metrics: Metrics | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__(config=config, db=db, clock=clock, rng=rng)
        self.relay = relay
        self.metrics = metrics
        self.batch_size = batch_size
        # Passes in a row that found the relay unavailable: the backoff of the messages not
        # tried meanwhile, which keep their own attempt counts for the tries they really had.
        self._relay_down_passes = 0

    @property
    def lease(self) -> float:
        """How long a claimed message is left alone while it is being sent: longer than one send
        can take. Each step of the SMTP dialogue (connect, EHLO, STARTTLS, EHLO, AUTH, MAIL,
        RCPT per recipient, DATA, the message, QUIT) is bounded by the relay timeout; twelve
        of them with a margin. A crashed process's claims do not wait this out: the next boot
        takes them back at start-up (store/claims.release_claims)."""
        return _LEASE_STEPS * self.config.relay.timeout_seconds

    async def next_due(self) -> float | None:
        return await self.db.run(store.next_due_at)

    async def run_once(self) -> int:
        """Handle the messages due now; how many were handled (0 when there is nothing to do)."""
        relay_down: RelayError | None = None
        handled = 0
        while handled < self.batch_size:
            # The stages on the way to the carrier go first (bounded), before each claim.
            await give_way()
            # One message per claim: the claim counts a pickup, and a crash mid-send must
            # charge only the message that was being sent.
            due = await self.db.run(
                store.claim_due, self.clock(), 1, self.lease, self.schedule.max_pickups
            )
            if not due:
                # Nothing more to send now: the relay session kept for a backlog ends.
                await self.relay.close()
                break
            message = due[0]
            handled += 1
            with log.bound(outbox_id=message.id, key=message.key, kind=message.kind):
                if relay_down is not None:
                    await self._retry_later(message, relay_down, tried=False)
                    continue
                relay_down = await self._deliver(message)
                if relay_down is not None:
                    self._relay_down_passes += 1
        return handled

    async def _deliver(self, message: OutboxMessage) -> RelayError | None:
        """Try one message; the error if the relay as a whole is unavailable, else None."""
        try:
            # This node's copy, or the store's where nodes share it (another node queued it).
            path = await SharedFiles.of(self.config, self.db).fetch(message.message_path)
            data = await asyncio.to_thread(_read_message, path)
        except FileNotFoundError:
            await self._give_up(message, f"message file {message.message_path} is missing")
            return None
        except Exception as exc:  # an unreadable file (I/O error): may be transient
            logger.exception("outbox.unreadable", path=str(message.message_path))
            await self._retry_later(
                message, RelayError(f"cannot read message: {exc}", transient=True)
            )
            return None
        try:
            await self.relay.send(data, message.recipients)
        except RecipientsRefused as exc:
            await self._partly_refused(message, exc)
            return None
        except RelayError as exc:
            if exc.transient:
                await self._retry_later(message, exc)
            else:
                await self._failed(message, str(exc))
            return exc if exc.relay_unavailable else None
        except Exception as exc:
            # A bug or a library surprise, not a verdict on the message: keep it and retry;
            # the lifetime bounds how long a message that always trips it is retried.
            logger.exception("outbox.send_crashed")
            await self._retry_later(
                message, RelayError(f"{type(exc).__name__}: {exc}", transient=True)
            )
            return None
        failpoint("after_relay_send")
        await self._sent(message)
        return None

    async def _sent(self, message: OutboxMessage, note: str | None = None) -> None:
        self._relay_down_passes = 0
        now = self.clock()
        await self.db.run(store.mark_sent, message.id, now, note)
        logger.info(
            "outbox.sent",
            key=message.key,
            kind=message.kind,
            attempts=message.attempts,
            recipients=len(message.recipients),
        )
        if self.metrics is not None:
            self.metrics.mail_sent.labels(kind=message.kind).inc()
        # The relay has it; a failed or dead message keeps its file for a requeue.
        files = SharedFiles.of(self.config, self.db)
        path = await asyncio.to_thread(files.local, message.message_path)
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _failed(self, message: OutboxMessage, error: str) -> None:
        await self.db.run(store.mark_failed, message.id, error, self.clock())
        logger.error(
            "outbox.failed",
            key=message.key,
            kind=message.kind,
            attempts=message.attempts,
            error=error,
        )
        self._count_failure(message)

    async def _give_up(self, message: OutboxMessage, error: str) -> None:
        await self.db.run(store.mark_dead, message.id, error, self.clock())
        logger.error(
            "outbox.dead",
            key=message.key,
            kind=message.kind,
            attempts=message.attempts,
            error=error,
        )
        if self.metrics is not None:
            self.metrics.mail_dead.labels(kind=message.kind).inc()

    async def _retry_later(
        self,
        message: OutboxMessage,
        error: RelayError,
        *,
        recipients: Sequence[str] | None = None,
        tried: bool = True,
    ) -> None:
        now = self.clock()
        reason = str(error) if tried else f"not tried: {error}"
        attempts = message.attempts if tried else self._relay_down_passes
        due = self.schedule.retry(attempts, message.created_at)
        if due is None:
            await self._give_up(
                message, f"{EXPIRED} (lifetime {self.schedule.lifetime_text()} over): {reason}"
            )
            return
        delay = due - now
        await self.db.run(
            store.defer, message.id, reason, delay, now, recipients=recipients, tried=tried
        )
        logger.warning(
            "outbox.deferred",
            key=message.key,
            kind=message.kind,
            attempts=message.attempts,
            delay=round(delay, 1),
            error=reason,
        )
        if tried:
            self._count_failure(message)

    async def _partly_refused(self, message: OutboxMessage, exc: RecipientsRefused) -> None:
        # The message reached `exc.accepted`: they must not get it again. Recipients refused
        # with 5xx are dropped (logged), those refused with 4xx keep the message pending.
        if exc.permanently_refused:
            logger.error(
                "outbox.recipients_refused",
                key=message.key,
                kind=message.kind,
                refused={r: f"{c} {t}" for r, (c, t) in exc.refused.items() if c >= 500},
            )
        if exc.temporary:
            await self._retry_later(message, exc, recipients=exc.temporary)
        elif exc.accepted:
            await self._sent(message, note=str(exc))
        else:
            await self._failed(message, str(exc))

    def _count_failure(self, message: OutboxMessage) -> None:
        if self.metrics is not None:
            self.metrics.mail_failed.labels(kind=message.kind).inc()
