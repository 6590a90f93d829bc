"""HTTP ingress (PROTOCOL.md "HTTP ingress"): devices that cannot speak MQTT POST their messages here.

``POST /api/v1/ingest/{device_id}/telemetry`` and ``.../event``, body as on MQTT, ``Authorization: Bearer <device
secret>`` (the secret issued at provisioning). The order of checks:

1. the device's secret (constant-time, ``devices.provisioning.device_secret_ok``): an unknown device, a disabled
   one and a wrong secret all get the same ``401``, so the endpoint tells nothing about which ids exist;
2. the body: at most 64 KiB (``413``), decoded with the same rules as ingest (``core.protocol.decode``): ``400``
   ``not_json``, ``422`` for ``schema`` (with the field path), ``bad_timestamp``, ``unknown_event``,
   ``forged_identity``, ``not_object``. Every rejection answers ``{"reason": ..., "detail": ...}`` and is recorded
   in the store like ingest records its own (raw payload cut at 4 KiB);
3. the same pipeline: the raw body is published at QoS 1 on ``lf/v1/{device_id}/telemetry|event`` with the
   gateway's broker account, and ``202`` is answered only after the broker's PUBACK (the broker then holds it for
   ingest's persistent session). No broker, or no PUBACK in time: ``503`` with ``Retry-After``; the client
   retries (``seq`` makes a retry a duplicate that is stored once).

An array whose objects are partly bad is accepted (``202``) when at least one object is good; the answer lists the
rejected objects, and ingest records them as it does for MQTT.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from core.errors import BrokerUnavailable, InvalidMessage, StoreUnavailable
from core.protocol import DEVICE_ID_RE, MAX_PAYLOAD, RAW_KEEP, DeviceInfo, Rejection, topic_for
from core.protocol import decode as decode_payload
from core.store import DeviceCounters, WriteBatch
from devices.provisioning import device_secret_ok
from devices.registry import expected_interval
from gateway.context import GatewayContext
from gateway.deps import ContextDep
from gateway.params import ErrorBody
from gateway.routes import API_PREFIX

logger = logging.getLogger(__name__)
router = APIRouter(prefix=API_PREFIX, tags=["ingress"])

INGRESS = Counter("lianfang_http_ingress_total", "HTTP ingress requests by outcome", ["outcome"])

_STATUS_OF_REASON = {"too_large": 413, "not_json": status.HTTP_400_BAD_REQUEST}
_RETRY_AFTER_S = "5"


def _answer(code: int, reason: str, detail: str, **extra: Any) -> JSONResponse:
    INGRESS.labels(reason).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="lianfang-device"'} if code == 401 else None
    if code == status.HTTP_503_SERVICE_UNAVAILABLE:
        headers = {"Retry-After": _RETRY_AFTER_S}
    return JSONResponse({"reason": reason, "detail": detail, **extra}, status_code=code, headers=headers)


def _unauthorized() -> JSONResponse:
    return _answer(401, "unauthorized", "unknown device or wrong device secret")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _read_body(request: Request) -> tuple[bytes, bool]:
    """The body, read up to one byte past the limit; (first bytes, too_large)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_PAYLOAD:
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_PAYLOAD:
            return b"".join(chunks)[:RAW_KEEP], True
    return b"".join(chunks), False


def _record(
    ctx: GatewayContext, device_id: str, where: str, rejected: list[tuple[str, str]], body: bytes, ms: int
) -> None:
    """Keep rejections as ingest does (reason, detail, raw payload cut at 4 KiB); a store outage is logged only,
    the device still gets its answer."""
    batch = WriteBatch(
        rejections=[Rejection(device_id, where, reason, detail, body[:RAW_KEEP], ms) for reason, detail in rejected],
        counters={device_id: DeviceCounters(rejected=len(rejected))},
    )
    try:
        ctx.store.write(batch)
    except StoreUnavailable as exc:
        logger.warning("HTTP ingress: could not record %d rejection(s) of %s: %s", len(rejected), device_id, exc)


def _handle(ctx: GatewayContext, device_id: str, kind: str, body: bytes, too_large: bool) -> JSONResponse:
    """Blocking part (runs in a worker thread): validate, publish, wait for the PUBACK."""
    now_ms = int(ctx.clock().timestamp() * 1000)
    where = f"POST {API_PREFIX}/ingest/{device_id}/{kind}"
    if too_large:
        detail = f"body larger than {MAX_PAYLOAD} bytes"
        _record(ctx, device_id, where, [("too_large", detail)], body, now_ms)
        return _answer(413, "too_large", detail)
    device = ctx.registry.device(device_id)
    if device is None:  # deleted between the secret check and now
        return _unauthorized()
    info = DeviceInfo(device.id, device.type, device.region_id, device.enabled, expected_interval(device))
    try:
        records, errors = decode_payload(kind, body, info, now_ms)
    except InvalidMessage as exc:
        _record(ctx, device_id, where, [(exc.reason, exc.detail)], body, now_ms)
        return _answer(_STATUS_OF_REASON.get(exc.reason, 422), exc.reason, exc.detail)
    if not records:
        _record(ctx, device_id, where, errors, body, now_ms)
        reason, detail = errors[0]
        return _answer(422, reason, detail, rejected=[{"reason": r, "detail": d} for r, d in errors])
    if ctx.ingress is None:
        return _answer(503, "unavailable", "HTTP ingress is not connected to the broker in this process")
    try:
        ctx.ingress.publish(topic_for(device_id, kind), body, timeout=ctx.ingress_timeout_s)
    except BrokerUnavailable as exc:
        logger.warning("HTTP ingress: %s not handed to the broker: %s", device_id, exc)
        return _answer(503, "unavailable", "the message broker did not accept the message in time; retry")
    INGRESS.labels("accepted").inc()
    return JSONResponse(
        {"accepted": len(records), "rejected": [{"reason": r, "detail": d} for r, d in errors]},
        status_code=status.HTTP_202_ACCEPTED,
    )


@router.post(
    "/ingest/{device_id}/{kind}",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "handed to the broker (QoS 1, PUBACK received); ingest stores it"},
        400: {"model": ErrorBody, "description": "not JSON"},
        401: {"model": ErrorBody, "description": "unknown device, disabled device or wrong secret"},
        413: {"model": ErrorBody, "description": "body larger than 64 KiB"},
        422: {
            "model": ErrorBody,
            "description": "breaks PROTOCOL.md: schema (with the field path), bad_timestamp, unknown_event, ...",
        },
        503: {"model": ErrorBody, "description": "broker unavailable; retry later"},
    },
)
async def ingest(
    device_id: Annotated[str, Path(max_length=64, description="device id")],
    kind: Literal["telemetry", "event"],
    request: Request,
    ctx: ContextDep,
) -> JSONResponse:
    """Send a device message over HTTP: `Authorization: Bearer <device secret>`, body as on MQTT (one JSON object,
    or an array of up to 500). Answers 202 once the broker holds it; 4xx `{"reason", "detail"}` when rejected."""
    secret = _bearer(request)
    if secret is None or not DEVICE_ID_RE.match(device_id):
        return _unauthorized()
    if not await run_in_threadpool(device_secret_ok, ctx.registry, device_id, secret):
        return _unauthorized()
    body, too_large = await _read_body(request)
    return await run_in_threadpool(_handle, ctx, device_id, kind, body, too_large)
