"""Alert rules: the effective rule set (packs, rule files, API edits), a device's effective rules, and edits.

Reads and writes go through the running alert runtime's ``RuleAdmin`` (``alerts/rule_store.py``): a write is
validated like a rule file (a bad value is a 422 naming the field path), stored with who made it and when, and
swapped into the running ``AlertService`` before the answer is sent. Without the alert runtime in this process
every endpoint answers 503.

Scoping: an override for a region or a device outside the caller's subtree is answered 404, like a region or
device that does not exist; a device's effective rules likewise. Overrides need the role ``operator`` or
``admin``; an override without a region or device (every region of the tree) and rules defined through the API
need an ``admin`` of the whole tree.

Guarded powers (docs/security.md): switching a rule off for a region or device (``enabled: false``) and
overriding every rule at once (``*``) are region-admin actions: the role ``admin`` with a scope that contains the
override's region (operators get 403). Every write is recorded in the audit log with who made it. Numbers must be
finite: ``Infinity``, ``NaN`` and ``1e999`` are a 422.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import Field, field_validator

from alerts.rule_store import API_ORIGIN, ApiOverride, RuleAdmin, RuleChange, Scope
from alerts.rules import PACKS_DIR, RuleSpec, explain_rows
from alerts.types import Severity
from devices.registry import Registry
from gateway.audit import rule_changes_verified
from gateway.auth import Principal
from gateway.deps import AuditDep, ContextDep, NowDep, PrincipalDep, RegistryDep, require_role
from gateway.params import (
    DevicePath,
    DeviceQuery,
    Limit,
    Reason,
    ReasonQuery,
    RegionQuery,
    RuleOrAllPath,
    RulePath,
    error_responses,
    finite_json,
    iso_at,
)
from gateway.routes import API_PREFIX
from gateway.routes.devices import DeviceType
from gateway.scope import device_or_404, not_found, region_or_404
from gateway.spec_routes import CREATED, FiniteParams, SpecAnswers, answered, bad, edited_json, whole_tree_admin

router = APIRouter(prefix=API_PREFIX, tags=["rules"], responses=error_responses(400, 401, 403, 404, 409, 422, 503))

Writer = Annotated[Principal, Depends(require_role("operator", "admin"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
_PACKS = str(PACKS_DIR)


def get_rule_admin(ctx: ContextDep) -> RuleAdmin:
    """The running rule set and its editor, or 503 when the alert runtime does not run in this process."""
    admin = getattr(ctx.alerts, "rule_admin", None)
    if admin is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="alerts not running")
    return cast(RuleAdmin, admin)


RulesDep = Annotated[RuleAdmin, Depends(get_rule_admin)]
_ANSWERS = SpecAnswers("rule_id", ("rule", "id"), frozenset({"region", "device_type", "device"}), (), API_ORIGIN)


# --- JSON shapes -------------------------------------------------------------------------------------------------


_iso = iso_at


def _short(origin: str) -> str:
    """Pack files by their place in the source tree (alerts/packs/gates.yaml), not the server's absolute path."""
    return origin.replace(_PACKS, "alerts/packs")


def _source(origin: str) -> str:
    if origin == API_ORIGIN:
        return "api"
    return "pack" if origin.startswith(_PACKS) else "file"


def rule_summary(spec: RuleSpec, origin: str) -> dict[str, Any]:
    return {
        "id": spec.id,
        "kind": spec.kind,
        "severity": str(spec.severity),
        "enabled": spec.enabled,
        "title_zh": spec.title_zh,
        "title_en": spec.title_en,
        "device_types": list(spec.device_types),
        "source": _source(origin),
        "defined_in": _short(origin),
    }


def _scope_json(scope: Scope) -> dict[str, Any]:
    return {"region": scope.region, "device_type": scope.device_type, "device": scope.device}


def api_override_json(o: ApiOverride, applied: bool = True) -> dict[str, Any]:
    return {
        "rule": o.rule_id,
        **_scope_json(o.scope),
        "enabled": o.enabled,
        "severity": o.severity,
        "params": o.params,
        "source": "api",
        "origin": o.origin,
        "applied": applied,
        **edited_json(o),
    }


