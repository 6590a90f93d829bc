"""The gateway's FastAPI app: REST API under /api/v1, /metrics, the live stream and the control-room page.

``create_app`` takes resources made by the caller (``GatewayContext``) and keeps them on ``app.state``; routes
read them through the aliases in ``gateway.deps``. The caller owns their lifetime; at shutdown the app only ends
open live streams.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import StoreUnavailable
from gateway.audit import AuditTrail
from gateway.context import GatewayContext
from gateway.fleet import start_fleet
from gateway.metrics import MetricsMiddleware
from gateway.params import ErrorBody
from gateway.read_from import ReadFromHeader
from gateway.routes import API_PREFIX, alerts, devices, events, health, incidents, ingress, me, regions, rules, stream
from gateway.routes import audit as audit_routes
from gateway.routes import auth as auth_routes
from gateway.routes import config as config_routes
from gateway.routes import dispatches as dispatches_routes
from gateway.routes import overview as overview_routes
from gateway.routes import patterns as patterns_routes
from gateway.routes import reports as reports_routes
from gateway.routes import risk as risk_routes
from gateway.routes import security as security_routes
from gateway.routes import users as users_routes
from gateway.routes import vehicles as vehicles_routes
from gateway.views import page_config, page_csp

__all__ = ["GatewayContext", "create_app"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE_CSP = page_csp()  # the page's and the API docs' CSP without a tile server (gateway/views.py)
# Swagger UI's files come from a package (fastapi-offline ships the swagger-ui dist), never from a CDN.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_URL = f"{API_PREFIX}/docs"
OPENAPI_URL = f"{API_PREFIX}/openapi.json"
_DOCS_STATIC = f"{DOCS_URL}/assets"


class EmptyQueryIsAbsent:
    """ASGI middleware: a query parameter with an empty value (``?region=``) is treated as absent, so a form or a
    script that sends every field does not get a 422 (or an empty list) for the ones left blank."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            parts: list[bytes] = scope["query_string"].split(b"&")
            kept = [p for p in parts if p.partition(b"=")[2]]
            if len(kept) != len(parts):
                scope = {**scope, "query_string": b"&".join(kept)}
        await self.app(scope, receive, send)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as text (``"inf"``): a 422 echoes the rejected input, and JSON has no
    Infinity or NaN, so ``Infinity`` in a body must not turn its own 422 into a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def docs_html() -> str:
    """Swagger UI from local files; the start script is a file too, so the page's CSP (no inline script) holds."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>Lianfang API</title>
<link rel="stylesheet" href="{_DOCS_STATIC}/swagger-ui.css">
<link rel="icon" href="{_DOCS_STATIC}/favicon.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{_DOCS_STATIC}/swagger-ui-bundle.js"></script>
<script src="{DOCS_URL}/init.js"></script>
</body>
</html>
"""


def docs_init_js() -> str:
    config = {
        "url": OPENAPI_URL,
        "dom_id": "#swagger-ui",
        "layout": "BaseLayout",
        "deepLinking": True,
        "validatorUrl": None,  # the default validator is a public web service
    }
    return (
        f"window.ui = SwaggerUIBundle(Object.assign({json.dumps(config)}, "
        "{presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]}));\n"
    )


def create_app(ctx: GatewayContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if ctx.dev_open and ctx.settings.env == "dev":
            logger.warning("gateway: dev_open is on; requests without a token are admin until a user exists")
        incidents.attach(ctx)  # the live stream of incidents, the linkage actions
        if ctx.warm_fleet:
            start_fleet(_app.state)  # the overview's and the tree's counts, built off the request path
        yield
        incidents.detach(ctx)
        ctx.broadcaster.close()

    app = FastAPI(
        title="Lianfang API",
        version="1",
        summary="联防: IoT monitoring and joint risk control. Every answer is limited to the caller's regions.",
        lifespan=lifespan,
        docs_url=None,
        openapi_url=OPENAPI_URL,
        redoc_url=None,
        # Any route may meet an unavailable store; the routers declare their own statuses with ErrorBody.
        responses={503: {"description": "a dependency (store, broker, alert service) is unavailable"}},
    )
    app.state.ctx = ctx
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(EmptyQueryIsAbsent)
    app.add_middleware(AuditTrail)  # every write and sensitive read audited; the access log (gateway/audit.py)
    app.add_middleware(ReadFromHeader)  # where a read's SQL was served: replica or primary (database_read_url)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        logger.warning("request failed, store unavailable: %s", exc)
        body = ErrorBody(detail="storage is unavailable, retry later")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)

    for module in (health, me, regions, devices, events, stream, alerts, rules, ingress, risk_routes):
        app.include_router(module.router)
    app.include_router(incidents.router)
    app.include_router(patterns_routes.router)  # correlation patterns and their edits (gateway/routes/patterns.py)
    app.include_router(audit_routes.router)  # the audit log for auditors (gateway/routes/audit.py)
    app.include_router(auth_routes.router)  # login, logout (gateway/routes/auth.py)
    app.include_router(users_routes.router)  # people and roles (gateway/routes/users.py)
    app.include_router(security_routes.router)  # the security policy (gateway/routes/security.py)
    app.include_router(overview_routes.router)  # key figures (gateway/routes/overview.py)
    app.include_router(reports_routes.router)  # reports (gateway/routes/reports.py, docs/reports.md)
    app.include_router(vehicles_routes.router)  # the map's vehicle positions (gateway/routes/vehicles.py)
    app.include_router(config_routes.router)  # the sysadmin's configuration API (gateway/routes/config.py)
    app.include_router(dispatches_routes.router)  # vehicle dispatch records, V2 (gateway/routes/dispatches.py)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": page_csp(ctx.settings.api.map_tile_url), "Cache-Control": "no-cache"},
        )

    @app.get("/page-config.json", include_in_schema=False)
    def page_settings() -> dict[str, Any]:
        return page_config(ctx.settings.api.map_tile_url)

    @app.get(DOCS_URL, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(), headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get(f"{DOCS_URL}/init.js", include_in_schema=False)
    def docs_init() -> Response:
        return Response(docs_init_js(), media_type="text/javascript", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount(_DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
