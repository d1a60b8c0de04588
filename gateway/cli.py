"""The `fax-gateway` command: one verb per module in gateway/commands/.

A user's mistake (bad configuration, unknown fax id) ends with a message and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__, log
from gateway.config import Config, ConfigError, load_config, resolve_path

# Each module has `register(subparsers)` adding its verb(s) with `set_defaults(run=...)`.
COMMAND_MODULES = [
    "gateway.commands.serve",
    "gateway.commands.check_config",
    "gateway.commands.user",
    "gateway.commands.send",
    "gateway.commands.status",
    "gateway.commands.faxlist",
    "gateway.commands.queue",
    "gateway.commands.store",
    "gateway.commands.sandbox",
    "gateway.commands.demo",
]

EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback, exit status 2."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $FAXGW_CONFIG, else /etc/fax-gateway/gateway.toml)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the configuration named by --config / $FAXGW_CONFIG; register its secrets."""
    config = load_config(resolve_path(getattr(args, "config", None)))
    log.register_secrets(config.secrets())
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fax-gateway",
        description="Email-to-fax and fax-to-email gateway for the Voxtelesys Fax API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="least severe log level shown (default: info for serve, warning otherwise)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A tool's own output is its result; its log lines stay quiet unless asked for.
    level = args.log_level or ("info" if args.command == "serve" else "warning")
    log.configure(level, stream=sys.stderr if args.command != "serve" else None)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print("configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"fax-gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
