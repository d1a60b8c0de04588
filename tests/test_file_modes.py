"""What the gateway keeps under data.dir is its own: files 0600, folders 0700, any umask."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.datadir import DataDir
from gateway.fsutil import write_atomic
from gateway.inbound.files import move_durably
from gateway.storage.local import LocalStorage
from gateway.storage.secret import load_or_create_secret
from gateway.store import Database
from gateway.store.spool import Spool
from tests import samples
from tests.helpers import CALLER, OUR_FAX_LINE, until
from tests.servers.gateway import GatewayFactory
from tests.servers.relay import CapturingRelay
from tests.servers.sandbox import Sandbox
from tests.test_email_to_fax import fax_mail, send


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of a login shell, which is what a gateway started by hand inherits."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of root and of everything below it, by path relative to root."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path) -> None:
    for name, mode in modes_under(root).items():
        expected = 0o700 if (root / name).is_dir() else 0o600
        assert mode == expected, f"{name} is {oct(mode)}, expected {oct(expected)}"


@pytest.mark.usefixtures("umask_022")
def test_each_write_path_creates_private_files(tmp_path: Path) -> None:
    """Store (with -wal/-shm), spool, documents, outbox, inbound, dead letters, media, secret."""
    data = DataDir(tmp_path / "data")
    db = Database(data.store).open_sync()
    try:
        db.run_sync(lambda conn: conn.execute("SELECT count(*) FROM jobs").fetchone())
        assert Path(f"{data.store}-wal").exists() and Path(f"{data.store}-shm").exists()
        Spool(data.spool).write("job-1", b"Subject: hi\r\n\r\nbody\r\n")
        write_atomic(data.documents / "job-1.pdf", samples.pdf(1))
        write_atomic(data.outbox / "1.eml", b"Subject: report\r\n\r\nbody\r\n")
        write_atomic(data.inbound / "000001-fax.pdf", samples.pdf(1))
        write_atomic(data.inbound / "000002-fax.pdf", samples.pdf(1))
        move_durably(data.inbound / "000002-fax.pdf", data.dead_letter)
        secret = load_or_create_secret(data.root)
        storage = LocalStorage(data.media, "http://127.0.0.1:8025", secret, 3600)
        asyncio.run(storage.put("job-1", samples.pdf(1), "application/pdf"))
        assert_private(data.root)
    finally:
        db.close()
    expected = {"store.db", "secret.key", "spool", "documents", "outbox", "inbound"}
    expected |= {"dead-letter", "media"}
    assert expected <= {p.name for p in data.root.iterdir()}


@pytest.mark.usefixtures("umask_022")
async def test_a_running_gateway_keeps_data_dir_private(
    gateway: GatewayFactory, sandbox: Sandbox, relay_server: CapturingRelay
) -> None:
    """A fax out held at the carrier, then its report and a fax in held by a relay that is down:
    at each point every file under data.dir is 0600 and every folder 0700."""
    # The carrier refuses the submission for now: the message stays in the spool, its document
    # in documents/ and media/.
    sandbox.fail_next(1000, status=500, method="POST", path="/api/v1/faxes")
    relay_server.go_down()  # the report and the inbound mail wait in the outbox
    # With the test queue's short delays, ten failed relay attempts take about a second and
    # would move the received fax from inbound/ to dead-letter/ before it is looked at.
    async with gateway({"inbound": {"max_attempts": 1000}}) as gw:
        data = DataDir(gw.config.data.dir)
        mail = fax_mail("12015550123@fax.local", (samples.pdf(1), "application/pdf", "a.pdf"))
        await send(gw, mail)

        async def held_at_carrier() -> bool:
            return len(sandbox.requests("/api/v1/faxes", "POST")) >= 2

        await until(held_at_carrier, seconds=30)
        names = set(modes_under(data.root))
        for wanted in ("store.db", "store.db-wal", "store.db-shm", "secret.key", "spool"):
            assert wanted in names
        for folder in ("spool/", "documents/", "media/"):
            assert any(name.startswith(folder) for name in names), folder
        assert_private(data.root)

        sandbox.clear_faults()
        sandbox.inbound(OUR_FAX_LINE, CALLER, samples.pdf(1))

        async def mail_waiting() -> bool:
            return data.outbox.is_dir() and len(list(data.outbox.iterdir())) >= 2

        await until(mail_waiting, seconds=30)
        names = set(modes_under(data.root))
        for folder in ("outbox/", "inbound/"):
            assert any(name.startswith(folder) for name in names), folder
        assert_private(data.root)


def test_a_world_readable_store_from_before_is_named(tmp_path: Path) -> None:
    """A store.db an earlier version left 0644 is opened as it is, with a warning that says so."""
    path = tmp_path / "store.db"
    Database(path).open_sync().close()
    path.chmod(0o644)
    with capture_logs() as logs:
        Database(path).open_sync().close()
    [warning] = [e for e in logs if e["event"] == "store.permissions"]
    assert warning["log_level"] == "warning" and warning["mode"] == "0o644"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not ours to change behind their back
