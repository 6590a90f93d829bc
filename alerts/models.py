"""ORM models of alerts, their timeline (comments and actions), silences and the engine's state snapshots.

The schema is owned by ``core/migrations/versions/0003_alerts.py``. ``open_key`` equals ``dedup_key`` while an
alert is open and is NULL once resolved; a unique index on it makes "one open alert per dedup key" a database
guarantee as well (no double alert, even after a restart).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base


class AlertRow(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    dedup_key: Mapped[str] = mapped_column(String(255))
    open_key: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    rule_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(64))
    region_id: Mapped[str] = mapped_column(String(64))
    region_path: Mapped[str] = mapped_column(String(1024))  # "/gd/gz/b1/"
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    title_zh: Mapped[str] = mapped_column(String(255))
    title_en: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ack_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resolve_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    assignee: Mapped[str | None] = mapped_column(String(128), nullable=True)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    flapping: Mapped[bool] = mapped_column(Boolean, default=False)
    count: Mapped[int] = mapped_column(Integer, default=1)
    silenced: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # migration 0007_alert_clock: platform receive time; start of the clock toward the next escalation level
    learned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    escalation_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AlertCommentRow(Base):
    __tablename__ = "alert_comments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # comment | ack | assign | resolve
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SilenceRow(Base):
    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    region_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rule_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    creator: Mapped[str] = mapped_column(String(128))
    approver: Mapped[str | None] = mapped_column(String(128), nullable=True)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    renotify: Mapped[bool] = mapped_column(Boolean, default=True)
    ended: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RuleStateRow(Base):
    __tablename__ = "alert_rule_states"

    rule_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True)  # device id, or "*" for rule-wide state
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(Text)  # JSON text, written as is (see alerts.engine.state_dumps)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertKvRow(Base):
    __tablename__ = "alert_kv"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
