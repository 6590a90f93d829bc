"""Duplicate and gap detection on ``seq`` (pure, in memory; warmed from the store at start-up).

The same ``(device, seq)`` twice is a duplicate: stored once, alerted once. A device that restarts its counter
is told apart by its timestamp: a seen ``seq`` with a *different* device timestamp is a new message. A jump
forward in ``seq`` is a gap, counted for the data-quality report.

The tracker learns a seq only once it is durable. ``check`` looks at two layers: the seqs already stored, and the
seqs *staged* by batches that are decoded but not written yet (so a duplicate within one batch, or in the next
batch while this one is being written, is still caught). ``check`` stages a new seq and appends it to the caller's
list; after the batch is written the caller ``commit``s that list, and if the batch is not written (the write
failed, the batch is split and decoded again) it ``abort``s it: a batch that never became durable leaves nothing
behind, so its messages are not mistaken for duplicates when they are decoded again or redelivered.

Not thread-safe: the caller serialises ``check`` / ``commit`` / ``abort`` (ingest holds one lock per batch).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

WINDOW = 4096  # recent seqs remembered per device

Staged = list[tuple[str, int, int | None]]  # (device, seq, device ts) added by one batch


@dataclass(slots=True)
class _DeviceSeqs:
    last: int = -1  # highest seq seen (staged ones included): the reference for gaps
    recent: OrderedDict[int, int | None] = field(default_factory=OrderedDict)  # durable: seq -> device ts
    staged: dict[int, int | None] = field(default_factory=dict)  # decoded, not written yet


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

    def _device(self, device_id: str) -> _DeviceSeqs:
        d = self._devices.get(device_id)
        if d is None:
            d = self._devices[device_id] = _DeviceSeqs()
        return d

    def warm(self, device_id: str, seq: int, ts_ms: int | None = None) -> None:
        """Remember a seq already durable in the store (restart recovery)."""
        d = self._device(device_id)
        self._learn(d, seq, ts_ms)
        self._advance(d, seq)

    def _advance(self, d: _DeviceSeqs, seq: int) -> None:
        if seq > d.last or seq < d.last - self.window:  # forward, or a counter restart
            d.last = seq

    def _learn(self, d: _DeviceSeqs, seq: int, ts_ms: int | None) -> None:
        recent = d.recent
        recent[seq] = ts_ms
        recent.move_to_end(seq)
        if len(recent) > self.window:
            recent.popitem(last=False)

    def check(self, device_id: str, seq: int, ts_ms: int | None, staged: Staged) -> tuple[bool, int]:
        """Is ``seq`` a duplicate of a stored or staged one? If not, stage it (appended to ``staged``).

        Returns ``(is_duplicate, gap)``; ``ts_ms`` is the device's timestamp, or None."""
        d = self._devices.get(device_id)
        if d is None:
            d = self._devices[device_id] = _DeviceSeqs()
        pending = d.staged
        if seq in pending:
            seen_ts = pending[seq]
            if ts_ms is None or seen_ts is None or seen_ts == ts_ms:
                return True, 0
        recent = d.recent
        if seq in recent:
            seen_ts = recent[seq]
            if ts_ms is None or seen_ts is None or seen_ts == ts_ms:
                return True, 0
        last = d.last
        gap = seq - last - 1 if last >= 0 and seq > last + 1 else 0
        pending[seq] = ts_ms
        staged.append((device_id, seq, ts_ms))
        if seq > last or seq < last - self.window:  # forward, or a counter restart
            d.last = seq
        return False, gap

    def commit(self, staged: Staged) -> None:
        """The batch that staged these seqs is durable: remember them as stored."""
        devices = self._devices
        window = self.window
        for device_id, seq, ts_ms in staged:
            d = devices[device_id]
            recent = d.recent
            recent[seq] = ts_ms
            recent.move_to_end(seq)
            if len(recent) > window:
                recent.popitem(last=False)
            d.staged.pop(seq, None)

    def abort(self, staged: Staged) -> None:
        """The batch that staged these seqs was not written: forget them."""
        devices = self._devices
        for device_id, seq, ts_ms in staged:
            d = devices.get(device_id)
            if d is not None and seq in d.staged and d.staged[seq] == ts_ms:
                del d.staged[seq]

    def staged_count(self) -> int:
        return sum(len(d.staged) for d in self._devices.values())
