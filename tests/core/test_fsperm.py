"""Private files: databases 0600 with their WAL, directories 0700, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import make_engine, migrate
from core.fsperm import loose, private_file, sqlite_files
from core.settings import Settings
from core.store.sqlite import SqliteStore
from lianfang.startup import warn_loose_permissions


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_store_and_registry_files_are_private_with_their_wal(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "var"
    store = SqliteStore(data / "telemetry.db")
    engine = make_engine(f"sqlite:///{data}/registry.db")
    try:
        migrate(engine)
        with engine.begin() as conn:  # the WAL and shared-memory files exist while a connection is open
            conn.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
            files = sqlite_files(data / "registry.db") + sqlite_files(data / "telemetry.db")
            assert {f.name for f in files} >= {"registry.db", "registry.db-wal", "registry.db-shm", "telemetry.db"}
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(data) == 0o700
    finally:
        engine.dispose()
        store.close()


def test_private_file_keeps_an_existing_file_and_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    f = tmp_path / "registry.db"
    f.write_bytes(b"x")
    f.chmod(0o644)
    private_file(f)
    assert f.read_bytes() == b"x" and mode(f) == 0o644 and mode(tmp_path) == 0o755
    assert loose([f, tmp_path, tmp_path / "absent"]) == [(f, 0o644), (tmp_path, 0o755)]


def test_loose_permissions_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "var"
    settings = Settings(data_dir=data)
    SqliteStore(settings.store.sqlite_path).close()
    make_engine(settings.database_url).dispose()
    assert warn_loose_permissions(settings) == []
    data.chmod(0o755)
    (data / "registry.db").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="lianfang.startup"):
        assert warn_loose_permissions(settings) == [data, data / "registry.db"]
    assert f"run: chmod 600 {data / 'registry.db'}" in caplog.text and f"run: chmod 700 {data}" in caplog.text
