"""The InfluxDB backend's side store: device state, per-device counters and rejections in Lianfang's SQL database.

InfluxDB holds telemetry and events; what it is not made for (a row per device updated in place by every batch,
counters added to, rejected payloads kept as bytes) lives in two tables of the SQL database of ``database_url``
(migration ``0012_telemetry_side``): ``telemetry_device_state`` and ``telemetry_rejections``. In production that
is PostgreSQL, shared by every ingest process and container, so the device states and counters that several
ingest processes write add up in one place (a per-process SQLite file would split them). On one machine it is the
registry's SQLite file. The embedded telemetry store (``core.store.sqlite``) keeps its own tables, unchanged.

A batch is one transaction, written after InfluxDB confirmed the batch's points: if it fails, nothing of it is
counted, and the retried batch counts its messages once. Counters, the last-seen time and the status of a device
are one upsert row per device, in device order, so two ingest processes that write overlapping devices wait for
each other rather than deadlock. A failure of the database as a whole (unreachable, locked, a deadlock all the
same) is :class:`~core.errors.StoreUnavailable`: ingest holds the batch unacked and retries it.

Aggregated mode (``store.side_flush_interval_s`` > 0, docs/scaling.md "PostgreSQL primary and replicas"): the
per-batch upsert is one row per device per batch, up to one row per message at a catch-up peak. With EMQX's
``hash_clientid`` a device's messages come to one ingest process, so the process adds its devices' counters up in
memory (the newest last-seen time kept) and upserts them once per interval: rows/s are bounded by the devices a
process sees per interval, whatever the message rate. What stays per batch, in the batch's transaction: the
rejections (rows of their own), and the full row of every device that has a status in the batch (an ``offline``
announcement is seen at once; statuses are rare). The aggregate is flushed by a background thread every
interval, before a batch when it holds ``max_pending`` devices, and by :meth:`SqlSideStore.close` (ingest's
graceful stop: ``Runtime.stop`` closes the store after ingest drained). A flush that fails keeps the aggregate and
is retried by the next one; when the aggregate is full and cannot be flushed, ``write`` raises
``StoreUnavailable`` before writing anything of the batch (ingest holds it unacked, as today): memory is bounded.
Points and acks do not wait for a flush. The price: a crash (no graceful stop) loses at most one interval of
counts and last-seen times (statistics: the acked messages are not redelivered), and readers in other processes
(the API's device views, reports) see last-seen times and counters up to one interval late; in this process
:meth:`SqlSideStore.device_states` adds the aggregate not yet committed to what the database holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StoreUnavailable
from core.protocol import Rejection, Status
from core.store import DeviceCounters, DeviceState, WriteBatch

logger = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
IDS_PER_QUERY = 500
# Aggregated mode: devices held in memory before a batch must wait for a flush (about 200 bytes each).
MAX_PENDING = 200_000

metadata = sa.MetaData()

# The tables of migration 0012_telemetry_side (keep the two in step).
device_state = sa.Table(
    "telemetry_device_state",
    metadata,
    sa.Column("device_id", sa.Text, primary_key=True),
    sa.Column("last_seen_ms", sa.BigInteger, nullable=True),
    sa.Column("status", sa.Text, nullable=True),
    sa.Column("status_ms", sa.BigInteger, nullable=True),
    sa.Column("fw", sa.Text, nullable=True),
    sa.Column("messages", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("gaps", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("duplicates", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("nonstandard", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rejected", sa.BigInteger, nullable=False, server_default="0"),
)

rejections = sa.Table(
    "telemetry_rejections",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)

COUNTERS = ("messages", "gaps", "duplicates", "nonstandard", "rejected")
_STATE_COLUMNS = ("device_id", "last_seen_ms", "status", "status_ms", "fw", *COUNTERS)
_STATE_TYPES = ("text", "bigint", "text", "bigint", "text", "bigint", "bigint", "bigint", "bigint", "bigint")

# PostgreSQL: the batch's rows as one array per column, unnested into one INSERT ... ON CONFLICT (one statement and
# one round trip per batch; an executemany of 2,000 rows took 1-1.4 s here, this a few tens of ms). The same
# update as the SQLAlchemy statement of SqlSideStore._state_upsert, used on SQLite.
_ARRAYS = ", ".join(f"CAST(:{c} AS {ty}[])" for c, ty in zip(_STATE_COLUMNS, _STATE_TYPES, strict=True))
_PG_UPSERT = sa.text(
    f"""INSERT INTO telemetry_device_state AS t ({", ".join(_STATE_COLUMNS)})
    SELECT * FROM unnest({_ARRAYS})
    ON CONFLICT (device_id) DO UPDATE SET
      last_seen_ms = CASE WHEN excluded.last_seen_ms IS NOT NULL
        AND (t.last_seen_ms IS NULL OR t.last_seen_ms < excluded.last_seen_ms) THEN excluded.last_seen_ms
        ELSE t.last_seen_ms END,
      status = CASE WHEN excluded.status_ms IS NOT NULL AND (t.status_ms IS NULL OR t.status_ms <= excluded.status_ms)
        THEN excluded.status ELSE t.status END,
      fw = CASE WHEN excluded.status_ms IS NOT NULL AND (t.status_ms IS NULL OR t.status_ms <= excluded.status_ms)
        AND excluded.fw IS NOT NULL THEN excluded.fw ELSE t.fw END,
      status_ms = CASE WHEN excluded.status_ms IS NOT NULL
        AND (t.status_ms IS NULL OR t.status_ms <= excluded.status_ms) THEN excluded.status_ms ELSE t.status_ms END,
      messages = t.messages + excluded.messages,
      gaps = CASE WHEN t.gaps > {INT64_MAX} - excluded.gaps THEN {INT64_MAX} ELSE t.gaps + excluded.gaps END,
      duplicates = t.duplicates + excluded.duplicates,
      nonstandard = t.nonstandard + excluded.nonstandard,
      rejected = t.rejected + excluded.rejected"""
)


def state_rows(counters: dict[str, DeviceCounters], statuses: Iterable[Status]) -> list[dict[str, Any]]:
    """One row per device (sorted by device id) merging the batch's counters and its newest status.

    Pure. A device's newest status wins (the last one of equal time, as written in order); its firmware is the
    newest one a status of the batch carried."""
    newest: dict[str, Status] = {}
    fw: dict[str, tuple[int, str]] = {}
    for s in statuses:
        cur = newest.get(s.device_id)
        if cur is None or s.ts_ms >= cur.ts_ms:
            newest[s.device_id] = s
        if s.fw is not None and (s.device_id not in fw or s.ts_ms >= fw[s.device_id][0]):
            fw[s.device_id] = (s.ts_ms, s.fw)
    rows: list[dict[str, Any]] = []
    for dev in sorted(set(counters) | set(newest)):
        c = counters.get(dev) or DeviceCounters()
        st = newest.get(dev)
        rows.append(
            {
                "device_id": dev,
                "last_seen_ms": c.last_seen_ms or None,
                "status": None if st is None else _text(st.state),
                "status_ms": None if st is None else st.ts_ms,
                "fw": _text(fw[dev][1]) if dev in fw else None,
                "messages": c.messages,
                "gaps": min(c.gaps, INT64_MAX),
                "duplicates": c.duplicates,
                "nonstandard": c.nonstandard,
                "rejected": c.rejected,
            }
        )
    return rows


def add_counters(into: dict[str, DeviceCounters], counters: dict[str, DeviceCounters]) -> None:
    """Add ``counters`` to the aggregate ``into`` (pure): counts add up (gaps saturate at INT64_MAX, as in the
    database), the last-seen time is the newest."""
    for dev, c in counters.items():
        mine = into.get(dev)
        if mine is None:
            into[dev] = DeviceCounters(
                c.last_seen_ms, c.messages, min(c.gaps, INT64_MAX), c.duplicates, c.nonstandard, c.rejected
            )
            continue
        mine.last_seen_ms = max(mine.last_seen_ms, c.last_seen_ms)
        mine.messages += c.messages
        mine.gaps = min(mine.gaps + c.gaps, INT64_MAX)
        mine.duplicates += c.duplicates
        mine.nonstandard += c.nonstandard
        mine.rejected += c.rejected


def with_pending(state: DeviceState | None, dev: str, c: DeviceCounters) -> DeviceState:
    """A device's state as the database will hold it once ``c`` (not yet flushed) is added (pure)."""
    seen = c.last_seen_ms or None
    if state is None:
        return DeviceState(dev, seen, None, None, None, c.messages, c.gaps, c.duplicates, c.nonstandard, c.rejected)
    last: int | None = state.last_seen_ms
    if seen is not None and (last is None or last < seen):
        last = seen
    return DeviceState(
        dev,
        last,
        state.status,
        state.status_ms,
        state.fw,
        state.messages + c.messages,
        min(state.gaps + c.gaps, INT64_MAX),
        state.duplicates + c.duplicates,
        state.nonstandard + c.nonstandard,
        state.rejected + c.rejected,
    )


