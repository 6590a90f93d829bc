"""Correlation patterns (joint/, docs/joint-api.md "Patterns"): the effective set (packs, pattern files, API edits),
one pattern with its overrides and its effective values in a region, the history of API edits, and edits.

Edits go to the database through ``joint.pattern_store.PatternAdmin``: each is validated like a pattern file and
checked like ``lianfang rules check`` (an alert rule, rule kind, device type or region that does not exist is a 422
naming it and the closest known name), stored with who made it and when, and written to the audit log. The running
correlator (in this process or another) sees the stored version move and reloads its patterns within a few
seconds (``JointService.reload_patterns``): no restart.

Scoping, as for the alert rules (gateway/routes/rules.py): an override for a region outside the caller's subtree is
404, like a region that does not exist, and overrides the caller cannot see are not listed. Overrides need the role
``operator`` or ``admin``; switching a pattern off (``enabled: false``) and an override of every pattern (``*``) need
an ``admin`` of the region; an override without a region (every region) and patterns defined through the API need
an ``admin`` of the whole tree.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from pydantic import Field

from alerts.rule_check import Known
from alerts.types import Severity
from gateway.auth import Principal
from gateway.context import GatewayContext
from gateway.deps import AuditDep, ContextDep, NowDep, PrincipalDep, RegistryDep, require_role
from gateway.params import Limit, RegionQuery, error_responses, iso_at
from gateway.routes import API_PREFIX
from gateway.scope import not_found, region_or_404
from gateway.spec_routes import CREATED, FiniteParams, SpecAnswers, answered, bad, edited_json, whole_tree_admin
from joint.pattern_store import ApiPatternOverride, PatternAdmin, PatternChange, PatternStore
from joint.patterns import API_ORIGIN, PACKS_DIR, BuiltPatterns, PatternSpec

router = APIRouter(prefix=API_PREFIX, tags=["patterns"], responses=error_responses(400, 401, 403, 404, 409, 422, 503))

Writer = Annotated[Principal, Depends(require_role("operator", "admin"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PatternPath = Annotated[str, Path(max_length=64, pattern=_ID, description="pattern id, e.g. X5")]
PatternOrAllPath = Annotated[
    str, Path(max_length=64, pattern=rf"^\*$|{_ID}", description="pattern id, or * for every pattern")
]
_PACKS = str(PACKS_DIR)
_ANSWERS = SpecAnswers("pattern_id", ("pattern", "id"), frozenset({"region"}), ("patterns", "overrides"), API_ORIGIN)
_ADMIN_ATTR = "_pattern_admin"


_RULE_IDS_TTL_S = 10.0  # where the alert engine runs elsewhere: the rule files and API rules re-read this often


def _rule_ids(ctx: GatewayContext) -> list[str]:
    """The alert rules a pattern may name: the running rule set here, else the rule files and API rules (read at
    most every ``_RULE_IDS_TTL_S``: reading the packs takes a while)."""
    rules = getattr(ctx.alerts, "rules", None)
    if rules is not None and hasattr(rules, "rules"):
        return list(rules.rules)
    cached: tuple[float, list[str]] | None = getattr(ctx, "_pattern_rule_ids", None)
    if cached is not None and time.monotonic() - cached[0] < _RULE_IDS_TTL_S:
        return cached[1]
    from alerts.rule_store import load_rules
    from alerts.rules import PACKS_DIR as RULE_PACKS

    ids = list(load_rules([RULE_PACKS, *ctx.settings.alerts.rules_paths], ctx.registry.engine).rules.rules)
    setattr(ctx, "_pattern_rule_ids", (time.monotonic(), ids))  # noqa: B010
    return ids


def get_pattern_admin(ctx: ContextDep) -> PatternAdmin:
    """The pattern files (read once per app) and the API layer in the database."""
    admin: PatternAdmin | None = getattr(ctx, _ADMIN_ATTR, None)
    if admin is None:
        from joint.service import pattern_paths

        reg = ctx.registry
        admin = PatternAdmin(
            pattern_paths(ctx.settings),
            PatternStore(reg.engine),
            lambda: _rule_ids(ctx),
            lambda: Known(frozenset(r.id for r in reg.regions())),
        )
        setattr(ctx, _ADMIN_ATTR, admin)
    return admin


PatternsDep = Annotated[PatternAdmin, Depends(get_pattern_admin)]


# --- JSON shapes -------------------------------------------------------------------------------------------------


def _short(origin: str) -> str:
    return origin.replace(_PACKS, "joint/packs")


def _source(origin: str) -> str:
    if origin == API_ORIGIN or origin.startswith(f"{API_ORIGIN} "):
        return "api"
    return "pack" if origin.startswith(_PACKS) else "file"


def pattern_summary(spec: PatternSpec, origin: str) -> dict[str, Any]:
    return {
        "id": spec.id,
        "kind": spec.kind,
        "type": spec.type,
        "title_zh": spec.title_zh,
        "title_en": spec.title_en,
        "severity": str(spec.severity),
        "enabled": spec.enabled,
        "scope": str(spec.scope),
        "window_s": spec.window_s,
        "mute_members": spec.mute_members,
        "source": _source(origin),
        "defined_in": _short(origin),
    }


def override_json(o: ApiPatternOverride, applied: bool = True) -> dict[str, Any]:
    return {
        "pattern": o.pattern_id,
        "region": o.region,
        **{k: o.values.get(k) for k in ("enabled", "severity", "window_s", "mute_members")},
        "params": o.values.get("params", {}),
        "source": "api",
        "origin": o.origin,
        "applied": applied,
        **edited_json(o),
    }


def change_json(c: PatternChange) -> dict[str, Any]:
    return {
        "id": c.id,
        "at": iso_at(c.at),
        "actor": c.actor,
        "target": c.target,
        "action": c.action,
        "pattern": c.pattern_id,
        "region": c.region,
        "before": c.before,
        "after": c.after,
    }


def _sees(principal: Principal, region: str | None) -> bool:
    """An override of every region (None) applies to the caller's regions too: everyone sees it."""
    return region is None or principal.sees_region(region)


