"""The daemon: every server and worker of the gateway on one event loop that we own.

Start order: store, HTTP, carrier client, workers, SMTP; then READY=1. The gateway starts even
when a dependency (S3, the carrier, the relay) is failing: mail is accepted and kept queued,
and /readyz says what is wrong. Stop order is the reverse, after STOPPING=1: SMTP stops
accepting and finishes DATA in progress, document worker processes are killed (a parse never
holds the stop), workers reach a safe point, the store closes last.
SIGHUP re-reads the configuration file and applies what can change without a restart:
routes, allowed senders, limits (SMTP and HTTP connection caps, AUTH lockouts), users, the
document workers' budgets and templates.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway import log
from gateway.admin.copies import AdminCopiesWorker
from gateway.admin.summary import SummaryWorker
from gateway.callbacks.events import EventsWorker
from gateway.callbacks.intake import Intake
from gateway.callbacks.reconcile import Reconciler
from gateway.callbacks.webhook import add_routes as add_webhook_routes
from gateway.carrier.client import VoxtelesysClient
from gateway.config import Config, ConfigError, load_config
from gateway.datadir import DataDir
from gateway.document.fence import hidden_paths
from gateway.document.office import OfficeConverter
from gateway.document.workers import DocumentWorkers
from gateway.fsutil import make_private_dirs
from gateway.inbound.archive import Archive
from gateway.inbound.worker import InboundWorker
from gateway.mailout.outbox import OutboxWorker
from gateway.mailout.relay import create_relay
from gateway.mailout.templates import MailRenderer
from gateway.ops import fds, sdnotify
from gateway.ops.flood import LoopErrors
from gateway.ops.health import Health, store_check
from gateway.ops.httpd import HttpServer, create_app
from gateway.ops.metrics import Metrics
from gateway.ops.metrics import add_routes as add_metrics_routes
from gateway.ops.retention import RetentionWorker
from gateway.ops.workingcopies import WorkingCopiesWorker
from gateway.outbound.cleanup import CleanupWorker
from gateway.outbound.prepare import PrepareWorker
from gateway.outbound.reports import Reporter, ReportsWorker
from gateway.outbound.submit import SubmitWorker
from gateway.outbound.upload import UploadWorker
from gateway.queue.foreground import Foreground
from gateway.queue.once import OnceOnly
from gateway.queue.runner import QueueWorker, Runner
from gateway.smtp.server import SmtpServer
from gateway.storage import S3Storage, create_storage
from gateway.store import jobs as job_store
from gateway.store.backend import cluster_problems, create_database
from gateway.store.claims import release_claims
from gateway.store.commit import GroupCommit
from gateway.store.events import EVENTS
from gateway.store.faxes import REPORTS, SUBMITS
from gateway.store.inbound import INBOUND
from gateway.store.inbound import state_counts as inbound_counts
from gateway.store.jobs import JOBS
from gateway.store.outbox import OUTBOX
from gateway.store.outbox import state_counts as outbox_counts
from gateway.store.spool import Spool
from gateway.ui.app import add_ui
from gateway.ui.app import reconfigure as reconfigure_ui

logger = log.get_logger(__name__)

# Every queue's table, for taking back a dead predecessor's claims at start-up.
QUEUES = (JOBS, SUBMITS, REPORTS, EVENTS, INBOUND, OUTBOX)

# Spool temp files older than this at start-up are leftovers of a crash mid-write.
_STALE_TEMP_SECONDS = 3600
# Whose work the first stages' items become (Runner `feeds`): the next stage, and for a job
# failed or held on the way the reports, cleanup and notify.admin's copies. The stages not
# listed wake every worker after a round that handled something.
_FEEDS = {
    "prepare": ("upload", "reports", "cleanup", "admin-copies"),
    "upload": ("submit", "reports", "cleanup", "admin-copies"),
}

# The stages between a 250 and the carrier's POST /faxes (Runner `front`): while they have
# work, the other workers' rounds wait (bounded), so a burst reaches the carrier first and its
# reports, webhooks' effects and cleanup follow.
_FRONT = ("prepare", "upload", "submit")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Gateway:
    """All parts of one running gateway, built from its configuration."""

    def __init__(self, config: Config, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        data = DataDir(config.data.dir)
        make_private_dirs(data.root)  # 0700 if it is new: it holds faxes and signed links
        self.db = create_database(config)
        self.spool = Spool(data.spool)
        self.outbox_dir = data.outbox
        self.metrics = Metrics()
        self.health = Health()
        self.http_app = create_app(client_max_size=max(config.http.max_webhook_bytes, 1024**2))
        self.http = HttpServer(
            self.http_app,
            config.http.listen,
            max_connections=config.http.max_connections,
            max_connections_per_ip=config.http.max_connections_per_ip,
            idle_timeout=config.http.idle_timeout_seconds,
        )
        self.client = VoxtelesysClient.from_config(config.voxtelesys)
        self.storage = create_storage(config, self.http_app)
        self.relay = create_relay(config)
        self.renderer = MailRenderer(config.templates.dir)
        self.archive = Archive(self.storage if isinstance(self.storage, S3Storage) else None)
        self.office = OfficeConverter.for_gateway(config, config_path)
        self.documents = DocumentWorkers(config)
        # One group committer for the store: job rows at DATA and webhook events share batches
        # (one transaction, one fsync of SQLite's WAL or PostgreSQL's commit).
        self.commits = GroupCommit(self.db)
        self.workers = self._workers()
        # SMTP sessions in DATA go first: the workers' rounds wait for them (bounded).
        self.foreground = Foreground()
        self.runner = Runner(
            self.workers,
            scan_interval=config.queue.scan_interval_seconds,
            stop_timeout=0.8 * config.queue.shutdown_timeout_seconds,
            db=self.db,
            feeds=_FEEDS,
            foreground=self.foreground,
            front=_FRONT,
        )
        self.smtp = SmtpServer(
            config,
            self.db,
            self.spool,
            self._wake_for_mail,
            metrics=self.metrics,
            renderer=self.renderer,
            office=self.office,
            documents=self.documents,
            commits=self.commits,
            foreground=self.foreground,
        )
        self._routes()

    def _workers(self) -> list[QueueWorker | OnceOnly]:
        config, db, wake = self.config, self.db, self._wake
        common = {"config": config, "db": db}
        self.reports = ReportsWorker(
            **common,
            renderer=self.renderer,
            outbox_dir=self.outbox_dir,
            documents=self.documents,
            metrics=self.metrics,
        )
        self.inbound = InboundWorker(
            **common,
            documents=self.documents,
            renderer=self.renderer,
            outbox_dir=self.outbox_dir,
            client=self.client,
            metrics=self.metrics,
            wake=wake,
            archive=self.archive,
        )
        self.reporter = Reporter(**common, renderer=self.renderer, outbox_dir=self.outbox_dir)
        # The webhook endpoint's intake, which the events worker gives way to in a flood.
        self.intake = Intake()
        self.events = EventsWorker(
            **common,
            client=self.client,
            reporter=self.reporter,
            wake=wake,
            metrics=self.metrics,
            intake=self.intake,
        )
        self.reconciler = Reconciler(**common, client=self.client, wake=wake, metrics=self.metrics)
        self.outbox = OutboxWorker(**common, relay=self.relay, metrics=self.metrics)
        return [
            PrepareWorker(
                **common,
                spool=self.spool,
                office=self.office,
                documents=self.documents,
                commits=self.commits,
            ),
            UploadWorker(**common, storage=self.storage, commits=self.commits),
            SubmitWorker(
                **common,
                client=self.client,
                storage=self.storage,
                metrics=self.metrics,
                reporter=self.reporter,
                commits=self.commits,
            ),
            self.events,
            self.reports,
            self.inbound,
            self.outbox,
            # Once for all nodes sharing the store, on one of them at a time.
            OnceOnly(self.reconciler, db),
            OnceOnly(CleanupWorker(**common, storage=self.storage, spool=self.spool), db),
            # notify.admin's mails, and the once-a-day tasks (each its own worker).
            OnceOnly(
                AdminCopiesWorker(**common, renderer=self.renderer, outbox_dir=self.outbox_dir),
                db,
            ),
            OnceOnly(
                SummaryWorker(**common, renderer=self.renderer, outbox_dir=self.outbox_dir), db
            ),
            OnceOnly(RetentionWorker(**common, archive=self.archive, metrics=self.metrics), db),
            # Every node's own: its copies of shared files the store no longer holds.
            *([WorkingCopiesWorker(**common)] if db.shared else []),
        ]

    def _wake(self) -> None:
        self.runner.wake()
        self.db.wake_others()  # nodes sharing the store (PostgreSQL: NOTIFY)

    def _wake_events(self) -> None:
        """A webhook's event was stored: only the events worker has work from it."""
        self.runner.wake(EventsWorker.name)
        self.db.wake_others()

    def _wake_for_mail(self) -> None:
        """The SMTP server's wake: what it commits is a received job (prepare's work) or an
        explanation in the outbox; the other workers are left asleep (each round of theirs is
        store queries that find nothing, for every message accepted)."""
        self.runner.wake("prepare", "outbox")
        self.db.wake_others()

    def _routes(self) -> None:
        config = self.config
        self.webhooks = add_webhook_routes(
            self.http_app,
            config=config,
            db=self.db,
            wake=self._wake_events,
            metrics=self.metrics,
            commits=self.commits,
            intake=self.intake,
        )
        token = config.http.metrics_token
        add_metrics_routes(self.http_app, self.metrics, token.get_secret_value() if token else None)
        self.health.add_routes(self.http_app)
        self.ui = None
        if config.ui.enabled:
            self.ui = add_ui(
                self.http_app,
                config=config,
                db=self.db,
                spool=self.spool,
                wake=self._wake,
                documents=self.documents,
                office=self.office,
                health=self.health,
                daily_limit=lambda: self.smtp.handler.daily_limit if self.smtp.handler else None,
            )
        self.health.add_check("store", store_check(self.db))
        self.health.add_check("carrier", self.client.check)
        self.health.add_check("storage", self.storage.check)
        self.health.add_check("relay", self.relay.check)
        self.health.add_check("converter", self._converter_check)
        self.metrics.add_queue("jobs", lambda: self.db.run(job_store.queue_depth))
        self.metrics.add_queue("outbox", lambda: self.db.run(outbox_counts))
        self.metrics.add_queue("inbound", lambda: self.db.run(inbound_counts))

    async def start(self) -> None:
        await self.db.open()
        removed = await asyncio.to_thread(self.spool.remove_stale_temp_files, _STALE_TEMP_SECONDS)
        if removed:
            logger.warning("spool.stale_temp_removed", count=removed)
        # A process killed between spooling a message and committing its job leaves the file
        # alone: its client never got a 250 and sends it again, so the file is nobody's. On a
        # shared store such a file has no shared copy either (one transaction makes both): it
        # goes with this node's other working copies the store no longer holds, by the
        # WorkingCopiesWorker's first round (at start, then hourly).
        if not self.db.shared:
            orphans = await self._orphaned_spool_files()
            for path in orphans:
                await asyncio.to_thread(self.spool.remove, path)
            if orphans:
                logger.warning("spool.orphans_removed", count=len(orphans))
        # Claims a dead predecessor left (kill -9 mid-send, a crash mid-step) are due now. On a
        # shared store the other nodes' claims are alive: theirs come free by their leases.
        if not self.db.shared:
            released = await self.db.run(release_claims, QUEUES, time.time())
            if released:
                logger.warning("claims.released", count=released)
        for problem in cluster_problems(self.config):
            # One node on a shared store with local storage works; a second one would not
            # (check-config refuses it): said at every start.
            logger.warning("store.cluster_problem", problem=problem)
        await self.http.start()
        await self.documents.start()
        await self.runner.start()
        self.db.listen_for_wakes(self.runner.wake)
        await self.smtp.start()
        await self._report_dependencies()

    async def _orphaned_spool_files(self) -> list[Path]:
        """Spooled messages with no job row (before the SMTP server starts: none is being
        written now; SQLite's store is this process's alone)."""
        paths = await asyncio.to_thread(self.spool.messages)
        if not paths:
            return []
        known = await self.db.run(job_store.existing_job_ids, [p.stem for p in paths])
        return [path for path in paths if path.stem not in known]

    async def _report_dependencies(self) -> None:
        """Say at start-up what is not working yet; the gateway runs and queues regardless."""
        readiness = await self.health.readiness()
        for name, result in readiness.checks.items():
            if result != "ok":
                logger.error("daemon.dependency_failing", dependency=name, problem=result)

    async def stop(self) -> None:
        bound = self.config.queue.shutdown_timeout_seconds
        steps: list[tuple[str, Callable[[], object]]] = [
            ("smtp", self.smtp.stop),
            ("workers", self._stop_workers),
            ("relay", self.relay.close),  # its kept session, once the outbox is done with it
            ("http", self.http.stop),
            ("carrier", self.client.close),
        ]
        close_storage = getattr(self.storage, "close", None)
        if close_storage is not None:
            steps.append(("storage", close_storage))
        # One deadline for the whole stop, so systemd's TimeoutStopSec (twice the bound) holds
        # however many parts are slow; each part still gets a moment to close its sockets.
        deadline = time.monotonic() + bound
        for name, step in steps:
            remaining = max(deadline - time.monotonic(), 1.0)
            try:
                await asyncio.wait_for(step(), remaining)  # type: ignore[arg-type]
            except Exception:
                logger.exception("daemon.stop_failed", component=name)
        self.db.close()

    async def _stop_workers(self) -> None:
        # No worker starts another round; then document work in progress is killed (a stop
        # never waits for a parse), and the rounds it was part of end at once.
        self.runner.request_stop()
        await self.documents.stop()
        await self.runner.stop()

    async def reload(self) -> None:
        """SIGHUP: re-read the configuration; apply what can change while running."""
        if self.config_path is None:
            logger.warning("daemon.reload_skipped", reason="no configuration file")
            return
        sdnotify.reloading()
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            logger.error("daemon.reload_failed", problems=exc.problems)
            sdnotify.notify("READY=1")
            return
        restart_needed = [
            section
            for section in ("http", "storage", "data", "voxtelesys", "store")
            if getattr(new, section) != getattr(self.config, section)
        ]
        if new.ui.enabled != self.config.ui.enabled:
            restart_needed.append("ui.enabled")
        # The HTTP keys read per request or per connection apply now; the rest need a restart.
        live_http = {
            "max_connections",
            "max_connections_per_ip",
            "max_webhook_bytes",
            "body_timeout_seconds",
        }
        if new.http.model_dump(exclude=live_http) != self.config.http.model_dump(exclude=live_http):
            restart_needed.append("http")
        if (
            new.smtp.listen != self.config.smtp.listen
            or new.smtp.tls_listen != self.config.smtp.tls_listen
        ):
            restart_needed.append("smtp.listen")
        if new.relay != self.config.relay:
            restart_needed.append("relay")
        try:
            await asyncio.to_thread(self.renderer.reload)
            await self.smtp.reload(new)
            if self.ui is not None and new.ui.enabled:
                await asyncio.to_thread(reconfigure_ui, self.ui, new)
        except Exception as exc:
            logger.error("daemon.reload_failed", error=str(exc))
            sdnotify.notify("READY=1")
            return
        self.config = new
        self._reconfigure(new)
        log.register_secrets(new.secrets())
        logger.info("daemon.reloaded", restart_needed=restart_needed)
        sdnotify.notify("READY=1")

    async def _converter_check(self) -> None:
        """LibreOffice can run, if documents.convert_office wants it (else nothing to check)."""
        if not self.office.enabled:
            return
        reason = await asyncio.to_thread(self.office.missing)
        if reason is not None:
            raise RuntimeError(f"documents.convert_office is on, but {reason}")

    def _reconfigure(self, new: Config) -> None:
        """Hand a reloaded configuration to every part that reads it while running: each
        reads its settings (and its schedule) from `config` when it needs them."""
        self.office.reconfigure(new.documents, hidden_paths(new, self.config_path))
        for worker in self.workers:
            worker.config = new
        self.reporter.config = new
        self.webhooks.config = new
        self.documents.reconfigure(new)
        self.http.reconfigure(new.http.max_connections, new.http.max_connections_per_ip)


