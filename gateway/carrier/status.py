"""What a carrier status word means for us: still pending, succeeded, or failed.

The documentation shows `queued`, `delivering` and `failed` and never names the success word,
so success words come from configuration (`voxtelesys.success_statuses`). Words that are
neither known nor configured are treated as pending: the fax is not given up on because of a
word we have not seen, and the reconciler will ask again. Each such word is logged once per
process so an operator can add it to the configuration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from enum import StrEnum

from gateway.log import get_logger

log = get_logger(__name__)


class Outcome(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# Words that end a fax unsuccessfully. The documented one is "failed"; the others are what
# fax and telephony APIs commonly report and cannot mean success.
FAILED_STATUSES = frozenset(
    {
        "failed",
        "failure",
        "error",
        "canceled",
        "cancelled",
        "busy",
        "no-answer",
        "no_answer",
        "undelivered",
        "rejected",
        "expired",
    }
)

# Words known to mean "not finished yet" (not logged as unknown).
PENDING_STATUSES = frozenset(
    {"queued", "delivering", "sending", "receiving", "pending", "processing", "in-progress"}
)

_unknown_seen: set[str] = set()
_unknown_lock = threading.Lock()


def classify(status: str, has_error: bool, success_statuses: Iterable[str]) -> Outcome:
    """Outcome of a fax from its status word and whether it carries an error object.

    An error object means failure whatever the word says. A failure word wins over a success
    word, so a misconfigured success list can never turn a failure into a delivery report.
    """
    word = (status or "").strip().lower()
    if has_error or word in FAILED_STATUSES:
        return Outcome.FAILED
    if word in {s.strip().lower() for s in success_statuses}:
        return Outcome.SUCCEEDED
    if word not in PENDING_STATUSES:
        with _unknown_lock:
            first = word not in _unknown_seen
            _unknown_seen.add(word)
        if first:
            log.warning(
                "carrier.status_unknown",
                status=word,
                hint="treated as pending; add it to voxtelesys.success_statuses if it means"
                " delivered",
            )
    return Outcome.PENDING
