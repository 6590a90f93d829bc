"""Alerts and silences: lists, one alert with its timeline, and people's actions, inside the caller's scope.

Reads go to the alerts tables; actions go through the running ``AlertService`` (so they reach the live lifecycle,
are stored and notified like any other change); with several engine processes, an action on an alert another
engine holds goes to that engine over the broker (gateway/remote_actions.py) and answers 503 when it is down.
Without a running alert service every endpoint answers 503.
An alert or silence outside the caller's subtree is answered as if it did not exist (404). Writes need the role
``operator`` or ``admin``; the acting person is the caller's API user name.

Silences are guarded (docs/security.md "Guarded powers"): each role has a longest silence
(``api.silence_max_hours_operator`` / ``_admin``); an approver, when named, must be another enabled API user with
the ``admin`` role whose region scope covers the silence (it is recorded, it does not extend the creator's
limit); creating and ending a silence is written to the audit log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.lifecycle import Silence, silences_holding
from alerts.models import AlertRow
from alerts.repository import row_to_alert
from alerts.rules import RULE_ID_RE
from alerts.service import AlertService
from alerts.types import Alert, AlertState, Comment, Severity
from core.errors import StoreUnavailable, UserError
from core.protocol import DEVICE_ID_RE
from core.settings import Settings
from devices.registry import REGION_ID_RE, Registry
from gateway.audit import ApiAudit
from gateway.auth import Principal, user_by_name
from gateway.deps import (
    AlertsDep,
    AuditDep,
    NowDep,
    PrincipalDep,
    ReadDbDep,
    ReadRegistryDep,
    RegistryDep,
    SettingsDep,
    require_role,
)
from gateway.params import (
    DeviceQuery,
    Instant,
    Limit,
    ObjectId,
    Offset,
    Reason,
    RegionQuery,
    RuleQuery,
    error_responses,
    iso_at,
)
from gateway.remote_actions import RemoteDep
from gateway.routes import API_PREFIX
from gateway.routes.incidents import incidents_of_alerts
from gateway.scope import device_or_404, not_found, region_or_404, subtree_path, under_path

router = APIRouter(prefix=API_PREFIX, tags=["alerts"], responses=error_responses(400, 401, 403, 404, 409, 422, 503))

Writer = Annotated[Principal, Depends(require_role("operator", "admin"))]
StateFilter = Literal["open", "firing", "acknowledged", "resolved"]


# --- JSON shapes -------------------------------------------------------------------------------------------------


_iso = iso_at


def alert_json(a: Alert, principal: Principal) -> dict[str, Any]:
    """An alert as the caller may see it: ``region_path`` starts at the caller's scope (as for devices)."""
    return {
        "id": a.id,
        "rule_id": a.rule_id,
        "device_id": a.device_id,
        "region_id": a.region_id,
        "region_path": [r for r in a.region_path if principal.sees_region(r)],
        "severity": str(a.severity),
        "state": str(a.state),
        "title_zh": a.title_zh,
        "title_en": a.title_en,
        "dedup_key": a.dedup_key,
        "started_at": _iso(a.started_at),
        "learned_at": _iso(a.learned_at),  # when the platform received it (started_at is the device's time)
        "updated_at": _iso(a.updated_at),
        "count": a.count,
        "active": a.active,
        "flapping": a.flapping,
        "silenced": a.silenced,
        "escalation_level": a.escalation_level,
        "assignee": a.assignee,
        "acknowledged_by": a.acknowledged_by,
        "acknowledged_at": _iso(a.acknowledged_at),
        "ack_reason": a.ack_reason,
        "resolved_by": a.resolved_by,
        "resolved_at": _iso(a.resolved_at),
        "resolve_reason": a.resolve_reason,
        "detail": a.detail,
    }


