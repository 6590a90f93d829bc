"""One in-process write lock per SQLite file: writers of one process queue for it instead of polling SQLite's lock.

A SQLite write transaction that meets another connection's write lock is not woken when that lock is released: its
busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries. In ``lianfang serve`` several threads write short
transactions to the registry database (the alert commits, the joint store, the delivery log, the snapshots), so an
alert commit behind a 3 ms delivery-log write waited 33-36 ms at p99 and one behind 8 ms writes 430-630 ms
(``bench/sqlite_busy.py``, docs/performance.md). With one ``threading.Lock`` per file taken by the first write
statement of a transaction and released at its commit or rollback, the waiter is handed the file as soon as it is
free (p99 1.1 / 3.3 / 8.0 ms behind the same writers).

Only transactions that write take it: the first INSERT, UPDATE, DELETE, REPLACE or DDL statement acquires it (the
driver's implicit BEGIN comes just before that statement, so the transaction holds no SQLite write lock before);
reads never wait for it (WAL readers do not block writers). Other processes are not covered: between processes
SQLite's busy handler still decides. A lock not had within ``ACQUIRE_TIMEOUT_S`` is given up with a warning and the
statement goes on under SQLite's own busy handling, as before, so a pathological holder cannot hang the process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

ACQUIRE_TIMEOUT_S = 30.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "UPSERT")

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def lock_for(path: str) -> threading.Lock:
    """The process's write lock of the database file ``path`` (one per file, shared by every engine on it)."""
    with _locks_guard:
        lock = _locks.get(path)
        if lock is None:
            lock = _locks[path] = threading.Lock()
        return lock


def is_write(sql: str) -> bool:
    """Whether a statement writes (pure): its first keyword, or a WITH clause that leads into a write."""
    head = sql.lstrip().lstrip("(").lstrip()[:7].upper()
    if head.startswith(_WRITES):
        return True
    if head.startswith("WITH"):
        upper = sql.upper()
        return any(f" {w} " in upper or f"\n{w} " in upper or f"){w} " in upper for w in ("INSERT", "UPDATE", "DELETE"))
    return False


class LockingConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` whose write transactions hold the file's in-process write lock: pass it as
    ``sqlite3.connect``'s ``factory`` and give it its lock with ``attach``."""

    _wlock: threading.Lock | None = None
    _held = False

    def cursor(self, factory: Any = None) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory or LockingCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_write()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_write()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_write()

    def attach(self, lock: threading.Lock) -> None:
        self._wlock = lock

    def acquire_write(self) -> None:
        lock = self._wlock
        if lock is None or self._held:
            return
        if lock.acquire(timeout=ACQUIRE_TIMEOUT_S):
            self._held = True
        else:
            logger.warning(
                "sqlite write lock not had in %.0f s; going on under SQLite's busy handler", ACQUIRE_TIMEOUT_S
            )

    def release_write(self) -> None:
        if self._held and self._wlock is not None:
            self._held = False
            self._wlock.release()

    def after_statement(self) -> None:
        """A write outside a transaction (autocommit) is over as soon as it ran."""
        if self._held and not self.in_transaction:
            self.release_write()


class LockingCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> LockingCursor:
        self._locked(sql, lambda: super(LockingCursor, self).execute(sql, parameters))
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> LockingCursor:
        self._locked(sql, lambda: super(LockingCursor, self).executemany(sql, seq_of_parameters))
        return self

    def _locked(self, sql: str, run: Callable[[], object]) -> None:
        conn = self.connection
        if not (isinstance(conn, LockingConnection) and is_write(sql)):
            run()
            return
        conn.acquire_write()
        try:
            run()
        except BaseException:
            if not conn.in_transaction:  # nothing began: nothing to commit or roll back later
                conn.release_write()
            raise
        conn.after_statement()
