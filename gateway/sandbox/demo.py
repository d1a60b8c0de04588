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
import email.utils
import json
import secrets
import shlex
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

DEMO_DOMAIN = "fax.local"
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
domain = {q(DEMO_DOMAIN)}
hostname = "fax-gateway.sandbox.demo"

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
# Outside the fax domain, so that a reply to a report does not come back to the gateway.
from_address = "fax-gateway@example.com"

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
    message["To"] = fax_address(SAMPLE_FAX_TO)
    message["Subject"] = "Sample fax from the fax-gateway demo"
    # A mail client gives every message an id; the delivery report is threaded under it.
    message["Message-ID"] = email.utils.make_msgid(domain="example.com")
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
            self.say(f"  configuration, for --config: {self.config_path}")
            self.say()
            arrived = await self._sample_round(sandbox)
            if not await self._wait_for_mail(arrived, wait_seconds):
                self.say(
                    f"The sample mails did not arrive within {wait_seconds:g} s; "
                    f"see what happened in {self.base / 'gateway.log'}"
                )
                return 1
            self._instructions(sandbox)
            if once:
                self.say("(--once: the demo stops now; run it without --once to try these)")
            else:
                self.say("Press Ctrl-C to stop.")
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
        for line in instructions(
            command=_command(),
            smtp_port=self.ports.smtp,
            sandbox_url=sandbox.root_url,
            sample=self.base / "sample.pdf",
            config_path=self.config_path,
            maildir_new=self.maildir_new,
        ):
            self.say(line)


def fax_address(number: str) -> str:
    """The address that faxes `number` through the demo gateway: digits @ the demo's domain."""
    return f"{number.lstrip('+')}@{DEMO_DOMAIN}"


def instructions(
    *,
    command: str,
    smtp_port: int,
    sandbox_url: str,
    sample: Path,
    config_path: Path,
    maildir_new: Path,
) -> list[str]:
    """What the user can try next, as lines ready to paste into a shell."""
    to = fax_address(SAMPLE_FAX_TO)
    config = f"--config {shlex.quote(str(config_path))}"
    document = shlex.quote(str(sample))
    # Python string literals in double quotes, the whole program in the shell's single quotes:
    # any path survives the paste.
    program = "; ".join(
        [
            "import smtplib",
            "from email.message import EmailMessage as M",
            "m = M()",
            f'm["From"] = "{SAMPLE_SENDER}"',
            f'm["To"] = "{to}"',
            'm["Subject"] = "Hello"',
            'm.set_content("See attached.")',
            f'm.add_attachment(open({json.dumps(str(sample))}, "rb").read(), "application", "pdf",'
            ' filename="sample.pdf")',
            f'smtplib.SMTP("127.0.0.1", {smtp_port}).send_message(m)',
            'print("queued")',
        ]
    )
    lines = [
        f"Send a fax of your own (SMTP on 127.0.0.1:{smtp_port}, domain {DEMO_DOMAIN};"
        " swaks: apt install swaks):",
        # --suppress-data: the dialogue stays readable instead of pages of base64.
        f"  swaks --server 127.0.0.1:{smtp_port} --from {SAMPLE_SENDER} --to {to}"
        f" --attach {shlex.quote('@' + str(sample))} --suppress-data",
        f"  python3 -c {shlex.quote(program)}",
        f"  {command} send {config} --to {SAMPLE_FAX_TO} --sender {SAMPLE_SENDER} {document}",
        "",
        "Addresses that fail in the sandbox (every other number is delivered):",
    ]
    for number, code in DEFAULT_OUTCOMES.items():
        reason = OUTCOME_TEXT.get(code, "")
        lines.append(f"  {fax_address(number)}  error {code}: {reason}".rstrip())
    lines += [
        "",
        "Make a fax arrive:",
        f"  {command} sandbox inbound --sandbox-url {sandbox_url}"
        f" --to {INBOUND_NUMBER} --from {INBOUND_CALLER} {document}",
        "",
        "Look at the queue (JOB is an id from the list or a 'queued as' reply),"
        " and at the carrier's faxes:",
        f"  {command} queue list {config}",
        f"  {command} queue show {config} JOB",
        f"  {command} list {config}",
        f"Reports and inbound faxes land in {maildir_new}/",
        "",
    ]
    return lines


def _command() -> str:
    """How the user runs this fax-gateway: by name when PATH finds this very one (not another
    install), else by its venv path, relative to the current directory when inside it."""
    script = Path(sys.executable).parent / "fax-gateway"
    found = shutil.which("fax-gateway")
    if found is not None and (not script.exists() or Path(found).samefile(script)):
        return "fax-gateway"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


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
