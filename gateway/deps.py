"""FastAPI dependencies: every resource a route uses comes through one of these aliases.

Tests swap them with ``app.dependency_overrides[get_registry] = ...``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from alerts.service import AlertService
from core.settings import Settings
from core.store import TelemetryStore
from devices.audit import Actor, AuditLog
from devices.provisioning import Provisioner
from devices.registry import Registry
from gateway.audit import STATE_PRINCIPAL, STATE_ROUTE, ApiAudit
from gateway.auth import Principal, any_users, authenticate
from gateway.context import GatewayContext
from gateway.live import Broadcaster
from gateway.policy import load_policy
from gateway.read_from import READ_METHODS, STATE_READ_FROM

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False,
    description="A session token from POST /api/v1/auth/login, or an API token from `lianfang users add` / "
    "`lianfang users token`",
)


def get_ctx(request: Request) -> GatewayContext:
    return cast(GatewayContext, request.app.state.ctx)


ContextDep = Annotated[GatewayContext, Depends(get_ctx)]


def get_settings(ctx: ContextDep) -> Settings:
    return ctx.settings


def get_registry(ctx: ContextDep) -> Registry:
    return ctx.registry


def get_store(ctx: ContextDep) -> TelemetryStore:
    return ctx.store


def get_broadcaster(ctx: ContextDep) -> Broadcaster:
    return ctx.broadcaster


def get_now(ctx: ContextDep) -> datetime:
    return ctx.clock()


def get_ingress(ctx: ContextDep) -> Any | None:
    """The HTTP ingress publisher (``gateway.ingress_publisher.IngressPublisher``), or None if not configured."""
    return ctx.ingress


def get_alerts(ctx: ContextDep) -> AlertService:
    """The alert service, or 503 when alerts do not run in this process."""
    alerts = ctx.alerts
    if alerts is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="alerts not running")
    return cast(AlertService, getattr(alerts, "service", alerts))


def get_audit(request: Request, ctx: ContextDep) -> ApiAudit:
    return ApiAudit(ctx.registry, request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
StoreDep = Annotated[TelemetryStore, Depends(get_store)]
BroadcasterDep = Annotated[Broadcaster, Depends(get_broadcaster)]
NowDep = Annotated[datetime, Depends(get_now)]
IngressDep = Annotated[Any | None, Depends(get_ingress)]
AlertsDep = Annotated[AlertService, Depends(get_alerts)]
AuditDep = Annotated[ApiAudit, Depends(get_audit)]

_UNAUTHORIZED = HTTPException(
    status_code=status.HTTP_401_UNAUTHORIZED,
    detail="missing or invalid API token",
    headers={"WWW-Authenticate": "Bearer"},
)


def client_origin(request: Request) -> str:
    """Where a request came from, as the audit log writes it."""
    client = request.client
    return f"api from {client.host}" if client is not None else "api"


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_principal(ctx: ContextDep, registry: RegistryDep, request: Request, creds: BearerDep) -> Principal:
    """The caller, from ``Authorization: Bearer <token>``; 401 (one body) for a missing, unknown, forged, expired
    or revoked token or a disabled user. An integration token's use is audited at most once per
    ``auth.token_use_audit_minutes``.

    The development bypass applies only when the caller enabled ``dev_open``, settings say env=dev, and no API
    user exists yet.
    """
    state = request.scope.setdefault("state", {})
    route = request.scope.get("route")
    state[STATE_ROUTE] = getattr(route, "path", None)
    if creds is None or not creds.credentials:
        if ctx.dev_open and ctx.settings.env == "dev" and not any_users(registry.engine):
            state[STATE_PRINCIPAL] = Principal(name="dev-open", role="admin", region_id=None, region_ids=None)
            return cast(Principal, state[STATE_PRINCIPAL])
        raise _UNAUTHORIZED
    auth = ctx.settings.auth
    now = ctx.clock()
    policy = load_policy(registry.engine, auth)  # the security policy in force, read on each use
    found = authenticate(
        registry.engine,
        creds.credentials,
        now=now,
        session_minutes=policy.session_idle_minutes,
        sliding=True,
        audit_every=timedelta(minutes=auth.token_use_audit_minutes),
        absolute_minutes=policy.session_absolute_minutes,
        token_max_days=policy.token_max_days,
    )
    if found is None:
        raise _UNAUTHORIZED
    user = found.user
    if ctx.read_router is not None and request.method not in READ_METHODS:
        ctx.read_router.note_write(user.name)  # read-your-writes: this user's reads go to the primary for a while
    if found.audit_due:
        actor = Actor(f"{user.name} ({user.role})", client_origin(request))
        AuditLog(registry.session).write(actor, "auth.token_use", [user.name], now=now, detail={"kind": found.kind})
    region_ids = None if user.region_id is None else frozenset(registry.subtree_ids(user.region_id))
    principal = Principal(
        name=user.name, role=user.role, region_id=user.region_id, region_ids=region_ids, kind=found.kind
    )
    state[STATE_PRINCIPAL] = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


@dataclass(frozen=True)
class ReadDb:
    """The SQL database one read-only request reads: the replica's engine and registry, or the primary's."""

    engine: Engine
    registry: Registry
    on_replica: bool


def get_read_db(ctx: ContextDep, principal: PrincipalDep, request: Request) -> ReadDb:
    """For read-only routes (lists, details, reports, statistics, overview, audit reads): the replica of
    ``database_read_url`` when it is set, reachable, not too far behind, and the caller did not write in the last
    seconds (core/replica.py); else the primary. Writes, logins and token checks never use this."""
    router = ctx.read_router
    if router is None or ctx.read_registry is None:
        return ReadDb(ctx.registry.engine, ctx.registry, False)
    engine, on_replica = router.engine_for_read(principal.name)
    # The X-Lianfang-Read-From header (gateway/read_from.py), for operators and tests.
    request.scope.setdefault("state", {})[STATE_READ_FROM] = "replica" if on_replica else "primary"
    return ReadDb(engine, ctx.read_registry if on_replica else ctx.registry, on_replica)


ReadDbDep = Annotated[ReadDb, Depends(get_read_db)]


def get_read_registry(db: ReadDbDep) -> Registry:
    return db.registry


# The registry for a read-only route: on the replica when reads go there (get_read_db), else RegistryDep's.
ReadRegistryDep = Annotated[Registry, Depends(get_read_registry)]


def require_role(*roles: str) -> Callable[[Principal], Principal]:
    """A dependency for routes that change things: ``dependencies=[Depends(require_role("admin"))]``."""

    def check(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"needs role {' or '.join(roles)}")
        return principal

    return check


# Opens a Provisioner (registry + broker admin connection) acting as the given actor, for one request.
ProvisioningFactory = Callable[[Actor], AbstractContextManager[Provisioner]]


def default_provisioning(ctx: GatewayContext) -> ProvisioningFactory:
    """Device identities on the configured broker, as ``lianfang devices add`` makes them: the dynsec admin
    (``mqtt.admin_password``, or the embedded broker's generated one) and the password-file adapter when the
    embedded broker loads one."""

    @contextmanager
    def open_(actor: Actor) -> Iterator[Provisioner]:
        from devices.broker_adapter_passwd import adapter_for
        from devices.cli_context import broker_admin_password as admin_password  # the same lookup as the CLI's
        from devices.dynsec import DynsecClient

        mqtt = ctx.settings.mqtt
        with DynsecClient(mqtt.host, mqtt.port, admin_password(ctx.settings), timeout=10.0, tls_ca=mqtt.tls_ca) as ds:
            yield Provisioner(ctx.registry, ds, actor=actor, adapter=adapter_for(ctx.settings, ds))

    return open_


def get_provisioning(ctx: ContextDep) -> ProvisioningFactory:
    """``ctx.provisioning`` when the caller set one (tests, an embedding process), else the configured broker."""
    factory = getattr(ctx, "provisioning", None)
    return cast(ProvisioningFactory, factory) if factory is not None else default_provisioning(ctx)


ProvisioningDep = Annotated[ProvisioningFactory, Depends(get_provisioning)]
