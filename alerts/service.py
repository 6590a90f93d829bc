"""AlertService: the alert engine on the stream, the lifecycle, persistence and timers.

Ingest hands every durable batch to ``on_batch`` (a ``core.store.BatchListener``). For each record the service
runs the device's effective rules (indexed by device, computed once per device type + region from the rule
files), feeds the resulting changes to the lifecycle, writes what changed in one SQL transaction and then tells
the subscribers (notifications) through ``subscribe(callback)``. No SQL is read per message.

Timers run in an apscheduler 3.x BackgroundScheduler: one job every ``tick_interval_s`` fires what is due
(absence, held-for, sequence settle windows, quiet-time clears, silence ends, flapping ends) from a heap of
deadlines; one job every ``snapshot_interval_s`` writes the learning parts of the rule state (baselines, last
values); one job every ``refresh_interval_s`` re-reads the registry (new devices are watched for absence).

State that decides whether or when an alert fires (held-for start, firing flags, pending triggers) is written
in the same transaction as the alerts it affects, so a restart keeps a held-for window and never alerts twice.
"""

from __future__ import annotations

import gc
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from alerts import engine as eng
from alerts import metrics
from alerts.engine import AbsenceState, Env, Subject, ThresholdState
from alerts.kinds_vehicle import DispatchBook, parse_depot, parse_lot, place_problems
from alerts.lifecycle import AlertBook, LifecycleConfig, LifecycleEvent, Silence, check_silence
from alerts.repository import AlertRepository, StateKey
from alerts.rules import EffectiveRule, RuleSet
from alerts.types import Alert, AlertChange, AlertState, Comment
from core import clock
from core.errors import StoreUnavailable
from core.protocol import DeviceInfo, Event, Reading, Record, Status
from core.store import WriteBatch

logger = logging.getLogger(__name__)

Subscriber = Callable[[LifecycleEvent], None]
SEQ_GUARD = 64  # recent seqs remembered per device: a replayed record is evaluated once


@dataclass(frozen=True, slots=True)
class RegionRef:
    path: tuple[str, ...]  # root first, the region itself last
    lat: float | None = None
    lon: float | None = None
    contracted_kw: float | None = None  # the region attribute (E8 peak demand)


def regions_from_registry(registry: Any) -> Callable[[], dict[str, RegionRef]]:
    """A region provider reading ``devices.registry.Registry.regions()``."""

    def load() -> dict[str, RegionRef]:
        return {
            r.id: RegionRef(
                tuple(p for p in r.path.split("/") if p), r.lat, r.lon, (r.attributes or {}).get("contracted_kw")
            )
            for r in registry.regions()
        }

    return load


def notification_kind(event: LifecycleEvent) -> str | None:
    """What to tell people about an event: "firing", "renotify", "resolved", or None (nothing to send).

    The values match ``alerts.notify.routing.NotificationKind``.
    """
    if not event.notify:
        return None
    if event.kind in ("created", "flapping"):
        return "firing"
    if event.kind == "renotify":
        return "renotify"
    if event.kind == "resolved":
        return "resolved"
    return None


_NUMBER = (int, float)
_MISSING = object()


def _same(keys: tuple[str, ...], fields: Mapping[str, Any], known: Mapping[str, Any]) -> bool:
    """Would ``known[k] = fields[k]`` for every k of ``keys`` in ``fields`` change nothing (same type and value)?"""
    for k in keys:
        if k in fields:
            old, new = known.get(k, _MISSING), fields[k]
            if type(old) is not type(new) or old != new:
                return False
    return True


def _gate_open(rule: EffectiveRule, st: AbsenceState) -> bool:
    """An absence rule's ``only_if`` holds (``engine``'s deadline is None while it does not)."""
    return all(st.known.get(k) == v for k, v in rule.params.only_if.items())


# _Entry.fast: which quiet path ``_one`` may take instead of ``engine.evaluate_at`` (see there)
_SLOW, _ABSENCE, _SKEW = 0, 1, 2


@dataclass(slots=True)
class _Entry:
    """One effective rule of one device in its plan, compiled once: the kind's ``evaluate``, its fast path, and
    the rule state (cached here once it exists; state objects are only replaced by ``load``, which drops plans).

    ``op`` / ``limit`` / ``numbers``: ``engine.quiet_threshold`` (threshold rules without ``where``); ``fast``:
    the quiet path of an absence rule (``only_if``: its gate fields) or a clock-skew rule."""

    rule: EffectiveRule
    key: StateKey
    fn: Callable[..., list[AlertChange]]
    op: Callable[[Any, Any], Any] | None = None
    limit: Any = None
    numbers: bool = True
    st: Any = None
    fast: int = _SLOW
    only_if: tuple[str, ...] = ()
    skew_ahead_ms: float | None = None
    skew_behind_ms: float | None = None


