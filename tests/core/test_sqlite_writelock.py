"""The in-process write lock of a SQLite file (core/sqlite_writelock.py), through ``make_engine`` on a real file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core.db import make_engine
from core.sqlite_writelock import is_write, lock_for


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("INSERT INTO t VALUES (1)", True),
        ("  insert into t values (1)", True),
        ("UPDATE t SET a = 1", True),
        ("DELETE FROM t", True),
        ("REPLACE INTO t VALUES (1)", True),
        ("CREATE TABLE x (a)", True),
        ("WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c", True),
        ("SELECT * FROM t", False),
        ("select a from t where b = 'INSERT INTO'", False),
        ("WITH c AS (SELECT 1) SELECT * FROM c", False),
        ("PRAGMA journal_mode=WAL", False),
        ("", False),
    ],
)
def test_which_statements_write(sql: str, writes: bool) -> None:
    assert is_write(sql) is writes


@pytest.fixture
def db(tmp_path: Path) -> tuple[Engine, threading.Lock]:
    path = tmp_path / "w.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)"))
    return engine, lock_for(str(path.resolve()))


def test_a_write_transaction_holds_the_lock_until_commit_and_reads_never_wait(
    db: tuple[Engine, threading.Lock],
) -> None:
    engine, lock = db
    assert not lock.locked()
    with engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM t")).scalar()
        assert not lock.locked()  # a read takes nothing
        conn.execute(text("INSERT INTO t (b) VALUES ('x')"))
        assert lock.locked()
        read: list[int] = []
        t = threading.Thread(
            target=lambda: read.append(engine.connect().execute(text("SELECT count(*) FROM t")).scalar_one())
        )
        t.start()
        t.join(timeout=5)
        assert read == [0]  # another connection reads at once while the write is open
        conn.commit()
        assert not lock.locked()


def test_rollback_and_a_connection_returned_with_an_open_write_release_it(db: tuple[Engine, threading.Lock]) -> None:
    engine, lock = db
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t (b) VALUES ('x')"))
        conn.rollback()
        assert not lock.locked()
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t (b) VALUES ('y')"))
        assert lock.locked()
    assert not lock.locked()  # closed without commit: rolled back, released
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0


def test_a_failed_write_is_released_with_its_transaction(db: tuple[Engine, threading.Lock]) -> None:
    engine, lock = db
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t (a, b) VALUES (1, 'x')"))
    with pytest.raises(Exception, match="UNIQUE"), engine.begin() as conn:
        conn.execute(text("INSERT INTO t (a, b) VALUES (1, 'dup')"))
    assert not lock.locked()


def test_concurrent_writers_queue_and_lose_nothing(db: tuple[Engine, threading.Lock]) -> None:
    engine, lock = db
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(150):
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO t (b) VALUES (:b)"), {"b": f"{k}-{i}"})
                    conn.execute(text("SELECT count(*) FROM t")).scalar()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert not lock.locked()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 600
