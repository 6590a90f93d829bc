"""Region risk and statistics over SQL: reads the open items and the region tree, keeps the score history, runs
the statistics queries (SQLite and PostgreSQL). The scoring itself is pure (``joint/risk.py``, ``joint/stats.py``).

Every read is bounded (``risk.max_items``, ``risk.stats_max_rows``); an answer that hit its bound says so
(``truncated``). Library errors become ``StoreUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import DateTime, Engine, Float, Integer, String, delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from alerts.models import AlertRow
from alerts.repository import AlertRepository
from alerts.types import AlertState
from core.db import Base
from core.errors import StoreUnavailable
from joint.models import IncidentRow, TaskRow
from joint.risk import RegionNode, RiskItem, RiskPicture, RiskWeights, compute
from joint.stats import Record
from joint.store import JointStore

logger = logging.getLogger(__name__)


class RegionRiskRow(Base):
    """Schema: core/migrations/versions/0009_risk_history.py."""

    __tablename__ = "region_risk_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    region_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    score: Mapped[float] = mapped_column(Float)
    own: Mapped[float] = mapped_column(Float)
    alerts: Mapped[int] = mapped_column(Integer)
    incidents: Mapped[int] = mapped_column(Integer)


def utc(at: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: they were written in UTC."""
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _utc(at: datetime) -> datetime:
    out = utc(at)
    assert out is not None
    return out


class OpenIncident(Protocol):
    """What the score needs of an incident (``joint.models.Incident`` has it)."""

    @property
    def id(self) -> int: ...
    @property
    def region_id(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def title_zh(self) -> str: ...
    @property
    def opened_at(self) -> datetime: ...
    @property
    def muted_ids(self) -> list[int]: ...


class OpenIncidentSource(Protocol):
    """Open incidents (open or investigating), newest first (``joint.store.JointStore`` is one)."""

    def list(self, *, open_only: bool = ..., limit: int = ...) -> Sequence[OpenIncident]: ...


class NoIncidents:
    """Without an incident store: risk from alerts only."""

    def list(self, *, open_only: bool = False, limit: int = 100) -> Sequence[OpenIncident]:
        return []


def incident_item(i: OpenIncident) -> RiskItem:
    since = utc(i.opened_at)
    assert since is not None
    return RiskItem(
        "incident",
        i.id,
        i.region_id,
        str(i.severity),
        since,
        handled=str(i.state) == "investigating",
        label=i.type,
        title=i.title_zh,
    )


def _read(engine: Engine, q: Any) -> list[Any]:
    try:
        with engine.connect() as conn:
            return list(conn.execute(q).all())
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"risk read failed: {exc}") from exc


def region_nodes(regions: Sequence[Any]) -> list[RegionNode]:
    """``devices.models.Region`` rows (``Registry.regions()``) as tree nodes."""
    return [RegionNode(r.id, r.parent_id, r.level, r.name) for r in regions]


def open_alert_items(engine: Engine, *, limit: int, muted: set[int]) -> tuple[list[RiskItem], bool]:
    """Open alerts (newest first, at most ``limit``) as risk items, silenced and muted ones left out; and whether
    the bound was hit."""
    alerts = AlertRepository(engine).alerts(open_only=True, limit=limit)
    items = [
        RiskItem(
            "alert",
            a.id,
            a.region_id,
            str(a.severity),
            a.learned_at or a.started_at,
            handled=a.state is AlertState.ACKNOWLEDGED,
            handled_at=a.acknowledged_at,
            label=a.rule_id,
            title=a.title_zh,
        )
        for a in alerts
        if not a.silenced and a.id not in muted
    ]
    return items, len(alerts) >= limit


@dataclass(frozen=True, slots=True)
class RiskInputs:
    regions: list[RegionNode]
    items: list[RiskItem]
    truncated: bool


class RiskReader:
    """Reads what ``joint.risk.compute`` needs and computes the picture."""

    def __init__(
        self,
        engine: Engine,
        regions: Callable[[], Sequence[Any]],
        incidents: OpenIncidentSource | None = None,
        *,
        max_items: int = 50_000,
    ) -> None:
        self.engine = engine
        self.regions = regions
        self.incidents: OpenIncidentSource = incidents if incidents is not None else JointStore(engine)
        self.max_items = max_items

    def inputs(self) -> RiskInputs:
        """The tree, the open incidents and the open alerts (silenced ones and those muted under an open incident
        left out)."""
        incidents = list(self.incidents.list(open_only=True, limit=self.max_items))
        muted = {a for i in incidents for a in i.muted_ids}
        alerts, truncated = open_alert_items(self.engine, limit=self.max_items, muted=muted)
        items = alerts + [incident_item(i) for i in incidents]
        return RiskInputs(region_nodes(self.regions()), items, truncated or len(incidents) >= self.max_items)

    def picture(self, weights: RiskWeights, *, now: datetime, top_contributors: int = 5) -> RiskPicture:
        inp = self.inputs()
        return compute(
            inp.regions, inp.items, weights, now=now, top_contributors=top_contributors, truncated=inp.truncated
        )


