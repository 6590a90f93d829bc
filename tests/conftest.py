"""Fixtures: a real Mosquitto per test module, a migrated registry (SQLite, and PostgreSQL where it runs),
a telemetry store in a temporary directory."""

from __future__ import annotations

import gc
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from core.db import make_engine, migrate
from core.store.sqlite import SqliteStore
from devices.broker import BrokerConfig, MosquittoProcess, free_port
from devices.registry import Registry
from tests.pg_replica import PgPair
from tests.pg_replica import start_pair as start_pg_pair
from tests.pg_replica import stop_pair as stop_pg_pair
from tests.pg_replica import unavailable as pg_replica_unavailable

PG_ADMIN_URL = os.environ.get("LIANFANG_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1, all held bound while they are chosen (two free_port() calls in a row
    can return the same port, or one the other's successor)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pair(attempts: int = 50) -> int:
    """A free port whose successor is free too: the embedded broker's mqtt.port when mqtt.device_port is left to
    its default (port + 1, the devices' listener with device_identities: password_file). Prefer giving the device
    port explicitly (``port, device_port = free_ports(2)``); this is for tests that exercise the default."""
    for _ in range(attempts):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port with a free successor in {attempts} attempts")


@dataclass
class Broker:
    port: int
    directory: Path
    admin_password: str
    platform_username: str
    platform_password: str
    sim_password: str
    process: MosquittoProcess

    def restart(self, *, kill: bool = False) -> None:
        self.process.stop(kill=kill)
        self.process.start()


def _start_broker(directory: Path) -> Broker:
    cfg = BrokerConfig(
        directory=directory,
        port=free_port(),
        admin_password="test-admin-" + uuid.uuid4().hex,
        platform_password="test-platform-" + uuid.uuid4().hex,
        sim_password="test-sim-" + uuid.uuid4().hex,
    )
    proc = MosquittoProcess(cfg)
    proc.start()
    return Broker(
        cfg.port,
        directory,
        cfg.admin_password,
        cfg.platform_username,
        cfg.platform_password,
        cfg.sim_password or "",
        proc,
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Mosquitto with the project's generated config, on a free port, for one test."""
    b = _start_broker(tmp_path / "mosquitto")
    yield b
    b.process.stop()


def _pg_available() -> bool:
    try:
        with create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


PG_AVAILABLE = _pg_available()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty SQL database: SQLite, and PostgreSQL when it is reachable."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    if not PG_AVAILABLE:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = "lf_test_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    engine = make_engine(db_url)
    migrate(engine)
    yield Registry(engine)
    engine.dispose()


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry on SQLite only, for tests where the SQL backend does not matter."""
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    migrate(engine)
    yield Registry(engine)
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "telemetry.db")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=2)
    names = [t.name for t in leaked if t.is_alive()]
    assert not names, f"test leaked threads: {names}"


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    """A test that starts the service runtime freezes the heap and spaces full collections (core/gcpolicy.py); give
    both back afterwards."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.fixture(scope="module")
def pg_replica() -> Iterator[PgPair]:
    """A PostgreSQL 15 primary of our own and its streaming replica, on free ports (tests/pg_replica.py); skipped
    when Debian's PostgreSQL binaries are not installed. Module-scoped: tests create their own databases on it."""
    reason = pg_replica_unavailable()
    if reason is not None:
        pytest.skip(reason)
    pair = start_pg_pair()
    try:
        yield pair
    finally:
        stop_pg_pair(pair)
