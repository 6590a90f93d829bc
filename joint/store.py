"""SQL persistence of incidents, their members, timeline and tasks, and the correlator's windows.

SQLite or PostgreSQL. Incident, member and task writes are upserts by primary key, so writing the same snapshot
twice is harmless (the service writes what a batch changed in one transaction and writes it again after the
database was unavailable); timeline entries are appended. Library errors become ``StoreUnavailable``.

The correlator's windows (``Correlator.windows()``: every pattern's state, one window per scope or device) are
stored one row per (pattern, window) in ``joint_windows`` (migration 0012). The service writes only what changed
(``WindowWrite``: the rows of ``Correlator.take_window_changes()``, built by ``part_rows``): with 10,000 X9 windows
open, a snapshot serialises and writes the few windows that changed, not 10,000. A write also skips the rows whose
JSON equals what this store last wrote or read. A pattern's state without windows (the other kinds) is its row
``""``. The old one-document row (``joint_kv`` ``windows``) is read when no rows exist (``JointSnapshot.legacy``:
the service then writes every window once) and deleted by the first windows write.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    MetaData,
    Select,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.repository import _instant, _path_str, _path_tuple, _utc, jsonable
from alerts.types import Severity
from core.db import Upserter
from core.errors import StoreUnavailable
from joint.models import (
    Incident,
    IncidentMember,
    IncidentMemberRow,
    IncidentRow,
    IncidentState,
    JointKvRow,
    ScopeLevel,
    Task,
    TaskRow,
    TaskState,
    TimelineEntry,
    TimelineKind,
    TimelineRow,
)

WINDOWS_KEY = "windows"  # the windows as one joint_kv document, before migration 0012 (read, then dropped)

JOINT_WINDOWS = Table(
    "joint_windows",
    MetaData(),
    Column("pattern_id", String(64), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

WindowKey = tuple[str, str]  # (pattern id, "w:" + window key), or (pattern id, "") for the rest of its state


def _rest(doc: Any) -> Any:
    """A pattern's row ``""``: its state without its windows (marked as having had them)."""
    if isinstance(doc, Mapping) and isinstance(doc.get("windows"), Mapping):
        return {**{k: v for k, v in doc.items() if k != "windows"}, "_windows": True}
    return doc


def window_rows(windows: Mapping[str, Any]) -> dict[WindowKey, bytes]:
    """``Correlator.windows()`` as rows, each value as JSON bytes (what is compared and written)."""
    out: dict[WindowKey, bytes] = {}
    state = windows.get("state")
    if windows.get("v") != 1 or not isinstance(state, Mapping):
        return {("", ""): _json(windows)}  # not the correlator's format: kept whole
    for pid, doc in state.items():
        wins = doc.get("windows") if isinstance(doc, Mapping) else None
        if isinstance(wins, Mapping):
            for key, slot in wins.items():
                out[(pid, f"w:{key}")] = _json(slot)
        out[(pid, "")] = _json(_rest(doc))
    return out


def part_rows(parts: Mapping[tuple[str, str], Any]) -> dict[WindowKey, bytes | None]:
    """``Correlator.take_window_changes()``'s parts as rows (None: the window is gone), the same rows as
    ``window_rows`` gives for those parts."""
    out: dict[WindowKey, bytes | None] = {}
    for (pid, key), value in parts.items():
        if key:
            out[(pid, f"w:{key}")] = None if value is None else _json(value)
        else:
            out[(pid, "")] = _json(_rest(value))
    return out


