"""People and roles through the API (docs/security.md, "People and roles"): the three officers of 三员分立.

* ``GET /users``: the system administrator, the security administrator and the auditor read the users of their
  region scope (never a token, hash or TOTP secret).
* ``POST /users``: the system administrator creates a user (name, password, person) as a ``viewer`` of a region
  inside their own scope; the security administrator then gives the role and scope.
* ``PATCH /users/{name}``: ``role`` and ``region_id`` only by the security administrator; ``password`` only by
  the system administrator; ``enabled`` by either. Nobody changes their own role or scope. A second officer role
  for the same person is refused (409). A password the security policy refuses (gateway/policy.py) is a 422.

A user outside the caller's scope is answered 404, like every other object. Each write is audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from core.errors import UserError
from devices.registry import REGION_ID_RE
from gateway.auth import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    ROLE_ALIASES,
    ROLES,
    USER_NAME_RE,
    ApiUser,
    Principal,
    check_password,
    user_by_name,
)
from gateway.auth import create_user as create_api_user
from gateway.auth import list_users as list_api_users
from gateway.auth import update_user as update_api_user
from gateway.deps import AuditDep, NowDep, RegistryDep, require_role
from gateway.params import error_responses
from gateway.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["users"], responses=error_responses(400, 401, 403, 404, 422, 503))

Reader = Annotated[Principal, Depends(require_role("sysadmin", "secadmin", "auditor"))]
Manager = Annotated[Principal, Depends(require_role("sysadmin", "secadmin"))]
SysAdmin = Annotated[Principal, Depends(require_role("sysadmin"))]

UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=USER_NAME_RE.pattern)]
UserPath = Annotated[str, Path(min_length=1, max_length=64, pattern=USER_NAME_RE.pattern, description="user name")]
RegionId = Annotated[str, Field(max_length=64, pattern=REGION_ID_RE.pattern)]
Password = Annotated[str, Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
RoleName = Annotated[str, Field(pattern="^(" + "|".join((*ROLES, *ROLE_ALIASES)) + ")$")]


class UserView(BaseModel):
    name: str
    role: str
    region_id: str | None = Field(description="null: the whole region tree")
    person_id: str
    enabled: bool
    created_at: datetime
    has_password: bool
    has_totp: bool
    locked_until: datetime | None


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: UserName
    password: Password
    person_id: UserName | None = None
    region_id: RegionId | None = Field(default=None, description="null: the caller's own scope")


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: RoleName | None = None
    region_id: RegionId | None = Field(default=None, description="null (given): the whole tree")
    enabled: bool | None = None
    password: Password | None = None


def _view(u: ApiUser) -> UserView:
    return UserView(
        name=u.name,
        role=u.role,
        region_id=u.region_id,
        person_id=u.person_id or u.name,
        enabled=u.enabled,
        created_at=u.created_at,
        has_password=u.password_hash is not None,
        has_totp=u.totp_secret is not None,
        locked_until=u.locked_until,
    )


def _in_scope(principal: Principal, region_id: str | None) -> bool:
    """A whole-tree user is visible only to whole-tree callers."""
    if principal.region_ids is None:
        return True
    return region_id is not None and region_id in principal.region_ids


def _password_ok(
    registry: RegistryDep, audit: AuditDep, principal: Principal, action: str, name: str, password: str, now: datetime
) -> None:
    """422 (audited) for a password the security policy refuses (length, character classes)."""
    try:
        check_password(registry.engine, password)
    except UserError as exc:
        audit.write(principal, action, name, now=now, outcome="invalid", detail={"error": str(exc)})
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


def _not_found(name: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no user {name!r}")


@router.get("/users")
def list_users(principal: Reader, registry: RegistryDep) -> list[UserView]:
    """The users of the caller's scope, by name."""
    return [_view(u) for u in list_api_users(registry.engine) if _in_scope(principal, u.region_id)]


@router.post("/users", status_code=201, responses=error_responses(409))
def create_user(body: NewUser, principal: SysAdmin, registry: RegistryDep, audit: AuditDep, now: NowDep) -> UserView:
    """Create a user who can log in, as a viewer of ``region_id`` (inside the caller's scope); the security
    administrator gives the role. The user's own API token is not shown: they log in."""
    region = body.region_id if body.region_id is not None else principal.region_id
    if not _in_scope(principal, region) or (region is not None and registry.region(region) is None):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no region {region!r}")
    _password_ok(registry, audit, principal, "user.create", body.name, body.password, now)
    try:
        create_api_user(
            registry.engine, body.name, "viewer", region, now, password=body.password, person_id=body.person_id
        )
    except UserError as exc:
        audit.write(principal, "user.create", body.name, now=now, outcome="refused", detail={"error": str(exc)})
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    detail: dict[str, Any] = {"role": "viewer", "region_id": region, "person_id": body.person_id or body.name}
    audit.write(principal, "user.create", body.name, now=now, detail=detail)
    user = user_by_name(registry.engine, body.name)
    assert user is not None
    return _view(user)


@router.patch("/users/{name}", responses=error_responses(409))
def update_user(
    name: UserPath, body: UserChange, principal: Manager, registry: RegistryDep, audit: AuditDep, now: NowDep
) -> UserView:
    """Change a user's role or scope (security administrator), password (system administrator), or enabled flag
    (either)."""
    user = user_by_name(registry.engine, name)
    if user is None or not _in_scope(principal, user.region_id):
        raise _not_found(name)
    given = body.model_fields_set
    scope_change = "role" in given or "region_id" in given
    if scope_change and principal.role != "secadmin":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="only the security administrator changes roles and scopes"
        )
    if body.password is not None and principal.role != "sysadmin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only the system administrator resets passwords")
    if scope_change and name == principal.name:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="nobody changes their own role or scope")
    if "region_id" in given and (
        not _in_scope(principal, body.region_id)
        or (body.region_id is not None and registry.region(body.region_id) is None)
    ):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no region {body.region_id!r}")
    changes = {k: getattr(body, k) for k in sorted(given) if k != "password"}
    if body.password is not None:
        changes["password_reset"] = True
        _password_ok(registry, audit, principal, "user.update", name, body.password, now)
    try:
        update_api_user(
            registry.engine,
            name,
            role=body.role,
            region_id=body.region_id,
            set_region="region_id" in given,
            enabled=body.enabled,
            password=body.password,
            now=now,
        )
    except UserError as exc:
        audit.write(principal, "user.update", name, now=now, outcome="refused", detail={**changes, "error": str(exc)})
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    audit.write(principal, "user.update", name, now=now, detail=changes)
    updated = user_by_name(registry.engine, name)
    assert updated is not None
    return _view(updated)
