"""`fax-gateway demo`: try the whole product on loopback in one command."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the gateway with a sandbox carrier on loopback, no configuration needed",
        description=(
            "Start the sandbox carrier and a gateway with local storage and a Maildir under "
            "./var/demo, send one sample fax and receive one, then wait for Ctrl-C."
        ),
    )
    parser.add_argument("--dir", type=Path, default=Path("var/demo"), help="demo data (wiped)")
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--sandbox-port", type=int, default=8099)
    parser.add_argument(
        "--once", action="store_true", help="exit after the two sample mails have arrived"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the demo pulls in the whole daemon, which other verbs do not need.
    from gateway.sandbox.demo import DemoPorts, run_demo

    ports = DemoPorts(args.smtp_port, args.http_port, args.sandbox_port)
    return run_demo(args.dir.resolve(), ports, once=args.once)
