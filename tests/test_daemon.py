"""The daemon as a process: crashes (kill -9), SIGTERM during DATA, SIGHUP reload, the demo."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests import samples
from tests.conftest import ROOT, cli_env, free_port, merge, run_cli
from tests.servers.gateway import serve_config_data
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox

pytestmark = pytest.mark.slow


class Subprocess:
    """A `fax-gateway` subprocess whose output lines a thread collects as they come."""

    def __init__(self, *arguments: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[Any] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=cli_env() if env is None else env,
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def parse(self, raw: str) -> Any:
        return raw.rstrip("\n")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(self.parse(raw))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# How long a daemon may take to log an event it is waiting for, start-up included: only a
# failure waits this long (a start took over 20 s, daemon.ready never seen, at a load of 12).
LOG_WITHIN = 60.0


class GatewayProcess(Subprocess):
    """`fax-gateway serve` in a subprocess, its JSON log lines collected by a thread."""

    lines: list[dict[str, Any]]

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        super().__init__("serve", "--config", str(config_path), env=env)

    def parse(self, raw: str) -> dict[str, Any]:
        try:
            line: dict[str, Any] = json.loads(raw)
        except ValueError:
            line = {"event": "raw", "text": raw}
        return line

    def wait_for(self, event: str, timeout: float = LOG_WITHIN, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for line in self.lines:
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    return line
            return None

        with self._cond:
            if not self._cond.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, timeout
            ):
                raise AssertionError(f"{event} not logged within {timeout}s: {self.lines[-20:]}")
            line = found()
            if line is None:
                raise AssertionError(f"gateway exited before {event}: {self.lines[-20:]}")
            return line

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._close()

    def terminate(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def close(self) -> None:
        self._close()


@pytest.fixture
def daemon_config(
    config_data: dict[str, Any],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    write_config: Callable[..., Path],
) -> Callable[..., tuple[Path, dict[str, Any]]]:
    def make(overrides: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
        data = serve_config_data(config_data, sandbox, relay_server, overrides)
        token = data["http"]["webhook_token"]
        sandbox.set_webhook(f"{data['http']['public_url']}/webhooks/fax/{token}")
        return write_config(data), data

    return make


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.kill()
        process.close()


def smtp_port(data: dict[str, Any]) -> int:
    return int(data["smtp"]["listen"].rsplit(":", 1)[1])


def submit(port: int, numbers: list[str], document: bytes) -> str | None:
    """One message over SMTP; the job id if answered 250, None if the gateway was gone."""
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = ", ".join(f"{n.lstrip('+')}@fax.local" for n in numbers)
    message["Subject"] = "crash test"
    message.set_content("see attachment")
    message.add_attachment(document, "application", "pdf", filename="doc.pdf")
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            client.mail("alice@example.com")
            for number in numbers:
                code, _ = client.rcpt(f"{number.lstrip('+')}@fax.local")
                assert code == 250
            code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))
    except (OSError, smtplib.SMTPException):
        return None
    if code != 250:
        return None
    return reply.decode().rsplit(" ", 1)[1]


def test_kill_9_mid_way_loses_and_duplicates_nothing(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    processes: list[GatewayProcess],
) -> None:
    """30 messages, kill -9 mid-way, restart: each 250 became exactly one fax per recipient."""
    path, data = daemon_config()
    port = smtp_port(data)
    document = samples.pdf(1)
    # Unique fictional numbers per recipient, so the sandbox's faxes can be counted per number.
    plan = [
        [f"+1201555{100 + 2 * i:04d}"] + ([f"+1201555{101 + 2 * i:04d}"] if i % 3 == 0 else [])
        for i in range(30)
    ]
    accepted: dict[str, list[str]] = {}

    first = GatewayProcess(path)
    processes.append(first)
    first.wait_for("daemon.ready")
    for numbers in plan[:12]:
        job = submit(port, numbers, document)
        if job:
            accepted[job] = numbers
    first.kill()  # mid-way: faxes of these jobs are at every stage of the pipeline
    sent_before_restart = len(sandbox.faxes())

    second = GatewayProcess(path)
    processes.append(second)
    second.wait_for("daemon.ready")
    for numbers in plan[12:]:
        job = submit(port, numbers, document)
        if job:
            accepted[job] = numbers
    assert len(accepted) == 30

    expected = [n for numbers in accepted.values() for n in numbers]

    def all_final() -> bool:
        faxes = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
        return len(faxes) >= len(expected) and all(
            f["status"] in ("delivered", "failed") for f in faxes
        )

    sandbox.wait_for(all_final, timeout=60, what="every accepted fax at the carrier")
    counts = Counter("+" + f["to"] for f in sandbox.faxes() if f["direction"] == "outbound")
    assert {n: counts[n] for n in expected} == dict.fromkeys(expected, 1)
    assert sum(counts.values()) == len(expected)
    second.wait_for("job.cleaned", timeout=30)
    assert second.terminate() == 0
    assert sent_before_restart <= len(expected)


def worker_pids(pid: int) -> list[int]:
    """The children of process `pid` (its document workers), from /proc."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(FileNotFoundError):
            found += [int(child) for child in children.read_text().split()]
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def job_claimed(data: dict[str, Any], job_id: str) -> bool:
    """The prepare stage has picked the job up (its pickup is counted, the work has begun)."""
    store = Path(data["data"]["dir"]) / "store.db"
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute("SELECT state, pickups FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and tuple(row) == ("received", 1)


def building(daemon: GatewayProcess) -> list[int]:
    """The daemon's document workers that sit in the `document_prepare=hang` failpoint's
    sleep (the kernel's wait channel says so): a document is being built, and never will be.

    The claim alone is not enough: it is committed before the job reaches a worker, and a
    SIGTERM in between stops the daemon before any document work began."""
    found = []
    for pid in worker_pids(daemon.proc.pid):
        with contextlib.suppress(OSError):
            if "nanosleep" in Path(f"/proc/{pid}/wchan").read_text():
                found.append(pid)
    return found


def test_kill_9_while_a_document_is_built_leaves_no_worker_and_no_pipe_open(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]], processes: list[GatewayProcess]
) -> None:
    """kill -9 of the daemon while a document worker builds a job's document: the daemon's
    output pipe ends at once and no worker process outlives it."""
    path, data = daemon_config()
    process = GatewayProcess(path, env=cli_env(FAXGW_FAILPOINT="document_prepare=hang"))
    processes.append(process)
    process.wait_for("daemon.ready")
    job = submit(smtp_port(data), ["+12015550150"], samples.pdf(1))
    assert job is not None
    wait_until(lambda: job_claimed(data, job), 20, "prepare picks the job up")
    wait_until(lambda: bool(building(process)), 20, "a worker building the job's document")
    workers = worker_pids(process.proc.pid)
    assert workers, "the daemon has no document worker"
    killed = time.monotonic()
    process.proc.kill()
    process._reader.join(10)
    assert not process._reader.is_alive(), "the daemon's output pipe is still held open"
    assert time.monotonic() - killed < 5
    process.proc.wait(5)
    wait_until(lambda: not any(alive(pid) for pid in workers), 5, "every worker gone")


