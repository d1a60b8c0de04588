"""`fax-gateway send --to NUMBER FILE | --url URL`: send a fax from the command line.

Pipeline mode (FILE): the file is mailed to the running gateway's own SMTP server, exactly as
a mail client would, so it is spooled, stored, submitted and reported like any fax; `--sender`
receives the delivery report. Direct mode (--url): the document is already online at a URL
the carrier can fetch, and the gateway's queue, storage and reports are bypassed; it is for
trying an account and checking numbers. The destination goes through the same number parsing
and toll-fraud rules as mail does in both.

With --wait the command asks the carrier until the fax is final and exits 0 when it was
delivered, 1 when it failed or was still pending at the end of the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import json
import re
import smtplib
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

from gateway.carrier import CarrierFax, Outcome, VoxtelesysClient
from gateway.cli import UserError, add_config_argument, config_from_args
from gateway.commands.status import CarrierUnreachable, describe_fax, run_with_client
from gateway.config import Config
from gateway.document.kinds import OFFICE_TYPES, convertible_type, sniff
from gateway.numbers import NumberError, parse_fax_number, pretty
from gateway.smtp.policy import RelayPolicy

# Asking the carrier while waiting: start quick, settle at a polite interval.
_POLL_FIRST = 0.5
_POLL_MAX = 10.0
_SMTP_PREFIX = re.compile(r"^\d{3} \d\.\d{1,3}\.\d{1,3} ")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "send",
        help="send a fax of FILE through the gateway, or of a URL directly via the API",
        description=(
            "Send FILE (PDF, PNG, JPEG or TIFF) through the running gateway's SMTP server, "
            "queued and reported like mail; or send the document at --url directly through "
            "the carrier API with the configured key."
        ),
    )
    parser.add_argument("--to", required=True, metavar="NUMBER", help="fax number to send to")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, metavar="FILE", help="document to fax")
    source.add_argument("--url", help="public URL of a document the carrier downloads (direct)")
    parser.add_argument(
        "--sender",
        metavar="ADDRESS",
        help="with FILE: the envelope sender, who receives the delivery report (required)",
    )
    parser.add_argument("--subject", default="", help="with FILE: subject of the fax mail")
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="NUMBER",
        help="number to send from (default: voxtelesys.from_number)",
    )
    parser.add_argument(
        "--attempts",
        type=int,
        choices=range(1, 11),
        metavar="N",
        help="dialing attempts the carrier makes (default: voxtelesys.attempts)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait until the fax is delivered or failed"
    )
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=600.0,
        metavar="S",
        help="give up waiting after S seconds (default 600)",
    )
    parser.add_argument("--json", action="store_true", help="print the fax as JSON")
    add_config_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    to = destination(args.to, config)
    if args.file is not None:
        if not args.sender:
            raise UserError("--sender ADDRESS is needed with FILE: it receives the report")
        job_id = pipeline_send(config, to, args.file, args.sender, args.subject)
        print(f"queued as {job_id}: {args.file.name} to {pretty(to)}; report to {args.sender}")
        return 0
    from_ = config.voxtelesys.from_number
    if args.from_:
        try:
            from_ = parse_fax_number(args.from_, config.smtp.default_country)
        except NumberError as exc:
            raise UserError(f"--from: {exc}") from None
    url = str(args.url).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--url: {url!r} is not an http(s) URL the carrier can download")
    attempts = args.attempts or config.voxtelesys.attempts

    async def action(client: VoxtelesysClient) -> CarrierFax:
        return await direct_send(
            client,
            config,
            to=to,
            from_=from_,
            url=url,
            attempts=attempts,
            wait_seconds=args.wait_seconds if args.wait else None,
        )

    try:
        fax = run_with_client(config, action)
    except CarrierUnreachable as exc:
        print(f"fax-gateway: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(fax.to_dict(), indent=2))
    elif args.wait:
        print(describe_fax(fax, config))
    else:
        print(f"fax {fax.id} {fax.status}: to {pretty(to)} from {pretty(from_)}")
    if not args.wait:
        return 0
    return 0 if fax.outcome(config.voxtelesys.success_statuses) is Outcome.SUCCEEDED else 1


def pipeline_send(config: Config, to: str, path: Path, sender: str, subject: str) -> str:
    """Mail `path` to <number>@<smtp.domain> at the gateway's SMTP listener; the job id."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    # The bytes decide for the faxable kinds; text and office files go by their name, as the
    # gateway treats attachments (gateway/document/kinds.py).
    content_type = sniff(data) or convertible_type(None, path.name)
    if content_type is None:
        raise UserError(f"{path}: not a PDF, TIFF, PNG, JPEG or text file")
    if content_type in OFFICE_TYPES and not config.documents.convert_office:
        raise UserError(f"{path}: office files are faxed only with documents.convert_office = true")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"{to.lstrip('+')}@{config.smtp.domain}"
    message["Subject"] = subject or path.name
    message.set_content(f"Sent with fax-gateway send: {path.name}\n")
    maintype, subtype = content_type.split("/")
    message.add_attachment(data, maintype, subtype, filename=path.name)
    host = config.smtp.listen.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with smtplib.SMTP(host, config.smtp.listen.port, timeout=60) as client:
            client.ehlo()
            client.mail(sender)
            code, reply = client.rcpt(str(message["To"]))
            if code != 250:
                raise UserError(f"the gateway refused {pretty(to)}: {reply.decode()}")
            code, reply = client.data(message.as_bytes(policy=email.policy.SMTP))
    except OSError as exc:
        raise UserError(
            f"cannot reach the gateway's SMTP server at {config.smtp.listen}: {exc}"
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise UserError(f"the gateway refused the fax: {exc.smtp_error.decode()}") from None
    if code != 250:
        raise UserError(f"the gateway refused the fax: {reply.decode()}")
    return reply.decode().rsplit(" ", 1)[-1]


def destination(text: str, config: Config) -> str:
    """The E.164 number for --to, under the same rules as a mail recipient."""
    try:
        e164 = parse_fax_number(
            text, config.smtp.default_country, strict=config.fax.number_check == "strict"
        )
    except NumberError as exc:
        raise UserError(f"--to: {exc}") from None
    refusal = RelayPolicy(config, auth_available=False).check_destination(e164)
    if refusal is not None:
        raise UserError(f"--to: {_SMTP_PREFIX.sub('', refusal.reply)}")
    return e164


async def direct_send(
    client: VoxtelesysClient,
    config: Config,
    *,
    to: str,
    from_: str,
    url: str,
    attempts: int,
    wait_seconds: float | None = None,
) -> CarrierFax:
    """POST the fax; with `wait_seconds`, ask again until it is final or the time is up."""
    fax = await client.send_fax(to, from_, url, attempts)
    if wait_seconds is None:
        return fax
    deadline = time.monotonic() + wait_seconds
    interval = _POLL_FIRST
    successes = config.voxtelesys.success_statuses
    while fax.outcome(successes) is Outcome.PENDING:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(
                f"fax-gateway: fax {fax.id} is still {fax.status!r} after {wait_seconds:g} s",
                file=sys.stderr,
            )
            break
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 2, _POLL_MAX)
        fax = await client.get_fax(fax.id)
    return fax
