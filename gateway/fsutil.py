"""Durable file writes: what is written here survives a crash or power loss once we return."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What the gateway keeps under data.dir is people's faxes, their addresses and live signed media
# links: its own user only, set exactly rather than left to the umask, which is 022 (world-
# readable) for a gateway started from a login shell instead of by the systemd unit.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dirs(directory: Path) -> None:
    """Create `directory` and any missing parents, each 0700 whatever the umask.

    Folders that exist are left as they are: data.dir itself may be systemd's StateDirectory=
    with the mode the unit gives it, or one an operator set up. Unlike `mkdir(parents=True)`,
    which makes the parents with the umask's mode, every folder made here is private.
    """
    missing: list[Path] = []
    current = directory
    while not current.is_dir() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # another thread or process made it first
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode went through the umask


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write `data` to `path` so that readers see all of it or nothing, and it is on disk.

    Temp file in the same directory, write, fsync, rename over the target, fsync the directory:
    the sequence Postfix's cleanup and Maildir delivery use. The file gets exactly `mode`, not
    `mode` less the umask; missing folders are made 0700. Blocking: call it in a thread from
    async code.
    """
    make_private_dirs(path.parent)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
