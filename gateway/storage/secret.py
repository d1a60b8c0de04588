"""The gateway's own signing secret: 32 random bytes in `data.dir/secret.key`, made once.

Document keys and media tokens are HMACs under this secret, so it must survive restarts (or
every stored URL and key would change meaning) and never leave the machine. It is created with
mode 0600 and made durable before use; a second process racing to create it adopts the winner's
file instead of overwriting it (link, not rename), so two processes never sign with different
keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from gateway import log
from gateway.datadir import DataDir
from gateway.fsutil import PRIVATE_FILE, fsync_dir, make_private_dirs

logger = log.get_logger(__name__)

SECRET_BYTES = 32


class SecretKeyError(Exception):
    """The secret file exists but cannot be used (unreadable, wrong size)."""


def load_or_create_secret(data_dir: Path) -> bytes:
    """The secret in `data_dir/secret.key`, created (0600, fsync'd) if there is none yet.

    Blocking: call it in a thread from async code.
    """
    path = DataDir(data_dir).secret
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    make_private_dirs(data_dir)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), PRIVATE_FILE)  # exactly, not less the umask
            handle.write(secrets.token_bytes(SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            # link() fails if another process created the file meanwhile: theirs wins.
            os.link(tmp, path)
        except FileExistsError:
            pass
        else:
            logger.info("storage.secret_created", path=str(path))
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(data_dir)
    return _read(path)


def _read(path: Path) -> bytes:
    with path.open("rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        data = handle.read(SECRET_BYTES + 1)
    if len(data) != SECRET_BYTES:
        raise SecretKeyError(
            f"{path} holds {len(data)} bytes, expected {SECRET_BYTES}; "
            "remove it to create a new one (stored document URLs will stop working)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("storage.secret_permissions", path=str(path), mode=oct(mode & 0o777))
    return data


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose only, so a value signed for one use never verifies for another."""
    return hmac.new(secret, b"fax-gateway/" + purpose.encode(), hashlib.sha256).digest()
