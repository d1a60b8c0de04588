"""What the sandbox carrier holds in memory: faxes, injected faults, and logs of what it did.

Everything here is touched only from the sandbox's event loop, so no locks. Each change bumps
`version` and wakes waiters, which lets the control API answer "tell me when something
changed" without anyone polling in a sleep loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.carrier.faxerrors import describe
from gateway.sandbox.settings import SandboxSettings

FAULT_KINDS = ("error", "slow", "disconnect", "drop_webhooks", "fail_fax")
# Faults about faxes, not requests: consumed when a fax ends or a webhook is sent.
_FAX_FAULTS = ("drop_webhooks", "fail_fax")
ERROR_BODIES = ("json", "text", "empty")


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """The carrier's timestamp form: "2024-01-01T16:51:16.979Z"."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Document:
    """What the sandbox found at a fax's URL (outbound) or was given (inbound)."""

    content_type: str
    pages: int
    data: bytes

    def describe(self) -> dict[str, Any]:
        return {"content_type": self.content_type, "pages": self.pages, "bytes": len(self.data)}


@dataclass
class SandboxFax:
    id: str
    seq: int
    direction: str
    to: str  # digits, as the carrier writes numbers
    from_: str
    status: str
    created_at: datetime
    modified_at: datetime
    url: str | None = None
    attempts: int | None = None
    # None until the fax has been looked at: the documented POST answer has neither field.
    pages: int | None = None
    duration: int | None = None
    error_code: int | None = None
    document: Document | None = None
    download: dict[str, Any] | None = None
    media_url: str | None = None
    media_token: str | None = None
    history: list[str] = field(default_factory=list)

    def set_status(self, status: str) -> None:
        self.status = status
        self.modified_at = now()
        self.history.append(status)

    def api_json(self) -> dict[str, Any]:
        """The fax as the REST API shows it (GET /faxes/{id}, list results, POST answer)."""
        data: dict[str, Any] = {
            "id": self.id,
            "created_at": iso(self.created_at),
            "modified_at": iso(self.modified_at),
            "direction": self.direction,
            "to": self.to,
            "from": self.from_,
            "status": self.status,
        }
        if self.url is not None:
            data["url"] = self.url
        if self.pages is not None:
            data["pages"] = self.pages
        if self.duration is not None:
            data["duration"] = self.duration
        if self.attempts is not None:
            data["attempts"] = self.attempts
        if self.error_code is not None:
            data["error"] = {
                "code": self.error_code,
                "description": describe(self.error_code).description,
            }
        if self.media_url is not None:
            data["links"] = [{"media": self.media_url}]
        return data

    def webhook_json(self) -> dict[str, Any]:
        """The documented fax webhook. Its table types pages, duration and error.code as
        strings, so strings they are (the REST answers use numbers)."""
        data: dict[str, Any] = {
            "type": "fax",
            "id": self.id,
            "direction": self.direction,
            "to": self.to,
            "from": self.from_,
            "status": self.status,
            "time": iso(self.modified_at),
            "pages": str(self.pages or 0),
            "duration": str(self.duration or 0),
        }
        if self.url is not None:
            data["url"] = self.url
        if self.media_url is not None:
            # "links[].media" in the table: a list of link objects.
            data["links"] = [{"media": self.media_url}]
        if self.error_code is not None:
            data["error"] = {
                "code": str(self.error_code),
                "description": describe(self.error_code).description,
            }
        return data

    def control_json(self) -> dict[str, Any]:
        """Everything the sandbox knows about the fax, for the control API."""
        data = self.api_json()
        data["history"] = list(self.history)
        data["document"] = self.document.describe() if self.document else None
        data["download"] = self.download
        return data


