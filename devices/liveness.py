"""Is a device online? One pure rule, shared by the CLI and the API.

A device is online when it has sent data recently enough (within 2.5 times its expected reporting interval) and
has not announced ``offline`` (Last Will or a clean disconnect) since its last data. A device that never
reported is offline. The function reads no clock: the caller passes ``now_ms``.
"""

from __future__ import annotations

from core.store import DeviceState

# How many expected intervals may pass without data before a device counts as offline.
GRACE_FACTOR = 2.5


def is_online(state: DeviceState | None, interval_s: int, now_ms: int) -> bool:
    """True when the device's last data is fresh and no ``offline`` status arrived after it."""
    if state is None:
        return False
    return online_at(state.last_seen_ms, state.status, state.status_ms, interval_s, now_ms)


def online_at(
    last_seen_ms: int | None, status: str | None, status_ms: int | None, interval_s: int, now_ms: int
) -> bool:
    """``is_online`` on plain values (callers that keep them per device: no DeviceState to build)."""
    if last_seen_ms is None:
        return False
    if status == "offline" and status_ms is not None and status_ms >= last_seen_ms:
        return False
    return now_ms - last_seen_ms <= GRACE_FACTOR * interval_s * 1000
