"""The gateway's FastAPI app: REST API under /api/v1, /metrics, the live stream and the control-room page.

``create_app`` takes resources made by the caller (``GatewayContext``) and keeps them on ``app.state``; routes
read them through the aliases in ``gateway.deps``. The caller owns their lifetime; at shutdown the app only ends
open live streams.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from core.errors import StoreUnavailable
from gateway.context import GatewayContext
from gateway.metrics import MetricsMiddleware
from gateway.routes import API_PREFIX, alerts, devices, events, health, ingress, regions, rules, stream

__all__ = ["GatewayContext", "create_app"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The page loads nothing from anywhere else (closed government intranets).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_app(ctx: GatewayContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if ctx.dev_open and ctx.settings.env == "dev":
            logger.warning("gateway: dev_open is on; requests without a token are admin until a user exists")
        yield
        ctx.broadcaster.close()

    app = FastAPI(
        title="Lianfang API",
        version="1",
        summary="联防: IoT monitoring and joint risk control. Every answer is limited to the caller's regions.",
        lifespan=lifespan,
        docs_url=f"{API_PREFIX}/docs",
        openapi_url=f"{API_PREFIX}/openapi.json",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        logger.warning("request failed, store unavailable: %s", exc)
        return JSONResponse({"detail": "storage is unavailable, retry later"}, status_code=503)

    for module in (health, regions, devices, events, stream, alerts, rules, ingress):
        app.include_router(module.router)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            STATIC / "index.html",
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
