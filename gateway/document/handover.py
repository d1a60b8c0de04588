"""What DATA found in a message, handed to the prepare stage so it does not parse it again.

The SMTP handler extracts every message before answering (to refuse what cannot be faxed); the
prepare worker needs the same `Extracted` a moment later. `Handover` keeps it in memory, keyed
by job id, from the job's commit until prepare takes it. It is a cache, not a queue: the spool
file stays the truth, and a job whose entry is missing (the process restarted, the entry was
evicted, another process accepted the message) is simply extracted from the spool again, which
gives the same result, since `mime.extract` depends on nothing but the bytes.

Bounded by the bytes of the attachments it holds (oldest out first), so a burst of large
messages that prepare has not reached yet costs at most `max_bytes` of memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from gateway.document.mime import Extracted

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _weight(extracted: Extracted) -> int:
    return len(extracted.body_text) + sum(len(a.data) for a in extracted.attachments)


class Handover:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Extracted] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, job_id: str, extracted: Extracted) -> None:
        """Hold `extracted` for `job_id`'s prepare, evicting the oldest past `max_bytes`."""
        weight = _weight(extracted)
        if weight > self.max_bytes:
            return
        with self._lock:
            self._drop(job_id)
            self._entries[job_id] = extracted
            self._bytes += weight
            while self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)

    def take(self, job_id: str) -> Extracted | None:
        """The extraction of `job_id`, once; None when it is not held."""
        with self._lock:
            extracted = self._entries.get(job_id)
            self._drop(job_id)
            return extracted

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, job_id: str) -> None:
        extracted = self._entries.pop(job_id, None)
        if extracted is not None:
            self._bytes -= _weight(extracted)
