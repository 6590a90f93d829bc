"""Incidents (联防联控): lists, one incident with members, timeline, tasks and linkage actions; people's actions.

Reads come from the SQL database (``joint.store.JointStore``), so they work wherever the database is reachable;
changes go through the running joint service (its in-memory state, then the store, the live stream and the
notifications), and without it they answer 503. Linkage actions go through ``joint.actions.LinkageActions``.

Scoping (docs/joint-api.md "Who sees what"):

* an incident whose scope region lies inside the caller's subtree is **fully visible**: every member, the whole
  timeline, its tasks and actions;
* an incident scoped above the caller (a city cluster seen by one building's operator) is **partly visible** when
  at least one member alert lies in the caller's subtree: the incident's header, the members in the caller's
  subtree only (``members_hidden`` counts the others), the timeline without entries about hidden alerts, its tasks;
  nothing can be changed from there (403);
* anything else is 404, exactly like an incident that does not exist.

Writes need the role ``operator`` or ``admin`` and full visibility; linkage confirmations need ``admin``
(joint/actions.py). Every write is in the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol, cast

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from alerts.types import Severity
from core.errors import StoreUnavailable, UserError
from devices.registry import Registry
from gateway.auth import USER_NAME_RE, Principal, user_by_name
from gateway.context import GatewayContext
from gateway.deps import (
    AuditDep,
    ContextDep,
    NowDep,
    PrincipalDep,
    ReadDbDep,
    ReadRegistryDep,
    RegistryDep,
    require_role,
)
from gateway.incident_live import StepRecorder, incident_doc_live
from gateway.params import Limit, ObjectId, Offset, RegionQuery, error_responses, iso_at
from gateway.remote_actions import RemoteActions, RemoteDep
from gateway.routes import API_PREFIX
from gateway.scope import not_found, region_or_404, subtree_path, under_path
from joint.actions import (
    SYSTEM,
    ActionBook,
    ActionDenied,
    LinkageAction,
    LinkageActions,
    MqttCommandSender,
    Target,
    auto_proposal,
    check_decide,
    check_propose,
    gate_targets,
)
from joint.models import Incident, IncidentMemberRow, IncidentRow, Task, TimelineEntry
from joint.store import JointStore

logger = logging.getLogger(__name__)

router = APIRouter(prefix=API_PREFIX, tags=["incidents"], responses=error_responses(400, 401, 403, 404, 409, 422, 503))

Writer = Annotated[Principal, Depends(require_role("operator", "admin"))]
StateFilter = Literal["open", "investigating", "resolved", "closed", "active"]
TypeQuery = Annotated[
    str | None, Query(max_length=64, pattern=r"^[a-z][a-z0-9_]{0,63}$", description="incident type, e.g. intrusion")
]
ActionIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$", description="action id")]
CAUSE_CODES = ("false_alarm", "handled", "maintenance", "device_fault", "duplicate", "other")


# --- the joint side: the service (J1's joint/service.py) and the linkage actions ------------------------------


class JointOps(Protocol):
    """What the API needs of the running joint service (``joint.service.JointService``): people's actions on
    incidents and tasks, each through its lock, store and subscribers. ``UserError`` for a wrong state."""

    def investigate(self, incident_id: int, who: str) -> Any: ...

    def comment(self, incident_id: int, who: str, text: str) -> Any: ...

    def resolve(self, incident_id: int, who: str, reason: str) -> Any: ...

    def close(self, incident_id: int, who: str, cause_code: str) -> Any: ...

    def acknowledge_task(self, task_id: int, who: str, note: str | None = None) -> Any: ...

    def close_task(self, task_id: int, who: str, note: str | None = None) -> Any: ...

    def assign(self, incident_id: int, who: str, assignee: str | None, reason: str) -> Any: ...


@dataclass
class JointSide:
    """What the gateway holds for incidents: the store (reads), the service (changes; None where the alert
    engine does not run here) and the linkage actions."""

    store: JointStore
    service: Any | None
    actions: LinkageActions | None
    stops: list[Callable[[], None]] = field(default_factory=list)
    recorder: StepRecorder | None = None


_SIDE_ATTR = "_joint_side"  # the JointSide of a GatewayContext, kept on the context itself


def _service_of(ctx: GatewayContext) -> Any | None:
    alerts = ctx.alerts
    for holder in (ctx, alerts, getattr(alerts, "service", None)):
        svc = getattr(holder, "joint", None) if holder is not None else None
        if svc is not None:
            return svc
    return None


def attach(ctx: GatewayContext) -> JointSide:
    """The incident side of this gateway, made once per context (at the app's start, or at the first request).

    Subscribes the live stream to the joint service's incident changes (when the service runs here). Linkage
    actions run where the gateway can publish commands: with the context's ``linkage_publish`` (a test seam), or
    where the HTTP ingress is configured (``lianfang serve``: the broker is there) with the platform's MQTT
    identity; their ``cmd_result`` events are seen through the broadcaster, which ingest feeds. The actions are
    rebuilt from the incidents' timelines."""
    side: JointSide | None = getattr(ctx, _SIDE_ATTR, None)
    if side is not None:
        return side
    store = JointStore(ctx.registry.engine)
    service = _service_of(ctx)
    broadcaster = ctx.broadcaster
    if service is not None and hasattr(service, "subscribe"):

        def on_change(change: Any) -> None:
            inc = getattr(change, "incident", None)
            if isinstance(inc, Incident):
                members = {m.region_id for m in inc.members.values()}
                broadcaster.publish_incident(incident_doc_live(inc, str(change.kind)), inc.region_path, members)
                side_now: JointSide | None = getattr(ctx, _SIDE_ATTR, None)
                name = auto_proposal(inc.type)
                if change.kind == "opened" and name is not None and side_now is not None and side_now.actions:
                    try:
                        targets = gate_targets(ctx.registry, inc.region_id)
                        if targets:
                            with side_now.recorder.held(inc) if side_now.recorder else nullcontext():
                                side_now.actions.propose(inc.id, name, targets, by=SYSTEM, reason=inc.title_zh)
                    except Exception:
                        logger.exception("incidents: proposing %s for incident %s failed", name, inc.id)

        try:
            service.subscribe(on_change)
        except Exception:
            logger.exception("incidents: subscribing the live stream to incident changes failed")
    stops: list[Callable[[], None]] = []
    actions: LinkageActions | None = None
    recorder: StepRecorder | None = None
    publish: Callable[[str, bytes], bool] | None = getattr(ctx, "linkage_publish", None)
    if publish is None and ctx.ingress is not None:
        sender = MqttCommandSender(ctx.settings.mqtt, client_id=f"{ctx.settings.mqtt.client_id}-actions")
        sender.start()
        stops.append(sender.stop)
        publish = sender
    if publish is not None:
        recorder = StepRecorder(store, broadcaster, ctx.clock)
        actions = LinkageActions(publish, record=recorder, clock=ctx.clock)
        try:
            docs = store.action_docs()
            owned = getattr(ctx.alerts, "owned", None)
            if getattr(ctx.alerts, "owns", None) is not None and owned is not None:
                # several engines: only the gateway's engine's incidents; the others' are held by their engine
                from lianfang.engine_linkage import owned_action_docs

                docs = owned_action_docs(docs, ctx.settings.alerts.partitions, owned)
            actions.replay(docs)
        except Exception:
            logger.exception("incidents: rebuilding the linkage actions from the timelines failed")
        if ctx.alerts is not None and hasattr(ctx.alerts, "linkage"):
            ctx.alerts.linkage = actions  # linkage commands for this engine's incidents (alerts/wiring.py)
        broadcaster.add_listener(actions.on_batch)
        actions.start()
        stops.insert(0, actions.stop)
    side = JointSide(store, service, actions, stops, recorder if actions is not None else None)
    setattr(ctx, _SIDE_ATTR, side)
    return side


def detach(ctx: GatewayContext) -> None:
    """At the app's end: stop the linkage actions and their connection."""
    side: JointSide | None = getattr(ctx, _SIDE_ATTR, None)
    if side is None:
        return
    setattr(ctx, _SIDE_ATTR, None)
    if side.actions is not None:
        ctx.broadcaster.remove_listener(side.actions.on_batch)
    for stop in side.stops:
        try:
            stop()
        except Exception:
            logger.exception("incidents: stopping failed")


def get_side(ctx: ContextDep) -> JointSide:
    return attach(ctx)


SideDep = Annotated[JointSide, Depends(get_side)]


def _ops(side: JointSide) -> JointOps:
    if side.service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the joint service is not running here")
    return cast(JointOps, side.service)


def _incident_actions(side: JointSide, remote: RemoteActions | None, incident_id: int) -> list[LinkageAction]:
    """The incident's linkage actions: live here, or (held by another engine process) as its timeline stores
    them, each in its last recorded state."""
    if remote is not None and remote.incident_owner(incident_id) is not None:
        book = ActionBook()
        book.replay(side.store.action_docs(incident_id))
        return book.for_incident(incident_id)
    return side.actions.for_incident(incident_id) if side.actions is not None else []


def _actions(side: JointSide) -> LinkageActions:
    if side.actions is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="linkage actions are not running here")
    return side.actions


