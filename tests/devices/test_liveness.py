from __future__ import annotations

import pytest

from core.store import DeviceState
from devices.liveness import is_online

NOW = 1_800_000_000_000


def _state(last_seen_ms: int | None, status: str | None = None, status_ms: int | None = None) -> DeviceState:
    return DeviceState("gate-gz-0001", last_seen_ms, status, status_ms, None, 1, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("state", "interval_s", "expected"),
    [
        (None, 60, False),  # never reported
        (_state(None, "online", NOW - 1000), 60, False),  # a status alone is not data
        (_state(NOW - 1000), 60, True),
        (_state(NOW - 150_000), 60, True),  # exactly 2.5 x 60 s
        (_state(NOW - 150_001), 60, False),
        (_state(NOW - 600_000), 300, True),  # a longer interval tolerates a longer silence
        (_state(NOW - 1000, "offline", NOW - 500), 60, False),  # Last Will after the last data
        (_state(NOW - 1000, "offline", NOW - 1000), 60, False),  # the offline status was the last thing seen
        (_state(NOW - 1000, "offline", NOW - 5000), 60, True),  # data after the offline status: back online
        (_state(NOW - 1000, "online", NOW - 500), 60, True),
    ],
)
def test_is_online_rule(state: DeviceState | None, interval_s: int, expected: bool) -> None:
    assert is_online(state, interval_s, NOW) is expected
