"""The system administrator's configuration API (三员分立: configuration is the sysadmin's; security settings stay
with the security administrator, ``PATCH /api/v1/security/policy``; the auditor reads the audit log, not this).

* ``GET /config``: the effective configuration of this process, secrets redacted (passwords, tokens, keys, and
  the password inside ``database_url``), and which runtime settings were changed through the API since start.
* ``PATCH /config``: change the safe runtime settings, those this process reads on each request (``RUNTIME``:
  page size limits, the longest silence per role, the map's tile server). Validated by the settings model itself,
  applied at once, audited (``config.change`` with every old and new value and the required reason). Anything
  else (broker, database, store, ports) is read at start only and is changed in ``lianfang.toml``; security
  settings (``auth.*``) are not here at all.

Both need a system administrator of the whole tree. Changes made here last until the process restarts: put them
in the configuration file to keep them (docs/security.md "Configuration API").
"""

from __future__ import annotations

import re
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.settings import Settings
from gateway.auth import Principal
from gateway.context import GatewayContext
from gateway.deps import AuditDep, ContextDep, NowDep, require_role
from gateway.params import Reason, error_responses, iso_at
from gateway.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["config"], responses=error_responses(400, 401, 403, 422, 503))

SysAdmin = Annotated[Principal, Depends(require_role("sysadmin"))]

# section.key -> what it does; each is read from the context's settings on every request that uses it
RUNTIME: dict[str, str] = {
    "api.max_points": "most points or buckets one telemetry answer may hold",
    "api.max_range_days": "longest time range of one telemetry query, days",
    "api.silence_max_hours_operator": "longest silence an operator may create, hours",
    "api.silence_max_hours_admin": "longest silence a region admin may create, hours",
    "api.map_tile_url": "the map's tile server on the operator's network ({z}/{x}/{y}); null: none",
}
REDACTED = "********"
_SECRET_KEY = re.compile(r"password|secret|token|private_key|api_key", re.IGNORECASE)
_LOCK = threading.Lock()


def redact(value: Any, key: str = "") -> Any:
    """The settings as JSON with every secret replaced by ``REDACTED``: values of keys that name a password,
    secret, token or key, and the password of a database URL. Pure."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str) and key.endswith("_url") and "@" in value:
        try:
            return make_url(value).render_as_string(hide_password=True).replace("***", REDACTED)
        except ArgumentError:
            return REDACTED
    return value


def _runtime_values(settings: Settings) -> dict[str, Any]:
    out = {}
    for dotted in RUNTIME:
        section, key = dotted.split(".")
        out[dotted] = getattr(getattr(settings, section), key)
    return out


class ConfigChange(BaseModel):
    """The runtime settings to change (only those given); security settings are not among them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_points: int | None = Field(default=None, alias="api.max_points", ge=1, le=1_000_000)
    max_range_days: int | None = Field(default=None, alias="api.max_range_days", ge=1, le=3660)
    silence_max_hours_operator: float | None = Field(
        default=None, alias="api.silence_max_hours_operator", gt=0, le=24 * 366
    )
    silence_max_hours_admin: float | None = Field(default=None, alias="api.silence_max_hours_admin", gt=0, le=24 * 366)
    map_tile_url: str | None = Field(default=None, alias="api.map_tile_url", max_length=300)
    reason: Reason


def _tree_wide(principal: Principal) -> None:
    if principal.region_id is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="the configuration is tree-wide: needs a sysadmin of the whole tree"
        )


def _view(ctx: GatewayContext) -> dict[str, Any]:
    settings = ctx.settings
    changes = list(ctx.config_changes)
    return {
        "settings": redact(settings.model_dump(mode="json")),
        "runtime": {k: {"value": v, "about": RUNTIME[k]} for k, v in _runtime_values(settings).items()},
        "changed": changes,
    }


@router.get("/config")
def get_config(ctx: ContextDep, principal: SysAdmin) -> dict[str, Any]:
    """The effective configuration with secrets redacted; ``runtime``: the settings ``PATCH /config`` may change,
    with their values; ``changed``: what was changed through the API since this process started (who, when)."""
    _tree_wide(principal)
    return _view(ctx)


@router.patch("/config")
def patch_config(
    body: ConfigChange, ctx: ContextDep, principal: SysAdmin, now: NowDep, audit: AuditDep
) -> dict[str, Any]:
    """Change runtime settings (``api.max_points``, ``api.max_range_days``, ``api.silence_max_hours_operator``,
    ``api.silence_max_hours_admin``, ``api.map_tile_url``; null for the tile server removes it) with a reason.
    Validated as the configuration file would be; applied at once; audited with the old and new values. Lasts until
    the process restarts."""
    _tree_wide(principal)
    given = {ConfigChange.model_fields[name].alias or name: getattr(body, name) for name in body.model_fields_set}
    given.pop("reason", None)
    if not given:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body"], "msg": f"set at least one of {', '.join(RUNTIME)}", "type": "value_error"}],
        )
    with _LOCK:
        settings = ctx.settings
        before = _runtime_values(settings)
        api = settings.api.model_dump()
        for dotted, value in given.items():
            if value is None and dotted != "api.map_tile_url":
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    detail=[{"loc": ["body", dotted], "msg": "may not be null", "type": "value_error"}],
                )
            api[dotted.split(".", 1)[1]] = value
        try:
            new_api = type(settings.api).model_validate(api)
        except ValidationError as exc:
            detail = [{"loc": ["body", f"api.{e['loc'][0]}"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail) from exc
        ctx.settings = settings.model_copy(update={"api": new_api})
        after = _runtime_values(ctx.settings)
        diff = {k: {"from": before[k], "to": after[k]} for k in given}
        record = {"at": iso_at(now), "by": principal.name, "changes": diff, "reason": body.reason}
        ctx.config_changes = [*ctx.config_changes, record][-100:]
    audit.write(principal, "config.change", ",".join(sorted(given)), now=now, detail={**diff, "reason": body.reason})
    return _view(ctx)