# --- scoping ---------------------------------------------------------------------------------------------------


def visibility(i: Incident, principal: Principal) -> Literal["full", "partial", "none"]:
    if principal.region_ids is None or principal.sees_region(i.region_id):
        return "full"
    if any(principal.sees_region(m.region_id) for m in i.members.values()):
        return "partial"
    return "none"


def _incident_or_404(side: JointSide, principal: Principal, incident_id: int) -> tuple[Incident, bool]:
    inc = side.store.get(incident_id)
    seen = "none" if inc is None else visibility(inc, principal)
    if inc is None or seen == "none":
        raise not_found("incident", str(incident_id))
    return inc, seen == "full"


def _writable(side: JointSide, principal: Principal, incident_id: int) -> Incident:
    inc, full = _incident_or_404(side, principal, incident_id)
    if not full:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="this incident's scope lies above your region: you can read it only"
        )
    return inc


# --- JSON shapes -----------------------------------------------------------------------------------------------


def incident_json(i: Incident, principal: Principal, *, full: bool) -> dict[str, Any]:
    members = [m for m in i.members.values() if full or principal.sees_region(m.region_id)]
    return {
        "id": i.id,
        "pattern_id": i.pattern_id,
        "type": i.type,
        "title_zh": i.title_zh,
        "title_en": i.title_en,
        "severity": str(i.severity),
        "state": str(i.state),
        "scope_level": str(i.scope_level),
        "region_id": i.region_id,
        "region_path": [r for r in i.region_path if principal.sees_region(r)],
        "opened_at": iso_at(i.opened_at),
        "updated_at": iso_at(i.updated_at),
        "resolved_at": iso_at(i.resolved_at),
        "closed_at": iso_at(i.closed_at),
        "closed_by": i.closed_by,
        "cause_code": i.cause_code,
        "escalation_level": i.escalation_level,
        "visibility": "full" if full else "partial",
        "member_count": len(members),
        "members_hidden": len(i.members) - len(members),
        "muted_count": sum(1 for m in members if m.muted),
        "assignee": i.detail.get("assignee"),
        "assigned_by": i.detail.get("assigned_by"),
        "assigned_at": i.detail.get("assigned_at"),
    }