# --- reads -------------------------------------------------------------------------------------------------------


@router.get("/patterns")
def list_patterns(admin: PatternsDep, _principal: PrincipalDep) -> dict[str, Any]:
    """Every correlation pattern in effect (X packs, pattern files, API), ordered by id; ``problems``: API edits
    that no longer fit and are skipped."""
    built = admin.build()
    ps = built.patterns
    items = [pattern_summary(ps.patterns[pid], ps.origin[pid]) for pid in sorted(ps.patterns)]
    return {"total": len(items), "items": items, "problems": built.problems}


def _built_pattern(built: BuiltPatterns, pattern_id: str) -> PatternSpec:
    spec = built.patterns.patterns.get(pattern_id)
    if spec is None:
        raise not_found("pattern", pattern_id)
    return spec


@router.get("/patterns/{pattern_id}")
def get_pattern(
    pattern_id: PatternPath,
    admin: PatternsDep,
    registry: RegistryDep,
    principal: PrincipalDep,
    region: RegionQuery = None,
) -> dict[str, Any]:
    """One pattern: its definition, the overrides of it (and of every pattern, ``*``) the caller may see in the
    order they apply at the same region (files first, then the API), and with ``region`` its effective values
    there, each with where it came from (like ``lianfang rules explain --patterns``)."""
    built = admin.build()
    spec = _built_pattern(built, pattern_id)
    ps = built.patterns
    out = pattern_summary(spec, ps.origin[pattern_id])
    out["definition"] = spec.model_dump(mode="json")
    api_def = next((d for d in admin.store.defs() if d.pattern_id == pattern_id), None)
    if api_def is not None:
        out.update(edited_json(api_def))
    applied = {origin for _, origin in ps.overrides}
    overrides: list[dict[str, Any]] = []
    for ov, origin in ps.overrides:
        if ov.pattern in (pattern_id, "*") and not origin.startswith(f"{API_ORIGIN} ") and _sees(principal, ov.region):
            overrides.append(
                {
                    **ov.model_dump(mode="json", exclude={"pattern"}),
                    "pattern": ov.pattern,
                    "source": _source(origin),
                    "origin": _short(origin),
                    "applied": True,
                }
            )
    for o in admin.store.overrides():
        if o.pattern_id in (pattern_id, "*") and _sees(principal, o.region):
            overrides.append(override_json(o, o.origin in applied))
    out["overrides"] = overrides
    if region is not None:
        path = registry.ancestors(region_or_404(registry, principal, region).id)
        rows = [r for r in ps.explain_rows(path) if r["pattern"] == pattern_id]
        out["effective"] = {
            "region": region,
            "settings": [{"setting": r["setting"], "value": r["value"], "source": _short(r["source"])} for r in rows],
        }
    return out


@router.get("/patterns/{pattern_id}/history")
def pattern_history(
    pattern_id: PatternOrAllPath, admin: PatternsDep, principal: PrincipalDep, limit: Limit = 100
) -> dict[str, Any]:
    """Changes made through the API to the pattern and its overrides, newest first (deleted ones included);
    overrides of regions outside the caller's subtree are left out."""
    changes = [c for c in admin.store.history(pattern_id, limit) if c.target == "pattern" or _sees(principal, c.region)]
    if not changes and pattern_id != "*" and pattern_id not in admin.build().patterns.patterns:
        raise not_found("pattern", pattern_id)
    return {"total": len(changes), "items": [change_json(c) for c in changes]}


# --- overrides ---------------------------------------------------------------------------------------------------


class PatternOverrideBody(FiniteParams):
    enabled: bool | None = Field(default=None, description="switch the pattern on or off here; null: inherited")
    severity: Severity | None = Field(default=None, description="null: inherited")
    window_s: float | None = Field(default=None, gt=0, le=7 * 86400, description="the window in seconds")
    mute_members: bool | None = Field(default=None, description="mute member alerts while the incident is open")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the kind's params, merged key by key over the inherited ones"
    )

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: v for k, v in self.model_dump(mode="json", exclude={"params"}).items() if v is not None
        }
        if self.params:
            out["params"] = self.params
        return out