def test_sigterm_while_a_document_is_built_stops_within_the_bound_and_resumes(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    processes: list[GatewayProcess],
) -> None:
    """SIGTERM while a document takes forever to build: exit 0 well within the shutdown bound
    (the worker is killed, not waited for), and after a restart the job is faxed."""
    path, data = daemon_config(
        {"documents": {"worker_timeout_seconds": 600}, "queue": {"shutdown_timeout_seconds": 5}}
    )
    first = GatewayProcess(path, env=cli_env(FAXGW_FAILPOINT="document_prepare=hang"))
    processes.append(first)
    first.wait_for("daemon.ready")
    job = submit(smtp_port(data), ["+12015550151"], samples.pdf(1))
    assert job is not None
    wait_until(lambda: job_claimed(data, job), 20, "prepare picks the job up")
    wait_until(lambda: bool(building(first)), 20, "a worker building the job's document")
    workers = worker_pids(first.proc.pid)
    asked = time.monotonic()
    assert first.terminate(timeout=15) == 0
    assert time.monotonic() - asked < 5
    first.wait_for("document.work_stopped")
    assert not any(alive(pid) for pid in workers)

    second = GatewayProcess(path)
    processes.append(second)
    second.wait_for("job.prepared", timeout=30, job_id=job)
    sandbox.wait_for(
        lambda: any(f["to"] == "12015550151" for f in sandbox.faxes()),
        timeout=60,
        what="the job's fax at the carrier",
    )
    assert second.terminate() == 0


