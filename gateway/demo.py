"""`fax-gateway demo`: the whole product on loopback, with no configuration and no account.

It starts the sandbox carrier and a gateway (local storage, SQLite, a Maildir relay) under
./var/demo/, sends one sample fax and makes one sample fax arrive, and waits until both emails
(the delivery report and the inbound fax) are in the Maildir. Then it tells the user how to
send faxes of their own, and runs until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import secrets
import shutil
import signal
import socket
import sys
import time
import tomllib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TextIO

import aiohttp
import aiosmtplib

from gateway import log
from gateway.config import config_from_dict
from gateway.daemon import Gateway
from gateway.document.cover import render_text_pages
from gateway.numbers import pretty
from gateway.sandbox.app import SandboxServer
from gateway.sandbox.settings import CONTROL_PREFIX, DEFAULT_OUTCOMES, SandboxSettings

SAMPLE_SENDER = "you@example.com"
SAMPLE_FAX_TO = "+12015550123"
INBOUND_NUMBER = "+12015550101"  # routed to the demo's "sales" mailbox
INBOUND_CALLER = "+12015550142"
OUTCOME_TEXT = {
    5109: "far end is not able to receive",
    5121: "no response after sending a page",
    5108: "far end is not compatible",
}


@dataclass(frozen=True)
class DemoPorts:
    smtp: int = 2525
    http: int = 8025
    sandbox: int = 8099


class DemoError(Exception):
    """The demo cannot start (a port in use, say); str() tells the user what to do."""


def demo_config_text(base: Path, ports: DemoPorts, sandbox_url: str, api_key: str) -> str:
    """The embedded default as TOML: everything on loopback, short retry delays for a demo.

    Written to var/demo/gateway.toml too, so the queue tools work on the demo's data.
    """
    q = json.dumps  # a JSON string is a valid TOML basic string
    return f"""# Written by `fax-gateway demo`; rewritten on every start.
[smtp]
listen = {q(f"127.0.0.1:{ports.smtp}")}
domain = "fax.local"
hostname = "fax-gateway.demo"

[http]
listen = {q(f"127.0.0.1:{ports.http}")}
public_url = {q(f"http://127.0.0.1:{ports.http}")}
webhook_token = {q(secrets.token_urlsafe(24))}

[voxtelesys]
base_url = {q(sandbox_url)}
api_key = {q(api_key)}
from_number = "+12015550100"

[storage]
backend = "local"

[relay]
backend = "maildir"
maildir = {q(str(base / "maildir"))}
from_address = "fax-gateway@fax.local"

[inbound]
default_recipients = ["office@example.com"]

[inbound.routes]
{q(INBOUND_NUMBER)} = ["sales@example.com"]

[data]
dir = {q(str(base / "data"))}

# The fictional 555 numbers of every fax tutorial are not assigned numbers: the demo accepts
# any number of the right length so that they work here.
[fax]
number_check = "possible"

[queue]
min_backoff_seconds = 2
max_backoff_seconds = 30
scan_interval_seconds = 5

