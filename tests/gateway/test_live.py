"""Live stream: the Broadcaster (bounded queues, drop oldest, scoping) and SSE through a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from core.protocol import Rejection, Status
from core.store import WriteBatch
from gateway.live import Broadcaster
from tests.gateway.conftest import NOW_MS, Gateway, event, reading
from tests.helpers import wait_until

GZ = frozenset({"gz", "gz-jgj", "gz-b1"})


def _batch() -> WriteBatch:
    b = WriteBatch()
    b.events.append(event("gate-gz-0001", "gz-b1", "gate", NOW_MS, "door_forced"))
    b.events.append(event("gate-sz-0001", "sz-b1", "gate", NOW_MS, "tamper"))
    b.statuses.append(Status("car-sz-0001", "sz", NOW_MS, "offline"))
    b.readings.append(reading("meter-gz-0001", "gz-jgj", "energy_meter", NOW_MS - 1000, energy_kwh=1.0))
    b.readings.append(reading("meter-gz-0001", "gz-jgj", "energy_meter", NOW_MS, energy_kwh=2.0))
    b.rejections.append(Rejection("ghost-0001", "lf/v1/ghost-0001/telemetry", "unregistered_device", "", b"{}", 1))
    return b


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _dropped_total() -> float:
    return REGISTRY.get_sample_value("lianfang_stream_dropped_total") or 0.0


def test_broadcaster_scopes_each_subscriber(loop: asyncio.AbstractEventLoop) -> None:
    b = Broadcaster()
    gz = b.subscribe(GZ, loop)
    everyone = b.subscribe(None, loop)
    nothing = b.subscribe(frozenset({"xa"}), loop)
    b.publish(_batch())
    [msg] = gz.drain()
    assert [e["device_id"] for e in msg["events"]] == ["gate-gz-0001"]
    assert "statuses" not in msg and "rejections" not in msg
    assert msg["readings"] == [
        {
            "device_id": "meter-gz-0001",
            "region_id": "gz-jgj",
            "device_type": "energy_meter",
            "ts_ms": NOW_MS,
            "fields": {"energy_kwh": 2.0},
        }
    ]
    [full] = everyone.drain()
    assert len(full["events"]) == 2
    assert full["statuses"][0]["state"] == "offline"
    assert full["rejections"][0]["reason"] == "unregistered_device"
    assert nothing.drain() == []


def test_broadcaster_drops_oldest_and_counts(loop: asyncio.AbstractEventLoop) -> None:
    b = Broadcaster(max_queue=3)
    sub = b.subscribe(None, loop)
    before = _dropped_total()
    for i in range(5):
        batch = WriteBatch()
        batch.events.append(event("gate-gz-0001", "gz-b1", "gate", NOW_MS + i, "door_closed"))
        b.publish(batch)
    got = sub.drain()
    assert [m["events"][0]["ts_ms"] for m in got] == [NOW_MS + 2, NOW_MS + 3, NOW_MS + 4]
    assert sub.dropped == 2
    assert _dropped_total() - before == 2


def test_broadcaster_never_raises(loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    b = Broadcaster()
    sub = b.subscribe(None, loop)
    bad = WriteBatch()
    bad.events.append(None)  # type: ignore[arg-type]
    b.publish(bad)  # logged, not raised
    assert "publishing a batch failed" in caplog.text
    closed = asyncio.new_event_loop()
    gone = b.subscribe(None, closed)
    closed.close()
    b.publish(_batch())
    assert gone.closed
    assert len(sub.drain()) == 1


def test_subscriber_wakes_the_event_loop_from_another_thread(loop: asyncio.AbstractEventLoop) -> None:
    b = Broadcaster()
    sub = b.subscribe(None, loop)
    writer = threading.Thread(target=b.publish, args=(_batch(),))

    async def receive() -> list[dict[str, Any]]:
        writer.start()
        return await sub.next(timeout=5)

    got = loop.run_until_complete(receive())
    writer.join()
    assert len(got) == 1 and len(got[0]["events"]) == 2
    assert loop.run_until_complete(sub.next(timeout=0.01)) == []  # nothing more: times out empty
    b.close()
    assert loop.run_until_complete(sub.next(timeout=5)) == []
    assert sub.closed


# --- SSE over a real HTTP server ------------------------------------------------------------------------------


def _frames(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    name, data = "", ""
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and data:
            yield name, json.loads(data)
            name, data = "", ""


def test_sse_stream_delivers_scoped_batches(gateway: Gateway, served: str) -> None:
    broadcaster = gateway.ctx.broadcaster
    with httpx.Client(base_url=served, timeout=5) as http:
        headers_gz = {"Authorization": f"Bearer {gateway.tokens['gz']}"}
        headers_admin = {"Authorization": f"Bearer {gateway.tokens['admin']}"}
        assert http.get("/api/v1/stream").status_code == 401
        with (
            http.stream("GET", "/api/v1/stream", headers=headers_gz) as gz,
            http.stream("GET", "/api/v1/stream", headers=headers_admin) as admin,
        ):
            assert gz.status_code == 200
            assert gz.headers["content-type"].startswith("text/event-stream")
            gz_frames = _frames(gz.iter_lines())
            admin_frames = _frames(admin.iter_lines())
            assert next(gz_frames) == ("hello", {"user": "gz-duty", "region_id": "gz"})
            assert next(admin_frames) == ("hello", {"user": "admin", "region_id": None})
            broadcaster.publish(_batch())  # as ingest's writer thread does after a durable batch
            name, gz_msg = next(gz_frames)
            assert name == "batch"
            assert [e["device_id"] for e in gz_msg["events"]] == ["gate-gz-0001"]
            assert "statuses" not in gz_msg and "rejections" not in gz_msg
            _, admin_msg = next(admin_frames)
            assert {e["device_id"] for e in admin_msg["events"]} == {"gate-gz-0001", "gate-sz-0001"}
            assert admin_msg["statuses"][0]["device_id"] == "car-sz-0001"
            assert broadcaster.subscriber_count == 2
        wait_until(lambda: broadcaster.subscriber_count == 0, 5, what="streams closed on the server")
