"""The SMTP AUTH users file: one `name:scrypt$ln=14,r=8,p=1$<salt>$<hash>` line per user.

Passwords are stored as scrypt hashes with a random salt per user; the cost parameters travel
with each hash, so a file written with other parameters still verifies. Blank lines and lines
starting with '#' are ignored. The daemon reads the file at start and on `reload()`; the
`fax-gateway user` command rewrites it atomically.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path

from gateway import fsutil

SCHEME = "scrypt"
DEFAULT_LOG2_N = 14  # n = 16384, r = 8: 16 MiB and some tens of milliseconds per check
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Bounds on parameters read from a file, so a damaged line cannot make one check take minutes
# or gigabytes.
_MAX_LOG2_N = 20
_MAX_R = 32
_MAX_P = 16

_NAME = re.compile(r"^[^\s:#][^\s:]{0,254}$")
_PARAMS = re.compile(r"^ln=(\d+),r=(\d+),p=(\d+)$")


class UsersFileError(Exception):
    """The users file cannot be read or has a bad line; str() names the file and line."""


def check_name(name: str) -> str:
    """Return `name` if it can be a login name, else raise ValueError saying why."""
    if not _NAME.match(name) or not name.isprintable():
        raise ValueError(
            f"{name!r} cannot be a user name: use 1-255 printable characters without spaces "
            "or ':' (an email address is a good choice)"
        )
    return name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * r * n * p + 1024**2
    )


def hash_password(password: str, *, log2_n: int = DEFAULT_LOG2_N) -> str:
    """The stored form of `password`, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _derive(password.encode("utf-8"), salt, log2_n, DEFAULT_R, DEFAULT_P, HASH_BYTES)
    return f"{SCHEME}$ln={log2_n},r={DEFAULT_R},p={DEFAULT_P}${_b64(salt)}${_b64(digest)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"not a '{SCHEME}$<params>$<salt>$<hash>' password hash")
    match = _PARAMS.match(parts[1])
    if match is None:
        raise ValueError(f"bad scrypt parameters {parts[1]!r}, expected 'ln=14,r=8,p=1'")
    log2_n, r, p = (int(g) for g in match.groups())
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError(f"scrypt parameters {parts[1]!r} out of range")
    try:
        salt, digest = _unb64(parts[2]), _unb64(parts[3])
    except ValueError:
        raise ValueError("salt or hash is not base64") from None
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return log2_n, r, p, salt, digest


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether `password` matches the stored hash; constant time in the comparison."""
    log2_n, r, p, salt, digest = _parse_hash(encoded)
    candidate = _derive(password, salt, log2_n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)


def parse_users(text: str, source: str = "users file") -> dict[str, str]:
    """name -> stored hash, from the file's text; a bad line raises UsersFileError."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, encoded = line.partition(":")
        try:
            if not colon:
                raise ValueError("expected 'name:scrypt$...'")
            check_name(name)
            _parse_hash(encoded)
        except ValueError as exc:
            raise UsersFileError(f"{source}, line {number}: {exc}") from None
        if name in users:
            raise UsersFileError(f"{source}, line {number}: user {name!r} appears twice")
        users[name] = encoded
    return users


def render_users(users: dict[str, str]) -> str:
    header = "# fax-gateway SMTP users: name:scrypt hash. Edit with `fax-gateway user`.\n"
    return header + "".join(f"{name}:{encoded}\n" for name, encoded in sorted(users.items()))


def read_users(path: Path) -> dict[str, str]:
    """Read and parse the users file (blocking)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsersFileError(
            f"{path}: no such file (add a user with `fax-gateway user add`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: cannot be read: {exc}") from None
    return parse_users(text, str(path))


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the file atomically and durably, keeping its owner and mode (blocking).

    An administrator runs the command as root while the daemon reads the file as its own
    user: a new file owned by root with mode 0600 would lock the daemon out at the next reload.
    """
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    mode = (old.st_mode & 0o777) if old is not None else 0o600
    fsutil.write_atomic(path, render_users(users).encode("utf-8"), mode=mode)
    os.chmod(path, mode)  # write_atomic's mode passes through the umask
    if old is not None and os.geteuid() == 0:
        os.chown(path, old.st_uid, old.st_gid)


class Users:
    """The users the daemon knows, from `path`; `reload()` swaps them in as a whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, str] = {}
        self._lock = threading.Lock()
        # Checked for names that do not exist, so that a guess at a name costs as much time as
        # a guess at a password and the timing does not tell which names exist.
        self._decoy = hash_password(secrets.token_urlsafe(16))

    def load(self) -> int:
        """Read the file (blocking); on error the users known so far stay. Returns the count."""
        users = read_users(self.path)
        with self._lock:
            self._users = users
        return len(users)

    reload = load

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._users)

    def verify(self, name: str, password: bytes) -> bool:
        """Whether `name` exists and `password` is its password (blocking: scrypt)."""
        with self._lock:
            encoded = self._users.get(name)
        if encoded is None:
            verify_password(password, self._decoy)
            return False
        return verify_password(password, encoded)
