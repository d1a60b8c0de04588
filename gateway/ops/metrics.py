"""Every Prometheus metric of the gateway, defined in one place, and the /metrics route.

A `Metrics` instance belongs to one gateway and owns its own CollectorRegistry (never the
library's global one), so tests and the demo can run several gateways in one process. Other
modules count through its attributes, e.g.::

    metrics.smtp_rejected.labels(reason=Reason.RELAY_DENIED).inc()
    metrics.fax_final("failed", error_code=5109, seconds_since_submitted=412.0)

Label values are fixed words (reply reasons, fax states, mail kinds) or carrier error codes,
never addresses, numbers or free text: every distinct value is a new time series for good.

Queue depths live in the store, not in counters. The daemon registers one reader per queue
(`add_queue`); each scrape of /metrics runs them on the store's thread before rendering, so the
numbers are current and the event loop never waits for SQLite.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gateway import __version__, log

logger = log.get_logger(__name__)

PREFIX = "faxgw"
QueueReader = Callable[[], Awaitable[Mapping[str, int]]]

# Waiting in our queue includes retry backoff (up to queue.max_backoff_seconds) and, for a
# large document, conversion and upload: seconds to hours.
RECEIVED_TO_SUBMITTED_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400)
# A fax takes about a minute a page, and the carrier redials a busy line several times.
SUBMITTED_TO_FINAL_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 6 * 3600, 86400)
# From a webhook's arrival to the events worker having acted on it (mail queued, state saved).
WEBHOOK_HANDLING_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

# How long a scrape waits for one queue's depth (the store thread may be busy with a write).
QUEUE_READ_SECONDS = 5.0


class Metrics:
    """The metrics of one gateway, on a registry of their own."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        queue_read_seconds: float = QUEUE_READ_SECONDS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.queue_read_seconds = queue_read_seconds
        r = self.registry

        self.build_info = Gauge(
            f"{PREFIX}_build_info", "The running version (always 1).", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)

        # SMTP in: one accepted per message queued (250 after DATA); a refusal per reply with
        # its reason (gateway.smtp.replies.Reason), whether at MAIL, RCPT, DATA or AUTH.
        self.smtp_accepted = Counter(
            f"{PREFIX}_smtp_messages_accepted",
            "Messages accepted and queued for faxing (250 after DATA).",
            registry=r,
        )
        self.smtp_rejected = Counter(
            f"{PREFIX}_smtp_rejected",
            "SMTP commands refused, by reason.",
            ["reason"],
            registry=r,
        )

        # Outbound faxes: one count per fax (one recipient of a job) at its final state.
        self.faxes = Counter(
            f"{PREFIX}_faxes",
            "Outbound faxes that reached a final state, by state and carrier error code"
            ' ("" when none).',
            ["status", "error_code"],
            registry=r,
        )
        self.faxes_lost_by_carrier = Counter(
            f"{PREFIX}_faxes_lost_by_carrier",
            "Submitted faxes the carrier came to deny knowing (reported as failed).",
            registry=r,
        )
        self.received_to_submitted = Histogram(
            f"{PREFIX}_fax_received_to_submitted_seconds",
            "Time from accepting a message to the carrier accepting its fax.",
            buckets=RECEIVED_TO_SUBMITTED_BUCKETS,
            registry=r,
        )
        self.submitted_to_final = Histogram(
            f"{PREFIX}_fax_submitted_to_final_seconds",
            "Time from the carrier accepting a fax to its final status.",
            buckets=SUBMITTED_TO_FINAL_BUCKETS,
            registry=r,
        )

        # Inbound faxes: mailed to their recipients, or dead-lettered after the last attempt.
        self.inbound_faxes = Counter(
            f"{PREFIX}_inbound_faxes",
            "Inbound faxes that reached a final state (mailed, dead).",
            ["status"],
            registry=r,
        )

        # Webhooks: what the endpoint answered (gateway.callbacks.webhook results), then what the
        # events worker did with each stored event.
        self.webhook_requests = Counter(
            f"{PREFIX}_webhook_requests",
            "Webhook requests by result (stored, duplicate, bad_token, malformed, ...).",
            ["result"],
            registry=r,
        )
        self.webhook_events = Counter(
            f"{PREFIX}_webhook_events",
            "Stored webhook events handled by the events worker, by direction and outcome.",
            ["direction", "outcome"],
            registry=r,
        )
        self.webhook_handling = Histogram(
            f"{PREFIX}_webhook_handling_seconds",
            "Time from a webhook's arrival to the events worker finishing with it.",
            buckets=WEBHOOK_HANDLING_BUCKETS,
            registry=r,
        )

        # Mail out, by kind (delivered, failed, queued, inbound: the outbox kinds).
        self.mail_sent = Counter(
            f"{PREFIX}_mail_sent", "Mails the relay accepted, by kind.", ["kind"], registry=r
        )
        self.mail_failed = Counter(
            f"{PREFIX}_mail_failed",
            "Attempts to hand a mail to the relay that failed, by kind (each retry counts).",
            ["kind"],
            registry=r,
        )
        self.mail_dead = Counter(
            f"{PREFIX}_mail_dead",
            "Mails given up on after their last attempt, by kind.",
            ["kind"],
            registry=r,
        )

        # The daily purge (gateway/ops/retention.py), by kind of thing removed (store/retention
        # KINDS: jobs, faxes, events, outbox, inbound, dead_letters, files, archived).
        self.retention_purged = Counter(
            f"{PREFIX}_retention_purged",
            "Rows and files removed by the retention purge, by kind.",
            ["kind"],
            registry=r,
        )

        self.collection_errors = Counter(
            f"{PREFIX}_metrics_collection_errors",
            "Scrapes at which a queue's depth could not be read, by queue.",
            ["queue"],
            registry=r,
        )
        self._queues = _QueueDepthCollector()
        r.register(self._queues)

        # Memory, CPU, open files and GC of this process: what a years-long run needs watched.
        # ProcessCollector reads /proc/stat once here; /proc is memory, not disk.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    # Conveniences for the calls made at more than one place.

    def fax_final(
        self,
        status: str,
        *,
        error_code: int | None = None,
        seconds_since_submitted: float | None = None,
    ) -> None:
        """Count a fax at its final state, and how long it took the carrier when known."""
        code = "" if error_code is None else str(error_code)
        self.faxes.labels(status=status, error_code=code).inc()
        if seconds_since_submitted is not None:
            self.submitted_to_final.observe(max(0.0, seconds_since_submitted))

    def webhook_event(self, result: str) -> None:
        """callbacks.webhook.WebhookMetrics: one call per webhook request, with its result."""
        self.webhook_requests.labels(result=result).inc()

    # Queue depths.

    def add_queue(self, queue: str, read: QueueReader, states: Iterable[str] = ()) -> None:
        """Report `await read()` ({state: count}) as faxgw_queue_depth{queue=..., state=...}.

        `read` runs at each scrape and must not block the loop, e.g.
        `lambda: db.run(jobs.queue_depth)`. `states` are shown as 0 until first seen; a state
        once seen stays at 0 when it empties, so graphs and alerts have no gaps.
        """
        self._queues.add(queue, read, states)

    async def refresh(self) -> None:
        """Read every queue's depth now (concurrently, each within queue_read_seconds)."""
        await asyncio.gather(*(self._refresh_queue(queue) for queue in self._queues.queues()))

    async def _refresh_queue(self, queue: str) -> None:
        try:
            async with asyncio.timeout(self.queue_read_seconds):
                depths = await self._queues.reader(queue)()
        except Exception as exc:
            # No number is better than an old one shown as current: the series disappear for
            # this scrape and the error counter says why.
            self._queues.forget(queue)
            self.collection_errors.labels(queue=queue).inc()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            logger.warning("metrics.queue_depth_failed", queue=queue, error=reason)
            return
        self._queues.update(queue, depths)

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """Fresh queue depths, then the exposition (body, content type) for an Accept header."""
        await self.refresh()
        encoder, content_type = choose_encoder(accept)
        # Rendering reads /proc (process metrics): off the loop, like all file I/O.
        body = await asyncio.to_thread(encoder, self.registry)
        return body, content_type


