"""Logging in and out: ``POST /auth/login`` (name, password and, when the user has one, a TOTP code) opens a
server-side session and answers its token; ``POST /auth/logout`` ends it. Every attempt is audited (who, from
where, the outcome); every failure answers the same 401, whatever went wrong (no user, wrong password or code,
disabled, locked out), so a caller cannot tell which."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from devices.audit import Actor, AuditLog
from gateway.audit import mark_audited
from gateway.auth import MAX_PASSWORD, USER_NAME_RE, end_session, login
from gateway.deps import BearerDep, NowDep, PrincipalDep, RegistryDep, SettingsDep, client_origin
from gateway.params import error_responses
from gateway.policy import load_policy
from gateway.routes import API_PREFIX

router = APIRouter(prefix=f"{API_PREFIX}/auth", tags=["auth"], responses=error_responses(400, 401, 422, 503))

LOGIN_FAILED = "missing or invalid API token"  # the one 401 body of the API (gateway/deps.py)


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=USER_NAME_RE.pattern)]
    password: Annotated[str, Field(min_length=1, max_length=MAX_PASSWORD)]
    totp: Annotated[str | None, Field(default=None, pattern=r"^[0-9]{6}$", description="6-digit TOTP code")] = None


class LoginAnswer(BaseModel):
    token: str = Field(description="bearer token of the session: `Authorization: Bearer <token>`")
    expires_at: datetime = Field(description="when the session ends (moves on with each use if sliding)")
    name: str
    role: str


@router.post("/login")
def login_(body: LoginBody, request: Request, registry: RegistryDep, settings: SettingsDep, now: NowDep) -> LoginAnswer:
    """Log in with a name and password (and a TOTP code for users who have one); answers a session token.

    The security policy's ``lockout_failures`` failures in a row lock the account for its ``lockout_minutes``
    (gateway/policy.py; defaults ``auth.lockout_failures`` and ``auth.lockout_minutes``)."""
    policy = load_policy(registry.engine, settings.auth)
    origin = client_origin(request)
    result = login(
        registry.engine,
        body.name,
        body.password,
        body.totp,
        now=now,
        session_minutes=policy.session_idle_minutes,
        lockout_failures=policy.lockout_failures,
        lockout_minutes=policy.lockout_minutes,
        totp_required_for_admins=policy.totp_required_for_admins,
        origin=origin,
        absolute_minutes=policy.session_absolute_minutes,
    )
    audit = AuditLog(registry.session)
    mark_audited(request)
    actor = Actor(body.name if result.role is None else f"{body.name} ({result.role})", origin)
    if result.outcome == "lockout":
        audit.write(actor, "auth.login", [body.name], now=now, outcome="denied", detail={"reason": "password"})
        audit.write(
            actor, "auth.lockout", [body.name], now=now, outcome="locked", detail={"minutes": policy.lockout_minutes}
        )
    elif result.outcome != "ok":
        audit.write(actor, "auth.login", [body.name], now=now, outcome="denied", detail={"reason": result.outcome})
    if result.outcome != "ok" or result.token is None or result.expires_at is None or result.role is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=LOGIN_FAILED, headers={"WWW-Authenticate": "Bearer"})
    audit.write(actor, "auth.login", [body.name], now=now, outcome="ok")
    return LoginAnswer(token=result.token, expires_at=result.expires_at, name=result.user, role=result.role)


@router.post("/logout", status_code=204, responses=error_responses(400))
def logout(principal: PrincipalDep, creds: BearerDep, request: Request, registry: RegistryDep, now: NowDep) -> Response:
    """End the caller's login session (its token answers 401 from now on). Integration and legacy tokens are
    not sessions: they are revoked with ``lianfang users revoke-token`` (400 here)."""
    if principal.kind != "session" or creds is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail="only a login session can log out; revoke API tokens with `lianfang users revoke-token`",
        )
    end_session(registry.engine, creds.credentials, now=now)
    actor = Actor(f"{principal.name} ({principal.role})", client_origin(request))
    AuditLog(registry.session).write(actor, "auth.logout", [principal.name], now=now, outcome="ok")
    mark_audited(request)
    return Response(status_code=204)