def member_json(m: Any) -> dict[str, Any]:
    return {
        "alert_id": m.alert_id,
        "rule_id": m.rule_id,
        "device_id": m.device_id,
        "region_id": m.region_id,
        "added_at": iso_at(m.added_at),
        "muted": m.muted,
        "resolved": m.resolved,
    }


def task_json(t: Task, now: datetime, assignees: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": t.id,
        "incident_id": t.incident_id,
        "department": t.department,
        "state": str(t.state),
        "created_at": iso_at(t.created_at),
        "deadline": iso_at(t.deadline),
        "overdue": t.open and now >= t.deadline,
        "acknowledged_by": t.acknowledged_by,
        "acknowledged_at": iso_at(t.acknowledged_at),
        "closed_by": t.closed_by,
        "closed_at": iso_at(t.closed_at),
        "escalation_level": t.escalation_level,
        "note": t.note,
        "assignee": (assignees or {}).get(str(t.id)),
    }


def _task_assignees(i: Incident) -> dict[str, Any]:
    held = i.detail.get("task_assignees")
    return held if isinstance(held, dict) else {}


def entry_json(e: TimelineEntry) -> dict[str, Any]:
    data = {k: v for k, v in e.data.items() if k in ("alert_id", "alert_ids", "task", "step", "text_en", "to")}
    if isinstance(e.data.get("action"), dict):
        data["action_id"] = e.data["action"].get("id")
    return {"id": e.id, "ts": iso_at(e.ts), "kind": str(e.kind), "actor": e.actor, "text": e.text, "data": data}


