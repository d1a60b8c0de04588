"""`fax-gateway user add|remove|list`: manage the SMTP AUTH users in smtp.users_file, or with
`--ui` the status pages' users in ui.users_file (when the pages have a file of their own).

The file is rewritten atomically; a running daemon picks the change up on SIGHUP (reload).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from gateway.cli import UserError, add_config_argument, config_from_args
from gateway.smtp.users import (
    UsersFileError,
    check_name,
    hash_password,
    read_users,
    write_users,
)

MIN_PASSWORD_LENGTH = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "user",
        help="add, remove or list SMTP AUTH users",
        description="Manage the users of smtp.users_file, who may send faxes after SMTP AUTH.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add a user, or set a new password for one")
    add_config_argument(add)
    _ui_argument(add)
    add.add_argument("name", help="login name (an email address is a good choice)")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    add.set_defaults(run=run_add)

    remove = actions.add_parser("remove", help="remove a user")
    add_config_argument(remove)
    _ui_argument(remove)
    remove.add_argument("name")
    remove.set_defaults(run=run_remove)

    listing = actions.add_parser("list", help="print the user names, one per line")
    add_config_argument(listing)
    _ui_argument(listing)
    listing.set_defaults(run=run_list)


def _ui_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ui",
        action="store_true",
        help="the users of the status pages (ui.users_file) instead of smtp.users_file",
    )


def _users_file(args: argparse.Namespace) -> Path:
    config = config_from_args(args)
    if getattr(args, "ui", False):
        if config.ui.users_file is None:
            raise UserError(
                "ui.users_file is not set: the status pages use smtp.users_file (no --ui)"
            )
        return config.ui.users_file
    path = config.smtp.users_file
    if path is None:
        raise UserError("smtp.users_file is not set in the configuration")
    return path


def _read(path: Path, *, missing_ok: bool) -> dict[str, str]:
    if missing_ok and not path.exists():
        return {}
    try:
        return read_users(path)
    except UsersFileError as exc:
        raise UserError(str(exc)) from None


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the passwords differ")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def run_add(args: argparse.Namespace) -> int:
    path = _users_file(args)
    try:
        check_name(args.name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    users = _read(path, missing_ok=True)
    password = _password(args)
    existed = args.name in users
    users[args.name] = hash_password(password)
    new_file = not path.exists()
    write_users(path, users)
    print(f"user {args.name}: {'password changed' if existed else 'added'} in {path}")
    if new_file:
        # A new file is private to whoever ran this; the service reads it as its own user.
        print(
            f"note: {path} was created with mode 0600; let the service read it, e.g.\n"
            f"  chgrp fax-gateway {path} && chmod 0640 {path}",
            file=sys.stderr,
        )
    return 0


def run_remove(args: argparse.Namespace) -> int:
    path = _users_file(args)
    users = _read(path, missing_ok=False)
    if users.pop(args.name, None) is None:
        raise UserError(f"no user {args.name!r} in {path}")
    write_users(path, users)
    print(f"user {args.name}: removed from {path}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    path = _users_file(args)
    for name in sorted(_read(path, missing_ok=True)):
        print(name)
    return 0
