"""Audit records of security-relevant actions: who, when, what, from where, and the outcome — never a secret.

Provisioning writes one record per device and action; the gateway may write its own actions to the same table.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base
from core.errors import StoreUnavailable

# Keys that must never reach the audit log, whatever a caller passes in ``detail``.
_FORBIDDEN_KEYS = frozenset({"secret", "password", "token", "secret_hash", "passwd"})


class AuditRecord(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    origin: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts and from where (an OS user on a host, an API user from an IP address)."""

    who: str
    origin: str

    @classmethod
    def from_cli(cls) -> Actor:
        """The person at this terminal: OS user, host, and the SSH peer address when logged in remotely."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = f"uid:{os.getuid()}"
        origin = f"cli@{socket.gethostname()}"
        ssh = os.environ.get("SSH_CLIENT", "").split()
        if ssh:
            origin += f" from {ssh[0]}"
        return cls(who, origin)


def clean_detail(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop any key that could carry a secret."""
    return {k: v for k, v in (detail or {}).items() if k.lower() not in _FORBIDDEN_KEYS}


class AuditLog:
    def __init__(self, session_factory: Any) -> None:
        """``session_factory``: a callable returning a SQLAlchemy Session (e.g. ``Registry.session``)."""
        self._session = session_factory

    def write(
        self,
        actor: Actor,
        action: str,
        targets: Iterable[str],
        *,
        now: datetime,
        outcome: str = "ok",
        detail: Mapping[str, Any] | None = None,
        session: Session | None = None,
    ) -> int:
        """One record per target, in one statement. Inside ``session`` if given (same transaction)."""
        d = clean_detail(detail)
        rows = [
            {
                "ts": now,
                "actor": actor.who,
                "origin": actor.origin,
                "action": action,
                "target": t,
                "outcome": outcome,
                "detail": d,
            }
            for t in targets
        ]
        if not rows:
            return 0
        try:
            if session is not None:
                session.execute(insert(AuditRecord), rows)
            else:
                with self._session() as s, s.begin():
                    s.execute(insert(AuditRecord), rows)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"audit log write failed: {exc}") from exc
        return len(rows)

    def records(
        self, *, target: str | None = None, action: str | None = None, limit: int = 100
    ) -> Sequence[AuditRecord]:
        """Newest first."""
        q = select(AuditRecord)
        if target is not None:
            q = q.where(AuditRecord.target == target)
        if action is not None:
            q = q.where(AuditRecord.action == action)
        with self._session() as s:
            return list(s.scalars(q.order_by(AuditRecord.id.desc()).limit(limit)))
