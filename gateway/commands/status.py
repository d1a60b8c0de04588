"""`fax-gateway status FAX_ID`: what the carrier says about one fax, inbound or outbound.

Also home of `run_with_client`, which the carrier verbs (send, status, list) share: it opens a
client from the configuration and turns carrier errors into messages. A mistake the user can
fix (unknown id, refused key, invalid request) exits 2; a carrier that cannot be reached
exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from gateway.carrier import CarrierError, CarrierFax, VoxtelesysClient
from gateway.carrier.errors import AuthError, NotFound, Rejected, user_message
from gateway.carrier.status import Outcome
from gateway.cli import UserError, add_config_argument, config_from_args
from gateway.config import Config
from gateway.numbers import pretty
from gateway.queue.backoff import RetryPolicy

T = TypeVar("T")

# A person is waiting at the terminal: a couple of quick retries, then say what happened.
CLI_RETRY = RetryPolicy(attempts=3, min_delay=0.5, max_delay=2.0, deadline=15.0)


class CarrierUnreachable(Exception):
    """The carrier failed or could not be reached; not the user's mistake (exit 1)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show what the carrier says about one fax",
        description="Ask the carrier for one fax (inbound or outbound) and print it.",
    )
    parser.add_argument("fax_id", metavar="FAX_ID", help="the carrier's fax id")
    parser.add_argument("--json", action="store_true", help="print the fax as JSON")
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)

    async def action(client: VoxtelesysClient) -> CarrierFax:
        try:
            return await client.get_fax(args.fax_id)
        except NotFound:
            raise UserError(f"the carrier has no fax with id {args.fax_id!r}") from None

    try:
        fax = run_with_client(config, action)
    except CarrierUnreachable as exc:
        print(f"fax-gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(fax.to_dict(), indent=2))
    else:
        print(describe_fax(fax, config))
    return 0


def run_with_client(config: Config, action: Callable[[VoxtelesysClient], Awaitable[T]]) -> T:
    """Run `action` with a client of the configured carrier; carrier errors become
    UserError (the user can fix it) or CarrierUnreachable."""

    async def main() -> T:
        async with VoxtelesysClient.from_config(config.voxtelesys, retry=CLI_RETRY) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except (AuthError, Rejected, NotFound) as exc:
        raise UserError(user_message(exc)) from None
    except CarrierError as exc:
        raise CarrierUnreachable(user_message(exc)) from None


def describe_fax(fax: CarrierFax, config: Config) -> str:
    outcome = fax.outcome(config.voxtelesys.success_statuses)
    rows: list[tuple[str, str]] = [
        ("fax", fax.id),
        ("direction", fax.direction),
        ("from", pretty(fax.from_e164)),
        ("to", pretty(fax.to_e164)),
        ("status", status_text(fax.status, outcome)),
        ("created", timestamp(fax.created_at)),
        ("modified", timestamp(fax.modified_at)),
    ]
    if fax.pages is not None:
        rows.append(("pages", str(fax.pages)))
    if fax.duration is not None:
        rows.append(("duration", f"{fax.duration} s"))
    if fax.attempts is not None:
        rows.append(("attempts", str(fax.attempts)))
    info = fax.error_info
    if info is not None:
        advice = "worth retrying later" if info.retryable else "retrying will not help"
        code = f"{info.code} " if info.code is not None else ""
        rows.append(("error", f"{code}{info.description} ({advice})"))
    if fax.url:
        rows.append(("document", fax.url))
    if fax.media_url:
        rows.append(("media", fax.media_url))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def status_text(status: str, outcome: Outcome) -> str:
    """The carrier's word, and what the gateway makes of it when that is not the same word:
    "delivered (succeeded)", "queued (pending)", but "failed", not "failed (failed)"."""
    if status.strip().lower() == outcome.value:
        return status
    return f"{status} ({outcome})"


def timestamp(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
