"""The ``X-Lianfang-Read-From`` response header: where a read-only request's SQL reads were served ("replica" or
"primary", ``gateway.deps.get_read_db``). A pure ASGI middleware, so routes that return their own ``Response``
(the region tree, reports, CSV exports) carry it too, and streams pass through untouched."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

READ_FROM_HEADER = "X-Lianfang-Read-From"
STATE_READ_FROM = "lianfang.read_from"  # key in scope["state"], set by gateway.deps.get_read_db


class ReadFromHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                where = scope.get("state", {}).get(STATE_READ_FROM)
                if where is not None:
                    headers = list(message.get("headers", []))
                    headers.append((READ_FROM_HEADER.lower().encode(), str(where).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)