[webhooks]
reconcile_after_seconds = 60
reconcile_interval_seconds = 30
"""


def _check_port(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(
                f"port {port} on 127.0.0.1 is in use (another demo running?); "
                "choose others with --smtp-port, --http-port and --sandbox-port"
            ) from None


def sample_document(title: str, lines: list[str]) -> bytes:
    text = "\n".join([title, "", *lines])
    return render_text_pages(text, paper="letter")


def sample_message(document: bytes) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SAMPLE_SENDER
    message["To"] = f"{SAMPLE_FAX_TO.lstrip('+')}@fax.local"
    message["Subject"] = "Sample fax from the fax-gateway demo"
    message.set_content("The attached PDF is faxed; a delivery report comes back by email.\n")
    message.add_attachment(document, "application", "pdf", filename="sample.pdf")
    return message


class Demo:
    def __init__(self, base: Path, ports: DemoPorts, out: TextIO) -> None:
        self.base = base
        self.ports = ports
        self.out = out
        self.maildir_new = base / "maildir" / "new"
        self.config_path = base / "gateway.toml"

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    async def run(self, *, once: bool, wait_seconds: float = 90.0) -> int:
        for port in (self.ports.smtp, self.ports.http, self.ports.sandbox):
            _check_port(port)
        if self.base.exists():
            shutil.rmtree(self.base)  # a fresh demo each time: what arrives is this run's
        self.base.mkdir(parents=True)
        self.logfile = (self.base / "gateway.log").open("w")
        log.configure("info", stream=self.logfile, json=True)
        try:
            return await self._run(once=once, wait_seconds=wait_seconds)
        finally:
            self.logfile.close()

    async def _run(self, *, once: bool, wait_seconds: float) -> int:
        settings = SandboxSettings(delay=1.0)
        sandbox = SandboxServer(settings, port=self.ports.sandbox)
        await sandbox.start()
        text = demo_config_text(self.base, self.ports, sandbox.base_url, settings.api_key)
        self.config_path.write_text(text)
        config = config_from_dict(tomllib.loads(text), env={})
        token = config.http.webhook_token.get_secret_value()
        sandbox.state.update_settings(webhook_url=f"{config.http.public_url}/webhooks/fax/{token}")
        gateway = Gateway(config)
        await gateway.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        try:
            self.say("fax-gateway demo: sandbox carrier and gateway running on 127.0.0.1")
            self.say(f"  logs (JSON): {self.base / 'gateway.log'}")
            self.say()
            arrived = await self._sample_round(sandbox)
            if not await self._wait_for_mail(arrived, wait_seconds):
                self.say("The sample mails did not arrive in time; see the log above.")
                return 1
            self._instructions(sandbox)
            if not once:
                await stopping.wait()
                self.say("\nstopping...")
            return 0
        finally:
            await gateway.stop()
            await sandbox.stop()

    async def _sample_round(self, sandbox: SandboxServer) -> int:
        document = sample_document(
            "fax-gateway demo",
            [
                "This page went from an email, through the gateway's SMTP server,",
                "to the (sandbox) carrier, and back to you as a delivery report.",
            ],
        )
        (self.base / "sample.pdf").write_bytes(document)
        reply = await aiosmtplib.send(
            sample_message(document), hostname="127.0.0.1", port=self.ports.smtp, timeout=30
        )
        self.say(f"1. Sent a sample fax to {pretty(SAMPLE_FAX_TO)} by SMTP: {reply[1]}")
        inbound = sample_document(
            "Inbound fax",
            ["A fax sent to your number arrives as an email with the PDF attached."],
        )
        url = (
            f"{sandbox.control_url}/inbound?to={INBOUND_NUMBER.lstrip('+')}"
            f"&from={INBOUND_CALLER.lstrip('+')}"
        )
        async with aiohttp.ClientSession() as session, session.post(url, data=inbound) as answer:
            answer.raise_for_status()
        self.say(
            f"2. A sample fax from {pretty(INBOUND_CALLER)} is arriving at {pretty(INBOUND_NUMBER)}"
        )
        self.say("   waiting for both emails...")
        return 2

    async def _wait_for_mail(self, count: int, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            files = await asyncio.to_thread(self._mails)
            if len(files) >= count:
                self.say()
                self.say(f"Mail in {self.maildir_new}/:")
                for path in files:
                    subject, to, attachments = await asyncio.to_thread(_summary, path)
                    self.say(f"  To: {to}")
                    self.say(f"  Subject: {subject}")
                    self.say(f"  Attached: {', '.join(attachments) or '(nothing)'}")
                    self.say(f"  File: {path.name}")
                    self.say()
                return True
            await asyncio.sleep(0.2)  # polling a directory the gateway writes into
        return False

    def _mails(self) -> list[Path]:
        if not self.maildir_new.is_dir():
            return []
        return sorted(self.maildir_new.iterdir(), key=lambda p: p.stat().st_mtime)

    def _instructions(self, sandbox: SandboxServer) -> None:
        smtp = self.ports.smtp
        command = _command()
        sample = self.base / "sample.pdf"
        self.say(f"Send a fax of your own (SMTP on 127.0.0.1:{smtp}, domain fax.local):")
        self.say(
            f"  swaks --server 127.0.0.1:{smtp} --from {SAMPLE_SENDER}"
            f" --to 12015550123@fax.local --attach @{sample}"
        )
        self.say(
            '  python3 -c "import smtplib; from email.message import EmailMessage as M; m = M();'
            f" m['From'] = '{SAMPLE_SENDER}'; m['To'] = '12015550123@fax.local';"
            " m['Subject'] = 'Hello'; m.set_content('See attached.');"
            f" m.add_attachment(open('{sample}', 'rb').read(), 'application', 'pdf',"
            f" filename='sample.pdf'); smtplib.SMTP('127.0.0.1', {smtp}).send_message(m)\""
        )
        self.say("Numbers that fail in the sandbox:")
        for number, code in DEFAULT_OUTCOMES.items():
            self.say(f"  {pretty(number)}  error {code}: {OUTCOME_TEXT.get(code, '')}")
        self.say("Make a fax arrive:")
        self.say(
            f"  {command} sandbox inbound --sandbox-url {sandbox.root_url}"
            f" --to {INBOUND_NUMBER} --from {INBOUND_CALLER} {sample}"
        )
        self.say(f"See the queue: {command} queue list --config {self.config_path}")
        self.say(f"Reports and inbound faxes land in {self.maildir_new}/")
        self.say()
        self.say("Press Ctrl-C to stop.")


def _command() -> str:
    """How the user runs fax-gateway: by name when it is on PATH, else by its venv path."""
    if shutil.which("fax-gateway"):
        return "fax-gateway"
    script = Path(sys.executable).parent / "fax-gateway"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _summary(path: Path) -> tuple[str, str, list[str]]:
    with path.open("rb") as handle:
        message = email.message_from_binary_file(handle, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    names = [part.get_filename() or "" for part in message.iter_attachments()]
    return str(message["Subject"]), str(message["To"]), [n for n in names if n]


def run_demo(base: Path, ports: DemoPorts, *, once: bool, out: TextIO = sys.stdout) -> int:
    try:
        return asyncio.run(Demo(base, ports, out).run(once=once))
    except DemoError as exc:
        print(f"fax-gateway demo: {exc}", file=sys.stderr)
        return 2


__all__ = ["CONTROL_PREFIX", "DemoPorts", "run_demo"]
