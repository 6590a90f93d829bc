"""Prometheus metrics: HTTP latency here; ingest registers its own counters in the same default registry."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_LATENCY = Histogram(
    "lianfang_http_request_duration_seconds",
    "Time from request to response headers, by route template",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _route_label(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None) or getattr(route, "path_format", None)
    return str(path) if path else "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware (streams pass through untouched); the label is the route template, not the URL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        async def send_timed(message: Message) -> None:
            nonlocal observed
            if message["type"] == "http.response.start" and not observed:
                observed = True
                HTTP_LATENCY.labels(scope["method"], _route_label(scope), str(message["status"])).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            if not observed:
                HTTP_LATENCY.labels(scope["method"], _route_label(scope), "500").observe(time.perf_counter() - start)