def change_json(c: RuleChange) -> dict[str, Any]:
    return {
        "id": c.id,
        "at": _iso(c.at),
        "actor": c.actor,
        "target": c.target,
        "action": c.action,
        "rule": c.rule_id,
        "kind": c.kind,
        **_scope_json(c.scope),
        "before": c.before,
        "after": c.after,
    }


def _visible(scope: Scope, principal: Principal, registry: Registry) -> bool:
    return principal.sees_scope(scope.region, scope.device, lambda d: _device_region(registry, d))


def _device_region(registry: Registry, device_id: str) -> str | None:
    d = registry.device(device_id)
    return d.region_id if d is not None else None


# --- reads -------------------------------------------------------------------------------------------------------


@router.get("/rules")
def list_rules(
    rules: RulesDep,
    _principal: PrincipalDep,
    device_type: Annotated[DeviceType | None, Query(alias="type", description="rules of this device type")] = None,
    kind: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z][a-z0-9_]*$", description="rule kind")] = None,
) -> dict[str, Any]:
    """Every rule of the running rule set (packs, rule files, API), ordered by id."""
    rs = rules.rules
    items = [
        rule_summary(spec, rs.rule_origin[spec.id])
        for spec in sorted(rs.rules.values(), key=lambda s: s.id)
        if (device_type is None or device_type in spec.device_types) and (kind is None or spec.kind == kind)
    ]
    return {"total": len(items), "items": items, "problems": list(rules.problems)}


@router.get("/rules/{rule_id}")
def get_rule(rule_id: RulePath, rules: RulesDep, registry: RegistryDep, principal: PrincipalDep) -> dict[str, Any]:
    """One rule: its definition, and the overrides of it (and of every rule, ``*``) the caller may see, in the
    order they are applied at the same level: files first, then the API."""
    rs = rules.rules
    spec = rs.rules.get(rule_id)
    if spec is None:
        raise not_found("rule", rule_id)
    out = rule_summary(spec, rs.rule_origin[rule_id])
    out.update(
        description=spec.description,
        dedup_key=spec.dedup_key,
        inhibit_when_offline=spec.inhibit_when_offline,
        params=spec.params,
    )
    api_rule = next((d for d in rules.store.rules() if d.rule_id == rule_id), None)
    if api_rule is not None:
        out.update(edited_json(api_rule))
    applied = {layer.origin for layer in rs.layers}
    overrides: list[dict[str, Any]] = []
    for layer in rs.layers:
        ov = layer.spec
        if ov.rule not in (rule_id, "*") or layer.origin.startswith("api override "):
            continue
        if _visible(Scope(ov.region, ov.device_type, ov.device), principal, registry):
            overrides.append(
                {
                    "rule": ov.rule,
                    "region": ov.region,
                    "device_type": ov.device_type,
                    "device": ov.device,
                    "enabled": ov.enabled,
                    "severity": None if ov.severity is None else str(ov.severity),
                    "params": ov.params,
                    "source": _source(layer.origin.rsplit(" ", 1)[0]),
                    "origin": _short(layer.origin),
                    "applied": True,
                }
            )
    for o in rules.store.overrides():
        if o.rule_id in (rule_id, "*") and _visible(o.scope, principal, registry):
            overrides.append(api_override_json(o, o.origin in applied))
    out["overrides"] = overrides
    return out


@router.get("/rules/{rule_id}/history")
def rule_history(
    rule_id: RuleOrAllPath,
    rules: RulesDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    limit: Limit = 100,
) -> dict[str, Any]:
    """Changes made through the API to the rule and its overrides, newest first (deleted ones included)."""
    changes = [c for c in rules.store.history(rule_id, limit) if _visible(c.scope, principal, registry)]
    if not changes and rule_id not in rules.rules.rules:
        raise not_found("rule", rule_id)
    # "verified": false when the hash-chained audit log holds no intact record of the change (an SQL edit of the
    # change's actor, say): the API shows it with that warning (gateway/audit.py).
    verified = rule_changes_verified(registry, changes)
    return {"total": len(changes), "items": [{**change_json(c), "verified": verified[c.id]} for c in changes]}