@dataclass(slots=True)
class _Plan:
    """A device's effective rules, indexed by what records they need."""

    subj: Subject
    any_reading: list[_Entry] = field(default_factory=list)
    by_field: dict[str, list[_Entry]] = field(default_factory=dict)
    events: list[_Entry] = field(default_factory=list)
    statuses: list[_Entry] = field(default_factory=list)


@dataclass(slots=True)
class _Payload:
    alerts: dict[int, Alert]
    silences: dict[int, Silence]
    comments: list[Comment]
    states: dict[StateKey, tuple[str, str]]
    aux: dict[tuple[str, str], Any]  # the lifecycle's aux keys changed (None: removed), AlertBook.take_aux
    now: datetime

    def merge(self, newer: _Payload) -> _Payload:
        return _Payload(
            {**self.alerts, **newer.alerts},
            {**self.silences, **newer.silences},
            self.comments + newer.comments,
            {**self.states, **newer.states},
            {**self.aux, **newer.aux},
            newer.now,
        )


def _order(rec: Record) -> tuple[int, int]:
    return (rec.ts_ms, 0 if isinstance(rec, Event) else 1 if isinstance(rec, Reading) else 2)


class AlertService:
    def __init__(
        self,
        engine: Engine,
        rules: RuleSet,
        devices: Callable[[], Mapping[str, DeviceInfo]],
        regions: Callable[[], Mapping[str, RegionRef]],
        *,
        lifecycle: LifecycleConfig | None = None,
        clock_fn: Callable[[], datetime] = clock.now,
        tick_interval_s: float = 1.0,
        snapshot_interval_s: float = 10.0,
        refresh_interval_s: float = 60.0,
        snapshot_chunk: int = 5000,
        snapshot_txn: int = 250,
        dispatches: Callable[[int], DispatchBook] | None = None,
    ) -> None:
        self.repo = AlertRepository(engine)
        self._dispatches_fn = dispatches  # devices/dispatch.py DispatchStore.book, read on each registry refresh
        self.rules = rules
        self.env = Env(rules.calendar)
        self._devices_fn = devices
        self._regions_fn = regions
        self._clock = clock_fn
        self.tick_interval_s = tick_interval_s
        self.snapshot_interval_s = snapshot_interval_s
        self.refresh_interval_s = refresh_interval_s
        self.snapshot_chunk = snapshot_chunk
        self.snapshot_txn = snapshot_txn
        self.book = AlertBook(lifecycle)
        self._lock = threading.RLock()
        self._subscribers: list[Subscriber] = []
        self._batch_subscribers: list[Callable[[list[LifecycleEvent]], None]] = []  # joint/service.py
        self._subjects: dict[str, Subject] = {}
        self._devices_seen: Mapping[str, DeviceInfo] | None = None  # the registry view of the last refresh
        self._adhoc: set[str] = set()  # subjects ``_evaluate`` made for devices the registry view lacks
        # Snapshots of the open alerts for ``open_alerts`` (the escalator's every few seconds): the copies
        # ``take_dirty`` makes anyway for the store, so a read copies nothing (10,000 open alerts: no 10,000
        # dataclass copies under the lock).
        self._open_view: dict[int, Alert] = {}
        self._device_rules: dict[str, list[EffectiveRule]] = {}
        self._plans: dict[str, _Plan] = {}
        self._regions: dict[str, RegionRef] = {}
        self._states: dict[StateKey, eng.State] = {}
        self._state_kind: dict[StateKey, str] = {}
        self._tick_subject: dict[StateKey, Subject] = {}
        self._rule_by_key: dict[StateKey, EffectiveRule] = {}
        self._heap: list[tuple[int, StateKey]] = []
        self._armed: dict[StateKey, int] = {}
        self._essential: set[StateKey] = set()
        self._lazy: set[StateKey] = set()
        self._wlock = threading.Lock()  # orders SQL writes; taken while holding _lock, released after writing
        self._pending: _Payload | None = None  # written or failed to be written; retried with the next write
        # per device: the last SEQ_GUARD seqs in arrival order, and the same seqs as a set (O(1) membership)
        self._seqs: dict[str, tuple[deque[int], set[int]]] = {}
        self._scheduler: BackgroundScheduler | None = None
        self._started = False
        self._store_down = False
        # Which stored alerts this service holds live (an engine of some partitions: its own; people's actions on
        # the others go to their owner, lianfang/engine_commands.py). None: every alert.
        self.keeps: Callable[[Alert], bool] | None = None

    # --- start / stop ---------------------------------------------------------------------------------------

    def load(self, now: datetime | None = None) -> None:
        """Restore alerts, silences and rule state from SQL and read the registry (no timers)."""
        now = now or self._clock()
        window = timedelta(seconds=self.book.config.flap_window_s)
        snap = self.repo.load(resolved_since=now - window)
        keeps = self.keeps
        alerts = snap.alerts if keeps is None else [a for a in snap.alerts if keeps(a)]
        with self._lock:
            self.book.restore(
                alerts,
                snap.silences,
                snap.lifecycle,
                next_id=snap.next_alert_id,
                next_silence_id=snap.next_silence_id,
            )
            if snap.lifecycle_legacy:
                self.book.mark_aux_dirty()  # moved to per-key rows by the next write
            self._open_view = {a.id: replace(a, detail=dict(a.detail)) for a in self.book.open_alerts()}
            now_ms = eng.ms(now)
            self._plans.clear()  # plans cache state objects, which are replaced here
            for key, (kind, data) in snap.states.items():
                try:
                    st = eng.state_loads(kind, data)
                except (TypeError, ValueError, KeyError):
                    logger.warning("rule state %s/%s could not be restored; starting fresh", *key)
                    continue
                if isinstance(st, AbsenceState) and not st.firing:
                    st.watch_from_ms = max(st.watch_from_ms, now_ms)
                self._states[key] = st
                self._state_kind[key] = kind
            self._refresh(now)
            wide: dict[str, Subject] = {}  # a rule-wide state's rule (travel, G3, G10) -> a device it applies to
            if any(skey == "*" for _, skey in self._states):
                for device in self._subjects.values():
                    for rule in self._rules_of(device):
                        wide.setdefault(rule.rule_id, device)
            for (rule_id, skey), _ in list(self._states.items()):  # re-arm restored timers (held-for, ...)
                subj = wide.get(rule_id) if skey == "*" else self._subjects.get(skey)
                if subj is None:
                    continue  # the device or the rule is gone
                for rule in self._rules_of(subj):
                    if rule.rule_id == rule_id and rule.kind == self._state_kind[(rule_id, skey)]:
                        self._arm(rule, (rule_id, skey), subj)
        logger.info(
            "alert service loaded: %d open alerts, %d silences, %d rule states, %d devices",
            len(self.book.open_by_key),
            len(snap.silences),
            len(snap.states),
            len(self._subjects),
        )

    def start(self) -> None:
        if self._started:
            return
        self.load()
        # The restored rule state is long-lived: keep it out of the cyclic GC's full passes, which otherwise
        # cost ~100 ms now and then on the stream (measured: CPU p99 per batch 24 ms frozen vs 120 ms not).
        gc.freeze()
        sched = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        sched.add_job(self._safe(self.tick), "interval", seconds=self.tick_interval_s, id="alerts-tick")
        sched.add_job(self._safe(self.flush), "interval", seconds=self.snapshot_interval_s, id="alerts-snapshot")
        sched.add_job(self._safe(self.refresh), "interval", seconds=self.refresh_interval_s, id="alerts-refresh")
        sched.start()
        self._scheduler = sched
        self._started = True

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self._started = False
        try:
            self.flush(everything=True)
        except StoreUnavailable:
            logger.exception("alert state could not be written at stop")

    def __enter__(self) -> AlertService:
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
                logger.exception("alert service job %s failed", getattr(fn, "__name__", fn))

        return run

    # --- subscribers ------------------------------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(event)`` for every lifecycle event, after it is stored. It must be quick."""
        self._subscribers.append(callback)

    def subscribe_batch(self, callback: Callable[[list[LifecycleEvent]], None]) -> None:
        """Call ``callback(events)`` with every stored batch of lifecycle events, before the per-event subscribers
        (the joint correlator: it decides which alerts are muted before the notifier sees them)."""
        self._batch_subscribers.append(callback)

    def _publish(self, events: list[LifecycleEvent]) -> None:
        if not events:
            return
        now = self._clock()
        for ev in events:
            metrics.LIFECYCLE_EVENTS.labels(ev.kind).inc()
            if ev.kind == "created":
                metrics.TRIGGER_DELAY_SECONDS.observe(max(0.0, (now - ev.alert.started_at).total_seconds()))
        metrics.OPEN_ALERTS.set(len(self.book.open_by_key))
        for bcb in self._batch_subscribers:
            try:
                bcb(events)
            except Exception:
                logger.exception("alert batch subscriber failed on %d events", len(events))
        for ev in events:
            for cb in self._subscribers:
                try:
                    cb(ev)
                except Exception:
                    logger.exception("alert subscriber failed on %s of alert %s", ev.kind, ev.alert.id)

    # --- registry -------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        with self._lock:
            self._refresh(self._clock(), full=False)

    def _refresh(self, now: datetime, *, full: bool = True) -> None:
        """Re-read the regions and the devices. ``full``: rebuild every subject (at load, on new rules); else only
        the devices whose ``DeviceInfo`` is not the object seen last time (``Registry.snapshot`` keeps the objects
        of unchanged devices and returns the same dict while nothing changed), so a periodic refresh at 100,000
        devices costs O(changes) (the registry's change log) plus one pass of identity checks."""
        regions = dict(self._regions_fn())
        devices = self._devices_fn()
        if self._dispatches_fn is not None:  # approved vehicle dispatches around now (V2, V13): never per message
            try:
                self.env.dispatches = self._dispatches_fn(eng.ms(now))
            except StoreUnavailable as exc:
                logger.warning("vehicle dispatches not re-read (the last ones stay): %s", exc)
        seen = self._devices_seen
        if full or seen is None or regions != self._regions:
            self._regions = regions
            self._refresh_all(now, devices)
        elif devices is not seen:
            self._refresh_changed(now, devices, seen)
        self._devices_seen = devices
        self._adhoc.clear()

    def _refresh_all(self, now: datetime, devices: Mapping[str, DeviceInfo]) -> None:
        subjects: dict[str, Subject] = {}
        old = self._subjects
        for d in devices.values():
            if d.enabled:
                subj = self._placed(self._subject(d.device_id, d.device_type, d.region_id, d.expected_interval_s), d)
                prev = old.get(d.device_id)
                subjects[d.device_id] = prev if prev == subj else subj  # same object: its plan stays valid
        self._subjects = subjects
        for device_id in {*self._plans, *self._device_rules}:
            if device_id not in subjects or subjects[device_id] is not old.get(device_id):
                self._plans.pop(device_id, None)  # changed or gone: rebuilt when needed
                self._device_rules.pop(device_id, None)
        for subj in subjects.values():  # watch every device for absence from now on, reported or not
            self._watch(subj, now)

    def _refresh_changed(
        self, now: datetime, devices: Mapping[str, DeviceInfo], seen: Mapping[str, DeviceInfo]
    ) -> None:
        """The devices added, changed or removed since ``seen``; the same result as ``_refresh_all``."""
        subjects = self._subjects
        gone = [k for k in seen.keys() - devices.keys()]
        gone += [k for k in self._adhoc if k not in devices]  # subjects made up by ``_evaluate``: not registered
        for d in devices.values():
            if seen.get(d.device_id) is d and d.device_id not in self._adhoc:
                continue
            if not d.enabled:
                gone.append(d.device_id)
                continue
            subj = self._placed(self._subject(d.device_id, d.device_type, d.region_id, d.expected_interval_s), d)
            prev = subjects.get(d.device_id)
            if prev != subj:
                subjects[d.device_id] = subj
                self._plans.pop(d.device_id, None)
                self._device_rules.pop(d.device_id, None)
            self._watch(subjects[d.device_id], now)
        for device_id in gone:
            subjects.pop(device_id, None)
            self._plans.pop(device_id, None)
            self._device_rules.pop(device_id, None)

    @staticmethod
    def _placed(subj: Subject, d: DeviceInfo) -> Subject:
        """A vehicle's depot and lot (its ``depot`` / ``lot`` attributes: V2, V13) and a meter's own contracted
        capacity (``contracted_kw``: E8, before its region's) on its subject."""
        a = d.attributes
        if not a:
            return subj
        for problem in place_problems(a):
            logger.warning("device %s: attribute %s; rules needing it skip the device", d.device_id, problem)
        kw = a.get("contracted_kw")
        own = float(kw) if isinstance(kw, int | float) and not isinstance(kw, bool) and kw > 0 else None
        return replace(
            subj,
            depot=parse_depot(a.get("depot")),
            lot=parse_lot(a.get("lot")),
            contracted_kw=own if own is not None else subj.contracted_kw,
        )

    def _watch(self, subj: Subject, now: datetime) -> None:
        """Index a device's rules now (not on its first record in the stream) and arm its absence rules."""
        self._plan(subj)
        for rule in self._rules_of(subj):
            if rule.kind == "absence":
                key = (rule.rule_id, subj.device_id)
                if key not in self._states:
                    self._states[key] = eng.new_state(rule, now=now)
                    self._state_kind[key] = rule.kind
                    self._essential.add(key)
                self._arm(rule, key, subj)

    def _subject(self, device_id: str, device_type: str, region_id: str, interval: float = 60) -> Subject:
        ref = self._regions.get(region_id)
        path = ref.path if ref is not None else (region_id,)
        site = None
        contracted: float | None = None
        for rid in reversed(path):
            r = self._regions.get(rid)
            if r is None:
                continue
            if site is None and r.lat is not None and r.lon is not None:
                site = (r.lat, r.lon)
            if contracted is None:
                contracted = r.contracted_kw
        return Subject(device_id, device_type, region_id, path, interval, site, contracted_kw=contracted)

    def _rules_of(self, subj: Subject) -> list[EffectiveRule]:
        rules = self._device_rules.get(subj.device_id)
        if rules is None:
            rules = self.rules.for_device(subj.device_id, subj.device_type, subj.region_path)
            self._device_rules[subj.device_id] = rules
        return rules

    def set_rules(self, rules: RuleSet) -> None:
        """Swap in re-loaded rule files or API edits; state of rules that still exist is kept, and armed timers
        (absence, held-for, ...) take the new rule: re-armed for its deadline, or dropped if it is gone."""
        with self._lock:
            self.rules = rules
            self.env = Env(rules.calendar, self.env.dispatches)
            self._device_rules.clear()
            self._plans.clear()
            self._refresh(self._clock())
            self._rebind_timers()

    def _rebind_timers(self) -> None:
        for key, old in list(self._rule_by_key.items()):
            subj = self._tick_subject.get(key)
            subj = self._subjects.get(subj.device_id, subj) if subj is not None else None
            new = None
            if subj is not None:
                new = next((r for r in self._rules_of(subj) if r.rule_id == old.rule_id and r.enabled), None)
            self._armed.pop(key, None)  # what is queued in the heap for this key is superseded
            if new is None or key not in self._states or subj is None:
                self._rule_by_key.pop(key, None)
                self._tick_subject.pop(key, None)
                continue
            self._rule_by_key[key] = new
            self._tick_subject[key] = subj
            self._arm(new, key, subj)

    # --- the stream -------------------------------------------------------------------------------------------

    def on_batch(self, batch: WriteBatch) -> None:
        """BatchListener: evaluate an ingest batch and store what it changed. Quick, never raises."""
        started = time.perf_counter()
        try:
            records: list[Record] = [*batch.events, *batch.readings, *batch.statuses]
            self.process(records)
        except Exception:
            logger.exception("alert evaluation failed for a batch of %d records", len(batch))
        metrics.EVALUATION_SECONDS.observe(time.perf_counter() - started)

    def process(self, records: list[Record], now: datetime | None = None) -> list[LifecycleEvent]:
        """Evaluate records (sorted by time here), store the changes, tell subscribers. Returns the events."""
        records = sorted(records, key=_order)
        with self._lock:
            now = now or self._clock()
            events: list[LifecycleEvent] = []
            now_ms = eng.ms(now)
            for rec in records:
                if self._replayed(rec):
                    continue
                events.extend(self._evaluate(rec, now, now_ms))
            payload = self._persist(now)
        self._commit(payload)
        self._publish(events)
        return events

    def _replayed(self, rec: Record) -> bool:
        seq = getattr(rec, "seq", None)
        if seq is None:
            return False
        seen = self._seqs.get(rec.device_id)
        if seen is None:
            order, members = self._seqs[rec.device_id] = (deque(), set())
        else:
            order, members = seen
            if seq in members:
                return True
            if len(order) >= SEQ_GUARD:
                members.discard(order.popleft())
        order.append(seq)
        members.add(seq)
        return False

    def _plan(self, subj: Subject) -> _Plan:
        plan = self._plans.get(subj.device_id)
        if plan is None or plan.subj is not subj:
            plan = _Plan(subj)
            for rule in self._rules_of(subj):
                if not eng.applies(rule, subj):
                    continue  # e.g. V2 for a vehicle with no depot: never reached, costs nothing per message
                key = (rule.rule_id, eng.state_key(rule, subj))
                entry = _Entry(rule, key, eng.KINDS[rule.kind].evaluate)
                quiet = eng.quiet_threshold(rule)
                if quiet is not None:
                    entry.op, entry.limit, entry.numbers = quiet
                elif rule.kind == "absence":
                    entry.fast, entry.only_if = _ABSENCE, tuple(rule.params.only_if)
                elif rule.kind == "clock_skew":
                    p = rule.params
                    entry.fast = _SKEW
                    entry.skew_ahead_ms = None if p.max_ahead_s is None else p.max_ahead_s * 1000
                    entry.skew_behind_ms = None if p.max_behind_s is None else p.max_behind_s * 1000
                self._bind(entry, self._states.get(key))
                r = eng.route(rule)
                if r.fields is None:
                    plan.any_reading.append(entry)
                else:
                    for f in r.fields:
                        plan.by_field.setdefault(f, []).append(entry)
                if r.events:
                    plan.events.append(entry)
                if r.statuses:
                    plan.statuses.append(entry)
            self._plans[subj.device_id] = plan
        return plan

    @staticmethod
    def _bind(entry: _Entry, st: Any) -> None:
        """Cache the rule state in its entry; a state of another kind than the fast path expects (restored from
        an older rule of the same id) turns the fast path off: ``evaluate`` decides, as before."""
        entry.st = st
        if st is None:
            return
        if entry.op is not None and type(st) is not ThresholdState:
            entry.op = None
        if (entry.fast == _ABSENCE and type(st) is not AbsenceState) or (
            entry.fast == _SKEW and type(st) is not eng.ClockSkewState
        ):
            entry.fast = _SLOW

    def _evaluate(self, rec: Record, now: datetime, now_ms: int) -> list[LifecycleEvent]:
        subj = self._subjects.get(rec.device_id)
        if subj is None:
            if isinstance(rec, Status):
                return []
            subj = self._subject(rec.device_id, rec.device_type, rec.region_id)
            self._subjects[rec.device_id] = subj
            self._adhoc.add(rec.device_id)
        plan = self._plan(subj)
        events: list[LifecycleEvent] = []
        if isinstance(rec, Reading):
            fields = rec.fields
            by_field = plan.by_field
            if plan.any_reading:
                self._run(plan.any_reading, subj, rec, now, now_ms, events)
            for f in fields:
                entries = by_field.get(f)
                if entries is not None:
                    self._run_reading(entries, subj, rec, fields[f], now, now_ms, events)
        elif isinstance(rec, Event):
            self._run(plan.events, subj, rec, now, now_ms, events)
        else:
            self._run(plan.statuses, subj, rec, now, now_ms, events)
        return events

    def _run_reading(
        self,
        entries: list[_Entry],
        subj: Subject,
        rec: Reading,
        v: Any,
        now: datetime,
        now_ms: int,
        events: list[LifecycleEvent],
    ) -> None:
        """The rules routed by one field of a reading whose value is ``v``.

        Threshold rules without ``where`` (``engine.quiet_threshold``) take a fast path when the reading changes
        nothing decisive: the state is quiet and the condition is false, so only the learning part (last value,
        last time, when it was seen, no suppressed window) moves, exactly as ``engine.evaluate`` would do it.
        Anything else goes through ``_one``."""
        ts = rec.ts_ms
        number = type(v) in _NUMBER
        lazy = self._lazy
        for entry in entries:
            st = entry.st
            op = entry.op
            if (
                op is not None
                and st is not None
                and (number or not entry.numbers)
                and not st.firing
                and st.since_ms is None
                and st.streak == 0
                and ts >= st.last_ts_ms
                and not op(v, entry.limit)
            ):
                st.last_ts_ms, st.seen_ms = ts, now_ms
                st.value = v
                st.suppressed_ms = None
                lazy.add(entry.key)
                continue
            self._one(entry, subj, rec, now, now_ms, events)

    def _run(
        self,
        entries: list[_Entry],
        subj: Subject,
        rec: Record,
        now: datetime,
        now_ms: int,
        events: list[LifecycleEvent],
    ) -> None:
        for entry in entries:
            self._one(entry, subj, rec, now, now_ms, events)

    def _one(
        self, entry: _Entry, subj: Subject, rec: Record, now: datetime, now_ms: int, events: list[LifecycleEvent]
    ) -> None:
        st = entry.st
        fast = entry.fast
        if fast and st is not None:
            # Quiet paths: exactly what ``engine.evaluate`` does to a state that neither fires nor clears, and
            # changes nothing essential; the rest of ``_one`` would then only mark the state as learning data.
            key = entry.key
            if fast == _ABSENCE:
                # not firing and its gate fields (only_if) absent from the record or unchanged: only last_seen
                # moves; the wake-up stays as it is (one is queued, or the gate is closed and none is due)
                only_if = entry.only_if
                if (
                    not st.firing
                    and (not only_if or type(rec) is not Reading or _same(only_if, rec.fields, st.known))
                    and (key in self._armed or (only_if and not _gate_open(entry.rule, st)))
                ):
                    if not (isinstance(rec, Status) and rec.state == "offline"):
                        last = st.last_seen_ms
                        if last is None or rec.ts_ms > last:
                            st.last_seen_ms = rec.ts_ms
                    self._lazy.add(key)
                    return
            elif not st.firing and st.streak == 0 and st.since_ms is None:  # _SKEW: within bounds, still quiet
                if isinstance(rec, Status) or not rec.ts_from_device:
                    self._lazy.add(key)
                    return
                received = getattr(rec, "received_ms", None)
                skew_ms = rec.ts_ms - (received if isinstance(received, int) else now_ms)
                ahead, behind = entry.skew_ahead_ms, entry.skew_behind_ms
                if not ((ahead is not None and skew_ms > ahead) or (behind is not None and -skew_ms > behind)):
                    st.skew_s = round(skew_ms / 1000, 3)
                    self._lazy.add(key)
                    return
        rule, key = entry.rule, entry.key
        fresh = st is None
        if st is None:
            states = self._states
            st = states.get(key)
            fresh = st is None
            if st is None:
                st = states[key] = eng.new_state(rule, now=now)
                self._state_kind[key] = rule.kind
            self._bind(entry, st)
        before = st.essential()
        changes = entry.fn(rule, st, subj, rec, now_ms, self.env)
        # Deadlines only move when the essential state does (absence: re-armed when its wake-up pops).
        if st.essential() != before:
            self._essential.add(key)
            self._arm(rule, key, subj)
        else:
            self._lazy.add(key)
            # An absence rule gated by ``only_if`` (e.g. V12: ignition on) gets its first deadline only when the
            # gate opens, which changes no essential state: arm it whenever none is queued.
            if fresh or (rule.kind == "absence" and key not in self._armed):
                self._arm(rule, key, subj)
        for ch in changes:
            events.extend(self.book.apply(ch, now=now))

    # --- timers -----------------------------------------------------------------------------------------------

    def _arm(self, rule: EffectiveRule, key: StateKey, subj: Subject) -> None:
        due = eng.next_deadline(rule, self._states[key], subj)
        if due is None:
            return
        armed = self._armed.get(key)
        if armed is not None and armed <= due:
            self._tick_subject[key] = subj  # the device's newest region and type (a refresh may have moved it)
            return  # an earlier wake-up is already queued; it re-arms for the later deadline
        self._rule_by_key[key] = rule
        self._tick_subject[key] = subj
        self._armed[key] = due
        heapq.heappush(self._heap, (due, key))

    def tick(self, now: datetime | None = None) -> list[LifecycleEvent]:
        """Run what is due at ``now``: rule timers, silence ends, flapping ends; store; tell subscribers."""
        with self._lock:
            now = now or self._clock()
            now_ms = eng.ms(now)
            events: list[LifecycleEvent] = []
            while self._heap and self._heap[0][0] <= now_ms:
                due, key = heapq.heappop(self._heap)
                if self._armed.get(key) != due:
                    continue  # superseded by an earlier arm
                del self._armed[key]
                rule, subj, st = self._rule_by_key.get(key), self._tick_subject.get(key), self._states.get(key)
                if rule is None or subj is None or st is None:
                    continue
                if key[1] != "*" and key[1] not in self._subjects:
                    continue  # the device was disabled or removed: its timers stop
                before = st.essential()
                changes: list[AlertChange] = eng.tick(rule, st, subj, now=now, env=self.env)
                (self._essential if st.essential() != before else self._lazy).add(key)
                for ch in changes:
                    events.extend(self.book.apply(ch, now=now))
                self._arm(rule, key, subj)
            book_due = self.book.next_deadline()
            if book_due is not None and book_due <= now:
                events.extend(self.book.tick(now=now))
            payload = self._persist(now)
        self._commit(payload)
        self._publish(events)
        return events

    def next_deadline(self) -> datetime | None:
        with self._lock:
            due = [eng.from_ms(self._heap[0][0])] if self._heap else []
            b = self.book.next_deadline()
            if b is not None:
                due.append(b)
            return min(due) if due else None

    # --- persistence ----------------------------------------------------------------------------------------

    def _take(self, now: datetime, keys: set[StateKey]) -> _Payload | None:
        """Collect what must be written (call with the state lock held): changed alerts, silences, comments, the
        given rule states and the lifecycle's aux keys that changed. Serialised here, written later by ``_commit``."""
        alerts, silences, comments = self.book.take_dirty()
        aux = self.book.take_aux()
        view = self._open_view
        for a in alerts:  # every change of an alert passes here (it is stored): keep the open view current
            if a.open:
                view[a.id] = a
            else:
                view.pop(a.id, None)
        if not (alerts or silences or comments or keys or aux):
            return None
        states = {k: (self._state_kind[k], eng.state_dumps(self._states[k])) for k in keys if k in self._states}
        self._lazy -= keys
        if keys is self._essential:
            self._essential = set()
        else:
            self._essential -= keys
        return _Payload(
            {a.id: a for a in alerts},
            {x.id: x for x in silences},
            list(comments),
            states,
            aux,
            now,
        )

    def _commit(self, payload: _Payload | None) -> None:
        """Write ``payload`` (and whatever failed before) in one transaction, then release the write lock.

        The caller acquires ``_wlock`` while it still holds the state lock, so payloads are written in the order
        they were taken, while the next batch may already be evaluated."""
        try:
            if payload is not None:
                self._pending = payload if self._pending is None else self._pending.merge(payload)
            pending = self._pending
            if pending is None:
                return
            try:
                started = time.perf_counter()
                self.repo.save(
                    alerts=pending.alerts.values(),
                    silences=pending.silences.values(),
                    comments=pending.comments,
                    states=pending.states,
                    aux=pending.aux,
                    now=pending.now,
                )
                metrics.WRITE_SECONDS.observe(time.perf_counter() - started)
            except StoreUnavailable as exc:
                if not self._store_down:
                    logger.warning(
                        "alert store unavailable, keeping %d alert changes in memory: %s", len(pending.alerts), exc
                    )
                self._store_down = True
                return
            if self._store_down:
                logger.info("alert store back, %d alert changes written", len(pending.alerts))
                self._store_down = False
            self._pending = None
        finally:
            self._wlock.release()

    def _persist(self, now: datetime) -> _Payload | None:
        """Take the payload of a batch / tick / action and acquire the write lock (state lock held)."""
        payload = self._take(now, self._essential)
        self._wlock.acquire()
        return payload

    def flush(self, everything: bool = False) -> None:
        """Write the learning parts of rule state (baselines, last values), at most ``snapshot_chunk`` states per
        call; ``everything``: all states in one transaction (at stop, when no batch is waiting).

        The states go out in transactions of at most ``snapshot_txn`` states. Each one is serialised under the
        state lock and written under the write lock like a batch, and both locks are released between them, so a
        batch that raises an alert waits for at most one small transaction, never for the whole snapshot."""
        with self._lock:
            if everything:
                todo = list(self._states)
            else:
                todo = list(self._essential)
                for key in self._lazy:
                    if len(todo) >= self.snapshot_chunk:
                        break
                    todo.append(key)
        step = max(1, len(todo) if everything else self.snapshot_txn)
        first = True
        for i in range(0, max(len(todo), 1), step):
            if not first:
                time.sleep(0)  # let a waiting batch take the locks between two transactions
            first = False
            with self._lock:
                # Keys written meanwhile by a batch (essential) are simply written again: the value is current.
                payload = self._take(self._clock(), set(todo[i : i + step]))
                self._wlock.acquire()
            self._commit(payload)

    # --- people ---------------------------------------------------------------------------------------------

    def _act(self, fn: Callable[[], list[LifecycleEvent]]) -> list[LifecycleEvent]:
        with self._lock:
            events = fn()
            payload = self._persist(self._clock())
        self._commit(payload)
        self._publish(events)
        return events

    def acknowledge(self, alert_id: int, who: str, why: str) -> Alert:
        return self._act(lambda: self.book.acknowledge(alert_id, who, why, now=self._clock()))[0].alert

    def resolve(self, alert_id: int, who: str, reason: str) -> Alert:
        return self._act(lambda: self.book.resolve(alert_id, who, reason, now=self._clock()))[0].alert

    def comment(self, alert_id: int, who: str, text: str) -> Alert:
        return self._act(lambda: self.book.comment(alert_id, who, text, now=self._clock()))[0].alert

    def assign(self, alert_id: int, who: str, assignee: str | None) -> Alert:
        return self._act(lambda: self.book.assign(alert_id, who, assignee, now=self._clock()))[0].alert

    def add_silence(self, **kw: Any) -> Silence:
        """See ``AlertBook.add_silence`` (reason, creator, starts_at, ends_at, scope, approver, renotify).

        The silence's row is inserted first, under an id no other process holds (``AlertRepository.
        insert_silence``): with two gateway processes each engine's counter alone could give two silences the
        same id."""
        out: list[Silence] = []
        check_silence(
            str(kw.get("reason") or ""),
            str(kw.get("creator") or ""),
            kw["starts_at"],
            kw["ends_at"],
            kw.get("region_id"),
            kw.get("device_id"),
            kw.get("rule_id"),
        )

        def run() -> list[LifecycleEvent]:
            now = self._clock()
            book = self.book
            draft = Silence(
                book.next_silence_id,
                kw["reason"],
                kw["creator"],
                kw["starts_at"],
                kw["ends_at"],
                kw.get("region_id"),
                kw.get("device_id"),
                kw.get("rule_id"),
                kw.get("approver"),
                kw.get("renotify", True),
                now,
            )
            book.next_silence_id = self.repo.insert_silence(draft)
            out.append(book.add_silence(now=now, **kw))
            return []

        self._act(run)
        return out[0]

    def end_silence(self, silence_id: int) -> list[LifecycleEvent]:
        return self._act(lambda: self.book.end_silence(silence_id, now=self._clock()))

    def open_alerts(self) -> list[Alert]:
        """Snapshots of the open alerts as of the last batch, tick or action (do not modify them: they are shared
        with the store's write and with other readers; each change of an alert makes a new snapshot)."""
        with self._lock:
            return list(self._open_view.values())

    def silenced_by(self, alert_ids: Iterable[int], now: datetime | None = None) -> dict[int, list[Silence]]:
        """For each open alert of ``alert_ids`` that a silence holds back, the active silences covering it: why
        nothing is sent about it (no notification, no escalation)."""
        now = now or self._clock()
        out: dict[int, list[Silence]] = {}
        with self._lock:
            for alert_id in alert_ids:
                a = self.book.alerts.get(alert_id)
                if a is not None and a.open and a.silenced:
                    found = [replace(s) for s in self.book.silences_of(a, now)]
                    if found:
                        out[alert_id] = found
        return out

    def set_escalation_level(
        self, alert_id: int, level: int, now: datetime, reached_at: datetime | None = None
    ) -> Alert | None:
        """For ``alerts.escalation.Escalator``'s ``record``: store the level if the alert still fires below it, is
        not silenced and was told; ``reached_at`` (when the level was due) starts the clock toward the next one."""
        with self._lock:
            alert = self.book.alerts.get(alert_id)
            if (
                alert is None
                or not alert.open
                or alert.state is not AlertState.FIRING
                or alert.escalation_level >= level
                or alert.silenced
                or alert.escalation_from is None
            ):
                return None
            alert.escalation_level = level
            alert.escalation_from = reached_at or now
            alert.updated_at = max(alert.updated_at, now)
            self.book.touch(alert.id)
            payload = self._persist(now)
            out = replace(alert, detail=dict(alert.detail))
        self._commit(payload)
        return out
