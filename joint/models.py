"""Joint prevention and control: incidents, their evidence timeline, department tasks (pure data) and their rows.

An incident groups alerts that one correlation pattern (``joint/packs/*.yaml``) found related: many devices of
one building offline together (X4), the same kind of alert across buildings of a city (X5), a forced door with
motion around it (X2), ... It has a scope (the region level it is about: building, agency, city or province), a
severity, a state and, per the routing table (X10), one task per responsible department.

    open --(someone looks)--> investigating --(members resolved)--> resolved --(every task closed)--> closed
      \\______________________________________________________________________________________________/
                                         closed by hand (with a cause code)

Member alerts of an incident may be *muted* (X4: the children of a silent building): their own notifications
are held back while the incident is open; the incident is notified instead.

Times are UTC instants (timezone-aware). The ORM rows are owned by ``core/migrations/versions/0008_joint.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alerts.types import Severity
from core.db import Base

__all__ = [
    "DEPARTMENTS",
    "Incident",
    "IncidentMember",
    "IncidentState",
    "ScopeLevel",
    "Severity",
    "Task",
    "TaskState",
    "TimelineEntry",
    "TimelineKind",
]

# The departments a routing table names by default (X10); a region's table may name others.
DEPARTMENTS: tuple[str, ...] = ("security", "vehicles", "energy", "it")


class IncidentState(StrEnum):
    OPEN = "open"
    INVESTIGATING = "investigating"
    RESOLVED = "resolved"  # every member alert resolved (or the pattern's condition over); tasks may still be open
    CLOSED = "closed"  # every task closed, or closed by hand; ``cause_code`` says why


class ScopeLevel(StrEnum):
    """The region levels an incident can be about, from the narrowest; the order is the escalation order."""

    BUILDING = "building"
    AGENCY = "agency"
    CITY = "city"
    PROVINCE = "province"

    @property
    def rank(self) -> int:
        return _SCOPE_RANK[self]


_SCOPE_RANK = {ScopeLevel.BUILDING: 0, ScopeLevel.AGENCY: 1, ScopeLevel.CITY: 2, ScopeLevel.PROVINCE: 3}


class TaskState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class TimelineKind(StrEnum):
    ALERT = "alert"  # a member alert joined, was muted / un-muted, resolved
    EVENT = "event"  # the incident itself: opened, escalated, resolved, closed
    ACTION = "action"  # an operator's action (comment, state change, linkage command)
    TASK = "task"  # a department task: created, acknowledged, closed, overdue


@dataclass(slots=True)
class IncidentMember:
    alert_id: int
    added_at: datetime
    rule_id: str = ""
    device_id: str = ""
    region_id: str = ""
    muted: bool = False
    resolved: bool = False


@dataclass(slots=True)
class Incident:
    id: int
    pattern_id: str  # "X4", or a region's own pattern id
    type: str  # incident type: what the routing table maps to departments ("intrusion", "site_outage", ...)
    title_zh: str
    title_en: str
    severity: Severity
    state: IncidentState
    scope_level: ScopeLevel
    region_id: str  # the region at ``scope_level`` (the building, the city, ...)
    group_key: str  # pattern|scope region|...: at most one open incident per group key
    opened_at: datetime
    updated_at: datetime
    region_path: tuple[str, ...] = ()  # root..region_id
    cause_code: str | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    escalation_level: int = 0  # how many times the scope was raised (X5: city, then province)
    members: dict[int, IncidentMember] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.state in (IncidentState.OPEN, IncidentState.INVESTIGATING)

    @property
    def member_ids(self) -> list[int]:
        return sorted(self.members)

    @property
    def muted_ids(self) -> list[int]:
        return sorted(i for i, m in self.members.items() if m.muted)

    @property
    def title(self) -> str:
        return self.title_zh


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    incident_id: int
    ts: datetime
    kind: TimelineKind
    actor: str  # "system" or a user name
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # set once stored


@dataclass(slots=True)
class Task:
    id: int
    incident_id: int
    department: str
    state: TaskState
    created_at: datetime
    deadline: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    closed_by: str | None = None
    closed_at: datetime | None = None
    escalation_level: int = 0  # raised once per overdue period while not closed
    note: str | None = None

    @property
    def open(self) -> bool:
        return self.state is not TaskState.CLOSED


# --- rows (schema: core/migrations/versions/0008_joint.py) ------------------------------------------------------


class IncidentRow(Base):
    __tablename__ = "joint_incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pattern_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    title_zh: Mapped[str] = mapped_column(String(255))
    title_en: Mapped[str] = mapped_column(String(255))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    cause_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    scope_level: Mapped[str] = mapped_column(String(16))
    region_id: Mapped[str] = mapped_column(String(64))
    region_path: Mapped[str] = mapped_column(String(1024))  # "/gd/gz/"
    group_key: Mapped[str] = mapped_column(String(255))
    open_key: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)  # group_key while open
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class IncidentMemberRow(Base):
    __tablename__ = "joint_incident_members"

    incident_id: Mapped[int] = mapped_column(ForeignKey("joint_incidents.id", ondelete="CASCADE"), primary_key=True)
    alert_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # alerts.id (no foreign key: written first)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rule_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(64))
    region_id: Mapped[str] = mapped_column(String(64))
    muted: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)


class TimelineRow(Base):
    __tablename__ = "joint_timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("joint_incidents.id", ondelete="CASCADE"))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class TaskRow(Base):
    __tablename__ = "joint_tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    incident_id: Mapped[int] = mapped_column(ForeignKey("joint_incidents.id", ondelete="CASCADE"))
    department: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class JointKvRow(Base):
    """The correlator's windows (recent alerts per pattern and scope), kept for a restart."""

    __tablename__ = "joint_kv"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
