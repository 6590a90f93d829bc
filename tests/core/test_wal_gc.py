"""core/wal.py (WAL checkpoints on their own thread) and core/gcpolicy.py (long-lived objects frozen)."""

from __future__ import annotations

import gc
import sqlite3
from pathlib import Path

from sqlalchemy import text

from core import gcpolicy
from core.db import make_engine, migrate
from core.protocol import Reading
from core.store import DeviceCounters, WriteBatch
from core.store.sqlite import SqliteStore
from core.wal import SAFETY_PAGES, WalCheckpointer, checkpoint_in_background
from tests.helpers import wait_until


def _wal_frames(path: Path) -> int:
    """Frames in the log not yet copied into the database (0 once a checkpoint caught up)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _busy, log, done = conn.execute("PRAGMA wal_checkpoint(NOOP)").fetchone()
    except sqlite3.OperationalError:  # SQLite builds without NOOP: a passive checkpoint reports the same
        _busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        conn.close()
    return int(log) - int(done)


def _batch(i: int) -> WriteBatch:
    readings = [
        Reading(f"m-{k}", "gz", "energy_meter", 1_790_000_000_000 + i * 1000, i, {"power_kw": float(k)})
        for k in range(200)
    ]
    return WriteBatch(readings=readings, counters={"m-0": DeviceCounters(messages=200)})


def test_the_store_checkpoints_on_its_own_thread_not_in_the_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    try:
        (setting,) = store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert setting == SAFETY_PAGES  # the commit's own checkpoint is only a safety net
        assert store._checkpointer is not None
        for i in range(20):
            store.write(_batch(i))
        wait_until(lambda: store._checkpointer is not None and store._checkpointer.pages > 0, 10, what="checkpoint")
        wait_until(lambda: _wal_frames(tmp_path / "t.db") == 0, 10, what="the log caught up")
        with sqlite3.connect(tmp_path / "t.db") as conn:
            assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (20 * 200,)
    finally:
        store.close()
    assert not store._checkpointer._thread.is_alive()


def test_without_background_checkpoints_sqlite_defaults_stay(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db", background_checkpoint=False)
    try:
        (setting,) = store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert setting == 1000 and store._checkpointer is None
    finally:
        store.close()


def test_a_checkpointer_for_the_registry_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/r.db")
    migrate(engine)
    ckpt = checkpoint_in_background(engine, interval_s=0.05)
    assert isinstance(ckpt, WalCheckpointer)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == SAFETY_PAGES
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        wait_until(lambda: ckpt.checkpoints > 2 and _wal_frames(tmp_path / "r.db") == 0, 10, what="checkpointed")
    finally:
        ckpt.stop()
        engine.dispose()


def test_no_checkpointer_for_other_databases() -> None:
    assert checkpoint_in_background(make_engine("sqlite:///:memory:")) is None


def test_settle_moves_survivors_out_of_the_collections() -> None:
    class Held:
        pass

    held = [Held() for _ in range(1000)]
    frozen = gcpolicy.settle("test")
    assert frozen >= 1000 and gc.get_freeze_count() == frozen
    assert all(not any(o is h for o in gc.get_objects()) for h in held[:3])  # frozen objects are not tracked
    gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_settle_spaces_full_collections() -> None:
    """After gc.freeze() CPython's 25 % brake on full collections no longer holds; settle() sets the third threshold
    so that only every FULL_AFTER_GEN1-th generation-1 collection is a full one (the conftest fixture restores it)."""
    gc.set_threshold(700, 10, 10)
    gcpolicy.settle("test")
    assert gc.get_threshold() == (700, 10, gcpolicy.FULL_AFTER_GEN1)
    assert gcpolicy.FULL_AFTER_GEN1 > 10
