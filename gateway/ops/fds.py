"""File descriptors: raise the soft limit at start, and share it out between the servers.

Every connection is a descriptor, and so are the store, spool files, the carrier's and the
relay's connections and the pipes of document conversion. When SMTP alone could take them all,
a flood of idle connections stopped HTTP, health checks and webhooks too. So SMTP may use at
most half of the limit and HTTP a quarter; the last quarter is the reserve for everything else.
"""

from __future__ import annotations

import resource

from gateway import log

logger = log.get_logger(__name__)

SMTP_SHARE = 0.5
HTTP_SHARE = 0.25


def raise_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (as far as allowed); the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        # An unlimited hard limit cannot be the soft one: settle for a large finite number.
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("fds.raise_failed", soft=soft, hard=hard, error=str(exc))
    return soft


def soft_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def cap(configured: int, share: float, what: str) -> int:
    """`configured` connections, or fewer if that would eat into the others' descriptors."""
    limit = soft_limit()
    allowed = max(int(limit * share), 1)
    if configured <= allowed:
        return configured
    logger.warning(
        f"{what}.max_connections_lowered",
        configured=configured,
        used=allowed,
        nofile=limit,
        why="keeps descriptors for the other server, the store and files (raise LimitNOFILE)",
    )
    return allowed