# --- history ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    region_id: str
    at: datetime
    score: float
    own: float
    alerts: int
    incidents: int


class RiskHistory:
    """The ``region_risk_history`` table: snapshots written by ``RiskSnapshotter``, read for trends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, points: Sequence[HistoryPoint]) -> None:
        if not points:
            return
        rows = [
            {
                "region_id": p.region_id,
                "at": p.at.astimezone(UTC),
                "score": p.score,
                "own": p.own,
                "alerts": p.alerts,
                "incidents": p.incidents,
            }
            for p in points
        ]
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(RegionRiskRow), rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"risk history write failed: {exc}") from exc

    def prune(self, before: datetime) -> int:
        try:
            with self.engine.begin() as conn:
                res = conn.execute(delete(RegionRiskRow).where(RegionRiskRow.at < before.astimezone(UTC)))
                return int(res.rowcount or 0)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"risk history prune failed: {exc}") from exc

    def series(self, region_id: str, start: datetime, end: datetime, *, limit: int) -> tuple[list[HistoryPoint], bool]:
        """Points of one region in [start, end), oldest first, at most ``limit`` (the newest are cut: truncated)."""
        q = (
            select(RegionRiskRow)
            .where(
                RegionRiskRow.region_id == region_id,
                RegionRiskRow.at >= start.astimezone(UTC),
                RegionRiskRow.at < end.astimezone(UTC),
            )
            .order_by(RegionRiskRow.at, RegionRiskRow.id)
            .limit(limit + 1)
        )
        try:
            with self.engine.connect() as conn:
                rows = list(Session(bind=conn).scalars(q))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"risk history read failed: {exc}") from exc
        points = [
            HistoryPoint(r.region_id, _utc(r.at), float(r.score), float(r.own), int(r.alerts), int(r.incidents))
            for r in rows[:limit]
        ]
        return points, len(rows) > limit

    def last_nonzero(self) -> set[str]:
        """The regions with a score above 0 in the newest snapshot."""
        newest = select(func.max(RegionRiskRow.at)).scalar_subquery()
        q = select(RegionRiskRow.region_id).where(RegionRiskRow.at == newest, RegionRiskRow.score > 0)
        return {str(r[0]) for r in _read(self.engine, q)}

    def count(self) -> int:
        return int(_read(self.engine, select(func.count()).select_from(RegionRiskRow))[0][0])


class RiskSnapshotter:
    """The scheduled job: computes the picture and writes one history point per region with a score, plus a 0 for
    each region that had one at the previous snapshot (so a trend comes down to 0); prunes old rows."""

    def __init__(
        self,
        reader: RiskReader,
        history: RiskHistory,
        weights: RiskWeights,
        *,
        clock: Callable[[], datetime],
        keep: timedelta,
        max_regions: int,
    ) -> None:
        self.reader = reader
        self.history = history
        self.weights = weights
        self.clock = clock
        self.keep = keep
        self.max_regions = max_regions
        self._last_nonzero: set[str] | None = None  # read from the table at the first run (after a restart)

    def run(self) -> int:
        """One snapshot; returns the points written. Store errors are logged (the next run tries again)."""
        now = self.clock()
        try:
            picture = self.reader.picture(self.weights, now=now, top_contributors=0)
            hot = sorted((r for r in picture.regions.values() if r.score > 0), key=lambda r: (-r.score, r.id))
            hot = hot[: self.max_regions]
            points = [HistoryPoint(r.id, now, r.score, r.own, r.subtree_alerts, r.subtree_incidents) for r in hot]
            now_hot = {r.id for r in hot}
            if self._last_nonzero is None:
                self._last_nonzero = self.history.last_nonzero()
            points += [
                HistoryPoint(rid, now, 0.0, 0.0, 0, 0)
                for rid in sorted(self._last_nonzero - now_hot)
                if rid in picture.regions and picture.regions[rid].score == 0
            ]
            self.history.write(points)
            self._last_nonzero = now_hot
            pruned = self.history.prune(now - self.keep)
        except StoreUnavailable as exc:
            logger.warning("risk snapshot: store unavailable, will retry: %s", exc)
            return 0
        if pruned:
            logger.info("risk history: deleted %d points older than %s", pruned, self.keep)
        return len(points)


def snapshotter_from_settings(
    engine: Engine, regions: Callable[[], Sequence[Any]], settings: Any, clock: Callable[[], datetime]
) -> RiskSnapshotter:
    """The job as the runtime schedules it (``settings``: ``core.settings.Settings``)."""
    r = settings.risk
    return RiskSnapshotter(
        RiskReader(engine, regions, max_items=r.max_items),
        RiskHistory(engine),
        RiskWeights.from_settings(r),
        clock=clock,
        keep=timedelta(days=r.history_days),
        max_regions=r.history_max_regions,
    )


# --- statistics ---------------------------------------------------------------------------------------------------


def _path_clause(column: Any, within: str | None) -> Any:
    return None if within is None else column.contains(f"/{within}/", autoescape=True)


def alert_records(
    engine: Engine, start: datetime, end: datetime, *, within: str | None, limit: int
) -> tuple[list[Record], bool]:
    """Alerts raised (``started_at``) in [start, end) inside ``within``'s subtree (None: everywhere), at most
    ``limit``; and whether there were more."""
    q = select(
        AlertRow.region_id,
        AlertRow.rule_id,
        AlertRow.severity,
        AlertRow.started_at,
        AlertRow.learned_at,
        AlertRow.acknowledged_at,
        AlertRow.resolved_at,
    ).where(AlertRow.started_at >= start.astimezone(UTC), AlertRow.started_at < end.astimezone(UTC))
    clause = _path_clause(AlertRow.region_path, within)
    if clause is not None:
        q = q.where(clause)
    rows = _read(engine, q.order_by(AlertRow.started_at, AlertRow.id).limit(limit + 1))
    out = [
        Record(
            keys={"region": r[0], "rule": r[1], "severity": r[2]},
            raised_at=_utc(r[4] if r[4] is not None else r[3]),
            acknowledged_at=utc(r[5]),
            resolved_at=utc(r[6]),
        )
        for r in rows[:limit]
    ]
    return out, len(rows) > limit


def incident_records(
    engine: Engine, start: datetime, end: datetime, *, within: str | None, limit: int
) -> tuple[list[Record], bool]:
    """Incidents opened in [start, end) inside ``within``'s subtree: acknowledged when their first department
    task was, resolved at ``resolved_at`` (or ``closed_at``)."""
    first_ack = (
        select(TaskRow.incident_id, func.min(TaskRow.acknowledged_at).label("ack"))
        .group_by(TaskRow.incident_id)
        .subquery()
    )
    q = (
        select(
            IncidentRow.region_id,
            IncidentRow.type,
            IncidentRow.severity,
            IncidentRow.opened_at,
            first_ack.c.ack,
            IncidentRow.resolved_at,
            IncidentRow.closed_at,
        )
        .outerjoin(first_ack, first_ack.c.incident_id == IncidentRow.id)
        .where(IncidentRow.opened_at >= start.astimezone(UTC), IncidentRow.opened_at < end.astimezone(UTC))
    )
    clause = _path_clause(IncidentRow.region_path, within)
    if clause is not None:
        q = q.where(clause)
    rows = _read(engine, q.order_by(IncidentRow.opened_at, IncidentRow.id).limit(limit + 1))
    out = [
        Record(
            keys={"region": r[0], "type": r[1], "severity": r[2]},
            raised_at=_utc(r[3]),
            acknowledged_at=utc(r[4]),
            resolved_at=utc(r[5] if r[5] is not None else r[6]),
        )
        for r in rows[:limit]
    ]
    return out, len(rows) > limit


def task_records(
    engine: Engine, start: datetime, end: datetime, *, within: str | None, limit: int
) -> tuple[list[Record], bool]:
    """Department tasks of incidents opened in [start, end) inside ``within``'s subtree: created, acknowledged,
    closed."""
    q = (
        select(
            TaskRow.department, IncidentRow.region_id, TaskRow.created_at, TaskRow.acknowledged_at, TaskRow.closed_at
        )
        .join(IncidentRow, IncidentRow.id == TaskRow.incident_id)
        .where(IncidentRow.opened_at >= start.astimezone(UTC), IncidentRow.opened_at < end.astimezone(UTC))
    )
    clause = _path_clause(IncidentRow.region_path, within)
    if clause is not None:
        q = q.where(clause)
    rows = _read(engine, q.order_by(TaskRow.created_at, TaskRow.id).limit(limit + 1))
    out = [
        Record(
            keys={"department": r[0], "region": r[1]},
            raised_at=_utc(r[2]),
            acknowledged_at=utc(r[3]),
            resolved_at=utc(r[4]),
        )
        for r in rows[:limit]
    ]
    return out, len(rows) > limit
