"""Shared alert types: what the rule engine produces, the lifecycle stores and notifications send.

Pure data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


class AlertState(StrEnum):
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A rule's verdict about one subject: start firing, or clear."""

    rule_id: str
    dedup_key: str
    device_id: str
    region_id: str
    severity: Severity
    firing: bool
    at: datetime
    title_zh: str
    title_en: str
    detail: dict[str, object] = field(default_factory=dict)
    # Additive (alert engine): the region path root..region for subtree scoping, the rule's kind, and the
    # inhibition roles: ``offline_signal`` marks a device-offline alert, ``inhibitable`` a stale-value alert
    # that an open offline alert of the same device holds back.
    region_path: tuple[str, ...] = ()
    kind: str = ""
    offline_signal: bool = False
    inhibitable: bool = False


@dataclass(slots=True)
class Alert:
    id: int
    dedup_key: str
    rule_id: str
    device_id: str
    region_id: str
    severity: Severity
    state: AlertState
    title_zh: str
    title_en: str
    started_at: datetime
    updated_at: datetime
    detail: dict[str, object] = field(default_factory=dict)
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    ack_reason: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolve_reason: str | None = None
    assignee: str | None = None
    escalation_level: int = 0
    flapping: bool = False
    # Additive (alert lifecycle): how many fires this alert absorbed (dedup), whether a silence holds its
    # notifications back, whether the rule's condition is active right now, and the region path for scoping.
    count: int = 1
    silenced: bool = False
    active: bool = True
    region_path: tuple[str, ...] = ()
    # When the platform learned of the alert (its receive time; ``started_at`` is the device's own time, which may
    # be hours old for a replayed backlog), and when the clock toward its next escalation level started: when it
    # was first told (``learned_at``), when it reached its current level, or when a silence over it ended. ``None``
    # while nobody has been told of it (raised under a silence): it neither escalates nor sends "resolved".
    learned_at: datetime | None = None
    escalation_from: datetime | None = None

    @property
    def open(self) -> bool:
        return self.state is not AlertState.RESOLVED


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment or a lifecycle action (ack, assign, resolve) on an alert's timeline."""

    alert_id: int
    author: str
    text: str
    at: datetime
    kind: str = "comment"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def alert_doc(a: Alert) -> dict[str, object]:
    """An alert as JSON: what notifications send and what the delivery log keeps (full-precision ISO times)."""
    return {
        "id": a.id,
        "dedup_key": a.dedup_key,
        "rule_id": a.rule_id,
        "device_id": a.device_id,
        "region_id": a.region_id,
        "severity": a.severity.value,
        "state": a.state.value,
        "title_zh": a.title_zh,
        "title_en": a.title_en,
        "started_at": a.started_at.isoformat(),
        "updated_at": a.updated_at.isoformat(),
        "detail": a.detail,
        "acknowledged_by": a.acknowledged_by,
        "acknowledged_at": _iso(a.acknowledged_at),
        "resolved_at": _iso(a.resolved_at),
        "resolved_by": a.resolved_by,
        "resolve_reason": a.resolve_reason,
        "escalation_level": a.escalation_level,
        "learned_at": _iso(a.learned_at),
    }
