"""SQLite WAL checkpoints off the commit path.

By default SQLite runs a checkpoint inside the commit that takes the write-ahead log past 1,000 pages: that commit
copies the log into the database and fsyncs it, which took 10-250 ms under ingest's load here, while the writer
(and every message and alert behind it) waited. ``WalCheckpointer`` runs ``PRAGMA wal_checkpoint(PASSIVE)`` on
its own connection and thread instead: a passive checkpoint never blocks a writer or a reader, and SQLite reuses
the log from its start once a checkpoint has caught up.

The writers keep an automatic checkpoint as a safety net, at ``SAFETY_PAGES`` (if this thread stopped, a commit
would still checkpoint, just rarely), and ``journal_size_limit`` trims the log file when it is reset.
Durability is unchanged: a commit is durable once its log frames are synced (``synchronous=FULL``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from sqlalchemy import Engine, event

logger = logging.getLogger(__name__)

# Small and often: a checkpoint copies what the log gained since the last one and then fsyncs the database. Once a
# second that was 10-16 MB at 2,000 msg/s, and on the development VM the fsyncs of every commit queued behind it
# for 100-400 ms; every 50 ms it is under 1 MB (docs/performance.md, alert latency).
INTERVAL_S = 0.05
SAFETY_PAGES = 16_384  # 64 MiB of 4 KiB pages
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
WRITER_PRAGMAS = (f"PRAGMA wal_autocheckpoint={SAFETY_PAGES}", f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")


class WalCheckpointer:
    """Checkpoints one SQLite database every ``interval_s`` on a daemon thread, until ``stop()``."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        self.pages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wal-checkpoint-{path.name}", daemon=True)
        self._failing = False

    def start(self) -> WalCheckpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int, int]:
        """One passive checkpoint: (busy, log pages, pages checkpointed), as SQLite reports them."""
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        busy, log, done = (int(v) for v in row)
        self.checkpoints += 1
        self.pages += max(done, 0)
        return busy, log, done

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=1, isolation_level=None, check_same_thread=False)
                    self.checkpoint(conn)
                    if self._failing:
                        logger.info("WAL checkpoints of %s work again", self.path)
                        self._failing = False
                except sqlite3.Error as exc:
                    if not self._failing:
                        logger.warning(
                            "WAL checkpoint of %s failed (the writers' own checkpoint remains): %s", self.path, exc
                        )
                        self._failing = True
                    if conn is not None:
                        conn.close()
                        conn = None
        finally:
            if conn is not None:
                conn.close()


def sqlite_file(engine: Engine) -> Path | None:
    """The database file behind a SQLAlchemy engine, or None (not SQLite, or in memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database)


def checkpoint_in_background(engine: Engine, interval_s: float = INTERVAL_S) -> WalCheckpointer | None:
    """For a long-running process on a SQLite database: move its WAL checkpoints to a ``WalCheckpointer`` (which
    the caller stops at shutdown). Connections made from now on get the writer pragmas; the pool is emptied so
    that every connection is a new one. Returns None for other databases."""
    path = sqlite_file(engine)
    if path is None:
        return None

    @event.listens_for(engine, "connect")
    def _writer_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        for pragma in WRITER_PRAGMAS:
            cur.execute(pragma)
        cur.close()

    engine.dispose()
    return WalCheckpointer(path, interval_s).start()
