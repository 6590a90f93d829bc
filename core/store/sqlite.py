"""Embedded SQLite telemetry store (one machine).

One writer connection, used by one thread at a time (ingest's writer); readers get their own connection per
thread. WAL mode; ``synchronous=FULL`` by default so a committed batch survives power loss, not just a crash.
One row per message (fields as a JSON object) with a unique (device, ts): a replayed message merges into the
same row, so writes are idempotent on device + time + field.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from core.errors import StoreFull, StoreUnavailable
from core.fsperm import private_file
from core.protocol import Rejection
from core.store import Agg, Bucket, DeviceState, StoredEvent, WriteBatch
from core.wal import WRITER_PRAGMAS, WalCheckpointer

SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    seq INTEGER,
    fields TEXT NOT NULL,
    UNIQUE (device_id, ts)
);
CREATE TABLE IF NOT EXISTS events (
    device_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    type TEXT NOT NULL,
    region_id TEXT NOT NULL,
    seq INTEGER,
    data TEXT NOT NULL,
    UNIQUE (device_id, ts, type)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_device ON rejections (device_id, id);
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY,
    last_seen_ms INTEGER,
    status TEXT,
    status_ms INTEGER,
    fw TEXT,
    messages INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    nonstandard INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0
);
"""

CACHE_KIB = 64 * 1024  # page cache per connection
# How long a statement waits for a lock another process holds (another writer, a backup, an operator's sqlite3
# shell) before it fails with "database is locked", which ingest reports as StoreUnavailable and retries: the
# stall is logged, counted and visible in /health/ready instead of a silent 30 s wait per attempt.
BUSY_TIMEOUT_S = 5.0
INT64_MAX = 2**63 - 1


def _full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "is full" in str(exc)


def _retryable(exc: BaseException) -> bool:
    """Errors of the store as a whole (locked, disk full, I/O, corrupt file): retry the same batch later. Any
    other error (a value SQLite cannot bind, a constraint) belongs to the data, and retrying cannot help."""
    return isinstance(exc, sqlite3.OperationalError | sqlite3.InternalError) or type(exc) is sqlite3.DatabaseError


_AGG_SQL = {"mean": "avg(v)", "min": "min(v)", "max": "max(v)", "sum": "sum(v)", "count": "count(v)"}