def why_silenced(svc: AlertService, alerts: list[Alert], items: list[dict[str, Any]], now: datetime) -> None:
    """Add ``silenced_by`` to each alert JSON (``items[i]`` is ``alerts[i]``): the active silences that hold its
    notifications (and escalation) back, as ``{id, reason, creator, approver, ends_at}``; empty when nothing holds
    it back. The stored silences are matched against the alert as listed (``silences_holding``), so an alert that
    another engine process holds (several engines, docs/scaling.md) shows its silences too."""
    silences: list[Silence] = []
    if any(a.silenced and a.open for a in alerts):
        silences = svc.repo.silences(active_only=True)
    for alert, item in zip(alerts, items, strict=True):
        item["silenced_by"] = [
            {"id": s.id, "reason": s.reason, "creator": s.creator, "approver": s.approver, "ends_at": _iso(s.ends_at)}
            for s in silences_holding(alert, silences, now)
        ]


def with_incidents(svc: AlertService, items: list[dict[str, Any]], engine: Engine | None = None) -> None:
    """Add ``incident_id`` to each alert JSON: the (newest) incident it is a member of, or null (read on
    ``engine``, default the alert store's)."""
    found = incidents_of_alerts(engine or svc.repo.engine, [int(i["id"]) for i in items])
    for item in items:
        item["incident_id"] = found.get(int(item["id"]))


def comment_json(c: Comment) -> dict[str, Any]:
    return {"kind": c.kind, "author": c.author, "text": c.text, "at": _iso(c.at)}


def silence_json(s: Silence, now: datetime) -> dict[str, Any]:
    return {
        "id": s.id,
        "region_id": s.region_id,
        "device_id": s.device_id,
        "rule_id": s.rule_id,
        "reason": s.reason,
        "creator": s.creator,
        "approver": s.approver,
        "starts_at": _iso(s.starts_at),
        "ends_at": _iso(s.ends_at),
        "renotify": s.renotify,
        "created_at": _iso(s.created_at),
        "active": s.active(now),
        "ended": s.ended,
    }


# --- reads -------------------------------------------------------------------------------------------------------


def _read(svc: AlertService, query: Any, engine: Engine | None = None) -> list[AlertRow]:
    try:
        with (engine or svc.repo.engine).connect() as conn:
            return list(Session(bind=conn).scalars(query))
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"alert store read failed: {exc}") from exc


def _alert_or_404(svc: AlertService, principal: Principal, alert_id: int) -> Alert:
    rows = _read(svc, select(AlertRow).where(AlertRow.id == alert_id))
    if not rows or not principal.sees_region(rows[0].region_id):
        raise not_found("alert", str(alert_id))
    return row_to_alert(rows[0])


@router.get("/alerts")
def list_alerts(
    svc: AlertsDep,
    registry: ReadRegistryDep,
    db: ReadDbDep,
    principal: PrincipalDep,
    now: NowDep,
    state: Annotated[StateFilter | None, Query(description="open = firing or acknowledged")] = None,
    severity: Annotated[list[Severity] | None, Query(max_length=8, description="repeat for several severities")] = None,
    rule: RuleQuery = None,
    region: RegionQuery = None,
    device: DeviceQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Alerts newest first; ``total`` counts all matches. Read on the replica when one is configured (it may lag
    the primary by its replay delay; the caller's own changes and ``GET /alerts/{id}`` read the primary)."""
    q = select(AlertRow)
    if region is not None:
        region_or_404(registry, principal, region)
    scope = region if region is not None else principal.region_id
    if scope is not None:
        dialect = db.engine.dialect.name
        q = q.where(under_path(AlertRow.region_path, subtree_path(registry, scope), dialect))  # an index range
    if device is not None:
        device_or_404(registry, principal, device)
        q = q.where(AlertRow.device_id == device)
    if state == "open":
        q = q.where(AlertRow.state != str(AlertState.RESOLVED))
    elif state is not None:
        q = q.where(AlertRow.state == state)
    if severity:
        q = q.where(AlertRow.severity.in_([str(s) for s in severity]))
    if rule is not None:
        q = q.where(AlertRow.rule_id == rule)
    try:
        with db.engine.connect() as conn:
            total = int(conn.scalar(select(func.count()).select_from(q.subquery())) or 0)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"alert store read failed: {exc}") from exc
    page = q.order_by(AlertRow.started_at.desc(), AlertRow.id.desc()).offset(offset).limit(limit)
    rows = _read(svc, page, db.engine)
    alerts = [row_to_alert(r) for r in rows]
    items = [alert_json(a, principal) for a in alerts]
    why_silenced(svc, alerts, items, now)
    with_incidents(svc, items, db.engine)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: ObjectId, svc: AlertsDep, principal: PrincipalDep, now: NowDep) -> dict[str, Any]:
    """One alert with its timeline (comments, acknowledgement, assignment, resolution), oldest first."""
    alert = _alert_or_404(svc, principal, alert_id)
    out = alert_json(alert, principal)
    why_silenced(svc, [alert], [out], now)
    with_incidents(svc, [out])
    out["comments"] = [comment_json(c) for c in svc.repo.comments(alert_id)]
    return out


