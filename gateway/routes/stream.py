"""GET /api/v1/stream: Server-Sent Events with region-scoped summaries of every durable batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse

from gateway.deps import BroadcasterDep, ContextDep, PrincipalDep
from gateway.live import Broadcaster, Rendered, StreamLimit, Subscriber, sse
from gateway.params import error_responses
from gateway.routes import API_PREFIX

router = APIRouter(prefix=API_PREFIX, tags=["stream"], responses=error_responses(401, 429, 503))


async def _events(
    request: Request, broadcaster: Broadcaster, sub: Subscriber, hello: dict[str, Any], keepalive_s: float
) -> AsyncIterator[str]:
    try:
        yield "retry: 3000\n" + sse("hello", hello)
        reported_drops = 0
        while True:
            messages = await sub.next(keepalive_s)
            if messages:
                for message in messages:
                    if sub.dropped != reported_drops:
                        message = {**message, "dropped": sub.dropped - reported_drops}
                        reported_drops = sub.dropped
                    elif isinstance(message, Rendered):  # made once for every stream of this scope
                        yield message.text
                        continue
                    yield sse("incident" if "incidents" in message else "batch", message)
            elif sub.closed:
                return
            else:
                yield ": keepalive\n\n"
            if await request.is_disconnected():
                return
    finally:
        broadcaster.unsubscribe(sub)


@router.get("/stream", response_class=StreamingResponse)
async def stream(
    request: Request, ctx: ContextDep, broadcaster: BroadcasterDep, principal: PrincipalDep
) -> StreamingResponse:
    """Live feed (``text/event-stream``): ``hello`` once, then ``batch`` events with the new events, status
    changes and latest readings of the caller's regions (and rejections for whole-tree users). A ``dropped``
    count says how many batches a slow client missed.

    At most ``api.stream_max_per_user`` streams per API user and ``api.stream_max_total`` per server are open at
    once; one more is answered 429 with the limit it hit."""
    api = ctx.settings.api
    try:
        sub = broadcaster.subscribe(
            principal.region_ids,
            asyncio.get_running_loop(),
            owner=principal.name,
            max_per_owner=api.stream_max_per_user,
            max_total=api.stream_max_total,
        )
    except StreamLimit as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=str(exc), headers={"Retry-After": "30"}) from exc
    hello = {"user": principal.name, "region_id": principal.region_id}
    return StreamingResponse(
        _events(request, broadcaster, sub, hello, ctx.stream_keepalive_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
