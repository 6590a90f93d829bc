"""Read-replica routing at the edge of a request (``database_read_url``, core/replica.py), as a pure ASGI middleware
(routes that return their own ``Response`` are covered, streams pass through untouched):

* the ``X-Lianfang-Read-From`` response header: where a read-only request's SQL reads were served ("replica" or
  "primary", set by ``gateway.deps.get_read_db``);
* read-your-writes: when a write request (any method but GET, HEAD, OPTIONS) of an authenticated user answers,
  its end is noted, so the user's reads go to the primary for the window counted from the write's end (its start
  is noted by ``gateway.deps.get_principal``).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit import STATE_PRINCIPAL

READ_FROM_HEADER = "X-Lianfang-Read-From"
STATE_READ_FROM = "lianfang.read_from"  # key in scope["state"], set by gateway.deps.get_read_db
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _router(scope: Scope) -> Any | None:
    ctx = getattr(getattr(scope.get("app"), "state", None), "ctx", None)
    return getattr(ctx, "read_router", None)


class ReadFromHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {})
                where = state.get(STATE_READ_FROM)
                if where is not None:
                    headers = list(message.get("headers", []))
                    headers.append((READ_FROM_HEADER.lower().encode(), str(where).encode()))
                    message = {**message, "headers": headers}
                principal = state.get(STATE_PRINCIPAL)
                if scope.get("method") not in READ_METHODS and principal is not None:
                    router = _router(scope)
                    if router is not None:
                        router.note_write(principal.name)
            await send(message)

        await self.app(scope, receive, send_with_header)
