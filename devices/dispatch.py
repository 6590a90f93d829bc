"""Vehicle dispatch records (派车单): the approvals rule V2 (movement without dispatch) checks against.

A dispatch names a vehicle, its driver, the purpose and the planned start and end; it is *pending* until a region
admin approves it, and *closed* once its actual end is recorded (a pending dispatch that is closed was cancelled).
Who may do what (docs/alerts.md "Dispatches"): an operator or admin whose scope holds the vehicle requests and
closes; an admin of the vehicle's region approves, and never their own request (审批人不得为申请人).

The alert engine does not read this table per message: ``DispatchStore.book`` gives the approved dispatches around
now as an ``alerts.kinds_vehicle.DispatchBook``, re-read on each registry refresh of the alert service.

Times are epoch milliseconds (UTC instants) in the table and in ``Dispatch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Literal

from sqlalchemy import BigInteger, Boolean, Engine, Integer, String, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from alerts.calendar import BEIJING
from alerts.kinds_vehicle import DispatchBook
from core.db import Base, session_factory
from core.errors import StoreUnavailable, UserError

Status = Literal["pending", "approved", "closed"]
STATUSES: tuple[str, ...] = ("pending", "approved", "closed")
MAX_SPAN_MS = 31 * 86_400_000  # a dispatch plans at most a month
BOOK_HORIZON_MS = 2 * 86_400_000  # the engine's book: dispatches ending up to 2 days ago or starting within 2 days


class DispatchRow(Base):
    __tablename__ = "vehicle_dispatches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    vehicle_id: Mapped[str] = mapped_column(String(64))
    region_id: Mapped[str] = mapped_column(String(64))
    driver: Mapped[str] = mapped_column(String(100))
    purpose: Mapped[str] = mapped_column(String(500))
    requested_by: Mapped[str] = mapped_column(String(200))
    planned_start_ms: Mapped[int] = mapped_column(BigInteger)
    planned_end_ms: Mapped[int] = mapped_column(BigInteger)
    approved: Mapped[bool] = mapped_column(Boolean, default=False)
    approver: Mapped[str | None] = mapped_column(String(200), nullable=True)
    approved_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actual_start_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    actual_end_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True, slots=True)
class Dispatch:
    id: int
    vehicle_id: str
    region_id: str
    driver: str
    purpose: str
    requested_by: str
    planned_start_ms: int
    planned_end_ms: int
    approved: bool
    approver: str | None
    approved_ms: int | None
    actual_start_ms: int | None
    actual_end_ms: int | None
    created_ms: int
    updated_ms: int

    @property
    def status(self) -> Status:
        if self.actual_end_ms is not None:
            return "closed"
        return "approved" if self.approved else "pending"

    def window(self) -> tuple[int, int]:
        """The time it covers: actual start (else planned) to actual end (else planned)."""
        start = self.actual_start_ms if self.actual_start_ms is not None else self.planned_start_ms
        end = self.actual_end_ms if self.actual_end_ms is not None else self.planned_end_ms
        return start, max(start, end)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["status"] = self.status
        return out

    @staticmethod
    def of(r: DispatchRow) -> Dispatch:
        return Dispatch(
            r.id,
            r.vehicle_id,
            r.region_id,
            r.driver,
            r.purpose,
            r.requested_by,
            r.planned_start_ms,
            r.planned_end_ms,
            bool(r.approved),
            r.approver,
            r.approved_ms,
            r.actual_start_ms,
            r.actual_end_ms,
            r.created_ms,
            r.updated_ms,
        )


class DispatchConflict(UserError):
    """The dispatch is not in a state that allows the change (already approved, closed, self-approval)."""


def check_plan(start_ms: int, end_ms: int) -> None:
    if end_ms <= start_ms:
        raise UserError("the planned end must be after the planned start")
    if end_ms - start_ms > MAX_SPAN_MS:
        raise UserError("a dispatch plans at most 31 days")


class DispatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine)

    def session(self) -> Session:
        return self._sessions()  # type: ignore[no-any-return]

    def create(
        self,
        *,
        vehicle_id: str,
        region_id: str,
        driver: str,
        purpose: str,
        requested_by: str,
        planned_start_ms: int,
        planned_end_ms: int,
        now_ms: int,
    ) -> Dispatch:
        check_plan(planned_start_ms, planned_end_ms)
        row = DispatchRow(
            vehicle_id=vehicle_id,
            region_id=region_id,
            driver=driver,
            purpose=purpose,
            requested_by=requested_by,
            planned_start_ms=planned_start_ms,
            planned_end_ms=planned_end_ms,
            approved=False,
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        try:
            with self.session() as s, s.begin():
                s.add(row)
                s.flush()
                return Dispatch.of(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"dispatch write failed: {exc}") from exc

    def get(self, dispatch_id: int) -> Dispatch | None:
        try:
            with self.session() as s:
                row = s.get(DispatchRow, dispatch_id)
                return Dispatch.of(row) if row is not None else None
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"dispatch read failed: {exc}") from exc

    def list(
        self,
        *,
        region_ids: Sequence[str] | None = None,
        vehicle_id: str | None = None,
        status: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Dispatch], int]:
        """Dispatches newest planned start first; ``start_ms`` / ``end_ms``: those whose plan overlaps the range.
        Returns (page, total)."""
        q = select(DispatchRow)
        if region_ids is not None:
            q = q.where(DispatchRow.region_id.in_(list(region_ids)))
        if vehicle_id is not None:
            q = q.where(DispatchRow.vehicle_id == vehicle_id)
        if status == "closed":
            q = q.where(DispatchRow.actual_end_ms.is_not(None))
        elif status in ("pending", "approved"):
            q = q.where(DispatchRow.actual_end_ms.is_(None), DispatchRow.approved.is_(status == "approved"))
        if start_ms is not None:
            q = q.where(DispatchRow.planned_end_ms >= start_ms)
        if end_ms is not None:
            q = q.where(DispatchRow.planned_start_ms < end_ms)
        try:
            with self.session() as s:
                total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
                rows = s.scalars(
                    q.order_by(DispatchRow.planned_start_ms.desc(), DispatchRow.id.desc()).offset(offset).limit(limit)
                )
                return [Dispatch.of(r) for r in rows], int(total)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"dispatch read failed: {exc}") from exc

    def approve(self, dispatch_id: int, *, approver: str, now_ms: int) -> Dispatch:
        def change(row: DispatchRow) -> None:
            if row.actual_end_ms is not None:
                raise DispatchConflict(f"dispatch {row.id} is closed")
            if row.approved:
                raise DispatchConflict(f"dispatch {row.id} is already approved by {row.approver}")
            if approver == row.requested_by:
                raise DispatchConflict("the approver must not be the requester (审批人不得为申请人)")
            row.approved, row.approver, row.approved_ms = True, approver, now_ms

        return self._change(dispatch_id, change, now_ms)

    def close(
        self, dispatch_id: int, *, now_ms: int, actual_start_ms: int | None = None, actual_end_ms: int | None = None
    ) -> Dispatch:
        """Record the actual end (default ``now_ms``) and, if given, the actual start."""

        def change(row: DispatchRow) -> None:
            if row.actual_end_ms is not None:
                raise DispatchConflict(f"dispatch {row.id} is already closed")
            start = actual_start_ms if actual_start_ms is not None else row.actual_start_ms
            end = actual_end_ms if actual_end_ms is not None else now_ms
            if start is not None and end < start:
                raise UserError("the actual end must not be before the actual start")
            row.actual_start_ms, row.actual_end_ms = start, end

        return self._change(dispatch_id, change, now_ms)

    def _change(self, dispatch_id: int, change: Any, now_ms: int) -> Dispatch:
        try:
            with self.session() as s, s.begin():
                row = s.get(DispatchRow, dispatch_id, with_for_update=True)
                if row is None:
                    raise LookupError(dispatch_id)
                change(row)
                row.updated_ms = now_ms
                s.flush()
                return Dispatch.of(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"dispatch write failed: {exc}") from exc

    def book(self, now_ms: int, horizon_ms: int = BOOK_HORIZON_MS) -> DispatchBook:
        """The approved dispatches around ``now_ms`` (ending at most ``horizon_ms`` ago, starting at most
        ``horizon_ms`` ahead) as the alert engine's book: vehicle -> covered windows."""
        lo, hi = now_ms - horizon_ms, now_ms + horizon_ms
        q = select(DispatchRow).where(
            DispatchRow.approved.is_(True),
            DispatchRow.planned_start_ms <= hi,
            or_(
                DispatchRow.actual_end_ms >= lo,
                DispatchRow.actual_end_ms.is_(None) & (DispatchRow.planned_end_ms >= lo),
            ),
        )
        try:
            with self.session() as s:
                found = [Dispatch.of(r) for r in s.scalars(q)]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"dispatch read failed: {exc}") from exc
        windows: dict[str, list[tuple[int, int]]] = {}
        for d in found:
            windows.setdefault(d.vehicle_id, []).append(d.window())
        return DispatchBook({k: tuple(sorted(v)) for k, v in windows.items()})


