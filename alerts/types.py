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
