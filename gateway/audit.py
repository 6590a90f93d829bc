"""The gateway's records in the audit log (``devices.audit``): every write and sensitive read through the API.

One mechanism covers every route: :class:`AuditTrail`, an ASGI middleware, writes a record for each request that
changes something (any method but GET, HEAD, OPTIONS) and for each sensitive read (a route with
``dependencies=[SENSITIVE_READ]``), with who (the API user and role, or ``anonymous``), when, from where (the
client's address), what (method and route template as ``action``, the path as ``target``) and the outcome from
the status code (ok, denied 401, refused 403 and 429, not_found, conflict, invalid 400 and 422, error 5xx). A
refusal is recorded like a success. A GET answered 401 for a presented (forged, expired, revoked) token is
recorded as ``auth.refused``.

A route that knows more writes its own record with :class:`ApiAudit` (``AuditDep``): a named action
(``silence.create``, ``rule.override.put``, ``incident.ack`` ...) and the detail that matters. Then the
middleware writes nothing more for that request. The interface other routes rely on is
``ApiAudit.write(principal, action, target, *, now, detail=None, outcome="ok")``: stable.

Never a token or password (``devices.audit`` drops such keys). The middleware also writes the access log (logger
``lianfang.access``, one line per request with the user). :func:`rule_changes_verified` tells the rule history
which changes the hash-chained log vouches for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio
from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alerts.rule_store import RuleChange
from devices.audit import Actor, AuditLog, utc_instant
from devices.registry import Registry
from gateway.auth import Principal

access_logger = logging.getLogger("lianfang.access")
logger = logging.getLogger(__name__)

# Request state keys (``request.state``, the ASGI scope's "state" dict) shared by the dependencies and AuditTrail.
STATE_PRINCIPAL = "lf_principal"
STATE_ROUTE = "lf_route"
STATE_AUDITED = "lf_audited"
STATE_SENSITIVE = "lf_sensitive_read"

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def mark_audited(request: Request) -> None:
    """Tell AuditTrail the route wrote its own record for this request (routes writing ``AuditLog`` directly)."""
    request.scope.setdefault("state", {})[STATE_AUDITED] = True


def _sensitive_read(request: Request) -> None:
    request.scope.setdefault("state", {})[STATE_SENSITIVE] = True


# ``dependencies=[SENSITIVE_READ]`` on a GET route: each read is recorded (audit reads, exports, credentials).
SENSITIVE_READ = Depends(_sensitive_read)


def outcome_of(status_code: int) -> str:
    """The audit outcome of an HTTP status."""
    if status_code < 400:
        return "ok"
    return {
        400: "invalid",
        401: "denied",
        403: "refused",
        404: "not_found",
        409: "conflict",
        422: "invalid",
        429: "refused",
    }.get(status_code, "error" if status_code >= 500 else "refused")


class ApiAudit:
    """Writes audit records for one request (and marks the request audited, so AuditTrail adds none)."""

    def __init__(self, registry: Registry, request: Request) -> None:
        self._log = AuditLog(registry.session)
        client = request.client
        self._origin = f"api from {client.host}" if client is not None else "api"
        self._request = request

    def write(
        self,
        principal: Principal,
        action: str,
        target: str,
        *,
        now: datetime,
        detail: Mapping[str, Any] | None = None,
        outcome: str = "ok",
    ) -> None:
        actor = Actor(f"{principal.name} ({principal.role})", self._origin)
        self._log.write(actor, action, [target[:200]], now=now, outcome=outcome, detail=detail)
        mark_audited(self._request)


class AuditTrail:
    """ASGI middleware: the audit record of every write and sensitive read a route did not record itself, and the
    access log line of every request (see the module docstring). The record is written when the answer is
    complete, in a worker thread; a failure to write it is logged as an error."""

    def __init__(self, app: ASGIApp, prefix: str = "/api/", exempt: tuple[str, ...] = ("/api/v1/ingest/",)) -> None:
        """``exempt``: path prefixes whose writes are not people's actions (device messages over HTTP ingress,
        which are counted and their rejections stored, not audited)."""
        self.app = app
        self.prefix = prefix
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        code = 500

        async def send_(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            method, path = scope["method"], scope["path"]
            principal: Principal | None = state.get(STATE_PRINCIPAL)
            client = scope.get("client")
            host = client[0] if client else "-"
            if access_logger.isEnabledFor(logging.INFO):
                access_logger.info(
                    '%s %s "%s %s" %d %.1fms',
                    host,
                    principal.name if principal is not None else "-",
                    method,
                    path[:300],
                    code,
                    elapsed_ms,
                )
            if path.startswith(self.prefix) and not path.startswith(self.exempt) and not state.get(STATE_AUDITED):
                record = self._record(scope, state, principal, method, path, code)
                if record is not None:
                    try:
                        await anyio.to_thread.run_sync(lambda: _write(scope, host, principal, *record))
                    except Exception:
                        logger.exception("audit record of %s %s (%d) could not be written", method, path, code)

    @staticmethod
    def _record(
        scope: Scope,
        state: Mapping[str, Any],
        principal: Principal | None,
        method: str,
        path: str,
        code: int,
    ) -> tuple[str, str, str, dict[str, Any]] | None:
        """(action, target, outcome, detail) of the request's record, or None when it needs none."""
        route = state.get(STATE_ROUTE)
        what = f"{method} {route or path}"
        if route is not None and route.startswith("/api/v1/"):
            what = f"{method} {route.removeprefix('/api/v1')}"
        detail: dict[str, Any] = {"status": code}
        if method not in SAFE_METHODS:
            return what[:64], path, outcome_of(code), detail
        if state.get(STATE_SENSITIVE):
            query = scope.get("query_string", b"").decode("latin-1")
            if query:
                detail["query"] = query[:500]
            return what[:64], path, outcome_of(code), detail
        headers = dict(scope.get("headers") or [])
        if code == 401 and headers.get(b"authorization"):
            return "auth.refused", path, "denied", detail
        return None


def _write(
    scope: Scope,
    host: str,
    principal: Principal | None,
    action: str,
    target: str,
    outcome: str,
    detail: dict[str, Any],
) -> None:
    app = scope.get("app")
    ctx = getattr(getattr(app, "state", None), "ctx", None)
    if ctx is None:
        return
    who = "anonymous" if principal is None else f"{principal.name} ({principal.role})"
    origin = f"api from {host}" if host != "-" else "api"
    AuditLog(ctx.registry.session).write(
        Actor(who, origin), action, [target[:200]], now=ctx.clock(), outcome=outcome, detail=detail
    )


def rule_changes_verified(registry: Registry, changes: Sequence[RuleChange]) -> dict[int, bool]:
    """For each rule change (by id): whether the audit log holds an intact record of it (same time, the same user,
    an action on that rule) that verifies against the chain. A change whose row was edited in the database (its
    actor, say) or whose audit record was edited, deleted or moved answers False."""
    if not changes:
        return {}
    log = AuditLog(registry.session)
    start = min(c.at for c in changes)
    end = max(c.at for c in changes) + timedelta(microseconds=1)
    records = [r for r in log.records(since=start, until=end, limit=10_000) if r.action.startswith("rule.")]
    ok = log.checked(records)
    out: dict[int, bool] = {}
    for c in changes:
        at = utc_instant(c.at)
        out[c.id] = any(
            ok[r.id]
            and utc_instant(r.ts) == at
            and r.actor.startswith(f"{c.actor} (")
            and (r.detail.get("rule") == c.rule_id or r.target == f"rule {c.rule_id}")
            for r in records
        )
    return out