def _entry_visible(e: TimelineEntry, hidden: set[int]) -> bool:
    if not hidden:
        return True
    ids = [e.data.get("alert_id"), *(e.data.get("alert_ids") or [])]
    return not any(isinstance(a, int) and a in hidden for a in ids)


# --- reads -----------------------------------------------------------------------------------------------------


def _list_query(
    principal: Principal,
    registry: Registry,
    region: str | None,
    state: str | None,
    severity: Sequence[Severity] | None,
    type_: str | None,
) -> Any:
    q = select(IncidentRow)
    if region is not None:
        region_or_404(registry, principal, region)
        q = q.where(
            or_(
                under_path(IncidentRow.region_path, subtree_path(registry, region), registry.engine.dialect.name),
                IncidentRow.id.in_(
                    select(IncidentMemberRow.incident_id).where(
                        IncidentMemberRow.region_id.in_(registry.subtree_ids(region))
                    )
                ),
            )
        )
    if principal.region_ids is not None and principal.region_id is not None:
        q = q.where(
            or_(
                under_path(
                    IncidentRow.region_path, subtree_path(registry, principal.region_id), registry.engine.dialect.name
                ),
                IncidentRow.id.in_(
                    select(IncidentMemberRow.incident_id).where(
                        IncidentMemberRow.region_id.in_(sorted(principal.region_ids))
                    )
                ),
            )
        )
    if state == "active":
        q = q.where(IncidentRow.state.in_(("open", "investigating")))
    elif state is not None:
        q = q.where(IncidentRow.state == state)
    if severity:
        q = q.where(IncidentRow.severity.in_([str(s) for s in severity]))
    if type_ is not None:
        q = q.where(IncidentRow.type == type_)
    return q


@router.get("/incidents")
def list_incidents(
    side: SideDep,
    registry: ReadRegistryDep,
    db: ReadDbDep,
    principal: PrincipalDep,
    state: Annotated[StateFilter | None, Query(description="active = open or investigating")] = None,
    severity: Annotated[list[Severity] | None, Query(max_length=8, description="repeat for several")] = None,
    region: RegionQuery = None,
    type: TypeQuery = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Incidents newest first, with the caller's visibility of each (``full`` or ``partial``); ``total`` counts all
    matches. ``region``: incidents scoped inside that subtree, or with a member alert there. Read on the replica
    when one is configured (``GET /incidents/{id}`` and the caller's reads right after a change read the primary)."""
    from sqlalchemy import func

    q = _list_query(principal, registry, region, state, severity, type)
    store = side.store

    def read(fn: Any) -> Any:  # the store's reads, on the read engine (replica or primary)
        try:
            with db.engine.connect() as conn:
                return fn(Session(bind=conn))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"incident store read failed: {exc}") from exc

    total = int(read(lambda s: s.scalar(select(func.count()).select_from(q.subquery()))) or 0)
    page = q.order_by(IncidentRow.opened_at.desc(), IncidentRow.id.desc()).offset(offset).limit(limit)
    incidents: list[Incident] = read(lambda s: store._with_members(s, list(s.scalars(page))))
    items = []
    for inc in incidents:
        seen = visibility(inc, principal)
        if seen != "none":
            items.append(incident_json(inc, principal, full=seen == "full"))
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/incidents/{incident_id}")
def get_incident(
    incident_id: ObjectId, side: SideDep, principal: PrincipalDep, now: NowDep, remote: RemoteDep
) -> dict[str, Any]:
    """One incident with its members, timeline (oldest first), department tasks and linkage actions."""
    inc, full = _incident_or_404(side, principal, incident_id)
    out = incident_json(inc, principal, full=full)
    visible = [m for m in inc.members.values() if full or principal.sees_region(m.region_id)]
    hidden = {a for a, m in inc.members.items() if not (full or principal.sees_region(m.region_id))}
    out["members"] = [member_json(m) for m in sorted(visible, key=lambda m: m.alert_id)]
    out["timeline"] = [entry_json(e) for e in side.store.timeline(incident_id) if _entry_visible(e, hidden)]
    out["tasks"] = [task_json(t, now, _task_assignees(inc)) for t in side.store.tasks(incident_id=incident_id)]
    actions = _incident_actions(side, remote, incident_id)
    out["actions"] = [a.doc() for a in actions if full or principal.sees_region(a.region_id)]
    return out


# --- people's actions ------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoteBody(_Body):
    note: str = Field(default="", max_length=2000)


class CloseBody(_Body):
    cause_code: Literal["false_alarm", "handled", "maintenance", "device_fault", "duplicate", "other"] = Field(
        description="why it is closed"
    )
    note: str = Field(default="", max_length=2000)


class CommentBody(_Body):
    text: str = Field(min_length=1, max_length=4000, pattern=r"\S")


def _conflict(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))