def test_sigterm_during_data_finishes_the_message(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]], processes: list[GatewayProcess]
) -> None:
    """SIGTERM while a client is in DATA: the message still gets its 250, then a clean exit 0."""
    # DATA in progress may finish within half of queue.shutdown_timeout_seconds; the test
    # queue's 5 s leave 2.5 s for the rest of the message, its check in a document worker and
    # its commit, which a loaded machine can exceed. The bound is not what this test is about.
    path, data = daemon_config({"queue": {"shutdown_timeout_seconds": 60}})
    process = GatewayProcess(path)
    processes.append(process)
    process.wait_for("daemon.ready")
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "12015550123@fax.local"
    message["Subject"] = "in flight"
    message.add_attachment(samples.pdf(1), "application", "pdf", filename="a.pdf")
    body = message.as_bytes().replace(b"\n", b"\r\n")
    client = smtplib.SMTP("127.0.0.1", smtp_port(data), timeout=60)
    try:
        client.ehlo()
        client.mail("alice@example.com")
        client.rcpt("12015550123@fax.local")
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(body[: len(body) // 2])
        process.proc.send_signal(signal.SIGTERM)
        process.wait_for("daemon.stopping")
        client.send(body[len(body) // 2 :] + b"\r\n.\r\n")
        code, reply = client.getreply()
        assert code == 250, reply
        assert b"queued as" in reply
        # Then the stopping server says goodbye instead of waiting for QUIT.
        assert client.getreply()[0] == 421
    finally:
        client.close()
    assert process.proc.wait(60) == 0


def test_sighup_reloads_inbound_routes(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    processes: list[GatewayProcess],
    write_config: Callable[..., Path],
) -> None:
    """After SIGHUP an inbound fax follows the route written into the file since start."""
    routes = {"inbound": {"routes": {"+12015550101": ["before@example.com"]}}}
    path, data = daemon_config(routes)
    process = GatewayProcess(path)
    processes.append(process)
    process.wait_for("daemon.ready")
    changed = merge(data, {"inbound": {"routes": {"+12015550101": ["after@example.com"]}}})
    write_config(changed)
    process.proc.send_signal(signal.SIGHUP)
    process.wait_for("daemon.reloaded")
    sandbox.inbound("12015550101", "12015550142", samples.pdf(1))
    [mail] = relay_server.wait_for_sync(1, timeout=30)
    assert list(mail.rcpt_tos) == ["after@example.com"]
    assert process.terminate() == 0


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    """`fax-gateway demo --once` leaves a delivery report and an inbound fax, both with PDFs."""
    base = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--once",
            "--dir",
            str(base),
            "--smtp-port",
            str(free_port()),
            "--http-port",
            str(free_port()),
            "--sandbox-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    mails = sorted((base / "maildir" / "new").iterdir())
    assert len(mails) == 2
    subjects = []
    for path in mails:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        subjects.append(str(message["Subject"]))
        names = [part.get_filename() or "" for part in message.iter_attachments()]
        assert any(name.endswith(".pdf") for name in names), names
    assert any(s.startswith("Fax to +1 201-555-0123 delivered") for s in subjects), subjects
    assert any(s.startswith("Fax from +1 201-555-0142") for s in subjects), subjects
    assert "swaks --server" in result.stdout
    assert "--once: the demo stops now" in result.stdout
    assert "Press Ctrl-C" not in result.stdout
    assert (base / "gateway.toml").exists()


class DemoProcess(Subprocess):
    """`fax-gateway demo` in a subprocess, its output lines collected by a thread."""

    lines: list[str]

    def __init__(self, base: Path) -> None:
        self.base = base
        super().__init__(
            "demo",
            "--dir",
            str(base),
            "--smtp-port",
            str(free_port()),
            "--http-port",
            str(free_port()),
            "--sandbox-port",
            str(free_port()),
        )

    def wait_for_line(self, text: str, timeout: float = 90) -> None:
        with self._cond:
            if not self._cond.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            ) or not any(text in line for line in self.lines):
                raise AssertionError(f"{text!r} not printed: {self.lines}")

    def command(self, arguments: str) -> str:
        """The printed command line (indented by two spaces) whose program is followed by
        `arguments`: "-c" finds `python3 -c ...`, "list" finds `fax-gateway list ...`."""
        found = [
            line.strip()
            for line in self.lines
            if line.startswith("  ") and f"{line.strip()} ".split(" ", 1)[1].startswith(arguments)
        ]
        assert found, f"no command with {arguments!r} printed: {self.lines}"
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self._close()
        return code


def run_shell(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed command line as a user pastes it into a shell."""
    return subprocess.run(
        command, shell=True, capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=60
    )


def wait_for_mails(maildir_new: Path, count: int, timeout: float = 60) -> list[EmailMessage]:
    """Poll the demo's Maildir until `count` mails are in it; return them parsed."""
    deadline = time.monotonic() + timeout
    while True:
        paths = sorted(maildir_new.iterdir()) if maildir_new.is_dir() else []
        if len(paths) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling a directory another process writes into
    messages = []
    for path in paths:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    assert len(messages) >= count, [str(m["Subject"]) for m in messages]
    return messages


def test_demo_printed_commands_work(tmp_path: Path) -> None:
    """Every command the running demo prints works when pasted: mail, send, inbound, queue."""
    demo = DemoProcess(tmp_path / "demo")
    try:
        demo.wait_for_line("Press Ctrl-C to stop.")
        python_line = demo.command("-c ")
        failing = next(line.split()[0] for line in demo.lines if line.startswith("  12015550166@"))
        pasted = [
            python_line,
            python_line.replace("12015550123@fax.local", failing),
            demo.command("send "),
            demo.command("sandbox inbound "),
            demo.command("queue list "),
            demo.command("list "),
        ]
        results = [run_shell(line) for line in pasted]
        for line, result in zip(pasted, results, strict=True):
            assert result.returncode == 0, (line, result.stdout, result.stderr)
        job = results[2].stdout.split()[2].rstrip(":")  # "queued as J...: sample.pdf to ..."
        shown = run_shell(demo.command("queue show ").replace(" JOB", f" {job}"))
        assert shown.returncode == 0, shown.stderr
        assert f"job          {job}" in shown.stdout
        # 2 from the demo's own round, 3 reports and 1 inbound fax from the pasted commands.
        messages = wait_for_mails(tmp_path / "demo" / "maildir" / "new", 6)
        subjects = Counter(str(m["Subject"]).strip().split(" (Re:")[0] for m in messages)
        assert subjects["Fax to +1 201-555-0123 delivered, 1 page"] == 3, subjects
        assert subjects["Fax to +1 201-555-0166 failed: far end is not able to receive"] == 1, (
            subjects
        )
        assert subjects["Fax from +1 201-555-0142, 1 page"] == 2, subjects
        sample_report = next(m for m in messages if "fax-gateway demo" in str(m["Subject"]))
        assert sample_report["In-Reply-To"], "the sample report is threaded under the sample"
    finally:
        code = demo.stop()
    assert code == 0, demo.lines
    assert "stopping..." in demo.lines


def test_demo_config_is_valid(tmp_path: Path) -> None:
    """The configuration the demo writes loads (the queue tools read it with --config)."""
    from gateway.config import load_config
    from gateway.sandbox.demo import DemoPorts, demo_config_text

    text = demo_config_text(tmp_path, DemoPorts(), "http://127.0.0.1:8099/api/v1", "key-12345")
    (tmp_path / "gateway.toml").write_text(text)
    config = load_config(tmp_path / "gateway.toml", env={})
    assert config.relay.backend == "maildir"
    assert config.fax.number_check == "possible"


def test_send_file_goes_through_the_pipeline(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]],
    sandbox: Sandbox,
    relay_server: CapturingRelay,
    processes: list[GatewayProcess],
    tmp_path: Path,
) -> None:
    """`fax-gateway send --to N FILE --sender A` queues the file like mail; A gets the report."""
    path, _ = daemon_config()
    process = GatewayProcess(path)
    processes.append(process)
    process.wait_for("daemon.ready")
    document = tmp_path / "letter.pdf"
    document.write_bytes(samples.pdf(2))
    result = run_cli(
        "send",
        "--config",
        str(path),
        "--to",
        "2015550123",
        "--sender",
        "bob@example.com",
        str(document),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("queued as J")
    [report] = relay_server.wait_for_sync(1, timeout=30)
    assert list(report.rcpt_tos) == ["bob@example.com"]
    assert "delivered, 2 pages" in str(report.message["Subject"])
    [fax] = [f for f in sandbox.faxes() if f["direction"] == "outbound"]
    assert fax["to"] == "12015550123"
    assert process.terminate() == 0


def test_send_file_refuses_what_cannot_be_faxed(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    """A file that is no fax document is refused before anything is sent, with exit 2."""
    path, _ = daemon_config()
    notes = tmp_path / "archive.bin"
    notes.write_bytes(b"\x00\x01 no fax document")
    result = run_cli(
        "send",
        "--config",
        str(path),
        "--to",
        "2015550123",
        "--sender",
        "bob@example.com",
        str(notes),
    )
    assert result.returncode == 2
    assert "not a PDF, TIFF, PNG, JPEG or text file" in result.stderr


def test_failing_dependencies_are_reported_and_mail_still_queues(
    daemon_config: Callable[..., tuple[Path, dict[str, Any]]], processes: list[GatewayProcess]
) -> None:
    """A rejected API key and a dead relay are named at start; mail is still accepted (250)."""
    path, data = daemon_config(
        {
            "voxtelesys": {"api_key": "not-the-sandbox-key"},
            "relay": {"port": free_port()},
        }
    )
    process = GatewayProcess(path)
    processes.append(process)
    process.wait_for("daemon.ready")
    carrier = process.wait_for("daemon.dependency_failing", dependency="carrier")
    relay = process.wait_for("daemon.dependency_failing", dependency="relay")
    assert "not-the-sandbox-key" not in json.dumps(process.lines)
    assert carrier["problem"] and relay["problem"]
    assert submit(smtp_port(data), ["+12015550123"], samples.pdf(1)) is not None
    assert process.terminate() == 0
