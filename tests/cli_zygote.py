"""`python -m gateway ARGS` in a real process, without a second of imports per run.

A fresh interpreter spends about a second (two on a loaded machine) importing the gateway
before a command does anything; the suite runs commands a few hundred times. The zygote is one
process that imports the gateway once and then forks a child per command: the child puts the
run's files on its stdin, stdout and stderr, takes the run's environment, working directory and
argv, and runs the `gateway` package as `__main__`, as `python -m gateway` does; it exits as that
interpreter would (SystemExit's code, 1 and a traceback for an uncaught exception, -N for a
signal). Only the imported modules are shared, never a file, a connection or a thread; the
modules that read the environment when imported (READ_AT_IMPORT) are imported again in each
child, from the run's environment, not the one the zygote started with.

`Zygote` is the test side (tests/conftest.py run_cli); `python -m tests.cli_zygote REQ RESP`
is the process, reading requests and writing answers on the two pipe fds it was given.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The gateway's modules whose globals are taken from os.environ at import (FAXGW_FAILPOINT):
# the zygote's copies were read from whatever environment it started in (the first run_cli's
# test, maybe with a monkeypatched variable), so a child reloads them from its run's.
READ_AT_IMPORT = ("gateway.failpoints",)


class Zygote:
    """The forking process and one command at a time through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests = -1
        self._answers = -1
        self._buffer = b""

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_zygote", str(req_r), str(resp_w)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(req_r, resp_w),
            cwd=ROOT,
            env=env,
        )
        os.close(req_r)
        os.close(resp_w)
        self._requests, self._answers = req_w, resp_r

    def run(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        timeout: float,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """What subprocess.run([python, -m, gateway, *args], capture_output=True, text=True,
        env=env, cwd=cwd, timeout=timeout, input=input) returns (and raises on a timeout)."""
        with self._lock, tempfile.TemporaryDirectory(prefix="faxgw-cli-") as tmp:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            files = {name: Path(tmp) / name for name in ("stdin", "stdout", "stderr")}
            for name, path in files.items():
                path.write_text(input or "" if name == "stdin" else "")
            request = {
                "args": args,
                "env": env,
                "cwd": str(cwd),
                **{name: str(path) for name, path in files.items()},
            }
            os.write(self._requests, json.dumps(request).encode() + b"\n")
            deadline = time.monotonic() + timeout
            pid: int | None = None
            try:
                pid = int(self._answer(deadline + 30, "started"))
                status = int(self._answer(deadline, "exited"))
            except BaseException as exc:
                # Whatever ended the wait (the run's timeout, pytest-timeout's alarm, ^C, the
                # zygote failing): the command is killed and its answers read, so the next run
                # reads its own; before, they were read as the next run's, which waited for a
                # command still running (a `serve` outlived the session, orphaned).
                self._abandon(pid)
                if not isinstance(exc, TimeoutError):
                    raise
                raise subprocess.TimeoutExpired(
                    ["python", "-m", "gateway", *args],
                    timeout,
                    files["stdout"].read_text(),
                    files["stderr"].read_text(),
                ) from None
            return subprocess.CompletedProcess(
                ["python", "-m", "gateway", *args],
                os.waitstatus_to_exitcode(status),
                files["stdout"].read_text(),
                files["stderr"].read_text(),
            )

    def _abandon(self, pid: int | None) -> None:
        """The command of a run given up on killed and its answers read (the zygote still
        waits for it, so its pid is not reused yet); failing that, the zygote and its child
        killed, and the next run starts a new zygote."""
        try:
            if pid is None:
                pid = int(self._answer(time.monotonic() + 30, "started"))
            os.kill(pid, signal.SIGKILL)
            self._answer(time.monotonic() + 30, "exited")
        except BaseException:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._kill()
            raise

    def _kill(self) -> None:
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        os.close(self._requests)
        os.close(self._answers)
        self._proc, self._buffer = None, b""

    def _answer(self, deadline: float, word: str) -> str:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._answers], [], [], remaining)[0]:
                raise TimeoutError(f"the CLI zygote did not answer {word!r} in time")
            chunk = os.read(self._answers, 4096)
            if not chunk:
                raise RuntimeError("the CLI zygote exited (its stderr is in the test output)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        said, value = line.decode().split(" ", 1)
        assert said == word, line
        return value

    def close(self) -> None:
        if self._proc is None:
            return
        os.close(self._requests)  # end of requests: the zygote exits
        os.close(self._answers)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def _serve(requests: int, answers: int) -> bool:
    """Fork a child per request; True in a child (which then runs its command)."""
    from gateway.cli import build_parser

    build_parser()  # imports every command's module: the imports every child shares
    # Out of the collector's sight: a child's collections (and its exit's) skip the shared
    # modules' objects, so they neither take time nor copy those pages (0.5 s -> 0.1 s a run).
    gc.freeze()

    reader = os.fdopen(requests, "rb")
    for line in reader:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            reader.close()
            os.close(answers)
            _become(request)
            return True
        os.write(answers, f"started {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(answers, f"exited {status}\n".encode())
    return False


def _become(request: dict[str, object]) -> None:
    """This child as the command's own process: its files on fds 0-2 (the interpreter's
    sys.stdin/stdout/stderr objects are on those fds, untouched since it started), its
    environment, working directory and argv."""
    for fd, name, mode in (
        (0, "stdin", os.O_RDONLY),
        (1, "stdout", os.O_WRONLY),
        (2, "stderr", os.O_WRONLY),
    ):
        opened = os.open(str(request[name]), mode)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.clear()
    os.environ.update(request["env"])  # type: ignore[arg-type]
    os.chdir(str(request["cwd"]))
    sys.argv = ["-m", *request["args"]]  # type: ignore[misc]
    for name in READ_AT_IMPORT:
        # As at the import of a fresh interpreter: a bad value raises here, and the child ends
        # with the traceback on stderr and status 1, as `python -m gateway` would.
        if name in sys.modules:
            importlib.reload(sys.modules[name])


if __name__ == "__main__":
    if _serve(int(sys.argv[1]), int(sys.argv[2])):
        # The child: as `python -m gateway`; its SystemExit or exception ends this interpreter.
        runpy.run_module("gateway", run_name="__main__", alter_sys=True)