def _whole_tree_admin(principal: Principal, what: str) -> None:
    whole_tree_admin(principal, f"{what} needs")


def _override_scope(registry: Any, principal: Principal, pattern_id: str, region: str | None) -> None:
    if region is None:
        _whole_tree_admin(principal, "an override for every region (name a region)")
    else:
        region_or_404(registry, principal, region)


@router.put("/patterns/{pattern_id}/overrides", responses=CREATED)
def put_override(
    pattern_id: PatternOrAllPath,
    body: PatternOverrideBody,
    response: Response,
    admin: PatternsDep,
    registry: RegistryDep,
    principal: Writer,
    now: NowDep,
    audit: AuditDep,
    region: RegionQuery = None,
) -> dict[str, Any]:
    """Create (201) or replace (200) the API override of a pattern (``*``: every pattern) for a region's subtree
    (``region``; without it: every region, for admins of the whole tree). Validated like a pattern file and checked
    like ``rules check``; the running correlator picks it up within seconds. Switching a pattern off and ``*`` need
    an admin of the region; the change is written to the audit log."""
    _override_scope(registry, principal, pattern_id, region)
    if principal.role != "admin" and (body.enabled is False or pattern_id == "*"):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="switching a pattern off, or overriding every pattern (*), needs an admin of that region",
        )
    values = body.values()
    if not values:
        raise bad(["body"], "set at least one of enabled, severity, window_s, mute_members, params")
    if pattern_id != "*" and pattern_id not in admin.build().patterns.patterns:
        raise not_found("pattern", pattern_id)
    with _ANSWERS.errors():
        saved, created = admin.put_override(pattern_id, region, values, actor=principal.name, now=now)
    audit.write(
        principal,
        "pattern.override.put",
        saved.origin,
        now=now,
        detail={"pattern": pattern_id, "region": region, **values, "created": created},
    )
    answered(response, created)
    return override_json(saved)


@router.delete("/patterns/{pattern_id}/overrides")
def delete_override(
    pattern_id: PatternOrAllPath,
    admin: PatternsDep,
    registry: RegistryDep,
    principal: Writer,
    now: NowDep,
    audit: AuditDep,
    region: RegionQuery = None,
) -> dict[str, Any]:
    """Delete the API override at that region (404 if there is none); the inherited values apply again."""
    _override_scope(registry, principal, pattern_id, region)
    gone = admin.delete_override(pattern_id, region, actor=principal.name, now=now)
    if gone is None:
        raise not_found("override", f"{pattern_id} [{region or 'all'}]")
    audit.write(
        principal, "pattern.override.delete", gone.origin, now=now, detail={"pattern": pattern_id, **gone.values}
    )
    return {"deleted": override_json(gone, applied=False)}


# --- patterns defined through the API ----------------------------------------------------------------------------


class PatternBody(PatternSpec):
    """A pattern as in a pattern file's ``patterns:`` section; the id comes from the path."""

    id: str | None = None  # type: ignore[assignment]


@router.put("/patterns/{pattern_id}", responses=CREATED)
def put_pattern(
    pattern_id: PatternPath,
    body: PatternBody,
    response: Response,
    admin: PatternsDep,
    principal: Admin,
    now: NowDep,
    audit: AuditDep,
) -> dict[str, Any]:
    """Define (201) or replace (200) a pattern through the API; ids defined by a pack or pattern file are 409
    (override them instead). Checked like ``rules check``; the running correlator picks it up within seconds."""
    _whole_tree_admin(principal, "pattern definitions")
    spec = _ANSWERS.spec(PatternSpec, body, pattern_id)
    with _ANSWERS.errors():
        saved, created = admin.put_pattern(spec, actor=principal.name, now=now)
    audit.write(
        principal,
        "pattern.put",
        f"pattern {pattern_id}",
        now=now,
        detail={"kind": spec.kind, "enabled": spec.enabled, "created": created},
    )
    answered(response, created)
    out = pattern_summary(spec, API_ORIGIN)
    out["definition"] = saved.spec
    out.update(edited_json(saved))
    return out


@router.delete("/patterns/{pattern_id}")
def delete_pattern(
    pattern_id: PatternPath, admin: PatternsDep, principal: Admin, now: NowDep, audit: AuditDep
) -> dict[str, Any]:
    """Delete a pattern defined through the API, with the API overrides of it. Its open incidents stay open until
    they are closed by hand."""
    _whole_tree_admin(principal, "pattern definitions")
    defined_in = admin.file_origin(pattern_id)
    if defined_in is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"pattern {pattern_id!r} is defined in {_short(defined_in)}; switch it off with an override",
        )
    gone, removed = admin.delete_pattern(pattern_id, actor=principal.name, now=now)
    if gone is None:
        raise not_found("pattern", pattern_id)
    audit.write(
        principal, "pattern.delete", f"pattern {pattern_id}", now=now, detail={"overrides_deleted": len(removed)}
    )
    return {"deleted": pattern_id, "overrides_deleted": [override_json(o, applied=False) for o in removed]}
