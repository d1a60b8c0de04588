"""`fax-gateway list`: the carrier's faxes, newest first, as a table or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import aclosing
from datetime import UTC

from gateway.carrier import CarrierFax, VoxtelesysClient
from gateway.cli import add_config_argument, config_from_args
from gateway.commands.queueview import printable
from gateway.commands.status import CarrierUnreachable, run_with_client
from gateway.numbers import pretty

DEFAULT_LIMIT = 50


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list the carrier's faxes, newest first",
        description="List inbound and outbound faxes as the carrier reports them.",
    )
    parser.add_argument(
        "--direction", choices=["inbound", "outbound"], help="only faxes in this direction"
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N faxes (default {DEFAULT_LIMIT}; 0 = all)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    add_config_argument(parser)
    parser.set_defaults(run=run)


def _limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)

    async def collect(client: VoxtelesysClient) -> list[CarrierFax]:
        found: list[CarrierFax] = []
        # The API has no direction filter, so pages are read until enough match.
        async with aclosing(client.list_faxes()) as faxes:
            async for fax in faxes:
                if args.direction and fax.direction != args.direction:
                    continue
                found.append(fax)
                if args.limit and len(found) >= args.limit:
                    break
        return found

    try:
        faxes = run_with_client(config, collect)
    except CarrierUnreachable as exc:
        print(f"fax-gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([fax.to_dict() for fax in faxes], indent=2))
    elif faxes:
        print(table(faxes))
    else:
        print("no faxes")
    return 0


COLUMNS = ("CREATED (UTC)", "DIRECTION", "FROM", "TO", "STATUS", "PAGES", "ERROR", "ID")


def table(faxes: list[CarrierFax]) -> str:
    # The carrier's words (status, error, ids) printed as text, never as terminal controls.
    rows = [COLUMNS, *(tuple(printable(cell) for cell in _row(fax)) for fax in faxes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _row(fax: CarrierFax) -> tuple[str, ...]:
    created = "-"
    if fax.created_at is not None:
        created = fax.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    info = fax.error_info
    error = ""
    if info is not None:
        error = info.description if info.code is None else f"{info.code} {info.description}"
    return (
        created,
        fax.direction,
        pretty(fax.from_e164),
        pretty(fax.to_e164),
        fax.status,
        "-" if fax.pages is None else str(fax.pages),
        error,
        fax.id,
    )
