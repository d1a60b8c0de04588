"""The command line, each run a process of its own: check-config and serve's life cycle."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.commands import check_config
from gateway.config import config_from_dict
from tests.conftest import ROOT, cli_env, free_port, merge, run_cli, run_module


def test_check_config_ok(write_config: Callable[..., Path], config_data: dict[str, Any]) -> None:
    """A valid file prints 'configuration OK' and exits 0."""
    result = run_cli("check-config", "--config", str(write_config(config_data)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration OK"


def test_check_config_problems(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """A bad file lists every problem, exits 2, and shows no traceback."""
    data = merge(config_data, {"smtp": {"listen": "nowhere", "typo": 1}})
    result = run_cli("check-config", "--config", str(write_config(data)))
    assert result.returncode == 2
    assert "smtp.listen: 'nowhere' is not an address" in result.stderr
    assert "smtp.typo: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_refuses_local_storage_on_a_shared_store(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """PostgreSQL with local storage exits 2 naming both keys (the carrier's GET may reach the
    node without the document); the same store with S3 passes."""
    store = {"store": {"backend": "postgresql", "dsn": "postgresql://gw@db.invalid/gw"}}
    local = merge(config_data, {**store, "storage": {"backend": "local"}})
    result = run_cli("check-config", "--config", str(write_config(local)))
    assert result.returncode == 2
    assert 'store.backend = "postgresql" with storage.backend = "local"' in result.stderr
    s3 = merge(config_data, {**store, "storage": {"backend": "s3", "bucket": "faxes"}})
    assert check_config.cluster_problems(config_from_dict(s3, env={})) == []


def test_check_config_from_environment(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """$FAXGW_CONFIG names the file when --config is absent."""
    path = write_config(config_data)
    result = run_cli("check-config", env=cli_env(FAXGW_CONFIG=str(path)))
    assert result.returncode == 0, result.stderr


def test_check_config_names_example_values(tmp_path: Path) -> None:
    """The example file as copied is valid but refused (exit 1): its public secrets, its URL."""
    example = ROOT / "config" / "gateway.example.toml"
    result = run_cli("check-config", "--config", str(example))
    assert result.returncode == 1, result.stderr
    assert "http.webhook_token: still the example's value" in result.stderr
    assert "voxtelesys.api_key: still the example's value" in result.stderr
    assert "http.public_url: fax.example.com is an example name" in result.stderr
    assert "configuration OK" not in result.stdout

    # As the service sees it: secrets from its environment file, the URL edited.
    edited = tmp_path / "gateway.toml"
    edited.write_text(
        example.read_text().replace("https://fax.example.com", "https://fax.acme-corp.net")
    )
    secrets = {"VOXTELESYS_API_KEY": "key-from-portal", "FAXGW_WEBHOOK_TOKEN": "x" * 32}
    result = run_cli("check-config", "--config", str(edited), env=cli_env(**secrets))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration OK"


def test_check_config_knows_the_example_placeholders() -> None:
    """Every placeholder check-config looks for is the one config/gateway.example.toml has."""
    from gateway.commands.check_config import EXAMPLE_SECRETS

    example = (ROOT / "config" / "gateway.example.toml").read_text()
    for (_section, key), (placeholder, _advice) in EXAMPLE_SECRETS.items():
        assert f'{key} = "{placeholder}"' in example, key


def test_check_config_warns_of_possible_numbers_to_every_country(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """number_check = "possible" with allowed_countries = ["*"] is valid but warned about."""
    loose = merge(config_data, {"fax": {"number_check": "possible", "allowed_countries": ["*"]}})
    result = run_cli("check-config", "--config", str(write_config(loose)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configuration OK"
    assert 'warning: fax.number_check = "possible" with fax.allowed_countries = ["*"]' in (
        result.stderr
    )
    # Either one alone is no warning.
    for alone in ({"number_check": "possible"}, {"allowed_countries": ["*"]}):
        result = run_cli(
            "check-config", "--config", str(write_config(merge(config_data, {"fax": alone})))
        )
        assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_check_config_warns_of_private_media(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """inbound.allow_private_media = true is valid but warned about (SSRF), exit status 0."""
    lab = merge(config_data, {"inbound": {"allow_private_media": True}})
    result = run_cli("check-config", "--config", str(write_config(lab)))
    assert result.returncode == 0, result.stderr
    assert "warning: inbound.allow_private_media = true:" in result.stderr
    result = run_cli("check-config", "--config", str(write_config(config_data)))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_check_config_missing_file(tmp_path: Path) -> None:
    """A missing configuration file is a user error with exit 2."""
    result = run_cli("check-config", "--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_help_for_each_verb() -> None:
    """Every verb answers --help; `python -m gateway` as a fresh interpreter lists them all."""
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    verbs = ["serve", "check-config", "user", "send", "status", "list", "queue", "sandbox", "demo"]
    for verb in verbs:
        assert verb in result.stdout
        assert run_cli(verb, "--help").returncode == 0


def wait_for_log(proc: subprocess.Popen[str], event: str, timeout: float = 20) -> str:
    """Read the daemon's JSON log lines until one contains `event`."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if event in line:
            return line
    raise AssertionError(f"{event} not logged; got {''.join(seen)}")


def test_serve_stops_on_sigterm(
    write_config: Callable[..., Path], config_data: dict[str, Any]
) -> None:
    """serve starts, logs ready, and exits 0 within 5 s of SIGTERM."""
    data = merge(
        config_data,
        {
            "smtp": {"listen": f"127.0.0.1:{free_port()}"},
            "http": {"listen": f"127.0.0.1:{free_port()}"},
        },
    )
    with subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(write_config(data))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(),
        cwd=ROOT,
    ) as proc:
        try:
            wait_for_log(proc, "daemon.ready")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert time.monotonic() - started < 5
        finally:
            proc.kill()


def test_check_config_warns_of_copier_settings_that_cannot_work(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    """A shared address without allowed_senders (no explanation mails) and a sender's cover
    template that cannot be rendered are warned about, naming the key."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "good.txt.j2").write_text("Cover for {{ subject }}\n")
    (templates / "broken.txt.j2").write_text("{{ subjekt }}\n")
    config = make_config(
        {
            "smtp": {"subject_address": "fax"},
            "templates": {"dir": str(templates)},
            "senders": {
                "a@example.com": {"cover_template": "good.txt.j2"},
                "b@example.com": {"cover_template": "broken.txt.j2"},
                "c@example.com": {"cover_template": "missing.txt.j2"},
            },
        }
    )
    found = check_config.warnings(config)
    assert len(found) == 3, found
    assert found[0].startswith("smtp.subject_address without smtp.allowed_senders")
    assert found[1].startswith('senders."b@example.com".cover_template: ')
    assert found[2].startswith('senders."c@example.com".cover_template: ')
    listed = make_config({"smtp": {"subject_address": "fax", "allowed_senders": ["*@x.org"]}})
    assert check_config.warnings(listed) == []
