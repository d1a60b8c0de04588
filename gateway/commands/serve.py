"""`fax-gateway serve`: run the daemon in the foreground (systemd Type=notify)."""

from __future__ import annotations

import argparse
import asyncio

from gateway.cli import add_config_argument, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gateway (SMTP in, webhooks, workers)",
        description="Run the gateway until SIGTERM or SIGINT.",
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gateway.config import resolve_path
    from gateway.daemon import serve

    config = config_from_args(args)
    return asyncio.run(serve(config, config_path=resolve_path(args.config)))