@dataclass(slots=True)
class WindowWrite:
    """Window rows to write: ``rows`` (JSON bytes; None deletes the row), after deleting every row of the
    ``dropped`` patterns. ``full``: ``rows`` are all the rows there are (any other stored row is deleted)."""

    rows: dict[WindowKey, bytes | None] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)
    full: bool = False

    @classmethod
    def every(cls, windows: Mapping[str, Any]) -> WindowWrite:
        """Every window of ``Correlator.windows()`` (any other stored row is deleted)."""
        rows: dict[WindowKey, bytes | None] = {}
        rows.update(window_rows(windows))
        return cls(rows, full=True)

    def __bool__(self) -> bool:
        return bool(self.rows or self.dropped or self.full)

    def then(self, newer: WindowWrite) -> WindowWrite:
        """This write followed by ``newer`` as one (a failed write is merged into the next)."""
        if newer.full:
            return newer
        rows = {k: v for k, v in self.rows.items() if k[0] not in newer.dropped}
        rows.update(newer.rows)
        dropped = self.dropped | newer.dropped
        return WindowWrite(rows, set() if self.full else dropped, self.full)


def windows_from_rows(rows: Iterable[tuple[str, str, Any]]) -> dict[str, Any]:
    """The inverse of ``window_rows`` (with decoded values)."""
    base: dict[str, dict[str, Any]] = {}
    wins: dict[str, dict[str, Any]] = {}
    for pid, key, value in rows:
        if pid == "":
            return dict(value)
        if key == "":
            base[pid] = dict(value)
        elif key.startswith("w:"):
            wins.setdefault(pid, {})[key[2:]] = value
    state: dict[str, Any] = {}
    for pid, doc in base.items():
        if doc.pop("_windows", False):
            doc["windows"] = wins.get(pid, {})
        state[pid] = doc
    return {"v": 1, "state": state}


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


_OPEN_STATES = (str(IncidentState.OPEN), str(IncidentState.INVESTIGATING))


def _incident_row(i: Incident) -> dict[str, Any]:
    return {
        "id": i.id,
        "pattern_id": i.pattern_id,
        "type": i.type,
        "title_zh": i.title_zh,
        "title_en": i.title_en,
        "severity": str(i.severity),
        "state": str(i.state),
        "cause_code": i.cause_code,
        "scope_level": str(i.scope_level),
        "region_id": i.region_id,
        "region_path": _path_str(i.region_path),
        "group_key": i.group_key,
        "open_key": i.group_key if i.open else None,
        "opened_at": _instant(i.opened_at),
        "updated_at": _instant(i.updated_at),
        "resolved_at": _instant(i.resolved_at),
        "closed_at": _instant(i.closed_at),
        "closed_by": i.closed_by,
        "escalation_level": i.escalation_level,
        "detail": jsonable(i.detail),
    }


def _row_incident(r: IncidentRow, members: Iterable[IncidentMemberRow] = ()) -> Incident:
    opened, updated = _utc(r.opened_at), _utc(r.updated_at)
    assert opened is not None and updated is not None
    return Incident(
        id=r.id,
        pattern_id=r.pattern_id,
        type=r.type,
        title_zh=r.title_zh,
        title_en=r.title_en,
        severity=Severity(r.severity),
        state=IncidentState(r.state),
        scope_level=ScopeLevel(r.scope_level),
        region_id=r.region_id,
        group_key=r.group_key,
        opened_at=opened,
        updated_at=updated,
        region_path=_path_tuple(r.region_path),
        cause_code=r.cause_code,
        resolved_at=_utc(r.resolved_at),
        closed_at=_utc(r.closed_at),
        closed_by=r.closed_by,
        escalation_level=r.escalation_level,
        members={m.alert_id: _row_member(m) for m in members},
        detail=dict(r.detail or {}),
    )


def _member_row(incident_id: int, m: IncidentMember) -> dict[str, Any]:
    return {
        "incident_id": incident_id,
        "alert_id": m.alert_id,
        "added_at": _instant(m.added_at),
        "rule_id": m.rule_id,
        "device_id": m.device_id,
        "region_id": m.region_id,
        "muted": m.muted,
        "resolved": m.resolved,
    }


def _row_member(r: IncidentMemberRow) -> IncidentMember:
    return IncidentMember(
        alert_id=r.alert_id,
        added_at=_utc(r.added_at) or r.added_at,
        rule_id=r.rule_id,
        device_id=r.device_id,
        region_id=r.region_id,
        muted=r.muted,
        resolved=r.resolved,
    )


