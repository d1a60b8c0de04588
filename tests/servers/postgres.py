"""The `postgres_server` fixture: a real PostgreSQL server for the session, and the
`store_backend` fixture that runs a store test once on SQLite and once on PostgreSQL.

The server is the system's (Debian package `postgresql`: initdb and pg_ctl under
/usr/lib/postgresql/<version>/bin, or $FAXGW_PG_BIN), initialised in a temporary directory and
listening on 127.0.0.1 on a free port, with password authentication (scram) for one user, so a
DSN with a password is really checked. PostgreSQL refuses to run as root: as root the server runs
as the `postgres` user (or `nobody`), its directory owned by that user. Durability settings are
off (fsync, synchronous_commit): the tests kill gateways, never this server's machine.

Each test gets its own schema (`search_path` in its DSN), dropped afterwards, so tests share
the server but never a table. A test module opts in to both backends with
`pytestmark = pytest.mark.usefixtures("store_backend")`; `config_data` (tests/conftest.py)
then names the backend's store, and `store_backend.open(config)` / `.connect(tmp_path)` open it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
USER = "faxgw"
DATABASE = "faxgw"
STARTUP_TIMEOUT_SECONDS = 60.0
_PACKAGE = "postgresql"


def _bin_dir() -> Path | None:
    configured = os.environ.get("FAXGW_PG_BIN")
    candidates = [configured] if configured else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: ourselves unless we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither user postgres nor nobody exists")


@dataclasses.dataclass
class PostgresServer:
    """A running test PostgreSQL: where it listens, as whom, and how to stop and start it."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    user: pwd.struct_passwd | None
    # fsync and synchronous commit on (a benchmark's server), or off (the tests').
    durable: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def dsn(self, schema: str | None = None, *, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        dsn = f"postgresql://{USER}{secret}@{HOST}:{self.port}/{DATABASE}"
        if schema is not None:
            dsn += f"?options=-csearch_path%3D{schema}"
        return dsn

    def _command(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--clear-groups",
            *args,
        ]

    def _run(self, *args: str, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        result = subprocess.run(
            self._command(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> None:
        options = (
            f"-c listen_addresses={HOST} -c port={self.port} -c unix_socket_directories=''"
            " -c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(int(STARTUP_TIMEOUT_SECONDS)),
            "start",
        )

    def stop(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"
        )

    def connect(self, schema: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(schema), autocommit=True, connect_timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    bin_dir: Path, *, durable: bool = False, under: Path | None = None
) -> PostgresServer:
    """A new server in a temporary directory (under `under`, else $TMPDIR), running."""
    from tests.conftest import free_port

    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="faxgw-pg-", dir=under))
    password = secrets.token_hex(12)
    server = PostgresServer(bin_dir, root, free_port(), password, user, durable)
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    server._run(
        str(bin_dir / "initdb"),
        "-D",
        str(server.data_dir),
        "-U",
        USER,
        f"--pwfile={pwfile}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
    )
    server.start()
    import psycopg

    maintenance = server.dsn().rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (skipped, loudly, without the binaries)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip(
            f"PostgreSQL server binaries not found (install the Debian package {_PACKAGE!r},"
            " or set FAXGW_PG_BIN to the directory of initdb and pg_ctl)"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]' psycopg-pool)")
    started = time.monotonic()
    server = start_server(bin_dir)
    server.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_schema(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty schema of the test server for one test; dropped afterwards."""
    schema = f"t_{secrets.token_hex(6)}"
    with contextlib.closing(postgres_server.connect()) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema
    with contextlib.suppress(Exception), contextlib.closing(postgres_server.connect()) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclasses.dataclass
class StoreBackend:
    """One of the store's backends, as a test sees it."""

    name: str
    dsn: str | None = None
    server: PostgresServer | None = None
    _opened: list[Any] = dataclasses.field(default_factory=list)

    def config_override(self) -> dict[str, Any]:
        if self.name == "sqlite":
            return {}
        return {"store": {"backend": "postgresql", "dsn": self.dsn}}

    async def open(self, config: Any) -> Any:
        """The gateway's store for `config`, opened (closed at the end of the test)."""
        from gateway.store.backend import create_database

        db = await create_database(config).open()
        self._opened.append(db)
        return db

    def database(self, tmp_path: Path) -> Any:
        """A Database (not opened) of this test's store: the file under `tmp_path`, or the
        test's schema; every call opens the same store (a restart, a second process)."""
        if self.name == "sqlite":
            from gateway.store.db import Database

            return Database(tmp_path / "store.db")
        from gateway.store.postgres import PostgresDatabase

        assert self.dsn is not None
        return PostgresDatabase(self.dsn)

    def connect(self, tmp_path: Path) -> Any:
        """A connection as the repository functions get one, to this test's store (migrated);
        closed at the end of the test if the test does not close it."""
        if self.name == "sqlite":
            from gateway.store.db import connect

            conn = connect(tmp_path / "store.db")
            self._opened.append(conn)
            return conn
        db = self.database(tmp_path).open_sync()
        self._opened.append(db)
        return db.connection()

    def close(self) -> None:
        for item in reversed(self._opened):
            with contextlib.suppress(Exception):
                item.close()
        self._opened.clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    """The test runs once with each store backend."""
    if request.param == "sqlite":
        backend = StoreBackend("sqlite")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        schema: str = request.getfixturevalue("postgres_schema")
        backend = StoreBackend("postgresql", server.dsn(schema), server)
    yield backend
    backend.close()