class _QueueDepthCollector(Collector):
    """faxgw_queue_depth from the last values read; rendering never touches the store."""

    def __init__(self) -> None:
        self._readers: dict[str, QueueReader] = {}
        self._depths: dict[str, dict[str, int]] = {}
        self._known: dict[str, set[str]] = {}

    def add(self, queue: str, read: QueueReader, states: Iterable[str]) -> None:
        if queue in self._readers:
            raise ValueError(f"queue {queue!r} already has a depth reader")
        self._readers[queue] = read
        self._known[queue] = set(states)
        self._depths[queue] = dict.fromkeys(self._known[queue], 0)

    def queues(self) -> list[str]:
        return list(self._readers)

    def reader(self, queue: str) -> QueueReader:
        return self._readers[queue]

    def update(self, queue: str, depths: Mapping[str, int]) -> None:
        known = self._known[queue]
        known.update(depths)
        # Replace the dict rather than mutate it: collect() may be iterating in another thread.
        self._depths[queue] = {state: int(depths.get(state, 0)) for state in sorted(known)}

    def forget(self, queue: str) -> None:
        self._depths[queue] = {}

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Items waiting in each queue, by state.",
            labels=["queue", "state"],
        )

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Items waiting in each queue, by state.",
            labels=["queue", "state"],
        )
        for queue, depths in list(self._depths.items()):
            for state, count in depths.items():
                family.add_metric([queue, state], count)
        yield family


def add_routes(app: web.Application, metrics: Metrics, token: str | None) -> None:
    """GET /metrics; with a token (http.metrics_token), only for `Authorization: Bearer <token>`."""
    expected = token.encode() if token else None

    async def handle(request: web.Request) -> web.Response:
        if expected is not None and not _authorized(request, expected):
            return web.Response(
                status=401,
                text="401: metrics need Authorization: Bearer <http.metrics_token>\n",
                headers={"WWW-Authenticate": 'Bearer realm="fax-gateway metrics"'},
            )
        body, content_type = await metrics.render(request.headers.get("Accept", ""))
        return web.Response(
            body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"}
        )

    app.router.add_get("/metrics", handle)


def _authorized(request: web.Request, expected: bytes) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # compare_digest: the time taken does not tell how much of a guess was right.
    return hmac.compare_digest(given.strip().encode(), expected)
