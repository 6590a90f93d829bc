"""The live stream's fan-out: a batch is scoped and serialised once per region scope, not once per open stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from gateway.live import Broadcaster, Rendered
from tests.gateway.test_live import GZ, _batch


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_subscribers_of_one_scope_share_one_rendered_message(loop: asyncio.AbstractEventLoop) -> None:
    b = Broadcaster()
    admins = [b.subscribe(None, loop) for _ in range(3)]
    gz = [b.subscribe(frozenset(GZ), loop) for _ in range(2)]
    b.publish(_batch())
    [a0], [a1], [a2] = (s.drain() for s in admins)
    [g0], [g1] = (s.drain() for s in gz)
    assert a0 is a1 is a2 and g0 is g1 and a0 is not g0
    assert isinstance(a0, Rendered) and isinstance(g0, Rendered)
    # the text is the event a stream sends: the same JSON as the message itself
    head, data, _ = g0.text.split("\n", 2)
    assert head == "event: batch"
    assert json.loads(data.removeprefix("data: ")) == dict(g0)
    assert [e["device_id"] for e in g0["events"]] == ["gate-gz-0001"]
    assert len(a0["events"]) == 2


def test_an_incident_is_rendered_once_for_every_subscriber_that_sees_it(loop: asyncio.AbstractEventLoop) -> None:
    b = Broadcaster()
    subs = [b.subscribe(None, loop), b.subscribe(frozenset(GZ), loop), b.subscribe(frozenset({"sz"}), loop)]
    b.publish_incident({"id": 7, "title_zh": "闯入"}, ["gd", "gz"], ["gz-b1"])
    got = [s.drain() for s in subs]
    assert got[2] == []
    [m0], [m1] = got[0], got[1]
    assert m0 is m1 and isinstance(m0, Rendered)
    assert m0.text.startswith("event: incident\ndata: ")
    assert "闯入" in m0.text  # UTF-8 as is, not \\u escapes
