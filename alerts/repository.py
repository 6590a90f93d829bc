"""SQL persistence of alerts, comments, silences and the engine's state (SQLite or PostgreSQL).

Writes are upserts by primary key, so writing the same snapshot twice is harmless: the alert service writes
everything a batch changed in one transaction (``save``) and, when the database was unavailable, simply writes
it again later. Library errors become ``StoreUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, Column, DateTime, Engine, MetaData, String, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.lifecycle import Silence
from alerts.models import AlertCommentRow, AlertKvRow, AlertRow, RuleStateRow, SilenceRow
from alerts.types import Alert, AlertState, Comment, Severity
from core.db import Upserter
from core.errors import StoreUnavailable

LIFECYCLE_KEY = "lifecycle"  # the aux state as one ``alert_kv`` row, before migration 0012 (read, then dropped)
AUX_SECTIONS = ("fires", "last_resolved", "offline", "held")

# The lifecycle's aux state, one row per (section, key) (migration 0012_incremental_state).
ALERT_AUX = Table(
    "alert_aux",
    MetaData(),
    Column("section", String(16), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

AuxChanges = Mapping[tuple[str, str], Any]  # (section, key) -> value as JSON data, None: delete the row

StateKey = tuple[str, str]  # (rule_id, subject)


def _utc(at: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: they were written in UTC."""
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# A datetime to write: the same instant in UTC. SQLite's DateTime keeps the wall-clock digits and drops the offset,
# so ``12:05+08:00`` written as is would read back as ``12:05Z``, eight hours late. Same conversion as on read.
_instant = _utc


def _path_str(path: Sequence[str]) -> str:
    return "/" + "".join(f"{p}/" for p in path) if path else "/"


def _path_tuple(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split("/") if p)


def alert_to_row(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id,
        "dedup_key": a.dedup_key,
        "open_key": a.dedup_key if a.open else None,
        "rule_id": a.rule_id,
        "device_id": a.device_id,
        "region_id": a.region_id,
        "region_path": _path_str(a.region_path),
        "severity": str(a.severity),
        "state": str(a.state),
        "title_zh": a.title_zh,
        "title_en": a.title_en,
        "started_at": _instant(a.started_at),
        "updated_at": _instant(a.updated_at),
        "detail": jsonable(a.detail),
        "acknowledged_by": a.acknowledged_by,
        "acknowledged_at": _instant(a.acknowledged_at),
        "ack_reason": a.ack_reason,
        "resolved_at": _instant(a.resolved_at),
        "resolved_by": a.resolved_by,
        "resolve_reason": a.resolve_reason,
        "assignee": a.assignee,
        "escalation_level": a.escalation_level,
        "flapping": a.flapping,
        "count": a.count,
        "silenced": a.silenced,
        "active": a.active,
        "learned_at": _instant(a.learned_at),
        "escalation_from": _instant(a.escalation_from),
    }


def row_to_alert(r: AlertRow) -> Alert:
    started = _utc(r.started_at)
    updated = _utc(r.updated_at)
    assert started is not None and updated is not None
    return Alert(
        id=r.id,
        dedup_key=r.dedup_key,
        rule_id=r.rule_id,
        device_id=r.device_id,
        region_id=r.region_id,
        severity=Severity(r.severity),
        state=AlertState(r.state),
        title_zh=r.title_zh,
        title_en=r.title_en,
        started_at=started,
        updated_at=updated,
        detail=dict(r.detail or {}),
        acknowledged_by=r.acknowledged_by,
        acknowledged_at=_utc(r.acknowledged_at),
        ack_reason=r.ack_reason,
        resolved_at=_utc(r.resolved_at),
        resolved_by=r.resolved_by,
        resolve_reason=r.resolve_reason,
        assignee=r.assignee,
        escalation_level=r.escalation_level,
        flapping=r.flapping,
        count=r.count,
        silenced=r.silenced,
        active=r.active,
        region_path=_path_tuple(r.region_path),
        learned_at=_utc(r.learned_at),
        escalation_from=_utc(r.escalation_from),
    )


def _silence_row(s: Silence) -> dict[str, Any]:
    return {
        "id": s.id,
        "region_id": s.region_id,
        "device_id": s.device_id,
        "rule_id": s.rule_id,
        "reason": s.reason,
        "creator": s.creator,
        "approver": s.approver,
        "starts_at": _instant(s.starts_at),
        "ends_at": _instant(s.ends_at),
        "renotify": s.renotify,
        "ended": s.ended,
        "created_at": _instant(s.created_at),
    }


def _row_silence(r: SilenceRow) -> Silence:
    starts, ends = _utc(r.starts_at), _utc(r.ends_at)
    assert starts is not None and ends is not None
    return Silence(
        r.id,
        r.reason,
        r.creator,
        starts,
        ends,
        r.region_id,
        r.device_id,
        r.rule_id,
        r.approver,
        r.renotify,
        _utc(r.created_at),
        r.ended,
    )