@dataclass(slots=True)
class FlushStats:
    """What the aggregated mode has done (tests, the benchmark, logs)."""

    flushes: int = 0  # flushes that committed rows
    rows: int = 0  # device rows upserted by them
    failures: int = 0  # flushes that failed (their aggregate kept, retried by the next)
    dropped: int = 0  # device rows the database refused on their own (DataError / IntegrityError), logged
    seconds: float = 0.0  # time spent in the flushes that committed
    longest_s: float = 0.0  # the longest of them
    # Wall-clock time (s) of the first failure since the last flush that committed; None while flushes succeed.
    failing_since: float | None = None
    last_error: str | None = None


@dataclass(slots=True)
class FlushHooks:
    """Called by the aggregated mode (ingest/metrics.py wires them to lianfang_ingest_side_store_*): after a flush
    committed (rows, seconds) and after one failed. Kept free of Prometheus so core does not import ingest."""

    flushed: Callable[[int, float], None] = field(default=lambda _rows, _s: None)
    failed: Callable[[], None] = field(default=lambda: None)


def flush_note(
    failing_since: float | None, last_error: str | None, pending: int, *, interval_s: float, now: float
) -> str | None:
    """The health note of the aggregated mode (pure): flushes failing for longer than two intervals, else None."""
    if interval_s <= 0 or failing_since is None:
        return None
    failing_s = now - failing_since
    if failing_s <= 2 * interval_s:
        return None
    took = round(failing_s) if failing_s >= 10 else round(failing_s, 1)
    return (
        f"side store flushes failing for {took} s (interval {interval_s:g} s): the counters and last-seen "
        f"times of {pending} devices are held in memory, not in the database"
        + (f"; last error: {last_error}" if last_error else "")
    )


