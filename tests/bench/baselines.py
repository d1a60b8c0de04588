"""The whole-daemon benchmarks' baselines, each a process of its own like the daemon.

`python -m tests.bench.baselines smtp` is a bare aiosmtpd that answers 250 to every message;
with `--durable DIR` it first writes each message to a file of its own in DIR and fsyncs the
file and the directory, in a thread, as any server that keeps mail across a crash must.
`python -m tests.bench.baselines http` is a bare aiohttp server that parses a JSON body and
answers 200 with a small JSON object. Each prints its port on the first line of its output.
`BaselineServer` starts one and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import ROOT, cli_env


class _Bare:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


class _Durable:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.numbers = itertools.count()

    def _write(self, data: bytes) -> None:
        path = self.directory / f"{os.getpid()}-{next(self.numbers)}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.to_thread(self._write, envelope.original_content or b"")
        return "250 2.0.0 OK"


async def _smtp(durable: Path | None) -> None:
    loop = asyncio.get_running_loop()
    handler = _Durable(durable) if durable is not None else _Bare()

    def make() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=30 * 1024 * 1024,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname="baseline.local",
        )

    server = await loop.create_server(make, "127.0.0.1", 0)
    await _serve(server.sockets[0].getsockname()[1])
    server.close()


async def _http() -> None:
    async def handle(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response({"result": "stored", "id": data.get("id")})

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await _serve(port)
    await runner.cleanup()


async def _serve(port: int) -> None:
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.baselines")
    parser.add_argument("kind", choices=("smtp", "http"))
    parser.add_argument("--durable", type=Path, help="write + fsync each message into DIR")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.kind == "smtp":
        asyncio.run(_smtp(args.durable))
    else:
        asyncio.run(_http())
    return 0


class BaselineServer:
    """One baseline in a subprocess; `port` once started."""

    def __init__(self, *arguments: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.baselines", *arguments],
            stdout=subprocess.PIPE,
            env=cli_env(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"baseline {arguments} did not start")
        self.port = int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> BaselineServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