class ResolveBody(_Body):
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="why it is resolved")


def _after(side: JointSide, principal: Principal, incident_id: int, now: datetime) -> dict[str, Any]:
    inc, full = _incident_or_404(side, principal, incident_id)
    out = incident_json(inc, principal, full=full)
    out["tasks"] = [task_json(t, now, _task_assignees(inc)) for t in side.store.tasks(incident_id=incident_id)]
    return out


@dataclass(frozen=True)
class Act:
    """What a person's action needs besides the action itself: who, on which incident, when, the audit log."""

    side: JointSide
    principal: Principal
    incident_id: int
    now: datetime
    audit: Any
    remote: RemoteActions | None = None

    def __call__(
        self,
        action: str,
        call: Callable[[JointOps], object],
        detail: dict[str, Any] | None = None,
        command: tuple[str, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Check the caller may change the incident, do ``call`` through the joint service, write the audit record
        and answer the incident as it is now. A wrong state (the service's UserError) is a 409 saying why.

        With several engine processes an incident another engine holds gets ``command`` (op, args) sent to that
        engine instead (gateway/remote_actions.py): 503 when it does not answer."""
        _writable(self.side, self.principal, self.incident_id)
        owner = self.remote.incident_owner(self.incident_id) if self.remote is not None else None
        try:
            if owner is not None and self.remote is not None and command is not None:
                op, args = command
                self.remote.send(owner, op, {"incident_id": self.incident_id, "who": self.principal.name, **args})
            else:
                call(_ops(self.side))
        except (UserError, KeyError, ValueError) as exc:
            raise _conflict(exc) from exc
        self.audit.write(
            self.principal, f"incident.{action}", f"incident {self.incident_id}", now=self.now, detail=detail
        )
        return _after(self.side, self.principal, self.incident_id, self.now)


def get_act(
    incident_id: ObjectId, side: SideDep, principal: Writer, now: NowDep, audit: AuditDep, remote: RemoteDep
) -> Act:
    return Act(side, principal, incident_id, now, audit, remote)


ActDep = Annotated[Act, Depends(get_act)]


@router.post("/incidents/{incident_id}/ack")
def acknowledge(body: NoteBody, act: ActDep) -> dict[str, Any]:
    """Acknowledge an open incident: someone is on it (``open`` -> ``investigating``, like ``investigate``)."""
    return act("ack", lambda ops: ops.investigate(act.incident_id, act.principal.name), None, _INVESTIGATE)


@router.post("/incidents/{incident_id}/investigate")
def investigate(body: NoteBody, act: ActDep) -> dict[str, Any]:
    """Start investigating an open incident (``open`` -> ``investigating``); 409 from any other state."""
    return act("investigate", lambda ops: ops.investigate(act.incident_id, act.principal.name), None, _INVESTIGATE)


@router.post("/incidents/{incident_id}/resolve")
def resolve(body: ResolveBody, act: ActDep) -> dict[str, Any]:
    """Resolve an open or investigating incident by hand (the reason is required and goes on the timeline): its
    muted members are un-muted; its tasks stay until the departments close them, or it is closed with a cause
    code. 409 when it is already resolved or closed."""
    reason = body.reason.strip()
    return act(
        "resolve",
        lambda ops: ops.resolve(act.incident_id, act.principal.name, reason),
        {"reason": reason},
        ("incident.resolve", {"reason": reason}),
    )


@router.post("/incidents/{incident_id}/close")
def close(body: CloseBody, act: ActDep) -> dict[str, Any]:
    """Close an incident (open, investigating or resolved) with a cause code (a note, when given, goes on the
    timeline first); its open tasks close with it. 409 when it is already closed."""

    def call(ops: JointOps) -> None:
        if body.note.strip():
            ops.comment(act.incident_id, act.principal.name, body.note)
        ops.close(act.incident_id, act.principal.name, body.cause_code)

    command = ("incident.close", {"cause_code": body.cause_code, "note": body.note.strip() and body.note})
    return act("close", call, {"cause_code": body.cause_code}, command)


@router.post("/incidents/{incident_id}/comments", status_code=status.HTTP_201_CREATED)
def add_comment(body: CommentBody, act: ActDep) -> dict[str, Any]:
    """Add a comment to the incident's timeline (while it is open, investigating or resolved)."""
    command = ("incident.comment", {"text": body.text})
    return act("comment", lambda ops: ops.comment(act.incident_id, act.principal.name, body.text), None, command)


_INVESTIGATE: tuple[str, dict[str, Any]] = ("incident.investigate", {})


def _task_of(act: Act, task_id: int) -> Task:
    _writable(act.side, act.principal, act.incident_id)
    task = act.side.store.task(task_id)
    if task is None or task.incident_id != act.incident_id:
        raise not_found("task", str(task_id))
    return task


@router.post("/incidents/{incident_id}/tasks/{task_id}/ack")
def acknowledge_task(task_id: ObjectId, body: NoteBody, act: ActDep) -> dict[str, Any]:
    """A department acknowledges its part (stops its escalation)."""
    _task_of(act, task_id)
    note = body.note or None
    command = ("incident.task_ack", {"task_id": task_id, "note": note})
    return act(
        "task.ack", lambda ops: ops.acknowledge_task(task_id, act.principal.name, note), {"task": task_id}, command
    )


@router.post("/incidents/{incident_id}/tasks/{task_id}/close")
def close_task(task_id: ObjectId, body: NoteBody, act: ActDep) -> dict[str, Any]:
    """A department closes its part; the incident closes when the last of its tasks does."""
    if not _task_of(act, task_id).open:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"task {task_id} is already closed")
    note = body.note or None
    command = ("incident.task_close", {"task_id": task_id, "note": note})
    return act("task.close", lambda ops: ops.close_task(task_id, act.principal.name, note), {"task": task_id}, command)


class AssignBody(_Body):
    assignee: str | None = Field(
        max_length=64,
        pattern=USER_NAME_RE.pattern,
        description="the user who takes the incident and its open department tasks; null to unassign",
    )
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="why (goes on the timeline)")


def _assignable(registry: Registry, principal: Principal, inc: Incident, name: str) -> str | None:
    """Why ``name`` cannot take the incident, or None: an enabled operator or admin whose scope holds the
    incident's region, and whom the caller can see (a user outside the caller's scope reads as not existing)."""
    user = user_by_name(registry.engine, name)
    if user is None or not (user.region_id is None or principal.sees_region(user.region_id)):
        return f"no user {name!r}"
    if not user.enabled:
        return f"user {name!r} is disabled"
    if user.role not in ("operator", "admin"):
        return f"user {name!r} ({user.role}) cannot act on incidents: operator or admin needed"
    if user.region_id is not None and user.region_id not in (*inc.region_path, inc.region_id):
        return f"user {name!r} is scoped to {user.region_id}, which does not hold this incident's {inc.region_id}"
    return None


@router.post("/incidents/{incident_id}/assign")
def assign(body: AssignBody, act: ActDep, registry: RegistryDep) -> dict[str, Any]:
    """Assign an incident that is not closed, with its open department tasks, to a user (or unassign with
    ``assignee: null``); the reason is required and goes on the timeline, the change on the live stream. 422 when
    the user cannot take it (unknown, disabled, not an operator or admin, scoped elsewhere); 409 when closed."""
    reason = body.reason.strip()
    if body.assignee is not None:
        why = _assignable(registry, act.principal, _writable(act.side, act.principal, act.incident_id), body.assignee)
        if why is not None:
            act.audit.write(
                act.principal,
                "incident.assign",
                f"incident {act.incident_id}",
                now=act.now,
                outcome="invalid",
                detail={"assignee": body.assignee, "error": why},
            )
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=why)
    return act(
        "assign",
        lambda ops: ops.assign(act.incident_id, act.principal.name, body.assignee, reason),
        {"assignee": body.assignee, "reason": reason},
        ("incident.assign", {"assignee": body.assignee, "reason": reason}),
    )


