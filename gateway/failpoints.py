"""Failpoints: named places where a test makes the gateway die, to prove what a crash leaves.

In the spirit of FoundationDB's and TiKV's failpoints, and inert in production: unless the
environment variable FAXGW_FAILPOINT names a point when this module is imported, `failpoint()`
is one dict lookup that finds nothing. The variable reads

    FAXGW_FAILPOINT=after_upload            die at the first pass through after_upload
    FAXGW_FAILPOINT=after_upload=kill       the same, with the action spelled out
    FAXGW_FAILPOINT=after_post@2            let one pass, die at the second
    FAXGW_FAILPOINT=after_post=kill@2       the same
    FAXGW_FAILPOINT=after_spool,after_post  several points (the first one reached kills)
    FAXGW_FAILPOINT=document_prepare=hang   never return from that point

The actions:

- `kill` (the default): SIGKILL to the process itself, at once, as `kill -9` or a power cut
  would (no finally blocks, no atexit, no flush of a buffered write). Before dying it writes
  one JSON line to stderr, unbuffered, so a test can tell the death it caused from any other.
- `hang`: the process sleeps there until something kills it, as it would inside a document
  that takes forever to read; for the points in a document worker process, whose budget and
  whose daemon's stop must end it.

A name that is not in POINTS, or an action that is not one of these, raises at import: a typo
must not make a crash test pass without crashing. tests/test_failpoints.py kills the daemon at each
point, restarts it without the variable and counts what came out (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

ENV = "FAXGW_FAILPOINT"

# Every point, where it is and what state a kill there leaves behind.
POINTS: dict[str, str] = {
    "after_spool": "smtp/accept.py: the message is in spool/, no job row yet, no reply sent",
    "after_commit": "smtp/accept.py: the job is committed, its 250 not yet sent",
    "after_upload": "outbound/upload.py: the job is uploaded (document stored, URL recorded)",
    "after_post": "outbound/submit.py: POST /faxes answered, the carrier id not yet stored",
    "after_report_queued": "outbound/reports.py: the report is in the outbox, fax not marked",
    "after_download": "inbound/worker.py: the document is downloaded and on disk, row announced",
    "after_inbound_stored": "inbound/worker.py: the row says stored, its mail not yet queued",
    "after_inbound_archived": "inbound/worker.py: the archive has the copy, the row says stored",
    "after_relay_send": "mailout/outbox.py: the relay took the mail, the row not yet sent",
    # In a document worker process (document/isolated.py), before it starts on a request.
    "document_check": "document/isolated.py: a DATA check (extract, validate) is starting",
    "document_prepare": "document/isolated.py: a job's document is about to be built",
}

KILL = "kill"
HANG = "hang"
ACTIONS = (KILL, HANG)

_SPEC = re.compile(r"(?P<name>[a-z_]+)(?:=(?P<action>[a-z]+))?(?:@(?P<n>\d+))?")


def parse(value: str) -> dict[str, tuple[str, int]]:
    """FAXGW_FAILPOINT's value as {point: (action, the hit that acts (1 = the first))}."""
    armed: dict[str, tuple[str, int]] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        match = _SPEC.fullmatch(part)
        if match is None:
            raise ValueError(f"{ENV}={value!r}: {part!r} is not name[=kill][@N]")
        name, action = match["name"], match["action"] or KILL
        if name not in POINTS:
            raise ValueError(f"{ENV}: no failpoint {name!r}; the points are {', '.join(POINTS)}")
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: {part!r}: the actions are {', '.join(ACTIONS)}")
        nth = int(match["n"] or 1)
        if nth < 1:
            raise ValueError(f"{ENV}: {part!r}: @N counts from 1")
        armed[name] = (action, nth)
    return armed


# Read once, at import: the daemon's environment does not change under it.
_ARMED: dict[str, tuple[str, int]] = parse(os.environ.get(ENV, ""))
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die (or hang) here if FAXGW_FAILPOINT names this point and this is its Nth hit; else
    nothing."""
    armed = _ARMED.get(name)
    if armed is None:
        return
    action, nth = armed
    hit = _hits[name] = _hits.get(name, 0) + 1
    if hit < nth:
        return
    line = json.dumps(
        {
            "event": "failpoint.hit",
            "failpoint": name,
            "action": action,
            "hit": hit,
            "pid": os.getpid(),
        }
    )
    os.write(2, line.encode() + b"\n")
    if action == HANG:
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)
