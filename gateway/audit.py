"""The gateway's records in the audit log (``devices.audit``): guarded actions taken through the API.

Silences (created, ended) and rule edits (overrides put or deleted, API rules put or deleted) are written with
the API user who acted, the client's address, the target and the parameters that matter, in the same table that
provisioning writes. Never a token. :func:`rule_changes_verified` tells the rule history which changes the
hash-chained log vouches for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request

from alerts.rule_store import RuleChange
from devices.audit import Actor, AuditLog, utc_instant
from devices.registry import Registry
from gateway.auth import Principal


class ApiAudit:
    """Writes audit records for one request."""

    def __init__(self, registry: Registry, request: Request) -> None:
        self._log = AuditLog(registry.session)
        client = request.client
        self._origin = f"api from {client.host}" if client is not None else "api"

    def write(
        self,
        principal: Principal,
        action: str,
        target: str,
        *,
        now: datetime,
        detail: Mapping[str, Any] | None = None,
        outcome: str = "ok",
    ) -> None:
        actor = Actor(f"{principal.name} ({principal.role})", self._origin)
        self._log.write(actor, action, [target[:200]], now=now, outcome=outcome, detail=detail)


def rule_changes_verified(registry: Registry, changes: Sequence[RuleChange]) -> dict[int, bool]:
    """For each rule change (by id): whether the audit log holds an intact record of it (same time, the same user,
    an action on that rule) that verifies against the chain. A change whose row was edited in the database (its
    actor, say) or whose audit record was edited, deleted or moved answers False."""
    if not changes:
        return {}
    log = AuditLog(registry.session)
    start = min(c.at for c in changes)
    end = max(c.at for c in changes) + timedelta(microseconds=1)
    records = [r for r in log.records(since=start, until=end, limit=10_000) if r.action.startswith("rule.")]
    ok = log.checked(records)
    out: dict[int, bool] = {}
    for c in changes:
        at = utc_instant(c.at)
        out[c.id] = any(
            ok[r.id]
            and utc_instant(r.ts) == at
            and r.actor.startswith(f"{c.actor} (")
            and (r.detail.get("rule") == c.rule_id or r.target == f"rule {c.rule_id}")
            for r in records
        )
    return out
