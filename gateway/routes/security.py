"""The security policy (gateway/policy.py) through the API: the three officers read it, only the security
administrator of the whole tree changes it (三员分立: not the system administrator, not the auditor).

* ``GET /security/policy``: the effective policy, which fields were set (the others are the configured defaults),
  when and by whom.
* ``PATCH /security/policy``: set the given fields; ``null`` puts a field back to its default. Applies at once
  (logins, password changes, every session and token check read it); audited with the changes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from core.errors import UserError
from gateway.auth import Principal
from gateway.deps import AuditDep, NowDep, RegistryDep, SettingsDep, require_role
from gateway.params import error_responses
from gateway.policy import BOUNDS, save_policy, stored_policy
from gateway.routes import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/security", tags=["security"], responses=error_responses(400, 401, 403, 422, 503)
)

Reader = Annotated[Principal, Depends(require_role("sysadmin", "secadmin", "auditor"))]
SecAdmin = Annotated[Principal, Depends(require_role("secadmin"))]


def _bounded(name: str, description: str) -> Any:
    lo, hi = BOUNDS[name]
    return Field(default=None, ge=lo, le=hi, description=f"{description} ({lo}..{hi}; null: the default)")


class PolicyView(BaseModel):
    password_min_length: int
    password_classes: int = Field(description="of lowercase, uppercase, digits, other characters: how many to mix")
    lockout_failures: int
    lockout_minutes: int
    session_idle_minutes: int
    session_absolute_minutes: int = Field(description="0: no absolute limit")
    totp_required_for_admins: bool
    token_max_days: int
    set: list[str] = Field(description="fields the security administrator set; the others are defaults")
    updated_at: str | None
    updated_by: str | None


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password_min_length: int | None = _bounded("password_min_length", "shortest password")
    password_classes: int | None = _bounded("password_classes", "character classes a password must mix")
    lockout_failures: int | None = _bounded("lockout_failures", "failed logins in a row that lock the account")
    lockout_minutes: int | None = _bounded("lockout_minutes", "how long a locked account stays locked")
    session_idle_minutes: int | None = _bounded("session_idle_minutes", "a session ends after this long unused")
    session_absolute_minutes: int | None = _bounded(
        "session_absolute_minutes", "a session ends this long after login; 0: no limit"
    )
    totp_required_for_admins: bool | None = Field(
        default=None, description="admin, sysadmin and secadmin must log in with TOTP"
    )
    token_max_days: int | None = _bounded("token_max_days", "longest life of an integration token")


def _whole_tree(principal: Principal) -> None:
    if principal.region_ids is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="the security policy is tree-wide: needs a secadmin of the whole tree"
        )


@router.get("/policy")
def get_policy(principal: Reader, registry: RegistryDep, settings: SettingsDep) -> PolicyView:
    """The security policy in force."""
    return PolicyView(**stored_policy(registry.engine, settings.auth).as_json())


@router.patch("/policy")
def change_policy(
    body: PolicyChange, principal: SecAdmin, registry: RegistryDep, settings: SettingsDep, audit: AuditDep, now: NowDep
) -> PolicyView:
    """Change the security policy (security administrator of the whole tree); ``null`` restores a default."""
    _whole_tree(principal)
    changes = {k: getattr(body, k) for k in sorted(body.model_fields_set)}
    try:
        stored = save_policy(registry.engine, changes, now=now, by=principal.name, auth=settings.auth)
    except UserError as exc:  # the schema's bounds are the same: only a changed bound would get here
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    audit.write(principal, "security.policy", "security_policy", now=now, detail=changes)
    return PolicyView(**stored.as_json())
