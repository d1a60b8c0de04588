"""The SMTP users file, password hashing, the failed-login throttle and the `user` command."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.smtp.auth import AuthThrottle
from gateway.smtp.users import (
    Users,
    UsersFileError,
    hash_password,
    parse_users,
    read_users,
    verify_password,
)
from tests.conftest import run_cli

# Cheap parameters for tests that only need a valid hash, not a strong one.
FAST = 4


def test_hash_verifies_only_its_password() -> None:
    """A stored hash accepts its password and refuses any other."""
    stored = hash_password("correct horse", log2_n=FAST)
    assert stored.startswith("scrypt$ln=4,r=8,p=1$")
    assert verify_password(b"correct horse", stored)
    assert not verify_password(b"correct hors", stored)
    assert not verify_password(b"", stored)


def test_each_hash_has_its_own_salt() -> None:
    """The same password hashed twice gives different salts and hashes."""
    first, second = hash_password("same", log2_n=FAST), hash_password("same", log2_n=FAST)
    assert first.split("$")[2] != second.split("$")[2]
    assert first != second


def test_default_parameters_are_the_strong_ones() -> None:
    """Without arguments, hashing uses n = 2**14, r = 8."""
    assert hash_password("pw").startswith("scrypt$ln=14,r=8,p=1$")


def test_non_ascii_password() -> None:
    """Passwords are compared as UTF-8 bytes, as SMTP AUTH carries them."""
    stored = hash_password("pässwörd", log2_n=FAST)
    assert verify_password("pässwörd".encode(), stored)
    assert not verify_password(b"passwort", stored)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("alice", "expected 'name:scrypt$...'"),
        ("alice:md5$x$y$z", "not a 'scrypt$<params>$<salt>$<hash>'"),
        ("alice:scrypt$n=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "bad scrypt parameters"),
        ("alice:scrypt$ln=40,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "out of range"),
        ("alice:scrypt$ln=4,r=8,p=1$AA$AAAAAAAAAAAAAAAAAAAAAA", "too short"),
        ("al ice:scrypt$ln=4,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "cannot be a user name"),
    ],
)
def test_bad_lines_named_with_line_number(line: str, problem: str) -> None:
    """A bad line is an error naming the file, the line number and the problem."""
    with pytest.raises(UsersFileError) as caught:
        parse_users(f"# comment\n\n{line}\n", "users.txt")
    assert "users.txt, line 3: " in str(caught.value)
    assert problem in str(caught.value)


def test_duplicate_user_refused() -> None:
    """A name listed twice is an error rather than a silent choice of one hash."""
    stored = hash_password("x", log2_n=FAST)
    with pytest.raises(UsersFileError, match="appears twice"):
        parse_users(f"bob:{stored}\nbob:{stored}\n")


def test_users_reload_swaps_and_keeps_on_error(tmp_path: Path) -> None:
    """reload() picks up a changed file; a broken file keeps the users known before."""
    path = tmp_path / "users"
    path.write_text(f"alice@example.com:{hash_password('one', log2_n=FAST)}\n")
    users = Users(path)
    assert users.load() == 1
    assert users.verify("alice@example.com", b"one")
    assert not users.verify("bob", b"one")

    path.write_text(
        f"alice@example.com:{hash_password('two', log2_n=FAST)}\n"
        f"bob:{hash_password('three', log2_n=FAST)}\n"
    )
    assert users.reload() == 2
    assert users.verify("alice@example.com", b"two")
    assert not users.verify("alice@example.com", b"one")
    assert users.names() == ["alice@example.com", "bob"]

    path.write_text("garbage\n")
    with pytest.raises(UsersFileError):
        users.reload()
    assert users.verify("bob", b"three")


def test_missing_users_file_is_an_error(tmp_path: Path) -> None:
    """A configured but missing file is reported, with the command that creates it."""
    with pytest.raises(UsersFileError, match="fax-gateway user add"):
        read_users(tmp_path / "nope")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_locks_out_after_max_failures_then_forgives() -> None:
    """N failures lock one address out for the lockout time; others are unaffected."""
    clock = Clock()
    throttle = AuthThrottle(3, 60, clock=clock)
    bad, good = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2")
    assert not throttle.failed(bad)
    assert not throttle.failed(bad)
    assert not throttle.locked(bad)
    assert throttle.failed(bad)
    assert throttle.locked(bad)
    assert not throttle.locked(good)
    clock.now += 59
    assert throttle.locked(bad)
    clock.now += 2
    assert not throttle.locked(bad)
    # The count started over: one more failure does not lock again.
    assert not throttle.failed(bad)


def test_a_reload_applies_new_limits_and_keeps_the_counts() -> None:
    """reconfigure (SIGHUP): a lower max_failures locks at the next failure, counted so far;
    the new lockout time applies to lockouts from then on."""
    clock = Clock()
    throttle = AuthThrottle(5, 60, account_max_failures=10, clock=clock)
    client = ipaddress.ip_address("192.0.2.1")
    assert not throttle.failed(client)
    assert not throttle.failed(client)
    throttle.reconfigure(3, 600, account_max_failures=4)
    assert throttle.failed(client)  # the third failure: locked under the new limit
    clock.now += 599
    assert throttle.locked(client)
    clock.now += 2
    assert not throttle.locked(client)


def test_throttle_forgets_old_failures() -> None:
    """Failures spread wider than the window never add up to a lockout."""
    clock = Clock()
    throttle = AuthThrottle(2, 60, clock=clock)
    client = ipaddress.ip_address("192.0.2.1")
    for _ in range(5):
        assert not throttle.failed(client)
        clock.now += 61
    assert not throttle.locked(client)


def test_throttle_counts_ipv6_per_64() -> None:
    """Addresses of one IPv6 /64 share a count: a subscriber cannot rotate around it."""
    throttle = AuthThrottle(2, 60, clock=Clock())
    throttle.failed(ipaddress.ip_address("2001:db8:1:2::1"))
    assert throttle.failed(ipaddress.ip_address("2001:db8:1:2::ffff"))
    assert throttle.locked(ipaddress.ip_address("2001:db8:1:2:abcd::9"))
    assert not throttle.locked(ipaddress.ip_address("2001:db8:1:3::1"))


def test_throttle_table_stays_bounded() -> None:
    """Failures from many addresses are pruned once they are out of the window."""
    clock = Clock()
    throttle = AuthThrottle(5, 10, clock=clock)
    for i in range(3000):
        throttle.failed(ipaddress.ip_address(f"10.0.{i // 250}.{i % 250}"))
        clock.now += 0.1
    assert len(throttle._failures) <= 1100


# -- the `fax-gateway user` command ------------------------------------------------------------


@pytest.fixture
def user_cli(
    config_data: dict[str, Any], write_config: Callable[..., Path], tmp_path: Path
) -> Callable[..., subprocess.CompletedProcess[str]]:
    config_data["smtp"]["users_file"] = str(tmp_path / "users")
    config = write_config(config_data)

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli("user", *args, "--config", str(config), input=stdin)

    return run


def test_user_add_list_remove(user_cli: Callable[..., Any], tmp_path: Path) -> None:
    """add writes a verifiable hash (mode 0600), list shows names, remove deletes one."""
    added = user_cli("add", "alice@example.com", "--password-stdin", stdin="s3cret-pass\n")
    assert added.returncode == 0, added.stderr
    assert "added" in added.stdout
    assert "s3cret-pass" not in added.stdout + added.stderr
    path = tmp_path / "users"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"chgrp fax-gateway {path} && chmod 0640 {path}" in added.stderr
    assert "s3cret-pass" not in path.read_text()
    assert verify_password(b"s3cret-pass", read_users(path)["alice@example.com"])

    assert user_cli("add", "scanner", "--password-stdin", stdin="another-pass").returncode == 0
    listed = user_cli("list")
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == ["alice@example.com", "scanner"]

    changed = user_cli("add", "scanner", "--password-stdin", stdin="third-pass\n")
    assert "password changed" in changed.stdout
    assert verify_password(b"third-pass", read_users(path)["scanner"])

    removed = user_cli("remove", "alice@example.com")
    assert removed.returncode == 0, removed.stderr
    assert user_cli("list").stdout.splitlines() == ["scanner"]


def test_user_file_mode_kept(user_cli: Callable[..., Any], tmp_path: Path) -> None:
    """Rewriting keeps the mode the administrator gave the file (group-readable here)."""
    assert user_cli("add", "a", "--password-stdin", stdin="password1").returncode == 0
    path = tmp_path / "users"
    os.chmod(path, 0o640)
    assert user_cli("add", "b", "--password-stdin", stdin="password2").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_user_errors_exit_2(user_cli: Callable[..., Any]) -> None:
    """Unknown user, short password and bad names end with a message and status 2."""
    missing = user_cli("remove", "nobody")
    assert missing.returncode == 2
    assert "no such file" in missing.stderr or "no user" in missing.stderr
    short = user_cli("add", "alice", "--password-stdin", stdin="short\n")
    assert short.returncode == 2
    assert "at least 8 characters" in short.stderr
    bad = user_cli("add", "al:ice", "--password-stdin", stdin="long enough\n")
    assert bad.returncode == 2
    assert "cannot be a user name" in bad.stderr
    assert user_cli("add", "alice", "--password-stdin", stdin="long enough\n").returncode == 0
    unknown = user_cli("remove", "bob")
    assert unknown.returncode == 2
    assert "no user 'bob'" in unknown.stderr
    assert "Traceback" not in missing.stderr + short.stderr + bad.stderr + unknown.stderr


def test_user_needs_users_file(
    config_data: dict[str, Any], write_config: Callable[..., Path]
) -> None:
    """Without smtp.users_file the command says what to configure."""
    config = write_config(config_data)
    result = run_cli("user", "list", "--config", str(config))
    assert result.returncode == 2
    assert "smtp.users_file is not set" in result.stderr
