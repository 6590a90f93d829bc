"""Delivery log (SQL): one row per notification and channel, one row per send attempt.

Schema owned by core/migrations/versions/0005_notifications.py. Rows move pending -> (retrying ->) sent | failed;
a notification no route matched is logged once as "unrouted". Unfinished rows keep the notification as JSON so a
restarted dispatcher resumes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from alerts.notify.routing import Notification, NotificationKind
from alerts.types import Alert, AlertState, Severity, alert_doc
from core.errors import StoreUnavailable

metadata = MetaData()

deliveries = Table(
    "notify_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("notification_key", String(255), nullable=False),
    Column("alert_id", BigInteger, nullable=False),
    Column("dedup_key", String(255), nullable=False),
    Column("rule_id", String(128), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("target_region_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("level", Integer, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("channel", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("message_id", String(32), nullable=True),
    Column("group_size", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("payload", JSON, nullable=False),
)

attempts = Table(
    "notify_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(32), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("alert_count", Integer, nullable=False),
)

PENDING = "pending"
RETRYING = "retrying"
SENT = "sent"
FAILED = "failed"
UNROUTED = "unrouted"
UNFINISHED = (PENDING, RETRYING)


def notification_key(n: Notification) -> str:
    key = n.key
    if n.kind == NotificationKind.RENOTIFY:  # may legitimately happen again for the same alert
        key += f":{int(n.at.timestamp())}"
    return key


def _parse_dt(v: Any) -> datetime | None:
    return datetime.fromisoformat(v) if isinstance(v, str) else None


def to_payload(n: Notification) -> dict[str, Any]:
    a = n.alert
    return {
        "kind": n.kind.value,
        "at": n.at.isoformat(),
        "target_region_id": n.target_region_id,
        "level": n.level,
        "alert": alert_doc(a),
    }


def from_payload(p: dict[str, Any]) -> Notification:
    a = p["alert"]
    alert = Alert(
        id=int(a["id"]),
        dedup_key=a["dedup_key"],
        rule_id=a["rule_id"],
        device_id=a["device_id"],
        region_id=a["region_id"],
        severity=Severity(a["severity"]),
        state=AlertState(a["state"]),
        title_zh=a["title_zh"],
        title_en=a["title_en"],
        started_at=datetime.fromisoformat(a["started_at"]),
        updated_at=datetime.fromisoformat(a["updated_at"]),
        detail=dict(a.get("detail") or {}),
        acknowledged_by=a.get("acknowledged_by"),
        acknowledged_at=_parse_dt(a.get("acknowledged_at")),
        resolved_at=_parse_dt(a.get("resolved_at")),
        resolved_by=a.get("resolved_by"),
        resolve_reason=a.get("resolve_reason"),
        escalation_level=int(a.get("escalation_level", 0)),
        learned_at=_parse_dt(a.get("learned_at")),
    )
    return Notification(
        NotificationKind(p["kind"]),
        alert,
        datetime.fromisoformat(p["at"]),
        target_region_id=p.get("target_region_id"),
        level=int(p.get("level", 0)),
    )


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    id: int
    notification_key: str
    alert_id: int
    kind: str
    level: int
    target_region_id: str
    channel: str | None
    status: str
    attempts: int
    message_id: str | None
    group_size: int | None
    last_error: str | None
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    message_id: str
    channel: str
    attempt: int
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    alert_count: int


def _delivery_row(key: str, ch: str | None, n: Notification, now: datetime) -> dict[str, Any]:
    a = n.alert
    return {
        "notification_key": key,
        "alert_id": a.id,
        "dedup_key": a.dedup_key,
        "rule_id": a.rule_id,
        "device_id": a.device_id,
        "target_region_id": n.target,
        "kind": n.kind.value,
        "level": n.level,
        "severity": a.severity.value,
        "channel": ch,
        "status": PENDING if ch is not None else UNROUTED,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "payload": to_payload(n),
    }


class DeliveryLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self, planned: Sequence[tuple[str | None, Notification]], now: datetime
    ) -> list[tuple[int, str | None, Notification]]:
        """Log new deliveries as pending (``None`` channel: unrouted) and return them with their ids.

        A (notification, channel) already in the log is skipped, so a replayed hand-off is not sent twice.
        """
        if not planned:
            return []
        keys = [(notification_key(n), ch) for ch, n in planned]
        # The rows are built before the first write: the file's write lock (core/sqlite_writelock.py), which the
        # alert commits wait for, is then held for one multi-row INSERT ... RETURNING, not a statement per row.
        rows: list[dict[str, Any]] = []
        routed: list[tuple[str | None, Notification]] = []
        out: list[tuple[int, str | None, Notification]] = []
        try:
            with self.engine.begin() as conn:
                existing = {
                    (r[0], r[1])
                    for r in conn.execute(
                        select(deliveries.c.notification_key, deliveries.c.channel).where(
                            deliveries.c.notification_key.in_({k for k, _ in keys})
                        )
                    )
                }
                for (key, ch), (_, n) in zip(keys, planned, strict=True):
                    if (key, ch) in existing:
                        continue
                    existing.add((key, ch))
                    rows.append(_delivery_row(key, ch, n, now))
                    routed.append((ch, n))
                if rows:
                    ids = conn.execute(
                        insert(deliveries).returning(deliveries.c.id, sort_by_parameter_order=True), rows
                    ).scalars()
                    out = [(int(row_id), ch, n) for row_id, (ch, n) in zip(ids, routed, strict=True)]
        except OperationalError as exc:
            raise StoreUnavailable("delivery log: cannot write") from exc
        return out

    def attempt(
        self,
        ids: Sequence[int],
        *,
        message_id: str,
        channel: str,
        attempt: int,
        ok: bool,
        status_code: int | None,
        error: str | None,
        final: bool,
        now: datetime,
    ) -> None:
        """Log one send attempt of a message carrying deliveries ``ids`` and move their status."""
        status = SENT if ok else (FAILED if final else RETRYING)
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(attempts).values(
                        message_id=message_id,
                        channel=channel,
                        attempt=attempt,
                        at=now,
                        ok=ok,
                        status_code=status_code,
                        error=error,
                        alert_count=len(ids),
                    )
                )
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(list(ids)))
                    .values(
                        status=status,
                        attempts=attempt,
                        message_id=message_id,
                        group_size=len(ids),
                        last_error=error,
                        updated_at=now,
                        sent_at=now if ok else None,
                    )
                )
        except OperationalError as exc:
            raise StoreUnavailable("delivery log: cannot write") from exc

    def unfinished(self, channel: str) -> list[tuple[int, Notification]]:
        """Deliveries of ``channel`` still pending or retrying, oldest first (to resume after a restart)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.id, deliveries.c.payload)
                .where(and_(deliveries.c.channel == channel, deliveries.c.status.in_(UNFINISHED)))
                .order_by(deliveries.c.id)
            ).all()
        return [(int(r[0]), from_payload(r[1])) for r in rows]

    def rows(self, *, alert_ids: Iterable[int] | None = None, channel: str | None = None) -> list[DeliveryRow]:
        q = select(deliveries).order_by(deliveries.c.id)
        if alert_ids is not None:
            q = q.where(deliveries.c.alert_id.in_(list(alert_ids)))
        if channel is not None:
            q = q.where(deliveries.c.channel == channel)
        with self.engine.connect() as conn:
            result = conn.execute(q).mappings().all()
        return [
            DeliveryRow(
                id=r["id"],
                notification_key=r["notification_key"],
                alert_id=r["alert_id"],
                kind=r["kind"],
                level=r["level"],
                target_region_id=r["target_region_id"],
                channel=r["channel"],
                status=r["status"],
                attempts=r["attempts"],
                message_id=r["message_id"],
                group_size=r["group_size"],
                last_error=r["last_error"],
                sent_at=r["sent_at"],
            )
            for r in result
        ]

    def attempts_of(self, message_ids: Iterable[str]) -> list[AttemptRow]:
        with self.engine.connect() as conn:
            result = (
                conn.execute(
                    select(attempts)
                    .where(attempts.c.message_id.in_(list(message_ids)))
                    .order_by(attempts.c.message_id, attempts.c.attempt)
                )
                .mappings()
                .all()
            )
        return [
            AttemptRow(
                message_id=r["message_id"],
                channel=r["channel"],
                attempt=r["attempt"],
                at=r["at"],
                ok=r["ok"],
                status_code=r["status_code"],
                error=r["error"],
                alert_count=r["alert_count"],
            )
            for r in result
        ]


__all__ = ["AttemptRow", "DeliveryLog", "DeliveryRow", "from_payload", "to_payload"]
