"""JointService: the correlator on the alert stream, persisted, with its timers; what the API and notifications use.

- ``attach(alert_service)`` subscribes to the alert service's stored batches of lifecycle events
  (``AlertService.subscribe_batch``: before the per-event subscribers, so the notifier already knows which alerts
  are muted). Each event becomes an ``AlertFact`` (the alert's rule kind from the rule set, its device type and
  the region tree from the registry, cached) for the pure ``Correlator``.
- ``held(alert_id)``: whether an alert's own notifications are held back (muted under an open incident); the
  alert notifier (``alerts.wiring.AlertsRuntime.mutes``) and its escalation consult it.
- What changed is written through ``joint.store.JointStore`` in one transaction per batch, then told to the
  subscribers (``subscribe(callback)``: ``IncidentChange``s, e.g. the incident notifications and the live stream).
- A timer every ``tick_interval_s`` runs what is due (absence watches, scope escalation, overdue tasks); the
  windows are written by a job every ``snapshot_interval_s`` (not on the alert path), and at stop: only the windows
  the correlator's kinds changed since the last write (``Correlator.take_window_changes``; a tick that prunes
  nothing changes nothing), serialised under the lock (a few, not every window) and written after it.
- ``load()`` (at start) rebuilds the open incidents, their tasks and the windows from the store: a restart keeps
  every incident and window (windows changed after the last write are lost on a crash, at most
  ``snapshot_interval_s`` of them; a graceful stop writes them).

People's actions (``investigate``, ``comment``, ``close``, ``acknowledge_task``, ``close_task``, ``escalate``) go
through here so memory, store and subscribers agree.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from alerts.lifecycle import LifecycleEvent
from core import clock
from core.errors import StoreUnavailable
from joint.correlator import Correlator, IncidentChange, _snap
from joint.kinds import AlertFact
from joint.models import Incident, ScopeLevel, Task, TimelineEntry
from joint.pattern_store import PatternAdmin, PatternStore
from joint.patterns import PACKS_DIR, PatternSet
from joint.store import JointStore, WindowWrite, part_rows

if TYPE_CHECKING:
    from alerts.service import AlertService
    from alerts.wiring import AlertsRuntime
    from core.settings import Settings
    from devices.registry import Registry

logger = logging.getLogger(__name__)

IncidentSubscriber = Callable[[IncidentChange], None]


class RegionTree:
    """Region levels and paths, and device -> (type, region), from the registry; re-read every ``refresh_s`` and
    on a miss (at most every ``miss_refresh_s``)."""

    def __init__(
        self,
        regions: Callable[[], Iterable[Any]],
        devices: Callable[[], Mapping[str, Any]],
        *,
        refresh_s: float = 60.0,
        miss_refresh_s: float = 30.0,
    ) -> None:
        self._regions_fn = regions
        self._devices_fn = devices
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self.levels: dict[str, str] = {}
        self.paths: dict[str, tuple[str, ...]] = {}
        self.devices: dict[str, tuple[str, str]] = {}
        self._devices_seen: Mapping[str, Any] | None = None  # the registry view of the last reload
        self._loaded = float("-inf")

    def reload(self) -> None:
        """Re-read the regions and the devices; only the devices whose ``DeviceInfo`` object changed are looked at
        (``Registry.snapshot`` keeps the objects of unchanged devices and returns the same dict while nothing
        changed), and ``devices`` is replaced, never modified (readers hold no lock)."""
        regions = list(self._regions_fn())
        self.levels = {r.id: r.level for r in regions}
        self.paths = {r.id: tuple(p for p in r.path.split("/") if p) for r in regions}
        infos = self._devices_fn()
        seen = self._devices_seen
        if seen is None:
            self.devices = {d.device_id: (d.device_type, d.region_id) for d in infos.values()}
        elif infos is not seen:
            devices = dict(self.devices)
            for device_id, d in infos.items():
                if seen.get(device_id) is not d:
                    devices[device_id] = (d.device_type, d.region_id)
            for device_id in seen.keys() - infos.keys():
                devices.pop(device_id, None)
            self.devices = devices
        self._devices_seen = infos
        self._loaded = time.monotonic()

    def maybe_reload(self, *, miss: bool = False) -> None:
        age = time.monotonic() - self._loaded
        if age >= self.refresh_s or (miss and age >= self.miss_refresh_s):
            try:
                self.reload()
            except StoreUnavailable as exc:
                logger.warning("joint: registry unavailable, keeping %d regions: %s", len(self.levels), exc)
                self._loaded = time.monotonic() - self.refresh_s + self.miss_refresh_s


class JointService:
    def __init__(
        self,
        engine: Engine,
        patterns: PatternSet,
        tree: RegionTree,
        rule_kind: Callable[[str], str],
        *,
        clock_fn: Callable[[], datetime] = clock.now,
        tick_interval_s: float = 1.0,
        snapshot_interval_s: float = 5.0,
        patterns_source: PatternAdmin | None = None,
        patterns_poll_s: float = 2.0,
    ) -> None:
        self.store = JointStore(engine)
        self.patterns = patterns
        self.tree = tree
        self._rule_kind = rule_kind
        self._clock = clock_fn
        self.tick_interval_s = tick_interval_s
        self.snapshot_interval_s = snapshot_interval_s
        self.correlator = Correlator(patterns, {})
        self._lock = threading.RLock()
        self._subscribers: list[IncidentSubscriber] = []
        self._scheduler: BackgroundScheduler | None = None
        self._windows_pending: WindowWrite | None = None  # taken from the correlator, not written yet
        self._pending: tuple[list[Incident], list[Task], list[TimelineEntry]] | None = None
        self._loaded = False
        self.opened = 0
        # Patterns edited through the API (joint/pattern_store.py): reloaded when the stored version moves.
        self.patterns_source = patterns_source
        self.patterns_poll_s = patterns_poll_s
        self.patterns_version = 0  # the version ``patterns`` was built from

    # --- start / stop ---------------------------------------------------------------------------------------

    def attach(self, alerts: AlertService) -> None:
        """Take the alert service's stored batches of lifecycle events (call before it starts)."""
        alerts.subscribe_batch(self.on_events)

    def load(self) -> None:
        """Rebuild open incidents, their tasks and the windows from the store; read the registry."""
        snap = self.store.load()
        with self._lock:
            self.tree.reload()
            self.correlator.levels = self.tree.levels
            self.correlator.restore(
                snap.incidents,
                snap.tasks,
                snap.windows,
                next_incident_id=snap.next_incident_id,
                next_task_id=snap.next_task_id,
            )
            if snap.legacy:  # the old one-document row: the next write writes every window (and drops that row)
                self._windows_pending = WindowWrite.every(self.correlator.windows())
            self._loaded = True
        logger.info(
            "joint service loaded: %d patterns, %d open incidents, %d open tasks, %d muted alerts",
            len(self.patterns.patterns),
            len(self.correlator.open_by_key),
            len(self.correlator.tasks),
            len(self.correlator.muted),
        )

    def start(self) -> None:
        if self._scheduler is not None:
            return
        if not self._loaded:
            self.load()
        sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        sched.add_job(self._safe(self.tick), "interval", seconds=self.tick_interval_s, id="joint-tick")
        sched.add_job(self._safe(self.flush), "interval", seconds=self.snapshot_interval_s, id="joint-snapshot")
        sched.add_job(self._safe(self.refresh), "interval", seconds=self.tree.refresh_s, id="joint-refresh")
        if self.patterns_source is not None:
            poll = self.patterns_poll_s
            sched.add_job(self._safe(self.reload_patterns), "interval", seconds=poll, id="joint-patterns")
        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        try:
            self.flush(force=True)
        except StoreUnavailable:
            logger.exception("joint state could not be written at stop")

    def __enter__(self) -> JointService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _safe(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception:
                logger.exception("joint service job %s failed", getattr(fn, "__name__", fn))

        return run

    # --- subscribers ----------------------------------------------------------------------------------------

    def subscribe(self, callback: IncidentSubscriber) -> None:
        """Call ``callback(change)`` for every incident change, after it is stored. It must be quick."""
        self._subscribers.append(callback)

    def _publish(self, changes: list[IncidentChange]) -> None:
        for ch in changes:
            if ch.kind == "opened":
                self.opened += 1
            for cb in self._subscribers:
                try:
                    cb(ch)
                except Exception:
                    logger.exception("incident subscriber failed on %s of incident %s", ch.kind, ch.incident.id)

    # --- the alert stream -----------------------------------------------------------------------------------

    def held(self, alert_id: int) -> bool:
        """Whether an alert sends nothing of its own (muted under an open incident). Lock-free read."""
        return self.correlator.held(alert_id)

    def _fact(self, ev: LifecycleEvent) -> AlertFact:
        a = ev.alert
        tree = self.tree
        path = a.region_path or tree.paths.get(a.region_id, ())
        if not path or path[-1] not in tree.levels:
            tree.maybe_reload(miss=True)
            path = a.region_path or tree.paths.get(a.region_id, (a.region_id,))
            self.correlator.levels = tree.levels
        device = tree.devices.get(a.device_id)
        if device is None:
            tree.maybe_reload(miss=True)
            device = tree.devices.get(a.device_id, ("", a.region_id))
        related: tuple[str, ...] = ()
        other = a.detail.get("from_device")
        if isinstance(other, str) and other in tree.devices:
            related = tree.paths.get(tree.devices[other][1], ())
        return AlertFact(
            a.id,
            a.rule_id,
            self._rule_kind(a.rule_id),
            a.device_id,
            device[0],
            tuple(path),
            a.severity,
            ev.at,
            a.title_zh,
            a.title_en,
            related,
        )

    def on_events(self, events: list[LifecycleEvent]) -> None:
        """A stored batch of lifecycle events (the alert service's batch subscriber). Never raises."""
        try:
            with self._lock:
                self.correlator.begin_batch()
                changes: list[IncidentChange] = []
                for ev in events:
                    if ev.kind in ("created", "repeated", "flapping", "resolved"):
                        changes.extend(self.correlator.observe(ev.kind, self._fact(ev), ev.at))
                self._commit(changes, events[-1].at if events else self._clock())
        except Exception:
            logger.exception("joint correlation failed on a batch of %d alert events", len(events))

    def refresh(self) -> None:
        """Re-read the region tree and the devices (a job: off the alert path; a miss there re-reads at most every
        ``RegionTree.miss_refresh_s``)."""
        self.tree.maybe_reload()
        with self._lock:
            self.correlator.levels = self.tree.levels

    def reload_patterns(self, force: bool = False) -> bool:
        """Rebuild the patterns when their stored version moved (an API edit, from any process); True if it did.
        An API entry that no longer validates is skipped (logged), as at start."""
        source = self.patterns_source
        if source is None or (not force and source.store.version() == self.patterns_version):
            return False
        version, built = source.versioned()
        for line in built.problems:
            logger.error("correlation pattern edited through the API not applied: %s", line)
        with self._lock:
            self.patterns = built.patterns
            dropped = self.correlator.set_patterns(built.patterns)
            self.patterns_version = version
        logger.info("joint: patterns reloaded (version %d, %d patterns)", version, len(built.patterns.patterns))
        if dropped:
            logger.info("joint: windows dropped for removed or changed patterns: %s", ", ".join(dropped))
        return True

    def tick(self, now: datetime | None = None) -> list[IncidentChange]:
        now = now or self._clock()
        with self._lock:
            changes = self.correlator.tick(now)
            self._commit(changes, now)
        return changes

    def _commit(self, changes: list[IncidentChange], now: datetime) -> None:
        """Write what changed; then tell the subscribers. (The windows are written by ``flush``, off this path:
        a storm's windows hold thousands of alerts.)"""
        incs, tasks, entries = self.correlator.take_dirty()
        if self._pending is not None:  # a failed write: merged with this one (members of both kept)
            p_incs, p_tasks, p_entries = self._pending
            older = {i.id: i for i in p_incs}
            for i in incs:
                if i.id in older:
                    i.members = {**older.pop(i.id).members, **i.members}
            newer_t = {t.id for t in tasks}
            incs = list(older.values()) + incs
            tasks = [t for t in p_tasks if t.id not in newer_t] + tasks
            entries = p_entries + entries
            self._pending = None
        if incs or tasks or entries:
            try:
                self.store.save(incidents=incs, tasks=tasks, timeline=entries, now=now)
            except StoreUnavailable:
                self._pending = (incs, tasks, entries)
                logger.warning("joint: store unavailable; %d incident changes kept for the next write", len(incs))
        self._publish(changes)

    def flush(self, force: bool = False) -> None:
        """Write the windows that changed since the last write (and anything a failed write left). They are taken
        and serialised under the lock (only those: the alert path waits for a few windows' JSON, not every
        window's) and written after it. ``force``: write even when nothing changed (a no-op then)."""
        with self._lock:
            parts, dropped = self.correlator.take_window_changes()
            ww = WindowWrite(part_rows(parts), dropped)
            if self._windows_pending is not None:
                ww = self._windows_pending.then(ww)
                self._windows_pending = None
            if not (ww or force or self._pending is not None):
                return
            now = self._clock()
            pending, self._pending = self._pending, None
        incs, tasks, entries = pending or ([], [], [])
        try:
            self.store.save(incidents=incs, tasks=tasks, timeline=entries, windows=ww or None, now=now)
        except StoreUnavailable:
            with self._lock:  # kept for the next write, before what changes meanwhile
                later = self._windows_pending
                self._windows_pending = ww if later is None else ww.then(later)
                if pending is not None and self._pending is None:
                    self._pending = pending
            raise

    # --- people's actions -----------------------------------------------------------------------------------

    def _act(self, fn: Callable[[datetime], list[IncidentChange]]) -> list[IncidentChange]:
        with self._lock:
            now = self._clock()
            changes = fn(now)
            self._commit(changes, now)
        return changes

    def investigate(self, incident_id: int, who: str) -> list[IncidentChange]:
        return self._act(lambda now: self.correlator.investigate(incident_id, who, now))

    def comment(self, incident_id: int, who: str, text: str) -> list[IncidentChange]:
        return self._act(lambda now: self.correlator.comment(incident_id, who, text, now))

    def resolve(self, incident_id: int, who: str, reason: str) -> list[IncidentChange]:
        return self._act(lambda now: self.correlator.resolve(incident_id, who, reason, now))

    def _adopt(self, incident_id: int) -> None:
        """An incident resolved by hand before a restart is only stored: taken back in (under the lock)."""
        if incident_id not in self.correlator.incidents:
            stored = self.store.get(incident_id)
            if stored is not None:
                self.correlator.adopt(stored, self.store.tasks(incident_id=incident_id))

    def close(self, incident_id: int, who: str, cause_code: str) -> list[IncidentChange]:
        def act(now: datetime) -> list[IncidentChange]:
            self._adopt(incident_id)
            return self.correlator.close(incident_id, who, cause_code, now)

        return self._act(act)

    def assign(self, incident_id: int, who: str, assignee: str | None, reason: str) -> list[IncidentChange]:
        """Assign the incident and its open tasks to ``assignee`` (None: unassign); see ``Correlator.assign``."""

        def act(now: datetime) -> list[IncidentChange]:
            self._adopt(incident_id)
            return self.correlator.assign(incident_id, who, assignee, reason, now)

        return self._act(act)

    def escalate(self, incident_id: int, to: ScopeLevel, who: str) -> list[IncidentChange]:
        return self._act(lambda now: self.correlator.escalate(incident_id, to, now, who))

    def acknowledge_task(self, task_id: int, who: str, note: str | None = None) -> list[IncidentChange]:
        return self._act(lambda now: self.correlator.acknowledge_task(task_id, who, now, note))

    def close_task(self, task_id: int, who: str, note: str | None = None) -> list[IncidentChange]:
        return self._act(lambda now: self.correlator.close_task(task_id, who, now, note))

    def record(self, incident_id: int, entry: TimelineEntry) -> None:
        """Append an entry to an incident's timeline (e.g. a linkage action and its result)."""
        with self._lock:
            self.store.add_timeline([entry], now=self._clock())

    # --- reads -----------------------------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        """Snapshots of the open incidents (in memory; the store has every incident)."""
        with self._lock:
            return [_snap(i) for i in self.correlator.open_incidents()]

    def tasks_of(self, incident_id: int) -> list[Task]:
        with self._lock:
            return [replace(t) for t in self.correlator.tasks_of(incident_id)]

    def status(self) -> dict[str, Any]:
        c = self.correlator
        return {
            "ok": self._scheduler is not None and self._scheduler.running,
            "patterns": len(self.patterns.patterns),
            "open_incidents": len(c.open_by_key),
            "open_tasks": sum(1 for t in c.tasks.values() if t.open),
            "muted_alerts": len(c.muted),
            "opened": self.opened,
        }


def pattern_paths(settings: Settings) -> list[Path]:
    cfg = settings.joint
    return ([PACKS_DIR] if cfg.packs else []) + list(cfg.patterns_paths)


def build(settings: Settings, registry: Registry, alerts: AlertsRuntime, **kw: Any) -> JointService:
    """The joint service of a running Lianfang: the X packs (unless ``joint.packs`` is off) and
    ``joint.patterns_paths``, checked against the alert rules and the registry (a pattern that can never match
    refuses the start with a UserError naming it), then the patterns and overrides edited through the API (an entry
    that no longer fits is skipped and logged), attached to the alert service, muting its notifications."""
    from alerts.rule_check import Known
    from core.errors import UserError

    cfg = settings.joint
    source = PatternAdmin(
        pattern_paths(settings),
        PatternStore(registry.engine),
        lambda: alerts.rules.rules,
        lambda: Known(frozenset(r.id for r in registry.regions())),  # patterns name regions, never devices
    )
    problems = source.file_problems()
    if problems:
        extra = f" (and {len(problems) - 1} more: run 'lianfang rules check')" if len(problems) > 1 else ""
        raise UserError(problems[0] + extra)
    version, built = source.versioned()
    for line in built.problems:
        logger.error("correlation pattern edited through the API not applied: %s", line)

    def rule_kind(rule_id: str) -> str:
        spec = alerts.rules.rules.get(rule_id)
        return spec.kind if spec is not None else ""

    service = JointService(
        registry.engine,
        built.patterns,
        RegionTree(registry.regions, registry.snapshot),
        rule_kind,
        tick_interval_s=cfg.tick_interval_s,
        snapshot_interval_s=cfg.snapshot_interval_s,
        patterns_source=source,
        **kw,
    )
    service.patterns_version = version
    service.attach(alerts.service)
    alerts.mutes.append(service.held)
    return service