def jsonable(value: Any) -> Any:
    """Plain JSON data: keys become strings, tuples lists, datetimes ISO 8601 text, anything else ``str()``.

    One orjson round trip (C) instead of a Python walk: the lifecycle's aux state is written with every alert
    change and holds an entry per recently fired key, so this is on the alert path."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


@dataclass(slots=True)
class Snapshot:
    """Everything the alert service needs back after a restart."""

    alerts: list[Alert] = field(default_factory=list)  # open ones and those resolved within the flap window
    silences: list[Silence] = field(default_factory=list)
    states: dict[StateKey, tuple[str, str]] = field(default_factory=dict)  # -> (kind, state as JSON text)
    lifecycle: dict[str, Any] | None = None  # the aux state, as ``AlertBook.aux_to_json`` gives it
    lifecycle_legacy: bool = False  # read (at least partly) from the old one-row format: write it all again
    next_alert_id: int = 1
    next_silence_id: int = 1


class AlertRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Built once per (table, columns): constructing an upsert costs SQLAlchemy ~0.25 ms (column proxies for
        # ``excluded``), more than executing it on SQLite, and every alert change runs up to four of them.
        self._upsert = Upserter(engine)
        self._drop_legacy = False  # the old aux row was read: delete it with the first aux write

    # --- writes -------------------------------------------------------------------------------------------

    def save(
        self,
        *,
        alerts: Iterable[Alert] = (),
        silences: Iterable[Silence] = (),
        comments: Iterable[Comment] = (),
        states: Mapping[StateKey, tuple[str, str]] | None = None,
        aux: AuxChanges | None = None,
        now: datetime,
    ) -> None:
        """Write one consistent set of changes in one transaction. ``aux``: the lifecycle's aux keys that changed
        (``AlertBook.take_aux``); after a load from the old one-row format the first such write also deletes
        that row (the service then passes every key)."""
        alert_rows = sorted((alert_to_row(a) for a in alerts), key=lambda r: r["id"])
        # Free the open keys of alerts resolved in this set first, so a new alert with the same key can take it.
        try:
            with self.engine.begin() as conn:
                closing = [r["id"] for r in alert_rows if r["open_key"] is None]
                if closing:
                    conn.execute(update(AlertRow).where(AlertRow.id.in_(closing)).values(open_key=None))
                self._upsert(conn, AlertRow.__table__, alert_rows, ["id"])  # type: ignore[arg-type]
                self._upsert(
                    conn,
                    SilenceRow.__table__,  # type: ignore[arg-type]
                    [_silence_row(s) for s in silences],
                    ["id"],
                )
                crow = [
                    {"alert_id": c.alert_id, "kind": c.kind, "author": c.author, "text": c.text, "at": _instant(c.at)}
                    for c in comments
                ]
                if crow:
                    conn.execute(insert(AlertCommentRow), crow)
                if states:
                    srows = [
                        {"rule_id": k[0], "subject": k[1], "kind": kind, "state": st, "updated_at": now}
                        for k, (kind, st) in states.items()
                    ]
                    self._upsert(conn, RuleStateRow.__table__, srows, ["rule_id", "subject"])  # type: ignore[arg-type]
                if aux:
                    self._write_aux(conn, aux, now)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store write failed: {exc}") from exc

    def _write_aux(self, conn: Any, aux: AuxChanges, now: datetime) -> None:
        rows = [
            {"section": sec, "key": key, "value": value, "updated_at": now}
            for (sec, key), value in sorted(aux.items())
            if value is not None
        ]
        if rows:
            values = jsonable([r["value"] for r in rows])  # one C round trip: datetimes become ISO 8601 text
            for r, v in zip(rows, values, strict=True):
                r["value"] = v
            self._upsert(conn, ALERT_AUX, rows, ["section", "key"])
        gone: dict[str, list[str]] = {}
        for (sec, key), value in aux.items():
            if value is None:
                gone.setdefault(sec, []).append(key)
        for sec, keys in gone.items():
            for i in range(0, len(keys), 500):
                conn.execute(
                    delete(ALERT_AUX).where((ALERT_AUX.c.section == sec) & ALERT_AUX.c.key.in_(keys[i : i + 500]))
                )
        if self._drop_legacy:
            conn.execute(delete(AlertKvRow).where(AlertKvRow.key == LIFECYCLE_KEY))
            self._drop_legacy = False

    # --- reads --------------------------------------------------------------------------------------------

    def load(self, *, resolved_since: datetime) -> Snapshot:
        """Open alerts (plus those resolved since ``resolved_since``), live silences, rule states, aux state."""
        snap = Snapshot()
        try:
            with self.engine.connect() as conn, conn.begin():
                s = Session(bind=conn)
                rows = s.scalars(
                    select(AlertRow).where(
                        (AlertRow.state != str(AlertState.RESOLVED)) | (AlertRow.resolved_at >= resolved_since)
                    )
                )
                snap.alerts = [row_to_alert(r) for r in rows]
                snap.silences = [
                    _row_silence(r) for r in s.scalars(select(SilenceRow).where(SilenceRow.ended.is_(False)))
                ]
                for r in s.scalars(select(RuleStateRow)):
                    snap.states[(r.rule_id, r.subject)] = (r.kind, r.state)
                kv = s.get(AlertKvRow, LIFECYCLE_KEY)
                aux: dict[str, Any] = {sec: {} for sec in AUX_SECTIONS}
                if kv is not None:  # written before migration 0012: the base, the per-key rows are newer
                    for sec in AUX_SECTIONS:
                        aux[sec].update(dict(kv.value or {}).get(sec, {}))
                    snap.lifecycle_legacy = True
                    self._drop_legacy = True
                aux_rows = conn.execute(select(ALERT_AUX.c.section, ALERT_AUX.c.key, ALERT_AUX.c.value)).all()
                for sec, key, value in aux_rows:
                    if sec in aux:
                        aux[sec][key] = value
                snap.lifecycle = aux if (kv is not None or aux_rows) else None
                snap.next_alert_id = int(s.scalar(select(func.max(AlertRow.id))) or 0) + 1
                snap.next_silence_id = int(s.scalar(select(func.max(SilenceRow.id))) or 0) + 1
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc
        return snap

    def alerts(
        self,
        *,
        open_only: bool = False,
        region_id: str | None = None,
        device_id: str | None = None,
        rule_id: str | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Alerts newest first; ``region_id`` selects its whole subtree."""
        q = select(AlertRow)
        if open_only:
            q = q.where(AlertRow.state != str(AlertState.RESOLVED))
        if region_id is not None:
            q = q.where(AlertRow.region_path.contains(f"/{region_id}/"))
        if device_id is not None:
            q = q.where(AlertRow.device_id == device_id)
        if rule_id is not None:
            q = q.where(AlertRow.rule_id == rule_id)
        q = q.order_by(AlertRow.started_at.desc(), AlertRow.id.desc()).limit(limit)
        try:
            with self.engine.connect() as conn:
                return [row_to_alert(r) for r in Session(bind=conn).scalars(q)]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc

    def comments(self, alert_id: int) -> list[Comment]:
        q = select(AlertCommentRow).where(AlertCommentRow.alert_id == alert_id).order_by(AlertCommentRow.id)
        try:
            with self.engine.connect() as conn:
                rows = list(Session(bind=conn).scalars(q))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc
        return [Comment(r.alert_id, r.author, r.text, _utc(r.at) or r.at, r.kind) for r in rows]

    def insert_silence(self, s: Silence, *, attempts: int = 50) -> int:
        """Store a new silence under the first id not taken, at least ``s.id``, and return that id. Several
        processes may create silences at once (two ``lianfang serve`` behind a balancer, each numbering from its
        own engine's counter): the row's primary key decides, and a process that lost the race takes the next
        free id (docs/scaling.md)."""
        want = s.id
        for _ in range(attempts):
            try:
                with self.engine.begin() as conn:
                    top = int(conn.scalar(select(func.max(SilenceRow.id))) or 0)
                    sid = max(want, top + 1)
                    conn.execute(insert(SilenceRow), [{**_silence_row(s), "id": sid}])
                return sid
            except IntegrityError:
                want = sid + 1  # another process took it between our read and our insert
            except SQLAlchemyError as exc:
                raise StoreUnavailable(f"alert store write failed: {exc}") from exc
        raise StoreUnavailable(f"no free silence id after {attempts} attempts")

    def silences(self, *, active_only: bool = False, offset: int = 0, limit: int | None = None) -> list[Silence]:
        """Silences oldest first (``active_only``: those not ended yet), a page of them when ``limit`` is given."""
        q = select(SilenceRow).order_by(SilenceRow.id)
        if active_only:
            q = q.where(SilenceRow.ended.is_(False))
        if offset:
            q = q.offset(offset)
        if limit is not None:
            q = q.limit(limit)
        try:
            with self.engine.connect() as conn:
                return [_row_silence(r) for r in Session(bind=conn).scalars(q)]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc

    def count_silences(self, *, active_only: bool = False) -> int:
        q = select(func.count()).select_from(SilenceRow)
        if active_only:
            q = q.where(SilenceRow.ended.is_(False))
        try:
            with self.engine.connect() as conn:
                return int(conn.scalar(q) or 0)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc

    def silence(self, silence_id: int) -> Silence | None:
        try:
            with self.engine.connect() as conn:
                row = Session(bind=conn).get(SilenceRow, silence_id)
                return None if row is None else _row_silence(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc

    def delete_states(self, keys: Iterable[StateKey]) -> None:
        keys = list(keys)
        if not keys:
            return
        try:
            with self.engine.begin() as conn:
                for rule_id, subject in keys:
                    conn.execute(
                        delete(RuleStateRow).where(
                            (RuleStateRow.rule_id == rule_id) & (RuleStateRow.subject == subject)
                        )
                    )
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store write failed: {exc}") from exc