class SqliteStore:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        background_checkpoint: bool = True,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        # WAL checkpoints on a thread of their own (core/wal.py), not inside the commit of whichever batch crosses
        # the threshold: that commit used to wait 10-250 ms, and every message behind it too.
        self._background_checkpoint = background_checkpoint
        private_file(path)  # 0600 (SQLite gives its WAL the same mode); the directory 0700 when created here
        self._local = threading.local()
        self._thread_lock = threading.Lock()
        # Several ingest processes (shared subscription) may write one file. SQLite's own busy handler polls with
        # sleeps of 1-100 ms; a blocking flock hands the write over as soon as the other process commits.
        self._lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._writer = self._connect()
        with self._write_lock():
            self._writer.executescript(SCHEMA)
        self._checkpointer = WalCheckpointer(path).start() if background_checkpoint else None

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, check_same_thread=False, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            # The (device, ts) index takes inserts all over its B-tree (one device after another); SQLite's default
            # 2 MiB page cache makes a large store re-read its pages for nearly every insert.
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            if self._background_checkpoint:
                for pragma in WRITER_PRAGMAS:
                    conn.execute(pragma)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open telemetry store {self.path}: {exc}") from exc
        return conn

    @property
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._reader
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"telemetry store read failed: {exc}") from exc

    # --- write ------------------------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        """One transaction. A store-wide failure raises StoreUnavailable; any other error (one value of the batch
        that cannot be written) is raised as it is, for the caller to isolate. Either way the transaction is
        rolled back first, so the next write starts clean."""
        dumps = orjson.dumps
        telemetry = [(r.device_id, r.ts_ms, r.seq, dumps(r.fields).decode()) for r in batch.readings]
        events = [(e.device_id, e.ts_ms, e.type, e.region_id, e.seq, dumps(e.data).decode()) for e in batch.events]
        rejections = [(x.received_ms, x.device_id, x.topic, x.reason, x.detail, x.payload) for x in batch.rejections]
        counters = [
            (dev, c.last_seen_ms or None, c.messages, min(c.gaps, INT64_MAX), c.duplicates, c.nonstandard, c.rejected)
            for dev, c in batch.counters.items()
        ]
        statuses = [(s.device_id, s.state, s.ts_ms, s.fw) for s in batch.statuses]
        with self._write_lock():
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                if telemetry:
                    conn.executemany(
                        "INSERT INTO telemetry (device_id, ts, seq, fields) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (device_id, ts) DO UPDATE SET "
                        "fields = json_patch(telemetry.fields, excluded.fields), "
                        "seq = coalesce(excluded.seq, telemetry.seq)",
                        telemetry,
                    )
                if events:
                    conn.executemany(
                        "INSERT OR IGNORE INTO events (device_id, ts, type, region_id, seq, data) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        events,
                    )
                if rejections:
                    conn.executemany(
                        "INSERT INTO rejections (received_ms, device_id, topic, reason, detail, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        rejections,
                    )
                if counters:
                    conn.executemany(
                        "INSERT INTO device_state (device_id, last_seen_ms, messages, gaps, duplicates, "
                        "nonstandard, rejected) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                        "last_seen_ms = nullif(max(coalesce(device_state.last_seen_ms, 0), "
                        "coalesce(excluded.last_seen_ms, 0)), 0), "
                        "messages = device_state.messages + excluded.messages, "
                        f"gaps = min(device_state.gaps + excluded.gaps, {INT64_MAX}), "
                        "duplicates = device_state.duplicates + excluded.duplicates, "
                        "nonstandard = device_state.nonstandard + excluded.nonstandard, "
                        "rejected = device_state.rejected + excluded.rejected",
                        counters,
                    )
                if statuses:
                    conn.executemany(
                        "INSERT INTO device_state (device_id, status, status_ms, fw) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (device_id) DO UPDATE SET status = excluded.status, "
                        "status_ms = excluded.status_ms, fw = coalesce(excluded.fw, device_state.fw) "
                        "WHERE coalesce(device_state.status_ms, 0) <= excluded.status_ms",
                        statuses,
                    )
                conn.execute("COMMIT")
            except BaseException as exc:
                self._abort()
                if isinstance(exc, sqlite3.Error) and _retryable(exc):
                    if _full(exc):
                        raise StoreFull(f"telemetry store write failed: {exc}") from exc
                    raise StoreUnavailable(f"telemetry store write failed: {self._explain(exc)}") from exc
                raise

    def reclaim_log(self) -> bool:
        """After a full disk: checkpoint the whole WAL into the database and truncate it to zero bytes, so the
        space its pages took is free again (the log does not shrink by itself). Best effort: False when it could
        not (a reader still needs the log, or there is no room to checkpoint into)."""
        with self._write_lock():
            try:
                row = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error:
                return False
        return row is not None and int(row[0]) == 0

    def _abort(self) -> None:
        """Roll the writer's transaction back; if even that fails, open a new writer connection."""
        conn = self._writer
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            try:
                conn.close()
            finally:
                self._writer = self._connect()

    def _explain(self, exc: sqlite3.Error) -> str:
        if "locked" in str(exc) or "busy" in str(exc):
            return f"{exc} (another process has held the write lock for over {self.busy_timeout_s:g} s)"
        return str(exc)

    # --- read -------------------------------------------------------------------------------------------

    def raw(self, device_id: str, fld: str, start_ms: int, end_ms: int, limit: int) -> list[tuple[int, float]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT ts, v FROM (SELECT ts, json_extract(fields, ?) AS v FROM telemetry "
                "WHERE device_id = ? AND ts >= ? AND ts < ?) WHERE v IS NOT NULL ORDER BY ts LIMIT ?",
                (f"$.{fld}", device_id, start_ms, end_ms, limit),
            ).fetchall()
        return [(int(ts), float(v)) for ts, v in rows]

    def aggregate(
        self, device_id: str, fld: str, start_ms: int, end_ms: int, bucket_ms: int, agg: Agg, limit: int
    ) -> list[Bucket]:
        base = (
            "SELECT (ts / :b) * :b AS bucket, ts, json_extract(fields, :f) AS v FROM telemetry "
            "WHERE device_id = :d AND ts >= :s AND ts < :e"
        )
        params: dict[str, Any] = {"b": bucket_ms, "f": f"$.{fld}", "d": device_id, "s": start_ms, "e": end_ms}
        if agg == "last":
            # SQLite: a bare column next to max() comes from the row holding the max.
            sql = (
                f"SELECT bucket, v, n FROM (SELECT bucket, v, max(ts), count(v) AS n FROM ({base}) "
                f"WHERE v IS NOT NULL GROUP BY bucket) ORDER BY bucket LIMIT :l"
            )
        else:
            sql = (
                f"SELECT bucket, {_AGG_SQL[agg]}, count(v) FROM ({base}) WHERE v IS NOT NULL "
                f"GROUP BY bucket ORDER BY bucket LIMIT :l"
            )
        params["l"] = limit
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [Bucket(int(b), None if v is None else float(v), int(n)) for b, v, n in rows]

    def last_values(self, device_id: str) -> dict[str, tuple[int, float | bool]]:
        out: dict[str, tuple[int, float | bool]] = {}
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT ts, fields FROM telemetry WHERE device_id = ? ORDER BY ts DESC LIMIT 200", (device_id,)
            ).fetchall()
        for ts, fields in rows:  # newest first: the first time a field appears is its last value
            for key, value in orjson.loads(fields).items():
                out.setdefault(key, (int(ts), value))
        return out

    def device_states(self, device_ids: list[str] | None = None) -> dict[str, DeviceState]:
        sql = (
            "SELECT device_id, last_seen_ms, status, status_ms, fw, messages, gaps, duplicates, nonstandard, "
            "rejected FROM device_state"
        )
        params: list[Any] = []
        if device_ids is not None:
            if not device_ids:
                return {}
            sql += f" WHERE device_id IN ({','.join('?' * len(device_ids))})"
            params = list(device_ids)
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return {r[0]: DeviceState(*r) for r in rows}

    def events(
        self, device_ids: list[str] | None, start_ms: int, end_ms: int, types: list[str] | None, limit: int
    ) -> list[StoredEvent]:
        sql = "SELECT device_id, region_id, ts, type, seq, data FROM events WHERE ts >= ? AND ts < ?"
        params: list[Any] = [start_ms, end_ms]
        if device_ids is not None:
            if not device_ids:
                return []
            sql += f" AND device_id IN ({','.join('?' * len(device_ids))})"
            params += device_ids
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            params += types
        sql += " ORDER BY ts DESC LIMIT ?"
        params.append(limit)
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [StoredEvent(d, r, int(ts), t, s, orjson.loads(data)) for d, r, ts, t, s, data in rows]

    def rejections(self, device_id: str | None, reason: str | None, limit: int) -> list[Rejection]:
        sql = "SELECT device_id, topic, reason, detail, payload, received_ms FROM rejections WHERE 1=1"
        params: list[Any] = []
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        if reason is not None:
            sql += " AND reason = ?"
            params.append(reason)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self._reading() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [Rejection(d, t, r, de, bytes(p), int(ms)) for d, t, r, de, p, ms in rows]

    def rejection_counts(self) -> dict[tuple[str, str], int]:
        with self._reading() as conn:
            rows = conn.execute("SELECT device_id, reason, count(*) FROM rejections GROUP BY 1, 2").fetchall()
        return {(d, r): int(n) for d, r, n in rows}

    def recent_seqs(self, max_rows: int) -> list[tuple[str, int, int]]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT device_id, seq, ts FROM (SELECT device_id, seq, ts, rowid FROM telemetry "
                "ORDER BY rowid DESC LIMIT ?) WHERE seq IS NOT NULL "
                "UNION ALL SELECT device_id, seq, ts FROM (SELECT device_id, seq, ts, rowid FROM events "
                "ORDER BY rowid DESC LIMIT ?) WHERE seq IS NOT NULL",
                (max_rows, max_rows),
            ).fetchall()
        return [(d, int(s), int(t)) for d, s, t in rows]

    def count_readings(self, device_id: str | None = None) -> int:
        with self._reading() as conn:
            if device_id is None:
                row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
            else:
                row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id = ?", (device_id,)).fetchone()
        return int(row[0])

    def prune(self, older_than_ms: int) -> int:
        with self._write_lock():
            try:
                n = self._writer.execute("DELETE FROM telemetry WHERE ts < ?", (older_than_ms,)).rowcount
                n += self._writer.execute("DELETE FROM events WHERE ts < ?", (older_than_ms,)).rowcount
                n += self._writer.execute("DELETE FROM rejections WHERE received_ms < ?", (older_than_ms,)).rowcount
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"telemetry store prune failed: {exc}") from exc
        return n

    def ping(self) -> bool:
        try:
            with self._reading() as conn:
                conn.execute("SELECT 1").fetchone()
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._write_lock():
            self._writer.close()
        os.close(self._lock_fd)
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