# --- linkage actions -------------------------------------------------------------------------------------------


class ProposeBody(_Body):
    name: Literal["lock", "unlock"] = Field(description="the command: lock or unlock gates")
    device_ids: list[Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9][a-z0-9-]{2,63}$")]] | None = Field(
        default=None,
        max_length=200,
        description="the devices; default: every gate of the incident's region (for a partly visible caller: none)",
    )
    reason: str = Field(default="", max_length=2000)


class DecideBody(_Body):
    reason: str = Field(default="", max_length=2000)


def _targets(registry: Registry, inc: Incident, device_ids: list[str] | None) -> list[Target]:
    if device_ids is None:
        return gate_targets(registry, inc.region_id)
    out: list[Target] = []
    allowed = set(registry.subtree_ids(inc.region_id))
    for did in dict.fromkeys(device_ids):
        d = registry.device(did)
        if d is None or d.region_id not in allowed:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[
                    {
                        "loc": ["body", "device_ids"],
                        "msg": f"{did!r} is not a device of the incident's region",
                        "type": "value_error",
                    }
                ],
            )
        out.append(Target(d.id, d.region_id, d.type))
    return out


@router.get("/incidents/{incident_id}/actions")
def list_actions(incident_id: ObjectId, side: SideDep, principal: PrincipalDep, remote: RemoteDep) -> dict[str, Any]:
    """The incident's linkage actions (proposed, declined, sent, succeeded, failed, expired), oldest first."""
    _inc, full = _incident_or_404(side, principal, incident_id)
    actions = _incident_actions(side, remote, incident_id)
    items = [a.doc() for a in actions if full or principal.sees_region(a.region_id)]
    return {"total": len(items), "items": items}


