"""The alert lifecycle: a pure state machine over the engine's AlertChanges and people's actions.

    firing --ack(who, why)--> acknowledged --+
       |                                     +--> resolved (automatically when the rule clears, or by hand + reason)
       +-------------------------------------+

- One open alert per dedup key: a repeated or replayed firing change only bumps ``count``.
- Flapping: when a key fires ``flap_threshold`` times within ``flap_window_s``, the alert it last resolved is
  reopened as one *flapping* alert that absorbs further fires and clears; it ends after ``flap_quiet_s`` without a
  transition (resolved if the condition is clear by then).
- Inhibition: while a device has an open offline alert (an absence rule), its *inhibitable* (stale-value) fires
  are held back; they become alerts if they are still firing when the device is back.
- Silences: scoped by region subtree, device and rule (all given parts must match), with reason, creator,
  approver, start and expiry. A silence stops every notification of what it covers: new, flapping, resolved
  and escalated (``alerts.escalation`` skips silenced alerts). When the window ends an alert that still fires
  is re-notified (``renotify``) and its escalation clock starts again from the end of the window.
- Escalation clock: ``learned_at`` is when the platform learned of the alert (``now`` of the evaluation, not the
  device's timestamp ``started_at``); ``escalation_from`` starts at ``learned_at`` when people are told at once,
  stays ``None`` while nobody has been told (raised under a silence), and restarts when a silence ends.
- Resolution, automatic or by hand (who and why), is told to everyone who was told of the alert (the alert's
  region and every escalation level it reached: ``alerts.notify.routing.targets``), unless a silence covers it.

No I/O, no clock. Every operation returns ``LifecycleEvent``s; ``notify`` says whether people should be told.
Changed alerts, silences and new comments are collected for the repository (``take_dirty``), and so is the aux
state, per key (``take_aux``): the recent fires of a dedup key, the last alert a key resolved, the offline keys of
a device, a held fire. A batch writes only the keys it changed, not every key fired within the flap window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from alerts.types import Alert, AlertChange, AlertState, Comment
from core.errors import UserError

SYSTEM = "system"


class AlertNotFound(UserError):
    """No such alert (or not open for the requested action)."""


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    flap_window_s: float = 3600
    flap_threshold: int = 5
    flap_quiet_s: float = 1800


@dataclass(slots=True)
class Silence:
    id: int
    reason: str
    creator: str
    starts_at: datetime
    ends_at: datetime
    region_id: str | None = None  # the whole subtree
    device_id: str | None = None
    rule_id: str | None = None
    approver: str | None = None
    renotify: bool = True
    created_at: datetime | None = None
    ended: bool = False  # its end has been processed (re-notifications sent)

    def covers(self, alert: Alert) -> bool:
        if self.region_id is not None and self.region_id not in alert.region_path and self.region_id != alert.region_id:
            return False
        if self.device_id is not None and self.device_id != alert.device_id:
            return False
        return self.rule_id is None or self.rule_id == alert.rule_id

    def active(self, at: datetime) -> bool:
        return not self.ended and self.starts_at <= at < self.ends_at


def check_silence(
    reason: str,
    creator: str,
    starts_at: datetime,
    ends_at: datetime,
    region_id: str | None,
    device_id: str | None,
    rule_id: str | None,
) -> None:
    """UserError when a silence with these fields cannot be made (``AlertBook.add_silence`` checks the same)."""
    if not reason.strip():
        raise UserError("silence: a reason is required")
    if not creator:
        raise UserError("silence: creator is required")
    if ends_at <= starts_at:
        raise UserError("silence: ends_at must be after starts_at")
    if region_id is None and device_id is None and rule_id is None:
        raise UserError("silence: give a scope (region, device and/or rule)")


def silences_holding(alert: Alert, silences: Iterable[Silence], at: datetime) -> list[Silence]:
    """The silences active at ``at`` that hold ``alert`` back (nothing is sent about it): empty unless the alert
    is open and marked silenced. Pure: the gateway matches the stored silences against any listed alert, whichever
    engine process holds it."""
    if not alert.open or not alert.silenced:
        return []
    return [s for s in silences if s.active(at) and s.covers(alert)]


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """What happened to an alert. ``alert`` is a snapshot taken at the time of the event."""

    kind: str  # created | repeated | flapping | flapping_ended | resolved | acknowledged | assigned | commented |
    #            renotify | unsilenced | inhibited
    alert: Alert
    at: datetime
    notify: bool
    comment: Comment | None = None


def _snap(alert: Alert) -> Alert:
    return replace(alert, detail=dict(alert.detail))


@dataclass(slots=True)
class _Dirty:
    alerts: set[int] = field(default_factory=set)
    silences: set[int] = field(default_factory=set)
    comments: list[Comment] = field(default_factory=list)


class AlertBook:
    """Open alerts, recent history for flapping, held (inhibited) fires and silences."""

    def __init__(self, config: LifecycleConfig | None = None, *, next_id: int = 1, next_silence_id: int = 1) -> None:
        self.config = config or LifecycleConfig()
        self.alerts: dict[int, Alert] = {}  # open alerts and recently resolved ones (flap window)
        self.open_by_key: dict[str, int] = {}
        self.fires: dict[str, list[datetime]] = {}
        self.last_resolved: dict[str, int] = {}
        self.held: dict[str, AlertChange] = {}
        self.offline: dict[str, set[str]] = {}  # device -> dedup keys of its open offline alerts
        self.silences: dict[int, Silence] = {}
        self._started: set[int] = set()  # silences whose start has been applied to the open alerts
        self.next_id = next_id
        self.next_silence_id = next_silence_id
        self._dirty = _Dirty()
        self._aux_dirty: set[tuple[str, str]] = set()  # (section, key) of the aux state changed since take_aux

    # --- queries -----------------------------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        return [self.alerts[i] for i in self.open_by_key.values()]

    def get(self, alert_id: int) -> Alert:
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"alert {alert_id} is not open")
        return alert

    def touch(self, alert_id: int) -> None:
        """Mark an alert changed from outside (e.g. its escalation level) so it is written."""
        self._dirty.alerts.add(alert_id)

    def take_dirty(self) -> tuple[list[Alert], list[Silence], list[Comment]]:
        d, self._dirty = self._dirty, _Dirty()
        return (
            [_snap(self.alerts[i]) for i in sorted(d.alerts) if i in self.alerts],
            [replace(self.silences[i]) for i in sorted(d.silences) if i in self.silences],
            d.comments,
        )

    def _silenced(self, alert: Alert, at: datetime) -> bool:
        return any(s.active(at) and s.covers(alert) for s in self.silences.values())

    def silences_of(self, alert: Alert, at: datetime) -> list[Silence]:
        """The silences active at ``at`` that cover ``alert`` (why nothing is sent about it)."""
        return [s for s in self.silences.values() if s.active(at) and s.covers(alert)]

    @staticmethod
    def _told(alert: Alert) -> bool:
        """Someone was told of the alert (its escalation clock runs), so they are told how it ends."""
        return alert.escalation_from is not None

    # --- engine changes ----------------------------------------------------------------------------------

    def apply(self, change: AlertChange, *, now: datetime | None = None) -> list[LifecycleEvent]:
        """Apply an engine change; ``now`` is when the platform learned of it (default: the change's own time)."""
        learned = now if now is not None else change.at
        return self._fire(change, learned) if change.firing else self._clear(change, learned)

    def _record_fire(self, key: str, at: datetime) -> int:
        horizon = at - timedelta(seconds=self.config.flap_window_s)
        times = [t for t in self.fires.get(key, []) if t > horizon]
        times.append(at)
        self.fires[key] = times
        self._aux_dirty.add(("fires", key))
        return len(times)

    def _fire(self, ch: AlertChange, learned: datetime) -> list[LifecycleEvent]:
        key, at = ch.dedup_key, ch.at
        if ch.offline_signal:
            keys = self.offline.setdefault(ch.device_id, set())
            if key not in keys:
                keys.add(key)
                self._aux_dirty.add(("offline", ch.device_id))
        open_id = self.open_by_key.get(key)
        if open_id is not None:
            alert = self.alerts[open_id]
            events: list[LifecycleEvent] = []
            transition = not alert.active
            alert.count += 1
            alert.active = True
            alert.updated_at = max(alert.updated_at, at)
            alert.detail.update(ch.detail)
            self._dirty.alerts.add(alert.id)
            if transition:
                n = self._record_fire(key, at)
                if not alert.flapping and n >= self.config.flap_threshold:
                    alert.flapping = True
                    events.append(LifecycleEvent("flapping", _snap(alert), at, not alert.silenced))
            if not events:
                events.append(LifecycleEvent("repeated", _snap(alert), at, False))
            return events
        if ch.inhibitable and self.offline.get(ch.device_id):
            self.held[key] = ch
            self._aux_dirty.add(("held", key))
            ghost = self._new_alert(ch, alert_id=0)
            return [LifecycleEvent("inhibited", ghost, at, False)]
        n = self._record_fire(key, at)
        prev_id = self.last_resolved.get(key)
        if n >= self.config.flap_threshold and prev_id is not None and prev_id in self.alerts:
            alert = self.alerts[prev_id]
            alert.state = AlertState.FIRING
            alert.resolved_at = alert.resolved_by = alert.resolve_reason = None
            alert.acknowledged_at = alert.acknowledged_by = alert.ack_reason = None
            alert.flapping = True
            alert.active = True
            alert.count += 1
            alert.updated_at = at
            alert.silenced = self._silenced(alert, learned)
            alert.escalation_from = None if alert.silenced else learned
            self.open_by_key[key] = alert.id
            del self.last_resolved[key]
            self._aux_dirty.add(("last_resolved", key))
            self._dirty.alerts.add(alert.id)
            return [LifecycleEvent("flapping", _snap(alert), at, not alert.silenced)]
        alert = self._new_alert(ch, alert_id=self.next_id)
        self.next_id += 1
        alert.learned_at = learned
        alert.silenced = self._silenced(alert, learned)
        alert.escalation_from = None if alert.silenced else learned
        self.alerts[alert.id] = alert
        self.open_by_key[key] = alert.id
        self._dirty.alerts.add(alert.id)
        return [LifecycleEvent("created", _snap(alert), at, not alert.silenced)]

    @staticmethod
    def _new_alert(ch: AlertChange, *, alert_id: int) -> Alert:
        return Alert(
            id=alert_id,
            dedup_key=ch.dedup_key,
            rule_id=ch.rule_id,
            device_id=ch.device_id,
            region_id=ch.region_id,
            severity=ch.severity,
            state=AlertState.FIRING,
            title_zh=ch.title_zh,
            title_en=ch.title_en,
            started_at=ch.at,
            updated_at=ch.at,
            detail=dict(ch.detail),
            region_path=tuple(ch.region_path),
        )

    def _clear(self, ch: AlertChange, learned: datetime) -> list[LifecycleEvent]:
        key, at = ch.dedup_key, ch.at
        events: list[LifecycleEvent] = []
        if self.held.pop(key, None) is not None:
            self._aux_dirty.add(("held", key))
        open_id = self.open_by_key.get(key)
        if open_id is not None:
            alert = self.alerts[open_id]
            alert.active = False
            alert.updated_at = max(alert.updated_at, at)
            self._dirty.alerts.add(alert.id)
            if not alert.flapping:
                events.append(self._resolve(alert, SYSTEM, "condition cleared", at))
        if ch.offline_signal:
            keys = self.offline.get(ch.device_id, set())
            keys.discard(key)
            if not keys:
                self.offline.pop(ch.device_id, None)
                self._aux_dirty.add(("offline", ch.device_id))
                for hk, held in list(self.held.items()):
                    if held.device_id == ch.device_id:
                        del self.held[hk]
                        self._aux_dirty.add(("held", hk))
                        events.extend(self._fire(replace(held, at=max(held.at, at)), learned))
            else:
                self._aux_dirty.add(("offline", ch.device_id))
        return events

    def _resolve(self, alert: Alert, who: str, reason: str, at: datetime) -> LifecycleEvent:
        """Resolve; told to those who were told of the alert, unless a silence covers it."""
        notify = self._told(alert) and not alert.silenced
        alert.state = AlertState.RESOLVED
        alert.resolved_at, alert.resolved_by, alert.resolve_reason = at, who, reason
        alert.updated_at = max(alert.updated_at, at)
        if self.open_by_key.get(alert.dedup_key) == alert.id:
            del self.open_by_key[alert.dedup_key]
        self.last_resolved[alert.dedup_key] = alert.id
        self._aux_dirty.add(("last_resolved", alert.dedup_key))
        for device_id, keys in self.offline.items():
            if alert.dedup_key in keys:
                keys.discard(alert.dedup_key)
                self._aux_dirty.add(("offline", device_id))
        self._dirty.alerts.add(alert.id)
        return LifecycleEvent("resolved", _snap(alert), at, notify)

    # --- people --------------------------------------------------------------------------------------------

    def _open(self, alert_id: int) -> Alert:
        alert = self.alerts.get(alert_id)
        if alert is None or not alert.open:
            raise AlertNotFound(f"alert {alert_id} is not open")
        return alert

    def _note(self, alert: Alert, who: str, text: str, at: datetime, kind: str) -> Comment:
        c = Comment(alert.id, who, text, at, kind)
        self._dirty.comments.append(c)
        self._dirty.alerts.add(alert.id)
        return c

    def acknowledge(self, alert_id: int, who: str, why: str, *, now: datetime) -> list[LifecycleEvent]:
        if not who:
            raise UserError("acknowledge: who is required")
        alert = self._open(alert_id)
        if alert.state is AlertState.ACKNOWLEDGED:
            raise UserError(f"alert {alert_id} is already acknowledged by {alert.acknowledged_by}")
        alert.state = AlertState.ACKNOWLEDGED
        alert.acknowledged_by, alert.acknowledged_at, alert.ack_reason = who, now, why
        alert.updated_at = now
        c = self._note(alert, who, why, now, "ack")
        return [LifecycleEvent("acknowledged", _snap(alert), now, False, c)]

    def resolve(self, alert_id: int, who: str, reason: str, *, now: datetime) -> list[LifecycleEvent]:
        if not reason.strip():
            raise UserError("resolve: a reason is required to resolve an alert by hand")
        alert = self._open(alert_id)
        c = self._note(alert, who, reason, now, "resolve")
        ev = self._resolve(alert, who, reason, now)
        return [replace(ev, comment=c)]

    def comment(self, alert_id: int, who: str, text: str, *, now: datetime) -> list[LifecycleEvent]:
        if not text.strip():
            raise UserError("comment: text is empty")
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise AlertNotFound(f"alert {alert_id} is not known to the live book")
        c = self._note(alert, who, text, now, "comment")
        return [LifecycleEvent("commented", _snap(alert), now, False, c)]

    def assign(self, alert_id: int, who: str, assignee: str | None, *, now: datetime) -> list[LifecycleEvent]:
        alert = self._open(alert_id)
        alert.assignee = assignee
        alert.updated_at = now
        c = self._note(alert, who, f"assigned to {assignee}" if assignee else "unassigned", now, "assign")
        return [LifecycleEvent("assigned", _snap(alert), now, assignee is not None, c)]

    # --- silences ------------------------------------------------------------------------------------------

    def add_silence(
        self,
        *,
        reason: str,
        creator: str,
        starts_at: datetime,
        ends_at: datetime,
        now: datetime,
        region_id: str | None = None,
        device_id: str | None = None,
        rule_id: str | None = None,
        approver: str | None = None,
        renotify: bool = True,
    ) -> Silence:
        check_silence(reason, creator, starts_at, ends_at, region_id, device_id, rule_id)
        s = Silence(
            self.next_silence_id,
            reason,
            creator,
            starts_at,
            ends_at,
            region_id,
            device_id,
            rule_id,
            approver,
            renotify,
            now,
        )
        self.next_silence_id += 1
        self.silences[s.id] = s
        self._dirty.silences.add(s.id)
        if s.active(now):
            self._apply_silence(s)
            self._started.add(s.id)
        return s

    def _apply_silence(self, s: Silence) -> None:
        for alert in self.open_alerts():
            if not alert.silenced and s.covers(alert):
                alert.silenced = True
                self._dirty.alerts.add(alert.id)

    def end_silence(self, silence_id: int, *, now: datetime) -> list[LifecycleEvent]:
        s = self.silences.get(silence_id)
        if s is None or s.ended:
            raise UserError(f"silence {silence_id} is not active")
        s.ends_at = min(s.ends_at, now)
        return self.tick(now=now)

    # --- timers ----------------------------------------------------------------------------------------------

    def tick(self, *, now: datetime) -> list[LifecycleEvent]:
        events: list[LifecycleEvent] = []
        for s in list(self.silences.values()):
            if s.ended:
                continue
            if s.starts_at <= now < s.ends_at:
                self._apply_silence(s)
                self._started.add(s.id)
            elif now >= s.ends_at:
                s.ended = True
                self._dirty.silences.add(s.id)
                for alert in self.open_alerts():
                    if alert.silenced and s.covers(alert) and not self._silenced(alert, now):
                        alert.silenced = False
                        self._dirty.alerts.add(alert.id)
                        if alert.active and s.renotify:
                            alert.escalation_from = now  # told again now: the escalation clock starts again
                            events.append(LifecycleEvent("renotify", _snap(alert), now, True))
                        else:
                            if self._told(alert):
                                alert.escalation_from = now  # no catching up on the silenced time
                            events.append(LifecycleEvent("unsilenced", _snap(alert), now, False))
        quiet = timedelta(seconds=self.config.flap_quiet_s)
        for alert in self.open_alerts():
            if not alert.flapping:
                continue
            last = self._last_transition(alert)
            if now - last < quiet:
                continue
            alert.flapping = False
            self._dirty.alerts.add(alert.id)
            if alert.active:
                events.append(LifecycleEvent("flapping_ended", _snap(alert), now, False))
            else:
                events.append(self._resolve(alert, SYSTEM, "flapping ended, condition clear", now))
        horizon = now - timedelta(seconds=self.config.flap_window_s)
        for key in [k for k, ts in self.fires.items() if not ts or ts[-1] <= horizon]:
            del self.fires[key]
            self._aux_dirty.add(("fires", key))
        for key, aid in list(self.last_resolved.items()):
            a = self.alerts.get(aid)
            if a is None or (a.resolved_at is not None and a.resolved_at <= horizon):
                del self.last_resolved[key]
                self._aux_dirty.add(("last_resolved", key))
        live = set(self.open_by_key.values()) | set(self.last_resolved.values())
        for aid in [i for i in self.alerts if i not in live]:
            del self.alerts[aid]
        return events

    def _last_transition(self, alert: Alert) -> datetime:
        return max([*self.fires.get(alert.dedup_key, []), alert.updated_at])

    def next_deadline(self) -> datetime | None:
        due: list[datetime] = []
        for s in self.silences.values():
            if not s.ended:
                due.append(s.ends_at)
                if s.id not in self._started:
                    due.append(s.starts_at)
        quiet = timedelta(seconds=self.config.flap_quiet_s)
        for alert in self.open_alerts():
            if alert.flapping:
                due.append(self._last_transition(alert) + quiet)
        return min(due) if due else None

    # --- persistence of the aux state ------------------------------------------------------------------------

    def aux_to_json(self) -> dict[str, Any]:
        """The aux state for the alert store. ``fires`` keeps its datetimes (copied lists): the repository's JSON
        encoder writes them as ISO 8601 text in C, which matters because this runs with every alert change and
        holds an entry per recently fired key."""
        return {
            "fires": {k: list(v) for k, v in self.fires.items()},
            "last_resolved": dict(self.last_resolved),
            "offline": {d: sorted(keys) for d, keys in self.offline.items()},
            "held": {k: _change_to_json(c) for k, c in self.held.items()},
        }

    def aux_value(self, section: str, key: str) -> Any:
        """One key of the aux state as JSON data (fires keep their datetimes: the repository writes them as ISO
        8601 text), or None when the key is not there (a deleted row)."""
        if section == "fires":
            times = self.fires.get(key)
            return None if times is None else list(times)
        if section == "last_resolved":
            return self.last_resolved.get(key)
        if section == "offline":
            keys = self.offline.get(key)
            return None if keys is None else sorted(keys)
        if section == "held":
            held = self.held.get(key)
            return None if held is None else _change_to_json(held)
        raise ValueError(f"unknown aux section {section!r}")

    def take_aux(self) -> dict[tuple[str, str], Any]:
        """The aux keys changed since the last call, ``(section, key) -> value`` (None: the key was removed)."""
        dirty, self._aux_dirty = self._aux_dirty, set()
        return {sk: self.aux_value(*sk) for sk in dirty}

    def mark_aux_dirty(self) -> None:
        """Every aux key is to be written again (the aux state was restored from the old one-row format)."""
        self._aux_dirty |= {("fires", k) for k in self.fires}
        self._aux_dirty |= {("last_resolved", k) for k in self.last_resolved}
        self._aux_dirty |= {("offline", k) for k in self.offline}
        self._aux_dirty |= {("held", k) for k in self.held}

    def restore(
        self,
        alerts: Iterable[Alert],
        silences: Iterable[Silence],
        aux: dict[str, Any] | None,
        *,
        next_id: int,
        next_silence_id: int,
    ) -> None:
        """Load open (and recently resolved) alerts, silences and the aux state after a restart."""
        for a in alerts:
            self.alerts[a.id] = a
            if a.open:
                self.open_by_key[a.dedup_key] = a.id
        for s in silences:
            self.silences[s.id] = s
        self.next_id = max(self.next_id, next_id)
        self.next_silence_id = max(self.next_silence_id, next_silence_id)
        aux = aux or {}
        self.fires = {k: [datetime.fromisoformat(t) for t in v] for k, v in aux.get("fires", {}).items()}
        self.last_resolved = {k: int(v) for k, v in aux.get("last_resolved", {}).items() if int(v) in self.alerts}
        self.offline = {d: set(v) for d, v in aux.get("offline", {}).items()}
        self.held = {k: _change_from_json(v) for k, v in aux.get("held", {}).items()}


def _change_to_json(c: AlertChange) -> dict[str, Any]:
    return {
        "rule_id": c.rule_id,
        "dedup_key": c.dedup_key,
        "device_id": c.device_id,
        "region_id": c.region_id,
        "severity": str(c.severity),
        "firing": c.firing,
        "at": c.at.isoformat(),
        "title_zh": c.title_zh,
        "title_en": c.title_en,
        "detail": c.detail,
        "region_path": list(c.region_path),
        "kind": c.kind,
        "offline_signal": c.offline_signal,
        "inhibitable": c.inhibitable,
    }


def _change_from_json(d: dict[str, Any]) -> AlertChange:
    from alerts.types import Severity

    return AlertChange(
        rule_id=d["rule_id"],
        dedup_key=d["dedup_key"],
        device_id=d["device_id"],
        region_id=d["region_id"],
        severity=Severity(d["severity"]),
        firing=bool(d["firing"]),
        at=datetime.fromisoformat(d["at"]),
        title_zh=d["title_zh"],
        title_en=d["title_en"],
        detail=dict(d.get("detail", {})),
        region_path=tuple(d.get("region_path", ())),
        kind=d.get("kind", ""),
        offline_signal=bool(d.get("offline_signal")),
        inhibitable=bool(d.get("inhibitable")),
    )
