"""People's actions on an alert or incident another engine process holds live (docs/scaling.md).

With several engine processes (``alerts.engine_partitions``) the gateway's own engine holds only its partitions'
alerts. An action (acknowledge, resolve, comment, assign) on another partition's alert is sent to the engine that
owns it (lianfang/engine_commands.py) and answered as the local path answers: the alert as stored once the owner
has applied it, 409 with the owner's reason when it refuses, 503 when the owner does not answer in time (then
nothing was changed by this request, unless its reply alone was lost: the stored alert says which). The gateway
audits the action as for a local one. With one engine (the default) ``act`` calls the local path directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, status
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.models import AlertRow
from alerts.repository import row_to_alert
from alerts.service import AlertService
from alerts.types import Alert
from core.errors import BrokerUnavailable, StoreUnavailable, UserError
from gateway.deps import ContextDep


class RemoteActions:
    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime  # alerts.wiring.AlertsRuntime (or a bare AlertService in some tests: never remote)

    def owner(self, alert: Alert) -> int | None:
        """The partition whose engine (in another process) holds ``alert``; None when it is held here."""
        owner_of = getattr(self.runtime, "owner_of", None)
        return None if owner_of is None else owner_of(alert)

    def act(self, svc: AlertService, alert: Alert, op: str, args: dict[str, Any], local: Callable[[], Alert]) -> Alert:
        """``local()`` when the alert is held here; otherwise ``op`` applied by its owner and the alert as stored
        then. UserError (409) when the owner refuses; HTTP 503 when it does not answer."""
        k = self.owner(alert)
        if k is None:
            return local()
        self.send(k, op, {"alert_id": alert.id, **args})
        return self._stored(svc, alert.id)

    def incident_owner(self, incident_id: int) -> int | None:
        """The partition whose engine (in another process) holds the incident; None when it is held here."""
        owner_of = getattr(self.runtime, "incident_owner", None)
        return None if owner_of is None else owner_of(incident_id)

    def send(self, k: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Have the engine of partition ``k`` apply ``op`` and return its reply (``status`` 200 and what the op
        answers). UserError (409) when it refuses; HTTP 404 when it does not know the object; HTTP 503 when it does
        not answer in time; 502 for any other answer."""
        commands = getattr(self.runtime, "commands", None)
        if commands is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"this belongs to the engine of partition {k}, which this process cannot reach",
            )
        try:
            reply = commands.call(k, op, args)
        except BrokerUnavailable as exc:  # lianfang.engine_commands.EngineUnavailable: no answer in time
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
        code = int(reply.get("status") or 500)
        if code == 409:
            raise UserError(str(reply.get("detail") or "refused by the owning engine"))
        if code == 404:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(reply.get("detail") or "not found"))
        if code != 200:
            raise HTTPException(
                status.HTTP_502_BAD_GATEWAY,
                detail=f"the engine of partition {k} answered {code}: {reply.get('detail')}",
            )
        return dict(reply)

    @staticmethod
    def _stored(svc: AlertService, alert_id: int) -> Alert:
        try:
            with svc.repo.engine.connect() as conn:
                row = Session(bind=conn).get(AlertRow, alert_id)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"alert store read failed: {exc}") from exc
        if row is None:  # the owner applied it: the row exists
            raise StoreUnavailable(f"alert {alert_id} is not in the store after its owner applied the action")
        return row_to_alert(row)


def get_remote(ctx: ContextDep) -> RemoteActions:
    return RemoteActions(ctx.alerts)


RemoteDep = Annotated[RemoteActions, Depends(get_remote)]
