"""Data-quality alerts: records of a device that are lost for good (rule DQ1, ``alerts/packs/data_quality.yaml``).

Ingest asks a device for the seqs missing from its stream with the ``resend`` command (``ingest/resend.py``).
What cannot be recovered (the device keeps no buffer, no longer holds those seqs, or does not answer) is handed
here as a range; it becomes a ``seq_lost`` event fed to the alert engine, like the registry's
``credential_expiring`` (rule CRED1), so the alert goes through the whole lifecycle: one alert per device and
range (``detail.group`` is the range, e.g. ``"1001-1500"``), stored, routed and notified like any other, silenced
or switched off with the usual overrides.

Messages the broker itself dropped (past ``max_queued_messages``, ``ingest/broker_drops.py``) are a platform alert,
``platform.broker_dropped`` on the pseudo device ``platform`` in the root region (like ``alerts/platform.py``'s
"ingest stalled"): raised at the first drop, its count and ``detail.dropped`` grow with every later one, and it
stays open until someone resolves it (the records are gone from the broker; resend asks the devices for them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from alerts.platform import PLATFORM_DEVICE
from alerts.service import AlertService
from alerts.types import AlertChange, Severity
from core import clock
from core.protocol import DeviceInfo, Event

logger = logging.getLogger(__name__)

SEQ_LOST_EVENT = "seq_lost"
BROKER_DROPPED = "platform.broker_dropped"


def seq_range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def seq_lost_event(
    device: DeviceInfo, first: int, last: int, reason: str, *, count: int | None = None, at_ms: int
) -> Event:
    """The engine's input for DQ1: seqs ``first..last`` of ``device`` are lost (``reason`` from ingest/resend.py)."""
    return Event(
        device.device_id,
        device.region_id,
        device.device_type,
        at_ms,
        None,
        SEQ_LOST_EVENT,
        {"seqs": seq_range(first, last), "reason": reason, "count": count if count is not None else last - first + 1},
        False,
    )


class DataQualityAlerts:
    """Raises DQ1 through ``AlertService.process``. ``devices`` (the registry view) gives a device's region and type;
    the caller's are used for a device the view does not have yet."""

    def __init__(
        self,
        service: AlertService,
        devices: Callable[[], Mapping[str, DeviceInfo]],
        *,
        apply_platform: Callable[[list[AlertChange]], object] | None = None,
        root_region: Callable[[], Sequence[str]] = tuple,
        clock_fn: Callable[[], datetime] = clock.now,
    ) -> None:
        self.service = service
        self._devices = devices
        self._apply_platform = apply_platform
        self._root_region = root_region
        self._clock = clock_fn
        self._lock = threading.Lock()
        self.reported = 0
        self.dropped = 0

    def seq_lost(
        self,
        device_id: str,
        first: int,
        last: int,
        reason: str,
        *,
        count: int | None = None,
        region_id: str = "",
        device_type: str = "",
    ) -> None:
        """Never raises (called from ingest's listener and the resend thread)."""
        try:
            info = self._devices().get(device_id)
            if info is None and region_id and device_type:
                info = DeviceInfo(device_id, device_type, region_id)
            if info is None:
                logger.warning("data-quality: device %s is unknown; seqs %d-%d lost", device_id, first, last)
                return
            now = self._clock()
            ev = seq_lost_event(info, first, last, reason, count=count, at_ms=int(now.timestamp() * 1000))
            self.service.process([ev], now)
            self.reported += 1
        except Exception:
            logger.exception("data-quality alert for %s (seqs %d-%d) failed", device_id, first, last)

    def broker_dropped(self, new: int, broker_total: int) -> None:
        """``new`` more messages dropped by the broker (``broker_total`` since it started). Never raises."""
        if self._apply_platform is None:
            return
        try:
            with self._lock:
                self.dropped += new
                dropped = self.dropped
            change = broker_dropped_change(
                new, dropped, broker_total, region_path=tuple(self._root_region()), now=self._clock()
            )
            self._apply_platform([change])
        except Exception:
            logger.exception("broker-drop alert (%d messages) failed", new)


def broker_dropped_change(
    new: int, dropped: int, broker_total: int, *, region_path: Sequence[str], now: datetime
) -> AlertChange:
    """The platform alert for messages the broker dropped: ``dropped`` counted by this process, ``new`` of them
    just now, ``broker_total`` since the broker started."""
    return AlertChange(
        rule_id=BROKER_DROPPED,
        dedup_key=BROKER_DROPPED,
        device_id=PLATFORM_DEVICE,
        region_id=region_path[-1] if region_path else "",
        severity=Severity.MAJOR,
        firing=True,
        at=now,
        title_zh="消息代理丢弃了消息（队列已满）",
        title_en="Broker dropped messages (queue full)",
        detail={"dropped": dropped, "last_dropped": new, "broker_total": broker_total},
        region_path=tuple(region_path),
        kind="platform",
    )
