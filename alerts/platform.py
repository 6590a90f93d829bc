"""Built-in platform alerts: Lianfang watching its own ingest ("ingest stalled", "store unavailable").

A device alert comes from a rule over device messages; these come from the platform's own state, because when
ingest is stuck no message reaches the rule engine at all. ``PlatformAlerts`` polls a status callable (the ingest
status of ``lianfang/runtime.py``: ``stalled``, ``reason``, ``store_unavailable``) every ``interval_s`` on its own
thread, and raises or resolves one alert per check through the ordinary alert lifecycle (``apply``, e.g.
``AlertsRuntime.apply_platform_changes``): stored, deduplicated, notified, escalated and silenced like any alert.

The alerts belong to the pseudo device ``platform`` and the rule ids ``platform.ingest_stalled`` and
``platform.store_unavailable``, scoped to the root region (so the root's routes and admins get them). With the
default 5 s poll and ``ingest.stall_after_s`` 30 s, a stall is alerted within about 35 s, a failing store as soon
as a write has failed (after the store's busy timeout, 5 s); both resolve at the first poll after recovery.

``platform_changes`` is the pure part: status in, AlertChanges out, ``now`` passed in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from alerts.types import AlertChange, Severity
from core import clock

logger = logging.getLogger(__name__)

PLATFORM_DEVICE = "platform"


@dataclass(frozen=True, slots=True)
class PlatformCheck:
    rule_id: str
    severity: Severity
    title_zh: str
    title_en: str


INGEST_STALLED = PlatformCheck("platform.ingest_stalled", Severity.CRITICAL, "数据接入停滞", "Ingest stalled")
STORE_UNAVAILABLE = PlatformCheck(
    "platform.store_unavailable", Severity.CRITICAL, "遥测存储不可用", "Telemetry store unavailable"
)
CHECKS = (INGEST_STALLED, STORE_UNAVAILABLE)


def verdicts(status: Mapping[str, Any]) -> dict[str, str | None]:
    """rule id -> the reason it fires, or None when it is clear. Empty when the status says nothing about ingest
    (ingest does not run in this process)."""
    if "stalled" not in status:
        return {}
    store_error = status.get("store_unavailable")
    return {
        INGEST_STALLED.rule_id: str(status.get("reason") or "ingest stalled") if status.get("stalled") else None,
        STORE_UNAVAILABLE.rule_id: str(store_error) if store_error else None,
    }


def platform_changes(
    status: Mapping[str, Any],
    known: Mapping[str, bool],
    *,
    region_path: Sequence[str],
    now: datetime,
) -> list[AlertChange]:
    """The changes to send: a check that fires and was not known to fire, or is clear and was not known clear
    (``known`` is what was last sent; a check missing from it gets its state sent, so a restart resolves an alert
    left open by the previous run)."""
    out: list[AlertChange] = []
    found = verdicts(status)
    region_id = region_path[-1] if region_path else ""
    for check in CHECKS:
        if check.rule_id not in found:
            continue
        reason = found[check.rule_id]
        firing = reason is not None
        if known.get(check.rule_id) == firing:
            continue
        detail: dict[str, object] = {"reason": reason} if reason is not None else {}
        for key in ("backlog", "oldest_unacked_age_s", "store_errors"):
            if key in status:
                detail[key] = status[key]
        out.append(
            AlertChange(
                rule_id=check.rule_id,
                dedup_key=check.rule_id,
                device_id=PLATFORM_DEVICE,
                region_id=region_id,
                severity=check.severity,
                firing=firing,
                at=now,
                title_zh=check.title_zh,
                title_en=check.title_en,
                detail=detail,
                region_path=tuple(region_path),
                kind="platform",
            )
        )
    return out


class PlatformAlerts:
    """Polls ``status`` every ``interval_s`` on a daemon thread; hands changes to ``apply`` (the lifecycle).

    ``root_region`` returns the root region's path (root first; ``("gd",)``); it is asked at every change, so a
    region tree imported after start-up is used."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]],
        apply: Callable[[list[AlertChange]], object],
        root_region: Callable[[], Sequence[str]],
        *,
        interval_s: float = 5.0,
        clock_fn: Callable[[], datetime] = clock.now,
    ) -> None:
        self._status = status
        self._apply = apply
        self._root_region = root_region
        self.interval_s = interval_s
        self._clock = clock_fn
        self.known: dict[str, bool] = {}
        self.raised = 0
        self.resolved = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    thread_name = "platform-alerts"

    def changes(self, status: Mapping[str, Any], root: tuple[str, ...], now: datetime) -> list[AlertChange]:
        """Pure: what to raise or resolve for this status (a subclass watches another status)."""
        return platform_changes(status, self.known, region_path=root, now=now)

    def poll_once(self) -> list[AlertChange]:
        """One check: read the status, send what changed. Never raises."""
        try:
            status = self._status()
            if not verdicts(status):
                return []
            try:
                root = tuple(self._root_region())
            except Exception as exc:  # the registry is down too: scope to no region rather than say nothing
                logger.warning("platform alerts: root region unknown (%s); raising without a region", exc)
                root = ()
            changes = self.changes(status, root, self._clock())
            if not changes:
                return []
            self._apply(changes)
        except Exception:
            logger.exception("platform alert check failed")
            return []
        for ch in changes:
            self.known[ch.rule_id] = ch.firing
            if ch.firing:
                self.raised += 1
                logger.error("platform alert %s raised: %s", ch.rule_id, ch.detail.get("reason"))
            else:
                self.resolved += 1
                logger.info("platform alert %s clear", ch.rule_id)
        return changes

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()

    def start(self) -> Self:
        self.poll_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def root_region_of(registry: Any) -> Callable[[], tuple[str, ...]]:
    """The first root region of ``devices.registry.Registry`` (its path), or () when there is none."""

    def root() -> tuple[str, ...]:
        for region in registry.regions():  # ordered by path: roots come before their subtrees
            parts = tuple(p for p in region.path.split("/") if p)
            if len(parts) == 1:
                return parts
        return ()

    return root