DEMO_HOURS = ((7, 30), (19, 0))  # Beijing: the demo's daily dispatches cover the simulator's working-day trips


def seed_demo_dispatches(
    store: DispatchStore, vehicles: Sequence[tuple[str, str]], now_ms: int, *, days: int = 7, skip: int = 1
) -> int:
    """Approved dispatches for the demo: each vehicle (id, region) but the first ``skip`` gets one per day from
    today for ``days`` days, 07:30-19:00 Beijing, unless it already has one that day (a restarted demo adds only
    the new days). The vehicles left out drive without one: rule V2 shows them. Returns the dispatches added."""
    today = datetime.fromtimestamp(now_ms / 1000, BEIJING).date()
    (h0, m0), (h1, m1) = DEMO_HOURS
    rows: list[DispatchRow] = []
    try:
        with store.session() as s, s.begin():
            for offset in range(days):
                day = today + timedelta(days=offset)
                start = int(datetime.combine(day, time(h0, m0), BEIJING).timestamp() * 1000)
                end = int(datetime.combine(day, time(h1, m1), BEIJING).timestamp() * 1000)
                have = set(
                    s.scalars(
                        select(DispatchRow.vehicle_id).where(
                            DispatchRow.planned_start_ms < end, DispatchRow.planned_end_ms > start
                        )
                    )
                )
                for vehicle_id, region_id in vehicles[skip:]:
                    if vehicle_id in have:
                        continue
                    rows.append(
                        DispatchRow(
                            vehicle_id=vehicle_id,
                            region_id=region_id,
                            driver="演示驾驶员",
                            purpose="日常公务（演示）",
                            requested_by="demo-clerk",
                            planned_start_ms=start,
                            planned_end_ms=end,
                            approved=True,
                            approver="demo-chief",
                            approved_ms=now_ms,
                            created_ms=now_ms,
                            updated_ms=now_ms,
                        )
                    )
            s.add_all(rows)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"dispatch write failed: {exc}") from exc
    return len(rows)