@router.post("/incidents/{incident_id}/actions", status_code=status.HTTP_201_CREATED)
def propose_actions(
    incident_id: ObjectId,
    body: ProposeBody,
    side: SideDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    now: NowDep,
    audit: AuditDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Propose a command for devices of the incident's region (one action per device); nothing is sent until an
    administrator of the devices' region confirms. Needs the role operator or admin. With several engine processes
    an incident another engine holds gets its proposal there (503 when it does not answer)."""
    inc = _writable(side, principal, incident_id)
    owner = remote.incident_owner(incident_id)
    actions = _actions(side) if owner is None else None
    targets = _targets(registry, inc, body.device_ids)
    try:
        check_propose(principal.role, principal.sees_region, targets)
        if actions is not None:
            made = actions.propose(incident_id, body.name, targets, by=principal.name, reason=body.reason)
        else:
            assert owner is not None
            reply = remote.send(
                owner,
                "incident.action_propose",
                {
                    "incident_id": incident_id,
                    "who": principal.name,
                    "name": body.name,
                    "targets": [[t.device_id, t.region_id, t.device_type] for t in targets],
                    "reason": body.reason,
                },
            )
            made = [LinkageAction.from_doc(d) for d in reply.get("items") or []]
    except ActionDenied as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    except UserError as exc:
        raise _conflict(exc) from exc
    for a in made:
        audit.write(
            principal,
            "incident.action.propose",
            f"action {a.id}",
            now=now,
            detail={"incident_id": incident_id, "device_id": a.device_id, "name": a.name},
        )
    return {"total": len(made), "items": [a.doc() for a in made]}


def _decide(
    side: JointSide, principal: Principal, incident_id: int, action_id: str, remote: RemoteActions
) -> tuple[Callable[..., LinkageAction], LinkageAction]:
    """The action (live here, or as stored when another engine holds the incident) once the caller may decide on
    it, and the step to take: ``step("confirm" | "decline", reason)`` applied here or by the owning engine."""
    _writable(side, principal, incident_id)
    owner = remote.incident_owner(incident_id)
    if owner is None:
        actions = _actions(side)
        a = actions.get(action_id)

        def step(what: str, reason: str = "") -> LinkageAction:
            if what == "confirm":
                return actions.confirm(action_id, by=principal.name)
            return actions.decline(action_id, by=principal.name, reason=reason)

    else:
        a = next((x for x in _incident_actions(side, remote, incident_id) if x.id == action_id), None)

        def step(what: str, reason: str = "") -> LinkageAction:
            args = {"incident_id": incident_id, "who": principal.name, "action_id": action_id, "reason": reason}
            reply = remote.send(owner, f"incident.action_{what}", args)
            return LinkageAction.from_doc(reply["action"])

    if a is None or a.incident_id != incident_id:
        raise not_found("action", action_id)
    try:
        check_decide(principal.role, principal.name, principal.sees_region, a)
    except ActionDenied as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    return step, a


@router.post("/incidents/{incident_id}/actions/{action_id}/confirm")
def confirm_action(
    incident_id: ObjectId,
    action_id: ActionIdPath,
    body: DecideBody,
    side: SideDep,
    principal: PrincipalDep,
    now: NowDep,
    audit: AuditDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Confirm a proposed action: the command goes out on the device's cmd topic with an expiry. Needs the role
    admin, a scope covering the device, and someone other than the proposer. With several engine processes the
    engine that holds the incident publishes it (once)."""
    step, a = _decide(side, principal, incident_id, action_id, remote)
    try:
        done = step("confirm")
    except UserError as exc:  # ActionConflict here, or the owning engine's refusal
        audit.write(
            principal,
            "incident.action.confirm",
            f"action {a.id}",
            now=now,
            outcome="refused",
            detail={"why": str(exc)[:200]},
        )
        raise _conflict(exc) from exc
    audit.write(
        principal,
        "incident.action.confirm",
        f"action {a.id}",
        now=now,
        detail={
            "incident_id": incident_id,
            "device_id": a.device_id,
            "name": a.name,
            "state": done.state,
            "cmd_id": done.cmd_id,
        },
    )
    return done.doc()


@router.post("/incidents/{incident_id}/actions/{action_id}/decline")
def decline_action(
    incident_id: ObjectId,
    action_id: ActionIdPath,
    body: DecideBody,
    side: SideDep,
    principal: PrincipalDep,
    now: NowDep,
    audit: AuditDep,
    remote: RemoteDep,
) -> dict[str, Any]:
    """Decline a proposed action (nothing is sent)."""
    step, a = _decide(side, principal, incident_id, action_id, remote)
    try:
        done = step("decline", body.reason)
    except UserError as exc:  # ActionConflict here, or the owning engine's refusal
        raise _conflict(exc) from exc
    audit.write(
        principal,
        "incident.action.decline",
        f"action {a.id}",
        now=now,
        detail={"incident_id": incident_id, "device_id": a.device_id, "reason": body.reason[:200]},
    )
    return done.doc()


def incidents_of_alerts(engine: Engine, alert_ids: Sequence[int]) -> dict[int, int]:
    """alert id -> incident id (for the alerts list); {} when the incident tables cannot be read (the alerts list
    still answers)."""
    try:
        return JointStore(engine).incidents_of_alerts(alert_ids)
    except StoreUnavailable:
        logger.warning("incidents of alerts: the incident tables cannot be read")
        return {}