@dataclass
class Fault:
    id: int
    kind: str
    remaining: int
    status: int = 500
    body: str = "json"
    seconds: float = 0.0
    method: str | None = None
    path: str = "/api/v1"  # prefix of the request paths it applies to
    when: str = "before"  # "after": the request is handled, then its answer is lost
    # fail_fax: the code the next outbound faxes (to `to`, E.164, or to any number) fail with.
    error_code: int | None = None
    to: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0 or self.kind in _FAX_FAULTS:
            return False
        if self.method is not None and self.method != method:
            return False
        return path.startswith(self.path)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "remaining": self.remaining,
            "status": self.status,
            "body": self.body,
            "seconds": self.seconds,
            "method": self.method,
            "path": self.path,
            "when": self.when,
            "error_code": self.error_code,
            "to": self.to,
        }


class SandboxState:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.faxes: dict[str, SandboxFax] = {}
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        self.version = 0
        self._changed = asyncio.Event()
        self._seq = 0
        self._fault_ids = 0

    # -- change notification ---------------------------------------------------------------

    def touch(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_since(self, version: int, wait_seconds: float) -> int:
        """Return the version once it differs from `version`, or after `wait_seconds`."""
        if self.version != version:
            return self.version
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), wait_seconds)
        return self.version

    # -- faxes -------------------------------------------------------------------------------

    def new_fax(
        self, *, direction: str, to: str, from_: str, status: str, **extra: Any
    ) -> SandboxFax:
        self._seq += 1
        moment = now()
        fax = SandboxFax(
            id=str(uuid.uuid4()),
            seq=self._seq,
            direction=direction,
            to=to,
            from_=from_,
            status=status,
            created_at=moment,
            modified_at=moment,
            history=[status],
            **extra,
        )
        self.faxes[fax.id] = fax
        self.touch()
        return fax

    def newest_first(self) -> list[SandboxFax]:
        return sorted(self.faxes.values(), key=lambda fax: fax.seq, reverse=True)

    @staticmethod
    def media_token() -> str:
        return secrets.token_urlsafe(16)

    # -- settings and faults -------------------------------------------------------------

    def update_settings(self, **changes: Any) -> SandboxSettings:
        self.settings = replace(self.settings, **changes)
        self.touch()
        return self.settings

    def add_fault(self, **spec: Any) -> Fault:
        self._fault_ids += 1
        fault = Fault(id=self._fault_ids, **spec)
        self.faults.append(fault)
        self.touch()
        return fault

    def take_faults(self, method: str, path: str) -> list[Fault]:
        """Consume one use of each fault that applies to this request."""
        taken = [fault for fault in self.faults if fault.matches(method, path)]
        for fault in taken:
            fault.remaining -= 1
        if taken:
            self.touch()
        return taken

    def take_webhook_drop(self) -> bool:
        for fault in self.faults:
            if fault.kind == "drop_webhooks" and fault.remaining > 0:
                fault.remaining -= 1
                self.touch()
                return True
        return False

    def take_fax_failure(self, digits: str) -> int | None:
        """The error code a scripted `fail_fax` fault gives this outbound fax, once; or None."""
        number = "+" + digits.lstrip("+")
        for fault in self.faults:
            if fault.kind == "fail_fax" and fault.remaining > 0 and fault.to in (None, number):
                fault.remaining -= 1
                self.touch()
                return fault.error_code
        return None

    # -- logs --------------------------------------------------------------------------------

    def record_request(self, entry: dict[str, Any]) -> None:
        entry["seq"] = len(self.requests) + 1
        self.requests.append(entry)
        self.touch()

    def record_webhook(self, entry: dict[str, Any]) -> None:
        entry["seq"] = len(self.webhooks) + 1
        self.webhooks.append(entry)
        self.touch()

    def reset(self) -> None:
        """Forget faxes, faults and logs (settings stay)."""
        for task in list(self.tasks):
            task.cancel()
        self.faxes.clear()
        self.faults.clear()
        self.requests.clear()
        self.webhooks.clear()
        self.touch()

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run a background job of the sandbox; it is cancelled when the sandbox stops."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        self.touch()
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self.touch()
