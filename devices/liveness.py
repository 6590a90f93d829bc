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
    if state is None or state.last_seen_ms is None:
        return False
    if state.status == "offline" and state.status_ms is not None and state.status_ms >= state.last_seen_ms:
        return False
    return now_ms - state.last_seen_ms <= GRACE_FACTOR * interval_s * 1000
