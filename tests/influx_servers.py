"""The time-series servers of the InfluxDB tests, defined once: VictoriaMetrics (the write path, ``/api/v2/write``)
and InfluxDB 1.6 (the read path, InfluxQL on ``/query``), each a child process on free ports with a temporary data
directory, plus the SQL side store of the InfluxDB backend on a migrated database.

The fixtures are registered by ``tests/core/conftest.py`` and ``tests/dashboards/conftest.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from core.db import make_engine, migrate
from core.store.side import SqlSideStore
from devices.broker import free_port
from tests.helpers import wait_until

VM_BIN = shutil.which("victoria-metrics")
INFLUXD_BIN = shutil.which("influxd")


@dataclass
class Server:
    """A store server as a child process on a free port; ``stop``/``start`` keep its data directory."""

    argv: list[str]
    port: int
    directory: Path
    health: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=fh)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                return httpx.get(self.url + self.health, timeout=1).status_code < 300
            except httpx.HTTPError:
                return False

        wait_until(up, 30, 0.05, f"{self.argv[0]} answering on {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def start_victoria(directory: Path, port: int | None = None) -> Server:
    if VM_BIN is None:
        pytest.skip("victoria-metrics is not installed (apt-get install victoria-metrics)")
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        VM_BIN,
        f"-storageDataPath={directory / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        "-loggerLevel=ERROR",
    ]
    server = Server(argv, port, directory, "/health")
    server.start()
    return server


INFLUXD_CONF = """reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
"""


def start_influxd(directory: Path, database: str) -> Server:
    """InfluxDB 1.6 (InfluxQL /query, v1 /write) with a generated config on free ports and ``database`` created."""
    if INFLUXD_BIN is None:
        pytest.skip("influxd is not installed (apt-get install influxdb)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "influxdb.conf"
    conf.write_text(INFLUXD_CONF.format(rpc=free_port(), d=directory, http=port))
    server = Server([INFLUXD_BIN, "run", "-config", str(conf)], port, directory, "/ping")
    server.start()
    try:
        r = httpx.post(server.url + "/query", data={"q": f'CREATE DATABASE "{database}"'}, timeout=10)
        assert r.status_code == 200, r.text
    except BaseException:
        server.stop()
        raise
    return server


def seed_influxd(server: Server, database: str, lines: list[str]) -> None:
    """Write line protocol (timestamps in ms) through InfluxDB 1.6's ``/write``."""
    r = httpx.post(
        server.url + "/write", params={"db": database, "precision": "ms"}, content="\n".join(lines), timeout=10
    )
    assert r.status_code == 204, r.text


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[Server]:
    """VictoriaMetrics on a free port with a temporary storage directory (it accepts /api/v2/write)."""
    server = start_victoria(tmp_path / "vm")
    yield server
    server.stop()


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[Server]:
    """InfluxDB 1.6 for one test, database ``lf`` (tests may stop and start it)."""
    server = start_influxd(tmp_path / "influxdb", "lf")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def influxdb_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """InfluxDB 1.6 shared by a module's tests, database ``telemetry`` (the module seeds it)."""
    server = start_influxd(tmp_path_factory.mktemp("influxdb"), "telemetry")
    yield server
    server.stop()


@pytest.fixture
def side_store(db_url: str) -> Iterator[SqlSideStore]:
    """The InfluxDB backend's side store on a freshly migrated SQL database: SQLite, and PostgreSQL where it runs."""
    engine = make_engine(db_url)
    migrate(engine)
    side = SqlSideStore(engine)
    yield side
    side.close()


def sqlite_side(directory: Path) -> SqlSideStore:
    """A side store on a migrated SQLite database in ``directory`` (tests where the SQL backend does not matter)."""
    engine = make_engine(f"sqlite:///{directory}/registry.db")
    migrate(engine)
    return SqlSideStore(engine)
