"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET, no library needed.

The daemon sends READY=1 once SMTP and HTTP listen, WATCHDOG=1 every half WatchdogSec from its
own event loop, RELOADING=1 ... READY=1 around a SIGHUP reload and STOPPING=1 when a stop begins.
Outside systemd (no $NOTIFY_SOCKET) every call is a no-op that returns False.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from gateway import log

logger = log.get_logger(__name__)


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):  # abstract namespace socket
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # Newer systemd may hand out other kinds (vsock:...) to virtual machines; the unit only
    # allows AF_UNIX, and so do we.
    return None


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send e.g. 'READY=1' to systemd; False (and nothing sent) when not run under systemd.

    A failure to send is logged, not raised: the daemon's own state must not depend on the
    notify socket, and systemd reacts to a missing READY or WATCHDOG by itself.
    """
    env = os.environ if env is None else env
    address = _address(env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        logger.warning("sdnotify.failed", message=message.split("\n", 1)[0], error=str(exc))
        return False
    return True


def reloading(env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd a reload has begun; send READY=1 when it is done.

    MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match the message to the reload
    it asked for; older versions ignore it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", env)


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when it is not set.

    systemd sets WATCHDOG_PID to the main process; a child that inherited the environment
    must not ping on its parent's behalf, hence the check.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2