@router.get("/devices/{device_id}/rules")
def explain_device(
    device_id: DevicePath,
    rules: RulesDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    include_disabled: Annotated[bool, Query(alias="all", description="also list disabled rules")] = False,
) -> dict[str, Any]:
    """The device's effective rules (like ``lianfang rules explain``): every setting, its value and where the value
    came from (a kind's default, the rule, a file's override or an API override)."""
    device = device_or_404(registry, principal, device_id)
    path = registry.ancestors(device.region_id)
    effective = [r for r in rules.rules.explain(device.id, device.type, path) if include_disabled or r.enabled]
    items = []
    for r in effective:
        items.append(
            {
                "id": r.rule_id,
                "kind": r.kind,
                "enabled": r.enabled,
                "severity": str(r.severity),
                "title_zh": r.title_zh,
                "title_en": r.title_en,
                "settings": [
                    {"setting": row["setting"], "value": row["value"], "source": _short(row["source"])}
                    for row in explain_rows([r])
                ],
            }
        )
    return {
        "device": device.id,
        "type": device.type,
        "region_path": [rid for rid in path if principal.sees_region(rid)],
        "total": len(items),
        "rules": items,
    }


# --- overrides ---------------------------------------------------------------------------------------------------


class OverrideBody(FiniteParams):
    enabled: bool | None = Field(default=None, description="switch the rule on or off here; null: inherited")
    severity: Severity | None = Field(default=None, description="null: inherited")
    params: dict[str, Any] = Field(
        default_factory=dict, description="merged key by key over the inherited params; numbers must be finite"
    )
    reason: Reason  # why the override is set or changed: required, written to the audit log


def _scope(
    registry: Registry,
    principal: Principal,
    region: str | None,
    device_type: str | None,
    device: str | None,
) -> Scope:
    """The override's scope, checked against the caller's: 404 outside their subtree, 403 for the whole tree."""
    if device is not None:
        if region is not None or device_type is not None:
            raise bad(["query", "device"], "a device override names only the device (its region and type follow)")
        device_or_404(registry, principal, device)
    if region is not None:
        region_or_404(registry, principal, region)
    scope = Scope(region, device_type, device)
    if scope.is_global and (principal.role != "admin" or principal.region_ids is not None):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="an override for every region needs an admin of the whole tree; name a region or a device",
        )
    return scope


RegionQ = RegionQuery
TypeQ = Annotated[DeviceType | None, Query(description="only devices of this type")]
DeviceQ = DeviceQuery


def _guard_disabling(principal: Principal, rule_id: str, body: OverrideBody) -> None:
    """Switching a rule off, or overriding every rule at once, is for an admin of the scope (the scope itself was
    checked by ``_scope``: a region-scoped admin reaches only their subtree)."""
    if principal.role == "admin":
        return
    if body.enabled is False:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="switching a rule off (enabled: false) needs an admin of that region; operators may tune it",
        )
    if rule_id == "*":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="an override of every rule (*) needs an admin of that region"
        )


@router.put("/rules/{rule_id}/overrides", responses=CREATED)
def put_override(
    rule_id: RuleOrAllPath,
    body: OverrideBody,
    response: Response,
    rules: RulesDep,
    registry: RegistryDep,
    principal: Writer,
    now: NowDep,
    audit: AuditDep,
    region: RegionQ = None,
    device_type: TypeQ = None,
    device: DeviceQ = None,
) -> dict[str, Any]:
    """Create (201) or replace (200) the API override of a rule (``*``: every rule) at a scope given by the query:
    ``region``, ``region`` + ``device_type``, ``device``, or (admins of the whole tree) ``device_type`` alone or
    nothing. Validated like a rule file; effective at once in the running service. Switching a rule off
    (``enabled: false``) and ``*`` need an admin of the region; the change is written to the audit log."""
    scope = _scope(registry, principal, region, device_type, device)
    _guard_disabling(principal, rule_id, body)
    if rule_id != "*" and rule_id not in rules.rules.rules:
        raise not_found("rule", rule_id)
    if body.enabled is None and body.severity is None and not body.params:
        raise bad(["body"], "set at least one of enabled, severity, params")
    with _ANSWERS.errors():
        saved, created = rules.put_override(
            rule_id,
            scope,
            enabled=body.enabled,
            severity=None if body.severity is None else str(body.severity),
            params=body.params,
            actor=principal.name,
            now=now,
        )
    audit.write(
        principal,
        "rule.override.put",
        scope.label(rule_id),
        now=now,
        detail={
            "rule": rule_id,
            **_scope_json(scope),
            "enabled": body.enabled,
            "severity": None if body.severity is None else str(body.severity),
            "params": body.params,
            "created": created,
            "reason": body.reason,
        },
    )
    answered(response, created)
    return api_override_json(saved)