async def serve(config: Config, *, config_path: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT; exit status 0 after a clean stop."""
    loop = asyncio.get_running_loop()
    # Errors of the loop itself (accept() out of descriptors, a callback failing) become a few
    # JSON lines with counts instead of a traceback each; and the soft descriptor limit goes up
    # to the hard one before the servers size their connection caps from it.
    loop_errors = LoopErrors()
    loop.set_exception_handler(loop_errors)
    nofile = fds.raise_limit()
    logger.info("daemon.descriptors", nofile=nofile)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    started = time.monotonic()
    gateway = Gateway(config, config_path=config_path)
    await gateway.start()
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(gateway.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    sdnotify.notify("READY=1\nSTATUS=accepting mail and webhooks")
    logger.info(
        "daemon.ready",
        smtp=str(config.smtp.listen),
        smtp_port=gateway.smtp.port,
        http=str(config.http.listen),
        http_port=gateway.http.port,
        seconds=round(time.monotonic() - started, 2),
    )

    watchdog = None
    interval = sdnotify.watchdog_interval()
    if interval:
        watchdog = asyncio.create_task(_watchdog(interval))

    await stopping.wait()
    logger.info("daemon.stopping")
    sdnotify.notify("STOPPING=1")
    if watchdog:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
    await gateway.stop()
    loop_errors.flush()
    logger.info("daemon.stopped")
    return 0


async def _watchdog(interval: float) -> None:
    # Pings come from the loop itself, so a blocked loop stops them and systemd restarts us.
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)