# --- actions -----------------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AckBody(_Body):
    reason: str = Field(default="", max_length=2000)


class ResolveBody(_Body):
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")


class CommentBody(_Body):
    text: str = Field(min_length=1, max_length=4000, pattern=r"\S")


class AssignBody(_Body):
    assignee: str | None = Field(default=None, max_length=128, description="null to unassign")


def _conflict(exc: UserError) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))


def _audit_refused(
    audit: ApiAudit, principal: Principal, action: str, alert_id: int, now: datetime, exc: UserError
) -> None:
    audit.write(principal, action, f"alert {alert_id}", now=now, outcome="conflict", detail={"error": str(exc)[:300]})


@router.post("/alerts/{alert_id}/ack")
def acknowledge(
    alert_id: ObjectId,
    body: AckBody,
    svc: AlertsDep,
    principal: Writer,
    audit: AuditDep,
    now: NowDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Acknowledge a firing alert (stops its escalation)."""
    found = _alert_or_404(svc, principal, alert_id)
    try:
        args = {"who": principal.name, "reason": body.reason}
        done = remote.act(svc, found, "alert.ack", args, lambda: svc.acknowledge(alert_id, principal.name, body.reason))
        out = alert_json(done, principal)
    except UserError as exc:
        _audit_refused(audit, principal, "alert.ack", alert_id, now, exc)
        raise _conflict(exc) from exc
    audit.write(principal, "alert.ack", f"alert {alert_id}", now=now, detail={"reason": body.reason})
    return out


@router.post("/alerts/{alert_id}/resolve")
def resolve(
    alert_id: ObjectId,
    body: ResolveBody,
    svc: AlertsDep,
    principal: Writer,
    audit: AuditDep,
    now: NowDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Resolve an open alert by hand; a reason is required."""
    found = _alert_or_404(svc, principal, alert_id)
    try:
        args = {"who": principal.name, "reason": body.reason}
        done = remote.act(svc, found, "alert.resolve", args, lambda: svc.resolve(alert_id, principal.name, body.reason))
        out = alert_json(done, principal)
    except UserError as exc:
        _audit_refused(audit, principal, "alert.resolve", alert_id, now, exc)
        raise _conflict(exc) from exc
    audit.write(principal, "alert.resolve", f"alert {alert_id}", now=now, detail={"reason": body.reason})
    return out


@router.post("/alerts/{alert_id}/comments", status_code=status.HTTP_201_CREATED)
def add_comment(
    alert_id: ObjectId,
    body: CommentBody,
    svc: AlertsDep,
    principal: Writer,
    audit: AuditDep,
    now: NowDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Add a comment to the alert's timeline (open alerts and recently resolved ones)."""
    found = _alert_or_404(svc, principal, alert_id)
    try:
        args = {"who": principal.name, "text": body.text}
        alert = remote.act(svc, found, "alert.comment", args, lambda: svc.comment(alert_id, principal.name, body.text))
    except UserError as exc:
        _audit_refused(audit, principal, "alert.comment", alert_id, now, exc)
        raise _conflict(exc) from exc
    audit.write(principal, "alert.comment", f"alert {alert_id}", now=now, detail={"chars": len(body.text)})
    out = alert_json(alert, principal)
    out["comments"] = [comment_json(c) for c in svc.repo.comments(alert_id)]
    return out


@router.post("/alerts/{alert_id}/assign")
def assign(
    alert_id: ObjectId,
    body: AssignBody,
    svc: AlertsDep,
    principal: Writer,
    audit: AuditDep,
    now: NowDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Assign an open alert to someone (or unassign with null)."""
    found = _alert_or_404(svc, principal, alert_id)
    try:
        args = {"who": principal.name, "assignee": body.assignee or None}
        done = remote.act(
            svc, found, "alert.assign", args, lambda: svc.assign(alert_id, principal.name, body.assignee or None)
        )
        out = alert_json(done, principal)
    except UserError as exc:
        _audit_refused(audit, principal, "alert.assign", alert_id, now, exc)
        raise _conflict(exc) from exc
    audit.write(principal, "alert.assign", f"alert {alert_id}", now=now, detail={"assignee": body.assignee or None})
    return out


# --- silences ----------------------------------------------------------------------------------------------------


def _silence_visible(s: Silence, principal: Principal, registry: Registry) -> bool:
    """Scoped callers see silences inside their subtree and the tree-wide ones (which apply to them too)."""
    return principal.sees_scope(s.region_id, s.device_id, lambda d: getattr(registry.device(d), "region_id", None))


@router.get("/silences")
def list_silences(
    svc: AlertsDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    now: NowDep,
    active: Annotated[bool, Query(description="only silences not ended yet (false: all, ended ones too)")] = True,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Silences and maintenance windows, oldest first; ``total`` counts all the caller may see."""
    if principal.region_ids is None:  # the whole tree: the page straight from SQL
        page = svc.repo.silences(active_only=active, offset=offset, limit=limit)
        total = svc.repo.count_silences(active_only=active)
    else:  # visibility depends on each silence's region or device: filter, then page
        visible = [s for s in svc.repo.silences(active_only=active) if _silence_visible(s, principal, registry)]
        page, total = visible[offset : offset + limit], len(visible)
    return {"total": total, "limit": limit, "offset": offset, "items": [silence_json(s, now) for s in page]}


class SilenceBody(_Body):
    region_id: str | None = Field(
        default=None, max_length=64, pattern=REGION_ID_RE.pattern, description="the region's whole subtree"
    )
    device_id: str | None = Field(default=None, max_length=64, pattern=DEVICE_ID_RE.pattern)
    rule_id: str | None = Field(default=None, max_length=64, pattern=RULE_ID_RE)
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")
    starts_at: Instant | None = Field(default=None, description="default: now")
    ends_at: Instant = Field(description="expiry, ISO 8601 with offset; at most the role's longest silence")
    approver: str | None = Field(
        default=None,
        max_length=64,
        description="another API user with the admin role whose scope covers the silence (checked, recorded)",
    )
    renotify: bool = Field(default=True, description="re-notify alerts still firing when the window ends")


def _bad(field: str, msg: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}],
    )


def max_silence(settings: Settings, role: str) -> timedelta:
    """The longest silence the role may create (``api.silence_max_hours_<role>``)."""
    hours = settings.api.silence_max_hours_admin if role == "admin" else settings.api.silence_max_hours_operator
    return timedelta(hours=hours)


def _hours(d: timedelta) -> str:
    h = d.total_seconds() / 3600
    return f"{h:g} h"


def _check_approver(registry: Registry, principal: Principal, body: SilenceBody) -> str | None:
    """The approver's user name, checked: another enabled admin whose scope covers the silence; 422 otherwise."""
    if body.approver is None or not body.approver.strip():
        return None
    name = body.approver.strip()
    if name == principal.name:
        raise _bad("approver", "the approver must be someone else than the creator")
    user = user_by_name(registry.engine, name)
    if user is None or not user.enabled:
        raise _bad("approver", f"{name!r} is not an enabled API user")
    if user.role != "admin":
        raise _bad("approver", f"{name!r} has the role {user.role}; an approver needs the role admin")
    if user.region_id is not None:
        covered = set(registry.subtree_ids(user.region_id))
        target = body.region_id
        if target is None and body.device_id is not None:
            device = registry.device(body.device_id)
            target = device.region_id if device is not None else None
        if target is None or target not in covered:
            raise _bad("approver", f"{name!r} is scoped to {user.region_id!r}, which does not cover this silence")
    return name


@router.post("/silences", status_code=status.HTTP_201_CREATED)
def add_silence(
    body: SilenceBody,
    svc: AlertsDep,
    registry: RegistryDep,
    settings: SettingsDep,
    principal: Writer,
    now: NowDep,
    audit: AuditDep,
) -> dict[str, Any]:
    """Create a silence scoped by region subtree, device and/or rule (every part given must match).

    A region-scoped caller must name a region or device inside their subtree. The silence may last at most the
    creator's role's limit (``api.silence_max_hours_operator``, default 24 h; ``_admin``, 30 days). The creation
    is written to the audit log."""
    if body.region_id is not None:
        region_or_404(registry, principal, body.region_id)
    if body.device_id is not None:
        device_or_404(registry, principal, body.device_id)
    if body.rule_id is not None and body.rule_id not in svc.rules.rules:
        raise _bad("rule_id", f"unknown rule {body.rule_id!r}")
    if body.region_id is None and body.device_id is None:
        if body.rule_id is None:
            raise _bad("region_id", "give a scope: region_id, device_id and/or rule_id")
        if principal.region_ids is not None:
            raise _bad("region_id", "a region-scoped user must name a region or device of their subtree")
    starts_at = body.starts_at or now
    if body.ends_at <= starts_at:
        raise _bad("ends_at", "ends_at must be after starts_at")
    longest = max_silence(settings, principal.role)
    if body.ends_at - starts_at > longest:
        raise _bad(
            "ends_at",
            f"a silence by the role {principal.role} lasts at most {_hours(longest)}"
            f" (api.silence_max_hours_{'admin' if principal.role == 'admin' else 'operator'})",
        )
    approver = _check_approver(registry, principal, body)
    try:
        silence = svc.add_silence(
            reason=body.reason,
            creator=principal.name,
            starts_at=starts_at,
            ends_at=body.ends_at,
            region_id=body.region_id,
            device_id=body.device_id,
            rule_id=body.rule_id,
            approver=approver,
            renotify=body.renotify,
        )
    except UserError as exc:
        raise _bad("ends_at", str(exc)) from exc
    audit.write(
        principal,
        "silence.add",
        f"silence {silence.id}",
        now=now,
        detail={
            "region_id": silence.region_id,
            "device_id": silence.device_id,
            "rule_id": silence.rule_id,
            "starts_at": _iso(silence.starts_at),
            "ends_at": _iso(silence.ends_at),
            "approver": approver,
            "reason": silence.reason[:200],
        },
    )
    return silence_json(silence, now)


class EndSilenceBody(_Body):
    reason: Reason  # why it ends early: required, audited


@router.post("/silences/{silence_id}/end")
def end_silence(
    silence_id: ObjectId,
    body: EndSilenceBody,
    svc: AlertsDep,
    registry: RegistryDep,
    principal: Writer,
    now: NowDep,
    audit: AuditDep,
) -> dict[str, Any]:
    """End a silence now; alerts it held back that still fire are re-notified (unless renotify is off). The body's
    ``reason`` is required and written to the audit log."""
    found = svc.repo.silence(silence_id)
    if found is None or not _silence_visible(found, principal, registry):
        raise not_found("silence", str(silence_id))
    if principal.region_ids is not None and found.region_id is None and found.device_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="a tree-wide silence can be ended by an unscoped user")
    try:
        svc.end_silence(silence_id)
    except UserError as exc:
        raise _conflict(exc) from exc
    audit.write(principal, "silence.end", f"silence {silence_id}", now=now, detail={"reason": body.reason})
    ended = svc.repo.silence(silence_id)
    assert ended is not None
    return silence_json(ended, now)