@router.delete("/rules/{rule_id}/overrides")
def delete_override(
    rule_id: RuleOrAllPath,
    rules: RulesDep,
    registry: RegistryDep,
    principal: Writer,
    now: NowDep,
    audit: AuditDep,
    reason: ReasonQuery,
    region: RegionQ = None,
    device_type: TypeQ = None,
    device: DeviceQ = None,
) -> dict[str, Any]:
    """Delete the API override at that scope (404 if there is none); the inherited values apply again at once.
    ``reason`` is required (a blank one is a 422) and written to the audit log."""
    scope = _scope(registry, principal, region, device_type, device)
    gone = rules.delete_override(rule_id, scope, actor=principal.name, now=now)
    if gone is None:
        raise not_found("override", scope.label(rule_id))
    audit.write(
        principal,
        "rule.override.delete",
        scope.label(rule_id),
        now=now,
        detail={
            "rule": rule_id,
            **_scope_json(scope),
            "enabled": gone.enabled,
            "params": gone.params,
            "reason": reason,
        },
    )
    return {"deleted": api_override_json(gone, applied=False)}


# --- rules defined through the API ---------------------------------------------------------------------------


class RuleBody(RuleSpec):
    """A rule as in a rule file's ``rules:`` section; the id comes from the path."""

    id: str | None = None  # type: ignore[assignment]

    @field_validator("params", check_fields=False)
    @classmethod
    def _finite_params(cls, v: Any) -> Any:
        return finite_json(v)


def _whole_tree_admin(principal: Principal) -> None:
    whole_tree_admin(principal, "rule definitions need")


@router.put("/rules/{rule_id}", responses=CREATED)
def put_rule(
    rule_id: RulePath,
    body: RuleBody,
    response: Response,
    rules: RulesDep,
    principal: Admin,
    now: NowDep,
    audit: AuditDep,
) -> dict[str, Any]:
    """Define (201) or replace (200) a rule through the API. Ids defined by a pack or rule file are 409 (override
    them instead)."""
    _whole_tree_admin(principal)
    spec = _ANSWERS.spec(RuleSpec, body, rule_id)
    with _ANSWERS.errors():
        saved, created = rules.put_rule(spec, actor=principal.name, now=now)
    audit.write(
        principal,
        "rule.put",
        f"rule {rule_id}",
        now=now,
        detail={"enabled": spec.enabled, "kind": spec.kind, "params": spec.params, "created": created},
    )
    answered(response, created)
    out = rule_summary(spec, API_ORIGIN)
    out.update(params=spec.params, **edited_json(saved))
    return out


@router.delete("/rules/{rule_id}")
def delete_rule(rule_id: RulePath, rules: RulesDep, principal: Admin, now: NowDep, audit: AuditDep) -> dict[str, Any]:
    """Delete a rule defined through the API, with the API overrides of it. Its open alerts stay open until they
    are resolved by hand."""
    _whole_tree_admin(principal)
    origin = rules.rules.rule_origin.get(rule_id)
    if origin is not None and origin != API_ORIGIN:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail=f"rule {rule_id!r} is defined in {_short(origin)}; disable it instead"
        )
    gone, removed = rules.delete_rule(rule_id, actor=principal.name, now=now)
    if gone is None:
        raise not_found("rule", rule_id)
    audit.write(principal, "rule.delete", f"rule {rule_id}", now=now, detail={"overrides_deleted": len(removed)})
    return {"deleted": rule_id, "overrides_deleted": [api_override_json(o, applied=False) for o in removed]}
