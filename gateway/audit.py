"""The gateway's records in the audit log (``devices.audit``): guarded actions taken through the API.

Silences (created, ended) and rule edits (overrides put or deleted, API rules put or deleted) are written with
the API user who acted, the client's address, the target and the parameters that matter, in the same table that
provisioning writes. Never a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import Request

from devices.audit import Actor, AuditLog
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