def _task_row(t: Task) -> dict[str, Any]:
    return {
        "id": t.id,
        "incident_id": t.incident_id,
        "department": t.department,
        "state": str(t.state),
        "created_at": _instant(t.created_at),
        "deadline": _instant(t.deadline),
        "acknowledged_by": t.acknowledged_by,
        "acknowledged_at": _instant(t.acknowledged_at),
        "closed_by": t.closed_by,
        "closed_at": _instant(t.closed_at),
        "escalation_level": t.escalation_level,
        "note": t.note,
    }


def _row_task(r: TaskRow) -> Task:
    created, deadline = _utc(r.created_at), _utc(r.deadline)
    assert created is not None and deadline is not None
    return Task(
        id=r.id,
        incident_id=r.incident_id,
        department=r.department,
        state=TaskState(r.state),
        created_at=created,
        deadline=deadline,
        acknowledged_by=r.acknowledged_by,
        acknowledged_at=_utc(r.acknowledged_at),
        closed_by=r.closed_by,
        closed_at=_utc(r.closed_at),
        escalation_level=r.escalation_level,
        note=r.note,
    )


def _row_entry(r: TimelineRow) -> TimelineEntry:
    return TimelineEntry(
        incident_id=r.incident_id,
        ts=_utc(r.ts) or r.ts,
        kind=TimelineKind(r.kind),
        actor=r.actor,
        text=r.text,
        data=dict(r.data or {}),
        id=r.id,
    )


@dataclass(slots=True)
class JointSnapshot:
    """What the joint service needs back after a restart."""

    incidents: list[Incident] = field(default_factory=list)  # open ones, and resolved ones with open tasks
    tasks: list[Task] = field(default_factory=list)  # the open tasks of those incidents
    windows: dict[str, Any] | None = None
    next_incident_id: int = 1
    next_task_id: int = 1
    legacy: bool = False  # the windows came from the old one-document row (the next write has to write them all)


class JointStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._upsert = Upserter(engine)
        self._written: dict[WindowKey, bytes] = {}  # the window rows as last written or read
        self._wlock = threading.Lock()  # one write at a time (the diffs are against _written and _members_written)
        # (incident id, alert id) -> the member row as this store last wrote it: an incident is saved with all its
        # members, but only new or changed member rows are written (a city cluster of hundreds of members would
        # otherwise rewrite them all at every change, holding the database's write lock that alert commits wait on)
        self._members_written: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._drop_legacy = False
        self.window_rows_written = 0  # rows upserted or deleted by windows writes (for the benchmarks)
        self.member_rows_written = 0  # incident member rows upserted (likewise)

    # --- writes -------------------------------------------------------------------------------------------

    def save(
        self,
        *,
        incidents: Iterable[Incident] = (),
        timeline: Iterable[TimelineEntry] = (),
        tasks: Iterable[Task] = (),
        windows: dict[str, Any] | WindowWrite | None = None,
        now: datetime,
    ) -> None:
        """Write one consistent set of changes in one transaction (incidents with all their members).

        ``windows``: a ``WindowWrite``, or every window (``Correlator.windows()``); either way only the rows that
        differ from what this store last wrote or read are written."""
        incs = sorted(incidents, key=lambda i: i.id)
        rows = [_incident_row(i) for i in incs]
        members = [_member_row(i.id, m) for i in incs for m in i.members.values()]
        trows = sorted((_task_row(t) for t in tasks), key=lambda r: r["id"])
        erows = [
            {
                "incident_id": e.incident_id,
                "ts": _instant(e.ts),
                "kind": str(e.kind),
                "actor": e.actor,
                "text": e.text,
                "data": jsonable(e.data),
            }
            for e in timeline
        ]
        with self._wlock:
            known = self._members_written
            fresh = [m for m in members if known.get((m["incident_id"], m["alert_id"])) != tuple(m.values())]
            if windows is None:
                self._save(rows, fresh, trows, erows, None, (), now)
            else:
                ww = windows if isinstance(windows, WindowWrite) else WindowWrite.every(windows)
                written = self._written
                dropped = ww.dropped if not ww.full else set()
                changed: dict[WindowKey, bytes | None] = {
                    k: v
                    for k, v in ww.rows.items()
                    if (written.get(k) != v and (v is not None or k in written)) or (k[0] in dropped and v is not None)
                }
                if ww.full:
                    changed.update({k: None for k in written.keys() - ww.rows.keys()})
                self._save(rows, fresh, trows, erows, changed, sorted(dropped), now)
                gone = [k for k in written if k[0] in dropped]
                for k in gone:
                    del written[k]
                for k, v in changed.items():
                    if v is None:
                        written.pop(k, None)
                    else:
                        written[k] = v
                self.window_rows_written += len(changed) + len(gone)
            for m in fresh:  # only once the transaction committed (a failed one is written in full next time)
                known[(m["incident_id"], m["alert_id"])] = tuple(m.values())
            self.member_rows_written += len(fresh)
            closed = {r["id"] for r in rows if r["open_key"] is None}
            if closed:  # a closed incident's members are seldom written again: forget them (a miss writes again)
                for key in [k for k in known if k[0] in closed]:
                    del known[key]

    def _save(
        self,
        rows: list[dict[str, Any]],
        members: list[dict[str, Any]],
        trows: list[dict[str, Any]],
        erows: list[dict[str, Any]],
        windows: Mapping[WindowKey, bytes | None] | None,
        dropped: Sequence[str],
        now: datetime,
    ) -> None:
        try:
            with self.engine.begin() as conn:
                closing = [r["id"] for r in rows if r["open_key"] is None]
                if closing:  # free the group keys first, so a new incident of the same group can take one
                    conn.execute(update(IncidentRow).where(IncidentRow.id.in_(closing)).values(open_key=None))
                self._upsert(conn, IncidentRow.__table__, rows, ["id"])  # type: ignore[arg-type]
                self._upsert(
                    conn,
                    IncidentMemberRow.__table__,  # type: ignore[arg-type]
                    members,
                    ["incident_id", "alert_id"],
                )
                self._upsert(conn, TaskRow.__table__, trows, ["id"])  # type: ignore[arg-type]
                if erows:
                    conn.execute(insert(TimelineRow), erows)
                if windows is not None:
                    self._write_windows(conn, windows, dropped, now)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"incident store write failed: {exc}") from exc

    def _write_windows(
        self, conn: Any, windows: Mapping[WindowKey, bytes | None], dropped: Sequence[str], now: datetime
    ) -> None:
        c = JOINT_WINDOWS.c
        if dropped:  # before the rows written after the drop
            conn.execute(delete(JOINT_WINDOWS).where(c.pattern_id.in_(dropped)))
        at = _instant(now)
        upserts = [
            {"pattern_id": pid, "key": key, "value": orjson.loads(v), "updated_at": at}
            for (pid, key), v in sorted(windows.items())
            if v is not None
        ]
        self._upsert(conn, JOINT_WINDOWS, upserts, ["pattern_id", "key"])
        gone: dict[str, list[str]] = {}
        for (pid, key), v in windows.items():
            if v is None:
                gone.setdefault(pid, []).append(key)
        for pid, keys in gone.items():
            for i in range(0, len(keys), 500):
                conn.execute(delete(JOINT_WINDOWS).where((c.pattern_id == pid) & c.key.in_(keys[i : i + 500])))
        if self._drop_legacy:
            conn.execute(delete(JointKvRow).where(JointKvRow.key == WINDOWS_KEY))
            self._drop_legacy = False

    # Thin, named writes for callers outside the service (API, linkage actions). Each is one transaction.

    def create_incident(self, incident: Incident, *, now: datetime, entries: Iterable[TimelineEntry] = ()) -> None:
        self.save(incidents=[incident], timeline=entries, now=now)

    def update_incident(self, incident: Incident, *, now: datetime) -> None:
        self.save(incidents=[incident], now=now)

    def add_members(self, incident: Incident, members: Iterable[IncidentMember], *, now: datetime) -> None:
        for m in members:
            incident.members[m.alert_id] = m
        self.save(incidents=[incident], now=now)

    def add_timeline(self, entries: Iterable[TimelineEntry], *, now: datetime) -> None:
        self.save(timeline=entries, now=now)

    def save_tasks(self, tasks: Iterable[Task], *, now: datetime) -> None:
        self.save(tasks=tasks, now=now)

    # --- reads --------------------------------------------------------------------------------------------

    def action_docs(self, incident_id: int | None = None) -> list[dict[str, Any]]:
        """The linkage-action documents of every timeline entry (of one incident), oldest first: the durable record
        the linkage actions are rebuilt from after a restart."""
        q = select(TimelineRow.data).where(TimelineRow.kind == str(TimelineKind.ACTION)).order_by(TimelineRow.id)
        if incident_id is not None:
            q = q.where(TimelineRow.incident_id == incident_id)
        rows: list[Any] = self._session_read(lambda s: list(s.scalars(q)))
        return [d["action"] for d in rows if isinstance(d, dict) and isinstance(d.get("action"), dict)]

    def _session_read(self, fn: Any) -> Any:
        try:
            with self.engine.connect() as conn:
                return fn(Session(bind=conn))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"incident store read failed: {exc}") from exc

    @staticmethod
    def _with_members(s: Session, rows: list[IncidentRow]) -> list[Incident]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        by_incident: dict[int, list[IncidentMemberRow]] = {}
        for i in range(0, len(ids), 500):
            q = select(IncidentMemberRow).where(IncidentMemberRow.incident_id.in_(ids[i : i + 500]))
            for m in s.scalars(q):
                by_incident.setdefault(m.incident_id, []).append(m)
        return [_row_incident(r, by_incident.get(r.id, ())) for r in rows]

    def get(self, incident_id: int) -> Incident | None:
        def read(s: Session) -> Incident | None:
            row = s.get(IncidentRow, incident_id)
            return None if row is None else self._with_members(s, [row])[0]

        result: Incident | None = self._session_read(read)
        return result

    @staticmethod
    def _filtered(
        q: Select[Any],
        *,
        open_only: bool,
        state: str | None,
        region_id: str | None,
        region_ids: Sequence[str] | None,
        pattern_id: str | None,
        type: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Select[Any]:
        if open_only:
            q = q.where(IncidentRow.state.in_(_OPEN_STATES))
        if state is not None:
            q = q.where(IncidentRow.state == state)
        if region_id is not None:  # the region's subtree
            q = q.where(IncidentRow.region_path.contains(f"/{region_id}/"))
        if region_ids is not None:  # any of these subtrees (a user's scope)
            if not region_ids:
                return q.where(IncidentRow.id < 0)
            cond = IncidentRow.region_path.contains(f"/{region_ids[0]}/")
            for r in region_ids[1:]:
                cond = cond | IncidentRow.region_path.contains(f"/{r}/")
            q = q.where(cond)
        if pattern_id is not None:
            q = q.where(IncidentRow.pattern_id == pattern_id)
        if type is not None:
            q = q.where(IncidentRow.type == type)
        if since is not None:
            q = q.where(IncidentRow.opened_at >= _instant(since))
        if until is not None:
            q = q.where(IncidentRow.opened_at < _instant(until))
        return q

    def list(
        self,
        *,
        open_only: bool = False,
        state: str | None = None,
        region_id: str | None = None,
        region_ids: Sequence[str] | None = None,
        pattern_id: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents newest first, with their members; ``region_id`` selects the region's subtree, ``region_ids``
        any of several subtrees (an empty list selects nothing)."""
        q = self._filtered(
            select(IncidentRow),
            open_only=open_only,
            state=state,
            region_id=region_id,
            region_ids=region_ids,
            pattern_id=pattern_id,
            type=type,
            since=since,
            until=until,
        )
        q = q.order_by(IncidentRow.opened_at.desc(), IncidentRow.id.desc()).offset(offset).limit(limit)
        result: list[Incident] = self._session_read(lambda s: self._with_members(s, list(s.scalars(q))))
        return result

    def count(
        self,
        *,
        open_only: bool = False,
        state: str | None = None,
        region_id: str | None = None,
        region_ids: Sequence[str] | None = None,
        pattern_id: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        q = self._filtered(
            select(func.count()).select_from(IncidentRow),
            open_only=open_only,
            state=state,
            region_id=region_id,
            region_ids=region_ids,
            pattern_id=pattern_id,
            type=type,
            since=since,
            until=until,
        )
        return int(self._session_read(lambda s: s.scalar(q)) or 0)

    def timeline(self, incident_id: int) -> builtins.list[TimelineEntry]:
        q = select(TimelineRow).where(TimelineRow.incident_id == incident_id).order_by(TimelineRow.ts, TimelineRow.id)
        result: builtins.list[TimelineEntry] = self._session_read(lambda s: [_row_entry(r) for r in s.scalars(q)])
        return result

    def tasks(
        self,
        *,
        incident_id: int | None = None,
        department: str | None = None,
        open_only: bool = False,
        offset: int = 0,
        limit: int | None = None,
    ) -> builtins.list[Task]:
        q = select(TaskRow)
        if incident_id is not None:
            q = q.where(TaskRow.incident_id == incident_id)
        if department is not None:
            q = q.where(TaskRow.department == department)
        if open_only:
            q = q.where(TaskRow.state != str(TaskState.CLOSED))
        q = q.order_by(TaskRow.id).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        result: builtins.list[Task] = self._session_read(lambda s: [_row_task(r) for r in s.scalars(q)])
        return result

    def task(self, task_id: int) -> Task | None:
        def read(s: Session) -> Task | None:
            row = s.get(TaskRow, task_id)
            return None if row is None else _row_task(row)

        result: Task | None = self._session_read(read)
        return result

    def incidents_of_alerts(self, alert_ids: Iterable[int]) -> dict[int, int]:
        """alert id -> the newest incident it is a member of (for the alerts list)."""
        ids = list(alert_ids)
        if not ids:
            return {}

        def read(s: Session) -> dict[int, int]:
            out: dict[int, int] = {}
            for i in range(0, len(ids), 500):
                q = select(IncidentMemberRow.alert_id, IncidentMemberRow.incident_id).where(
                    IncidentMemberRow.alert_id.in_(ids[i : i + 500])
                )
                for alert_id, incident_id in s.execute(q):
                    out[alert_id] = max(out.get(alert_id, 0), incident_id)
            return out

        result: dict[int, int] = self._session_read(read)
        return result

    def load(self) -> JointSnapshot:
        """Open incidents and every incident with an open task, their open tasks, the windows, the next ids."""
        snap = JointSnapshot()

        def read(s: Session) -> None:
            open_tasks = [
                _row_task(r) for r in s.scalars(select(TaskRow).where(TaskRow.state != str(TaskState.CLOSED)))
            ]
            with_tasks = {t.incident_id for t in open_tasks}
            q = select(IncidentRow).where(IncidentRow.state.in_(_OPEN_STATES) | IncidentRow.id.in_(with_tasks))
            snap.incidents = self._with_members(s, list(s.scalars(q.order_by(IncidentRow.id))))
            snap.tasks = open_tasks
            c = JOINT_WINDOWS.c
            rows = [(p, k, v) for p, k, v in s.execute(select(c.pattern_id, c.key, c.value))]
            if rows:
                snap.windows = windows_from_rows(rows)
                written = {(p, k): _json(v) for p, k, v in rows}
            else:
                kv = s.get(JointKvRow, WINDOWS_KEY)
                snap.windows = dict(kv.value) if kv is not None else None
                written = {}
            with self._wlock:
                self._written = written
                self._drop_legacy = s.get(JointKvRow, WINDOWS_KEY) is not None
            snap.legacy = not rows and snap.windows is not None
            snap.next_incident_id = int(s.scalar(select(func.max(IncidentRow.id))) or 0) + 1
            snap.next_task_id = int(s.scalar(select(func.max(TaskRow.id))) or 0) + 1

        self._session_read(read)
        return snap
