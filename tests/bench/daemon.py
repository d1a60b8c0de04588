"""The whole daemon under load: `python -m gateway serve` as a subprocess, every worker on.

`Daemon` starts the sandbox carrier (no delay between fax steps) and the capturing relay in
threads of this process, writes a configuration with its data under a work directory, and runs
the gateway as a child process whose JSON log goes to a file (as journald would take it). The
benchmark's clients run on this process's event loop. `PROFILE=dir` in the environment runs the
daemon under py-spy (every thread) and leaves its folded stacks there (see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from gateway.sandbox import SandboxSettings
from tests.conftest import BASE_CONFIG, ROOT, cli_env, free_port, merge
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import API_KEY, Sandbox

# The carrier answers at once and moves each fax to its final state at once, as in the issue.
CARRIER = SandboxSettings(
    api_key=API_KEY,
    delay=0.0,
    webhook_min_delay=0.05,
    webhook_max_delay=0.2,
    webhook_timeout=5.0,
    download_timeout=10.0,
)
READY_TIMEOUT = 120.0


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far, user and system, every thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(thread_id: int) -> float:
    """CPU time one thread of this process has used so far (its native id), user and system."""
    stat = Path(f"/proc/self/task/{thread_id}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    """A running `fax-gateway serve` with its carrier and relay; stop() ends all three."""

    def __init__(
        self,
        work: Path,
        overrides: dict[str, Any] | None = None,
        *,
        env: dict[str, str] | None = None,
        sandbox: Sandbox | None = None,
        root: Path = ROOT,
    ) -> None:
        """`root`: the checkout whose `gateway` runs (the working directory comes first on
        the child's sys.path, before PYTHONPATH)."""
        self.root = root
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.own_sandbox = sandbox is None
        self.sandbox = sandbox or Sandbox(CARRIER).start()
        self.relay = CapturingRelay(work / "relay")
        self.relay.come_up()
        self.smtp_port = free_port()
        self.http_port = free_port()
        self.data_dir = work / "data"
        data = merge(
            BASE_CONFIG,
            {
                "data": {"dir": str(self.data_dir)},
                "smtp": {
                    "listen": f"127.0.0.1:{self.smtp_port}",
                    "hostname": "bench.local",
                    "max_concurrent_data": 20,
                    # Every benchmark client is 127.0.0.1.
                    "max_concurrent_data_per_ip": 20,
                },
                "http": {
                    "listen": f"127.0.0.1:{self.http_port}",
                    "public_url": f"http://127.0.0.1:{self.http_port}",
                },
                "limits": {"faxes_per_sender_per_day": 10_000_000},
                "relay": self.relay.relay_config_overrides(),
            },
        )
        data = merge(merge(data, self.sandbox.config_override()), overrides or {})
        self.config_data = data
        self.token = data["http"]["webhook_token"]
        self.webhook_url = f"http://127.0.0.1:{self.http_port}/webhooks/fax/{self.token}"
        self.sandbox.set_webhook(self.webhook_url)
        self.config_path = work / "gateway.toml"
        self.config_path.write_bytes(tomli_w.dumps(data).encode())
        self.log_path = work / "gateway.log"
        self.env = cli_env(**(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_seconds = 0.0

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.db"

    def start(self) -> Daemon:
        """Start the gateway and wait for its `daemon.ready` line; `started_seconds` is how long
        that took from the exec."""
        command_args = ["-m", "gateway", "serve", "--config", str(self.config_path)]
        command = [sys.executable, *command_args]
        profile = os.environ.get("PROFILE")
        if profile:
            report = Path(profile) / f"{self.work.name}-{int(time.time())}.folded"
            report.parent.mkdir(parents=True, exist_ok=True)
            spy = str(Path(sys.executable).parent / "py-spy")
            command = [spy, "record", "--threads", "--format", "raw", "-r", "250"]
            if os.environ.get("PROFILE_GIL"):
                command.append("--gil")  # only samples holding the GIL: CPU in Python
            command += ["-o", str(report), "--", sys.executable, *command_args]
        started = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root
            )
        deadline = started + READY_TIMEOUT
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self.tail()}")
            if any(line.get("event") == "daemon.ready" for line in self.log_lines()):
                self.started_seconds = time.perf_counter() - started
                return self
            time.sleep(0.02)
        raise RuntimeError(f"the gateway was not ready in {READY_TIMEOUT} s: {self.tail()}")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    @property
    def pid(self) -> int:
        """The gateway's process id (under py-spy, the profiler's child)."""
        assert self.proc is not None
        if os.environ.get("PROFILE"):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            return int(children.split()[0])
        return self.proc.pid

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def stop_gateway(self) -> None:
        """SIGTERM, and wait for the orderly stop."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        try:
            self.stop_gateway()
        finally:
            self.relay.go_down()
            if self.own_sandbox:
                self.sandbox.stop()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
