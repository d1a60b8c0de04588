"""run_cli (tests/cli_zygote.py) answers as a fresh `python -m gateway` would."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli_zygote import Zygote
from tests.conftest import ROOT, cli_env, free_port, merge, run_cli, run_module


def test_a_failpoint_in_the_runs_environment_is_read_as_at_import() -> None:
    """FAXGW_FAILPOINT, read when gateway.failpoints is imported, is the run's own: a bad one
    fails the run as it fails `python -m gateway`, and the next run without it is unaffected."""
    bad = cli_env(FAXGW_FAILPOINT="no_such_point")
    fresh = run_module("check-config", "--help", env=bad)
    assert fresh.returncode == 1
    assert "no failpoint 'no_such_point'" in fresh.stderr
    forked = run_cli("check-config", "--help", env=bad)
    assert forked.returncode == 1, forked.stdout
    assert "no failpoint 'no_such_point'" in forked.stderr
    assert run_cli("check-config", "--help").returncode == 0


class _Interrupted(Exception):
    pass


def test_a_run_interrupted_mid_command_leaves_the_next_run_its_own_answer(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """A run interrupted while its command runs (pytest-timeout's alarm, ^C) has that command
    killed and leaves the zygote in step: the next run gets its own status and output."""
    data = merge(
        config_data,
        {
            "smtp": {"listen": f"127.0.0.1:{free_port()}"},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
        },
    )
    serve = ["serve", "--config", str(write_config(data))]

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    zygote = Zygote()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 3)
        with pytest.raises(_Interrupted):
            zygote.run(serve, env=cli_env(), cwd=ROOT, timeout=60)  # serves until killed
        signal.setitimer(signal.ITIMER_REAL, 0)
        after = zygote.run(["check-config", "--help"], env=cli_env(), cwd=ROOT, timeout=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        zygote.close()
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("usage: ")
