"""`fax-gateway sandbox`: run the sandbox carrier; `fax-gateway sandbox inbound`: send it a fax.

The sandbox stands in for the Voxtelesys Fax API on this machine, so the gateway can be tried
without an account: point `voxtelesys.base_url` at the printed API URL and use the printed key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gateway.carrier.faxerrors import describe
from gateway.cli import UserError
from gateway.sandbox import (
    API_PREFIX,
    CONTROL_PREFIX,
    DEFAULT_API_KEY,
    DEFAULT_LISTEN,
    DEFAULT_OUTCOMES,
    SandboxServer,
    SandboxSettings,
)


def _scripted_help() -> str:
    lines = ["scripted numbers (every other number is delivered):"]
    for number, code in DEFAULT_OUTCOMES.items():
        lines.append(f"  {number}  fails with {code}: {describe(code).description}")
    lines.append("")
    lines.append(f"control API: {CONTROL_PREFIX} (see gateway/sandbox/control.py)")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local stand-in for the Voxtelesys Fax API",
        description=(
            "Run the sandbox carrier: the documented Voxtelesys Fax API (routes, auth,\n"
            "errors, pagination, webhooks) on this machine, with scripted outcomes and a\n"
            "control API. Stop it with Ctrl-C."
        ),
        epilog=_scripted_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        metavar="KEY",
        help=f"bearer key the API accepts (default {DEFAULT_API_KEY!r})",
    )
    parser.add_argument("--webhook-url", metavar="URL", help="where fax webhooks are sent")
    parser.add_argument(
        "--webhook-method",
        choices=["POST", "GET"],
        default="POST",
        help="POST with a JSON body (default) or GET with query parameters",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between the steps queued, delivering, final (default 2)",
    )
    parser.add_argument(
        "--page-size", type=int, default=20, metavar="N", help="faxes per list page (default 20)"
    )
    parser.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="NUMBER=CODE",
        help="make faxes to NUMBER (E.164) fail with fax error CODE; repeatable",
    )
    parser.set_defaults(run=run)

    actions = parser.add_subparsers(dest="sandbox_action", metavar="ACTION")
    inbound = actions.add_parser(
        "inbound",
        help="make an inbound fax arrive at a running sandbox",
        description=(
            "Deliver FILE (PDF, PNG, JPEG or TIFF) as an inbound fax to a running sandbox; it "
            "serves the file at a media URL and sends the inbound webhook."
        ),
    )
    inbound.add_argument(
        "--sandbox-url",
        default=f"http://{DEFAULT_LISTEN}",
        metavar="URL",
        help=f"the sandbox's address (default http://{DEFAULT_LISTEN})",
    )
    inbound.add_argument("--to", required=True, metavar="NUMBER", help="number called")
    inbound.add_argument(
        "--from", dest="from_", required=True, metavar="NUMBER", help="number calling"
    )
    inbound.add_argument("file", type=Path, metavar="FILE", help="the document received")
    inbound.set_defaults(run=run_inbound)


def run(args: argparse.Namespace) -> int:
    host, port = _address(args.listen)
    outcomes = dict(DEFAULT_OUTCOMES)
    for item in args.fail:
        number, sep, code = item.partition("=")
        number = number.strip()
        if not sep or not code.strip().isdigit() or not number.startswith("+"):
            raise UserError(f"--fail {item!r}: expected NUMBER=CODE, e.g. +12015550199=5148")
        outcomes[number] = int(code)
    try:
        settings = SandboxSettings(
            api_key=args.api_key,
            webhook_url=args.webhook_url,
            webhook_method=args.webhook_method,
            delay=args.delay,
            page_size=args.page_size,
            outcomes=outcomes,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return asyncio.run(_serve(settings, host, port))


async def _serve(settings: SandboxSettings, host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    server = SandboxServer(settings, host, port)
    try:
        await server.start()
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    webhook = (
        f"{settings.webhook_method} {settings.webhook_url}"
        if settings.webhook_url
        else "none (use --webhook-url)"
    )
    lines = [
        f"sandbox carrier listening on {server.root_url}",
        f"  voxtelesys.base_url = {server.base_url}",
        f"  voxtelesys.api_key  = {settings.api_key}",
        f"  control API         : {server.control_url}",
        f"  webhooks            : {webhook}",
    ]
    for number, code in settings.outcomes.items():
        lines.append(f"  {number} fails with {code} ({describe(code).description})")
    print("\n".join(lines), flush=True)
    await stopping.wait()
    await server.stop()
    return 0


def run_inbound(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise UserError(f"{args.file}: {exc.strerror or exc}") from None
    root = _root_url(args.sandbox_url)
    query = urllib.parse.urlencode({"to": args.to, "from": args.from_})
    request = urllib.request.Request(
        f"{root}{CONTROL_PREFIX}/inbound?{query}", data=data, method="POST"
    )
    request.add_header("Content-Type", "application/octet-stream")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            fax = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        exc.close()
        raise UserError(f"the sandbox refused the fax: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach the sandbox at {root}: {reason}") from None
    pages = fax.get("document", {}).get("pages")
    print(
        f"inbound fax {fax['id']} from +{fax['from']} to +{fax['to']}, {pages} page(s); "
        f"media at {fax['links'][0]['media']}"
    )
    return 0


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def _root_url(url: str) -> str:
    """The sandbox's root from its root, API or control URL."""
    root = url.strip().rstrip("/")
    for suffix in (API_PREFIX, CONTROL_PREFIX):
        root = root.removesuffix(suffix)
    parts = urllib.parse.urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--sandbox-url {url!r} is not an http(s) URL")
    return root
