"""Duplicate and gap detection on ``seq`` (pure, in memory; warmed from the store at start-up).

The same ``(device, seq)`` twice is a duplicate: stored once, alerted once. A device that restarts its counter
is told apart by its timestamp: a seen ``seq`` with a *different* device timestamp is a new message. A jump
forward in ``seq`` is a gap, counted for the data-quality report.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

WINDOW = 4096  # recent seqs remembered per device


@dataclass(slots=True)
class _DeviceSeqs:
    last: int = -1
    recent: OrderedDict[int, int | None] = field(default_factory=OrderedDict)  # seq -> device ts (None: no ts)


class SeqTracker:
    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._devices: dict[str, _DeviceSeqs] = {}
        self._implicit: dict[str, int] = {}

    def receive_ts(self, device_id: str, received_ms: int) -> int:
        """Timestamp for a record the device sent without ``ts``: its receive time, made unique per device.

        Storage is keyed on (device, ts), so two clock-less messages received in the same millisecond would
        otherwise merge into one point.
        """
        ts = max(received_ms, self._implicit.get(device_id, 0) + 1)
        self._implicit[device_id] = ts
        return ts

    def warm(self, device_id: str, seq: int, ts_ms: int | None = None) -> None:
        """Remember a seq already durable in the store (restart recovery)."""
        self.check(device_id, seq, ts_ms)

    def check(self, device_id: str, seq: int, ts_ms: int | None) -> tuple[bool, int]:
        """Record ``seq``; returns ``(is_duplicate, gap)``. ``ts_ms`` is the device's timestamp, or None."""
        d = self._devices.get(device_id)
        if d is None:
            d = self._devices[device_id] = _DeviceSeqs()
        if seq in d.recent:
            seen_ts = d.recent[seq]
            if ts_ms is None or seen_ts is None or seen_ts == ts_ms:
                return True, 0
        gap = seq - d.last - 1 if d.last >= 0 and seq > d.last + 1 else 0
        d.recent[seq] = ts_ms
        d.recent.move_to_end(seq)
        if len(d.recent) > self.window:
            d.recent.popitem(last=False)
        if seq > d.last or seq < d.last - self.window:  # forward, or a counter restart
            d.last = seq
        return False, gap
