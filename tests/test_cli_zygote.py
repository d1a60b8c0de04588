"""run_cli (tests/cli_zygote.py) answers as a fresh `python -m gateway` would."""

from __future__ import annotations

from tests.conftest import cli_env, run_cli, run_module


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
