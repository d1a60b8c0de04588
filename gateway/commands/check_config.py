"""`fax-gateway check-config`: validate the configuration and say what is wrong."""

from __future__ import annotations

import argparse

from gateway.cli import add_config_argument, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate the configuration file",
        description="Print 'configuration OK' and exit 0, or print every problem and exit 2.",
    )
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config_from_args(args)
    print("configuration OK")
    return 0