class SqlSideStore:
    """Device state, counters and rejections of the InfluxDB backend in the SQL database (SQLite or PostgreSQL).

    The tables come from the Alembic migration (``core.db.migrate``); this class never creates them.
    ``flush_interval_s`` > 0: the aggregated mode of the module docstring (0: one upsert per device per batch)."""

    def __init__(
        self,
        engine: Engine,
        *,
        owns_engine: bool = True,
        flush_interval_s: float = 0.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._pg = engine.dialect.name == "postgresql"
        self._upsert = self._state_upsert()
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.stats = FlushStats()
        self.hooks = FlushHooks()
        # The aggregate not yet flushed, and the one a flush is writing (None when none is): both guarded by
        # _lock. A flush commits while holding _lock, so a reader (device_states) never counts rows twice.
        self._pending: dict[str, DeviceCounters] = {}
        self._inflight: dict[str, DeviceCounters] | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        """The database, password hidden (``lianfang store check``, logs)."""
        return self.engine.url.render_as_string(hide_password=True)

    def _state_upsert(self) -> Any:
        t = device_state
        ins = postgresql.insert(t) if self._pg else sqlite.insert(t)
        ex = ins.excluded
        newer_status = sa.and_(
            ex.status_ms.is_not(None), sa.or_(t.c.status_ms.is_(None), t.c.status_ms <= ex.status_ms)
        )
        later_seen = sa.and_(
            ex.last_seen_ms.is_not(None), sa.or_(t.c.last_seen_ms.is_(None), t.c.last_seen_ms < ex.last_seen_ms)
        )
        return ins.on_conflict_do_update(
            index_elements=[t.c.device_id],
            set_={
                "last_seen_ms": case((later_seen, ex.last_seen_ms), else_=t.c.last_seen_ms),
                "status": case((newer_status, ex.status), else_=t.c.status),
                "status_ms": case((newer_status, ex.status_ms), else_=t.c.status_ms),
                "fw": case((sa.and_(newer_status, ex.fw.is_not(None)), ex.fw), else_=t.c.fw),
                "messages": t.c.messages + ex.messages,
                # saturating: a device's seq jumping to 2**63 must not overflow a BIGINT
                "gaps": case((t.c.gaps > INT64_MAX - ex.gaps, INT64_MAX), else_=t.c.gaps + ex.gaps),
                "duplicates": t.c.duplicates + ex.duplicates,
                "nonstandard": t.c.nonstandard + ex.nonstandard,
                "rejected": t.c.rejected + ex.rejected,
            },
        )

    # --- write ------------------------------------------------------------------------------------------

    def write(self, batch: WriteBatch) -> None:
        """The batch's statuses, counters and rejections in one transaction (its readings and events are not
        read: they are InfluxDB's). Aggregated mode: its rejections and the rows of its devices with a status in
        that transaction, the other devices' counters added to the aggregate once it committed."""
        if self.flush_interval_s <= 0:
            self._write_rows(state_rows(batch.counters, batch.statuses), batch.rejections)
            return
        with_status = {s.device_id for s in batch.statuses}
        now = {d: c for d, c in batch.counters.items() if d in with_status} if with_status else {}
        later = {d: c for d, c in batch.counters.items() if d not in with_status} if with_status else batch.counters
        if later and len(self._pending) >= self.max_pending:
            self.flush()  # StoreUnavailable: nothing of the batch was written; ingest retries it
        self._write_rows(state_rows(now, batch.statuses) if with_status else [], batch.rejections)
        if later:
            with self._lock:
                add_counters(self._pending, later)
            self._start_flusher()

    def _write_rows(self, rows: list[dict[str, Any]], rejected: list[Rejection]) -> None:
        rej = [_rejection_row(x) for x in rejected]
        if not rows and not rej:
            return
        try:
            with self.engine.begin() as conn:
                if rows:
                    self._execute_upsert(conn, rows)
                if rej:
                    conn.execute(rejections.insert(), rej)
        except (sa.exc.DataError, sa.exc.IntegrityError):
            raise  # a value of the batch: ingest's writer splits the batch to isolate its message
        except SQLAlchemyError as exc:  # the database as a whole (down, locked, deadlock, not migrated): retry later
            raise StoreUnavailable(f"side store {self.where}: write failed: {_short(exc)}") from exc

    def _execute_upsert(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if self._pg:
            conn.execute(_PG_UPSERT, {c: [r[c] for r in rows] for c in _STATE_COLUMNS})
        else:
            conn.execute(self._upsert, rows)

    # --- aggregated mode ------------------------------------------------------------------------------------

    @property
    def pending_devices(self) -> int:
        """Devices whose counters are held in memory, not yet committed (aggregated mode)."""
        with self._lock:
            return len(self._pending) + len(self._inflight or ())

    def flush(self) -> int:
        """Upsert the aggregate, one row per device in device order, in one transaction; returns the rows
        written. On a failure of the database the aggregate is kept (the next flush retries it, nothing counted
        twice) and :class:`StoreUnavailable` is raised; a row the database refuses on its own (DataError,
        IntegrityError) is logged and dropped, the others written."""
        with self._flush_lock:
            with self._lock:
                if not self._pending:
                    return 0
                inflight, self._pending = self._pending, {}
                self._inflight = inflight
            started = time.perf_counter()
            rows = state_rows(inflight, ())
            try:
                try:
                    self._commit_rows(rows)
                except (sa.exc.DataError, sa.exc.IntegrityError):
                    self._commit_one_by_one(rows)
            except SQLAlchemyError as exc:
                with self._lock:
                    rest, self._inflight = self._inflight or {}, None
                    add_counters(rest, self._pending)  # what came meanwhile is newer: added onto the kept rows
                    self._pending = rest
                self.stats.failures += 1
                self.stats.last_error = _short(exc)
                if self.stats.failing_since is None:
                    self.stats.failing_since = time.time()
                _call(self.hooks.failed)
                raise StoreUnavailable(f"side store {self.where}: flush failed: {_short(exc)}") from exc
            took = time.perf_counter() - started
            self.stats.flushes += 1
            self.stats.rows += len(rows)
            self.stats.seconds += took
            self.stats.longest_s = max(self.stats.longest_s, took)
            self.stats.failing_since = self.stats.last_error = None
            _call(self.hooks.flushed, len(rows), took)
            return len(rows)

    def health_note(self, now: float | None = None) -> str | None:
        """Aggregated mode: a note for /health/ready when flushes have failed for longer than two intervals."""
        st = self.stats
        return flush_note(
            st.failing_since,
            st.last_error,
            self.pending_devices,
            interval_s=self.flush_interval_s,
            now=time.time() if now is None else now,
        )

    def _commit_rows(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.connect() as conn:
            self._execute_upsert(conn, rows)
            with self._lock:  # a reader sees the rows either in the aggregate or in the database, never both
                conn.commit()
                self._inflight = None

    def _commit_one_by_one(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            dev = row["device_id"]
            try:
                with self.engine.connect() as conn:
                    self._execute_upsert(conn, [row])
                    with self._lock:
                        conn.commit()
                        if self._inflight is not None:
                            self._inflight.pop(dev, None)
            except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
                logger.error("side store: device %r's counters refused, dropped: %s", dev, _short(exc))
                self.stats.dropped += 1
                with self._lock:
                    if self._inflight is not None:
                        self._inflight.pop(dev, None)
        with self._lock:
            self._inflight = None

    def _start_flusher(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._flush_loop, name="side-store-flush", daemon=True)
        self._thread.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                self.flush()
            except StoreUnavailable as exc:
                logger.warning("side store: %s; %d devices kept for the next flush", exc, self.pending_devices)
            except Exception:  # the thread must outlive a surprise: the next interval retries
                logger.exception("side store: flush failed")

    def import_rows(self, states: list[DeviceState], rejected: list[Rejection]) -> None:
        """Copy device states (replacing them) and rejections from another store (``lianfang store migrate``)."""
        with self.engine.begin() as conn:
            ids = [s.device_id for s in states]
            for i in range(0, len(ids), IDS_PER_QUERY):
                conn.execute(device_state.delete().where(device_state.c.device_id.in_(ids[i : i + IDS_PER_QUERY])))
            if states:
                conn.execute(
                    device_state.insert(),
                    [
                        {
                            "device_id": s.device_id,
                            "last_seen_ms": s.last_seen_ms,
                            "status": s.status,
                            "status_ms": s.status_ms,
                            "fw": s.fw,
                            "messages": s.messages,
                            "gaps": s.gaps,
                            "duplicates": s.duplicates,
                            "nonstandard": s.nonstandard,
                            "rejected": s.rejected,
                        }
                        for s in states
                    ],
                )
            if rejected:
                conn.execute(rejections.insert(), [_rejection_row(x) for x in rejected])

    # --- read -------------------------------------------------------------------------------------------

    def _read(self, stmt: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).all())
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"side store {self.where}: read failed: {_short(exc)}") from exc

    def device_states(self, device_ids: list[str] | None = None) -> dict[str, DeviceState]:
        """Per device, what the database holds plus (aggregated mode) this process's aggregate not yet
        committed: exact in this process; other processes see the database alone (up to one interval late)."""
        if self.flush_interval_s <= 0:
            return self._device_states(device_ids)
        with self._lock:  # a flush commits under this lock: its rows are in the aggregate or the database
            pending: dict[str, DeviceCounters] = {}
            add_counters(pending, self._inflight or {})
            add_counters(pending, self._pending)
            states = self._device_states(device_ids)
        wanted = None if device_ids is None else set(device_ids)
        for dev, c in pending.items():
            if wanted is None or dev in wanted:
                states[dev] = with_pending(states.get(dev), dev, c)
        return states

    def _device_states(self, device_ids: list[str] | None) -> dict[str, DeviceState]:
        t = device_state
        cols = [t.c.device_id, t.c.last_seen_ms, t.c.status, t.c.status_ms, t.c.fw, *(t.c[c] for c in COUNTERS)]
        if device_ids is None:
            rows = self._read(select(*cols))
        else:
            rows = []
            for i in range(0, len(device_ids), IDS_PER_QUERY):
                rows += self._read(select(*cols).where(t.c.device_id.in_(device_ids[i : i + IDS_PER_QUERY])))
        return {
            r[0]: DeviceState(
                r[0],
                None if r[1] is None else int(r[1]),
                r[2],
                None if r[3] is None else int(r[3]),
                r[4],
                *(int(v) for v in r[5:]),
            )
            for r in rows
        }

    def rejections(self, device_id: str | None, reason: str | None, limit: int) -> list[Rejection]:
        t = rejections
        q = select(t.c.device_id, t.c.topic, t.c.reason, t.c.detail, t.c.payload, t.c.received_ms)
        if device_id is not None:
            q = q.where(t.c.device_id == device_id)
        if reason is not None:
            q = q.where(t.c.reason == reason)
        rows = self._read(q.order_by(t.c.id.desc()).limit(limit))
        return [Rejection(d, tp, r, de, bytes(p), int(ms)) for d, tp, r, de, p, ms in rows]

    def rejection_counts(self) -> dict[tuple[str, str], int]:
        t = rejections
        rows = self._read(select(t.c.device_id, t.c.reason, func.count()).group_by(t.c.device_id, t.c.reason))
        return {(d, r): int(n) for d, r, n in rows}

    def prune(self, older_than_ms: int) -> int:
        """Delete rejections received before ``older_than_ms``; device states are kept (one row per device)."""
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(rejections.delete().where(rejections.c.received_ms < older_than_ms)).rowcount)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"side store {self.where}: prune failed: {_short(exc)}") from exc

    def ping(self) -> bool:
        """The database answers and has the side store's tables (the migration ran)."""
        try:
            self._read(select(device_state.c.device_id).limit(1))
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        """Aggregated mode: stop the flusher and flush what is held (a failure is logged with what is lost)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        try:
            if self.flush_interval_s > 0:
                self.flush()
        except StoreUnavailable as exc:
            logger.error("side store: closing, the counters of %d devices are lost: %s", self.pending_devices, exc)
        finally:
            if self._owns_engine:
                self.engine.dispose()


def _text(s: str) -> str:
    """PostgreSQL's text cannot hold NUL: written as the two characters ``\\0`` (a device's payload excerpt may
    contain one; the raw bytes are kept in ``payload``)."""
    return s.replace("\x00", "\\0") if "\x00" in s else s


def _rejection_row(x: Rejection) -> dict[str, Any]:
    return {
        "received_ms": x.received_ms,
        "device_id": _text(x.device_id),
        "topic": _text(x.topic),
        "reason": _text(x.reason),
        "detail": _text(x.detail),
        "payload": x.payload,
    }


def _call(hook: Callable[..., None], *args: Any) -> None:
    """A metrics hook must not fail a flush."""
    try:
        hook(*args)
    except Exception:
        logger.exception("side store: metrics hook failed")


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0][:300]
