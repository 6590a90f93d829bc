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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StoreUnavailable
from core.protocol import Rejection, Status
from core.store import DeviceCounters, DeviceState, WriteBatch

INT64_MAX = 2**63 - 1
IDS_PER_QUERY = 500

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


class SqlSideStore:
    """Device state, counters and rejections of the InfluxDB backend in the SQL database (SQLite or PostgreSQL).

    The tables come from the Alembic migration (``core.db.migrate``); this class never creates them."""

    def __init__(self, engine: Engine, *, owns_engine: bool = True) -> None:
        self.engine = engine
        self._owns_engine = owns_engine
        self._pg = engine.dialect.name == "postgresql"
        self._upsert = self._state_upsert()

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
        read: they are InfluxDB's)."""
        rows = state_rows(batch.counters, batch.statuses)
        rej = [_rejection_row(x) for x in batch.rejections]
        if not rows and not rej:
            return
        try:
            with self.engine.begin() as conn:
                if rows and self._pg:
                    conn.execute(_PG_UPSERT, {c: [r[c] for r in rows] for c in _STATE_COLUMNS})
                elif rows:
                    conn.execute(self._upsert, rows)
                if rej:
                    conn.execute(rejections.insert(), rej)
        except (sa.exc.DataError, sa.exc.IntegrityError):
            raise  # a value of the batch: ingest's writer splits the batch to isolate its message
        except SQLAlchemyError as exc:  # the database as a whole (down, locked, deadlock, not migrated): retry later
            raise StoreUnavailable(f"side store {self.where}: write failed: {_short(exc)}") from exc

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


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc).strip().splitlines()[0][:300]
