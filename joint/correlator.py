"""The correlator: alert lifecycle facts in, incident changes out. Pure: no I/O, no clock (everything takes ``now``).

- ``observe(kind, fact, now)``: a lifecycle event of one alert (``created``, ``repeated``, ``flapping`` are fires;
  ``resolved``). A fire that belongs to an open incident (same pattern and key) joins it; otherwise each pattern
  kind (``joint/kinds``) takes it into its windows and may report a hit, which opens an incident with the hit's
  alerts as members. Patterns with ``mute_members`` mute their members: ``held(alert_id)`` is True for them while
  the incident is open, so their own notifications are not sent (the incident's are). A member that resolves is
  un-muted; the incident resolves when every member has (``resolve: members``).
- Tasks (X10): on open, one task per department of the routing table, due ``deadline_s`` later. A task not
  acknowledged by its deadline is overdue: its escalation level rises and its deadline moves on by the same
  period (``tick``). An incident closes when all its tasks are closed (with no tasks: when it resolves).
- Scope escalation (X5): ``tick`` raises a still-open incident's scope as its pattern says.
- ``take_dirty``: the incidents, tasks and timeline entries changed since the last call, for the store;
  ``take_window_changes``: the windows (one part per pattern and window key) changed since the last call, and the
  patterns whose windows were all dropped, for the store; ``windows`` / ``restore``: everything needed after a
  restart (``windows`` dumps every window: the store's incremental writes add up to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from alerts.notify.routing import SEVERITY_RANK
from alerts.notify.templates import DEPARTMENT_LABEL
from alerts.types import Severity
from core.errors import UserError
from joint.kinds import KINDS, AlertFact, Entry, Hit, scope_path
from joint.kinds.base import from_ms
from joint.kinds.group import GroupParams
from joint.models import (
    Incident,
    IncidentMember,
    IncidentState,
    ScopeLevel,
    Task,
    TaskState,
    TimelineEntry,
    TimelineKind,
)
from joint.patterns import EffectivePattern, PatternSet, member_matches

SYSTEM = "system"
FIRES = frozenset({"created", "repeated", "flapping"})
_BY_RANK = {v: k for k, v in SEVERITY_RANK.items()}


# Timeline texts: zh-CN first (the entry's text), English second (its data's ``text_en``); the page shows the one of
# its language (gateway/static/app.js), like the linkage actions' steps (joint/actions.py).
TEXTS: dict[str, tuple[str, str]] = {
    "opened": ("由关联规则 {pattern} 生成：{title_zh}", "opened by pattern {pattern}: {title_en}"),
    "joined": ("告警 {alert}（{rule}，{device}）并入", "alert {alert} ({rule}, {device}) joined"),
    "joined_muted": ("告警 {alert}（{rule}，{device}）并入，已静默", "alert {alert} ({rule}, {device}) joined, muted"),
    "member_resolved": ("告警 {alert} 已恢复", "alert {alert} resolved"),
    "resolved_members": ("已解除：全部关联告警已恢复", "resolved: every member alert resolved"),
    "resolved_by_hand": ("人工解除：{reason}", "resolved by hand: {reason}"),
    "closed": ("已关闭：{cause_zh}", "closed: {cause}"),
    "escalated": ("升级：由 {before} 升至{level_zh} {region}", "escalated from {before} to {level} {region}"),
    "investigating": ("开始处置", "investigating"),
    "assigned": (
        "指派给 {to}（含 {tasks} 个部门任务）：{reason}",
        "assigned to {to} (with {tasks} department tasks): {reason}",
    ),
    "unassigned": ("取消指派：{reason}", "unassigned: {reason}"),
    "task_created": ("{dept_zh}部门任务，截止 {due_zh}", "task for {dept}, due {due_en}"),
    "task_acknowledged": ("任务 {task}（{dept_zh}）已确认", "task {task} ({dept}) acknowledged"),
    "task_closed": ("任务 {task}（{dept_zh}）已完成", "task {task} ({dept}) closed"),
    "task_overdue": (
        "任务 {task}（{dept_zh}）超时：升级第 {level} 级",
        "task {task} ({dept}) overdue: escalation level {level}",
    ),
}
_DEPT_ZH = DEPARTMENT_LABEL["zh-CN"]  # as the notifications say
_LEVEL_ZH = {"building": "楼宇", "agency": "机关", "city": "市", "province": "省"}
_CAUSE_ZH = {
    "false_alarm": "误报",
    "handled": "已处置",
    "maintenance": "维护",
    "device_fault": "设备故障",
    "duplicate": "重复",
    "other": "其他",
    "resolved": "告警已恢复",
    "tasks_closed": "部门任务均已完成",
}


def say(key: str, **values: Any) -> tuple[str, str]:
    """The (zh-CN, English) timeline text ``key`` with its values; times in Beijing time for the Chinese."""
    from alerts.calendar import BEIJING

    due = values.pop("due", None)
    if isinstance(due, datetime):
        values["due_zh"] = due.astimezone(BEIJING).strftime("%m-%d %H:%M") + "（北京时间）"
        values["due_en"] = due.isoformat()
    if "dept" in values:
        values["dept_zh"] = _DEPT_ZH.get(values["dept"], values["dept"])
    if "level" in values and isinstance(values["level"], str):
        values["level_zh"] = _LEVEL_ZH.get(values["level"], values["level"])
    if "cause" in values:
        values["cause_zh"] = _CAUSE_ZH.get(values["cause"], values["cause"])
    zh, en = TEXTS[key]
    return zh.format(**values), en.format(**values)


class IncidentNotFound(UserError):
    """No such incident or task (or not in a state for the requested action)."""


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """What happened to an incident; ``incident`` (and ``task``) are snapshots taken at the time.

    kind: opened | member_added | muted | unmuted | member_resolved | escalated | investigating | resolved |
    closed | commented | assigned | task_created | task_acknowledged | task_closed | task_overdue
    """

    kind: str
    incident: Incident
    at: datetime
    task: Task | None = None
    alert_ids: tuple[int, ...] = ()
    actor: str = SYSTEM


def _snap(i: Incident) -> Incident:
    """A snapshot for subscribers: the incident's fields and its member map as of now (the member objects are
    shared: copying 10,000 of them per change would make a storm quadratic)."""
    return replace(i, members=dict(i.members), detail=dict(i.detail))


@dataclass(slots=True)
class _Dirty:
    incidents: set[int] = field(default_factory=set)
    members: dict[int, set[int]] = field(default_factory=dict)  # incident -> alert ids whose membership changed
    tasks: set[int] = field(default_factory=set)
    timeline: list[TimelineEntry] = field(default_factory=list)


class Correlator:
    def __init__(
        self,
        patterns: PatternSet,
        levels: Mapping[str, str],
        *,
        next_incident_id: int = 1,
        next_task_id: int = 1,
        max_timeline_members: int = 200,
    ) -> None:
        self.patterns = patterns
        self.levels = dict(levels)  # region id -> level (province, city, agency, building)
        self.next_incident_id = next_incident_id
        self.next_task_id = next_task_id
        self.max_timeline_members = max_timeline_members
        self.incidents: dict[int, Incident] = {}  # open ones, and resolved ones with open tasks
        self.open_by_key: dict[str, int] = {}
        self.by_alert: dict[int, set[int]] = {}  # alert id -> incidents it is a member of (kept ones)
        self.muted: dict[int, int] = {}  # alert id -> the open incident that mutes it
        self.tasks: dict[int, Task] = {}  # tasks of kept incidents
        self.state: dict[str, dict[str, Any]] = {}  # pattern id -> its kind's windows
        self.released: set[int] = set()  # muted alerts that resolved in the current batch (hold their resolution)
        self._dirty = _Dirty()
        # pattern id -> the window keys its kind changed since take_window_changes ("": the rest of its state)
        self._changed: dict[str, set[str]] = {}
        self._dropped: set[str] = set()  # patterns whose windows were dropped since then (all their parts)
        self._gone: dict[int, Incident] = {}  # closed since the last take_dirty (written, then forgotten)
        self._gone_tasks: list[Task] = []

    # --- queries -------------------------------------------------------------------------------------------

    def held(self, alert_id: int) -> bool:
        """Whether an alert's own notifications are held back (it is muted under an open incident)."""
        return alert_id in self.muted or alert_id in self.released

    def open_incidents(self) -> list[Incident]:
        return [self.incidents[i] for i in sorted(self.open_by_key.values())]

    def get(self, incident_id: int) -> Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise IncidentNotFound(f"incident {incident_id} is not open")
        return inc

    def tasks_of(self, incident_id: int) -> list[Task]:
        return [t for t in self.tasks.values() if t.incident_id == incident_id]

    def take_dirty(self) -> tuple[list[Incident], list[Task], list[TimelineEntry]]:
        """What changed since the last call: incidents (each with only its changed members), tasks, timeline."""
        d, self._dirty = self._dirty, _Dirty()

        def changed(i: Incident) -> Incident:
            ids = d.members.get(i.id, ())
            members = {a: replace(i.members[a]) for a in ids if a in i.members}
            return replace(i, members=members, detail=dict(i.detail))

        incs = [changed(self.incidents[i]) for i in sorted(d.incidents) if i in self.incidents]
        incs += [changed(i) for i in self._gone.values() if i.id in d.incidents]
        self._gone.clear()
        tasks = [replace(self.tasks[t]) for t in sorted(d.tasks) if t in self.tasks]
        tasks += [t for t in self._gone_tasks if t.id in d.tasks]
        self._gone_tasks.clear()
        return incs, tasks, d.timeline

    def set_patterns(self, patterns: PatternSet) -> list[str]:
        """Use a new pattern set (an edit through the API). The windows of a pattern that is gone, or whose kind
        changed, are dropped (returned: those pattern ids); open incidents stay and resolve as before."""
        dropped = [
            pid
            for pid in self.state
            if pid not in patterns.patterns or patterns.patterns[pid].kind != self.patterns.patterns[pid].kind
        ]
        for pid in dropped:
            del self.state[pid]
            self._changed.pop(pid, None)
            self._dropped.add(pid)
        self.patterns = patterns
        return dropped

    def take_window_changes(self) -> tuple[dict[tuple[str, str], Any], set[str]]:
        """What changed in the windows since the last call: ``((pattern id, key) -> part, dropped patterns)``. A
        part is the kind's ``dump_part``: a window (None: gone), or with key ``""`` the rest of the pattern's state.
        A dropped pattern's stored parts all go (before any part of it given here, written after its drop)."""
        changed, self._changed = self._changed, {}
        dropped, self._dropped = self._dropped, set()
        parts: dict[tuple[str, str], Any] = {}
        for pid, keys in changed.items():
            state = self.state.get(pid)
            spec = self.patterns.patterns.get(pid)
            if state is None or spec is None or not keys:
                continue
            kind = KINDS[spec.kind]
            for key in keys:
                parts[(pid, key)] = kind.dump_part(state, key)
        return parts, dropped

    def _windows_of(self, pid: str) -> tuple[dict[str, Any], set[str]]:
        """A pattern's state (created empty: its part ``""`` is new) and the set its kind marks changes in."""
        changed = self._changed.get(pid)
        if changed is None:
            changed = self._changed[pid] = set()
        state = self.state.get(pid)
        if state is None:
            state = self.state[pid] = {}
            changed.add("")
        return state, changed

    # --- helpers -------------------------------------------------------------------------------------------

    def _pattern(self, pattern_id: str, scope: Iterable[str] | None) -> EffectivePattern:
        return self.patterns.effective(pattern_id, tuple(scope or ()))

    def _log(
        self,
        inc: Incident,
        at: datetime,
        kind: TimelineKind,
        text: str | tuple[str, str],
        actor: str = SYSTEM,
        **data: Any,
    ) -> None:
        """A timeline entry; ``text`` is (zh-CN, English) from ``say``: the Chinese is the entry's text, the English
        goes in its data (``text_en``) for the page's language switch. A plain string (a person's comment) as is."""
        if isinstance(text, tuple):
            text, data["text_en"] = text
        self._dirty.timeline.append(TimelineEntry(inc.id, at, kind, actor, text, data))

    def _touch(self, inc: Incident, at: datetime, members: Iterable[int] = ()) -> None:
        inc.updated_at = at
        self._dirty.incidents.add(inc.id)
        if members:
            self._dirty.members.setdefault(inc.id, set()).update(members)

    def _severity(self, p: EffectivePattern, members: Iterable[Entry | IncidentMember], current: Severity) -> Severity:
        rank = max(SEVERITY_RANK[p.severity], SEVERITY_RANK[current])
        if p.raise_severity:
            top = max(
                (SEVERITY_RANK[Severity(m.severity)] for m in members if isinstance(m, Entry)),
                default=0,
            )
            rank = max(rank, min(top + p.raise_severity, 3))
        return _BY_RANK[rank]

    def _keep(self, inc: Incident) -> None:
        """Drop a finished incident (closed) from memory once written."""
        self._gone[inc.id] = inc
        self.incidents.pop(inc.id, None)
        for alert_id in inc.members:
            ids = self.by_alert.get(alert_id)
            if ids is not None:
                ids.discard(inc.id)
                if not ids:
                    del self.by_alert[alert_id]
        for t in [t for t in self.tasks.values() if t.incident_id == inc.id]:
            self._gone_tasks.append(self.tasks.pop(t.id))

    # --- alerts in -----------------------------------------------------------------------------------------

    def begin_batch(self) -> None:
        """A new batch of lifecycle events: the resolutions held back for the last batch are forgotten."""
        self.released.clear()

    def observe(self, kind: str, fact: AlertFact, now: datetime) -> list[IncidentChange]:
        if kind == "resolved":
            return self._resolved(fact, now)
        if kind not in FIRES:
            return []
        out: list[IncidentChange] = []
        for pid, spec in self.patterns.patterns.items():
            if not spec.enabled and not any(ov.enabled for ov, _ in self.patterns.overrides):
                continue
            scope = scope_path(fact.region_path, str(spec.scope), self.levels)
            if scope is None:
                continue
            p = self._pattern(pid, scope)
            if not p.enabled or not member_matches(
                p.members, fact.rule_id, fact.rule_kind, fact.device_type, fact.severity
            ):
                continue
            k = KINDS[p.kind]
            key = k.key(p, fact, scope)  # None: not a member, but the kind may still watch it (absence)
            open_id = self.open_by_key.get(key) if key is not None else None
            if open_id is not None:
                inc = self.incidents[open_id]
                entry = Entry.of(fact, fact.region_id)
                out.extend(self._add_members(inc, p, [entry], now))
                continue  # the incident owns it: no window counts it again
            state, changed = self._windows_of(pid)
            for hit in k.observe(p, fact, scope, state, self.levels, now, changed):
                out.extend(self._hit(p, hit, now))
        return out

    def _resolved(self, fact: AlertFact, now: datetime) -> list[IncidentChange]:
        out: list[IncidentChange] = []
        for pid, spec in self.patterns.patterns.items():
            if pid in self.state:
                state, changed = self._windows_of(pid)
                KINDS[spec.kind].resolved(self._pattern(pid, ()), fact.alert_id, state, changed)
        for inc_id in sorted(self.by_alert.get(fact.alert_id, ())):
            inc = self.incidents[inc_id]
            m = inc.members[fact.alert_id]
            if m.resolved:
                continue
            m.resolved = True
            if m.muted:
                m.muted = False
                self.muted.pop(fact.alert_id, None)
                self.released.add(fact.alert_id)
            self._touch(inc, now, (fact.alert_id,))
            self._log(inc, now, TimelineKind.ALERT, say("member_resolved", alert=fact.alert_id), alert_id=fact.alert_id)
            out.append(IncidentChange("member_resolved", _snap(inc), now, alert_ids=(fact.alert_id,)))
            p = self._pattern(inc.pattern_id, inc.region_path) if inc.pattern_id in self.patterns.patterns else None
            if inc.open and (p is None or p.resolve == "members") and all(x.resolved for x in inc.members.values()):
                out.extend(self._resolve(inc, now))
        return out

    def _hit(self, p: EffectivePattern, hit: Hit, now: datetime) -> list[IncidentChange]:
        open_id = self.open_by_key.get(hit.key)
        if open_id is not None:
            return self._add_members(self.incidents[open_id], p, list(hit.members), now)
        inc = Incident(
            id=self.next_incident_id,
            pattern_id=p.id,
            type=p.type,
            title_zh=p.title_zh,
            title_en=p.title_en,
            severity=self._severity(p, hit.members, Severity.INFO),
            state=IncidentState.OPEN,
            scope_level=p.scope,
            region_id=hit.scope[-1],
            group_key=hit.key,
            opened_at=now,
            updated_at=now,
            region_path=hit.scope,
            detail=dict(hit.detail),
        )
        self.next_incident_id += 1
        self.incidents[inc.id] = inc
        self.open_by_key[hit.key] = inc.id
        self._dirty.incidents.add(inc.id)
        self._log(
            inc,
            now,
            TimelineKind.EVENT,
            say("opened", pattern=p.id, title_zh=p.title_zh, title_en=p.title_en),
            pattern=p.id,
            **dict(hit.detail),
        )
        out = [IncidentChange("opened", _snap(inc), now)]
        out.extend(self._add_members(inc, p, list(hit.members), now, quiet=True))
        out[0] = IncidentChange("opened", _snap(inc), now, alert_ids=tuple(inc.member_ids))
        route = self.patterns.route(inc.type, inc.region_path)
        if route is not None:
            for dept in route.departments:
                task = Task(
                    self.next_task_id,
                    inc.id,
                    dept,
                    TaskState.OPEN,
                    now,
                    now + timedelta(seconds=route.deadline_s),
                )
                self.next_task_id += 1
                self.tasks[task.id] = task
                self._dirty.tasks.add(task.id)
                self._log(
                    inc,
                    now,
                    TimelineKind.TASK,
                    say("task_created", dept=dept, due=task.deadline),
                    task=task.id,
                )
                out.append(IncidentChange("task_created", _snap(inc), now, task=replace(task)))
        return out

    def _add_members(
        self, inc: Incident, p: EffectivePattern, entries: list[Entry], now: datetime, *, quiet: bool = False
    ) -> list[IncidentChange]:
        added: list[int] = []
        muted: list[int] = []
        for e in entries:
            if e.alert_id in inc.members:
                continue
            m = IncidentMember(e.alert_id, now, e.rule_id, e.device_id, e.region_id, resolved=not e.open)
            if p.mute_members and inc.open and not m.resolved:
                m.muted = True
                self.muted[e.alert_id] = inc.id
                muted.append(e.alert_id)
            inc.members[e.alert_id] = m
            self.by_alert.setdefault(e.alert_id, set()).add(inc.id)
            added.append(e.alert_id)
            if len(inc.members) <= self.max_timeline_members:
                self._log(
                    inc,
                    now,
                    TimelineKind.ALERT,
                    say("joined_muted" if m.muted else "joined", alert=e.alert_id, rule=e.rule_id, device=e.device_id),
                    alert_id=e.alert_id,
                    rule_id=e.rule_id,
                    device_id=e.device_id,
                    fired_at=from_ms(e.at_ms).isoformat(),
                )
        if not added:
            return []
        inc.severity = self._severity(p, entries, inc.severity)
        self._touch(inc, now, added)
        if quiet:
            return [IncidentChange("muted", _snap(inc), now, alert_ids=tuple(muted))] if muted else []
        out = [IncidentChange("member_added", _snap(inc), now, alert_ids=tuple(added))]
        if muted:
            out.append(IncidentChange("muted", _snap(inc), now, alert_ids=tuple(muted)))
        return out

    def _unmute_all(self, inc: Incident, now: datetime) -> list[IncidentChange]:
        ids = []
        for m in inc.members.values():
            if m.muted:
                m.muted = False
                if self.muted.get(m.alert_id) == inc.id:
                    del self.muted[m.alert_id]
                ids.append(m.alert_id)
        if not ids:
            return []
        self._touch(inc, now, ids)
        return [IncidentChange("unmuted", _snap(inc), now, alert_ids=tuple(ids))]

    def _resolve(self, inc: Incident, now: datetime, actor: str = SYSTEM) -> list[IncidentChange]:
        """Every member alert resolved: the incident resolves, and closes when it has no open task."""
        inc.state = IncidentState.RESOLVED
        inc.resolved_at = now
        self.open_by_key.pop(inc.group_key, None)
        out = self._unmute_all(inc, now)
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.EVENT, say("resolved_members"), actor)
        out.append(IncidentChange("resolved", _snap(inc), now, actor=actor))
        if not any(t.open for t in self.tasks_of(inc.id)):
            out.extend(self._close(inc, now, "resolved", actor))
        return out

    def _close(self, inc: Incident, now: datetime, cause: str, actor: str = SYSTEM) -> list[IncidentChange]:
        out: list[IncidentChange] = []
        if inc.open:
            self.open_by_key.pop(inc.group_key, None)
            out.extend(self._unmute_all(inc, now))
        inc.state = IncidentState.CLOSED
        inc.cause_code = inc.cause_code or cause
        inc.closed_at = now
        inc.closed_by = actor
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.EVENT, say("closed", cause=inc.cause_code or ""), actor)
        out.append(IncidentChange("closed", _snap(inc), now, actor=actor))
        self._keep(inc)
        return out

    # --- time ----------------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[IncidentChange]:
        """Due absence watches, scope escalations, overdue tasks; prunes the windows."""
        out: list[IncidentChange] = []
        for pid, spec in self.patterns.patterns.items():
            if pid not in self.state:
                continue
            state, changed = self._windows_of(pid)
            kind = KINDS[spec.kind]
            for hit in kind.tick(lambda scope, pid=pid: self._pattern(pid, scope), state, now, changed):
                p = self._pattern(pid, hit.scope)
                if p.enabled:
                    out.extend(self._hit(p, hit, now))
        for inc in list(self.incidents.values()):
            if inc.state is not IncidentState.OPEN or inc.pattern_id not in self.patterns.patterns:
                continue
            p = self._pattern(inc.pattern_id, inc.region_path)
            gp = p.params
            if not isinstance(gp, GroupParams) or gp.escalate_to is None or gp.escalate_after_s is None:
                continue
            if inc.scope_level.rank >= gp.escalate_to.rank:
                continue
            if now - inc.opened_at >= timedelta(seconds=gp.escalate_after_s * (inc.escalation_level + 1)):
                out.extend(self.escalate(inc.id, gp.escalate_to, now))
        for task in sorted(self.tasks.values(), key=lambda t: t.id):
            if task.state is not TaskState.OPEN or now < task.deadline:
                continue
            period = task.deadline - task.created_at
            if task.escalation_level:
                period = period / (task.escalation_level + 1)
            task.escalation_level += 1
            task.deadline = task.deadline + max(period, timedelta(seconds=1))
            self._dirty.tasks.add(task.id)
            inc = self.incidents[task.incident_id]
            self._log(
                inc,
                now,
                TimelineKind.TASK,
                say("task_overdue", task=task.id, dept=task.department, level=task.escalation_level),
                task=task.id,
                level=task.escalation_level,
            )
            self._touch(inc, now)
            out.append(IncidentChange("task_overdue", _snap(inc), now, task=replace(task)))
        return out

    def escalate(self, incident_id: int, to: ScopeLevel, now: datetime, actor: str = SYSTEM) -> list[IncidentChange]:
        """Raise an open incident's scope to ``to`` (its region becomes the ancestor of that level)."""
        inc = self.get(incident_id)
        scope = scope_path(inc.region_path, str(to), self.levels)
        if scope is None or not inc.open or inc.scope_level.rank >= to.rank:
            return []
        before = inc.region_id
        inc.scope_level = to
        inc.region_id = scope[-1]
        inc.region_path = scope
        inc.escalation_level += 1
        self._touch(inc, now)
        self._log(
            inc,
            now,
            TimelineKind.EVENT,
            say("escalated", before=before, level=str(to), region=scope[-1]),
            actor,
            to=str(to),
        )
        return [IncidentChange("escalated", _snap(inc), now, actor=actor)]

    # --- people's actions ----------------------------------------------------------------------------------

    def investigate(self, incident_id: int, who: str, now: datetime) -> list[IncidentChange]:
        inc = self.get(incident_id)
        if inc.state is not IncidentState.OPEN:
            raise IncidentNotFound(f"incident {incident_id} is {inc.state}, not open")
        inc.state = IncidentState.INVESTIGATING
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.ACTION, say("investigating"), who)
        return [IncidentChange("investigating", _snap(inc), now, actor=who)]

    def resolve(self, incident_id: int, who: str, reason: str, now: datetime) -> list[IncidentChange]:
        """Resolve an open or investigating incident by hand (the reason goes on the timeline): its members are
        un-muted, its tasks stay open for the departments. It stays resolved until it is closed with a cause code
        or its last task closes (unlike a resolution by the members, it never closes by itself)."""
        inc = self.get(incident_id)
        if not inc.open:
            raise IncidentNotFound(f"incident {incident_id} is {inc.state}: only an open or investigating one resolves")
        inc.state = IncidentState.RESOLVED
        inc.resolved_at = now
        self.open_by_key.pop(inc.group_key, None)
        out = self._unmute_all(inc, now)
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.EVENT, say("resolved_by_hand", reason=reason), who, reason=reason)
        out.append(IncidentChange("resolved", _snap(inc), now, actor=who))
        return out

    def adopt(self, inc: Incident, tasks: Iterable[Task]) -> None:
        """Take back a resolved incident the store has but memory dropped (a restart keeps only the open ones and
        those with open tasks), so it can be closed by hand."""
        if inc.id in self.incidents or inc.state is not IncidentState.RESOLVED:
            return
        self.incidents[inc.id] = inc
        for alert_id in inc.members:
            self.by_alert.setdefault(alert_id, set()).add(inc.id)
        for t in tasks:
            if t.incident_id == inc.id and t.open:
                self.tasks[t.id] = t

    def assign(
        self, incident_id: int, who: str, assignee: str | None, reason: str, now: datetime
    ) -> list[IncidentChange]:
        """Assign an incident that is not closed, and its open department tasks, to ``assignee`` (None: unassign);
        the reason goes on the timeline. Kept in the incident's ``detail`` (``assignee``, ``assigned_by``,
        ``assigned_at``, ``task_assignees``: task id -> user), so it is stored and rebuilt with the incident."""
        inc = self.get(incident_id)
        if inc.state is IncidentState.CLOSED:
            raise IncidentNotFound(f"incident {incident_id} is closed")
        tasks = {str(t.id): assignee for t in self.tasks_of(incident_id) if t.open}
        inc.detail["assignee"] = assignee
        inc.detail["assigned_by"] = who
        inc.detail["assigned_at"] = now.isoformat()
        held = inc.detail.get("task_assignees")
        inc.detail["task_assignees"] = {**(held if isinstance(held, dict) else {}), **tasks}
        self._touch(inc, now)
        text = (
            say("assigned", to=assignee, tasks=len(tasks), reason=reason)
            if assignee
            else say("unassigned", reason=reason)
        )
        self._log(inc, now, TimelineKind.ACTION, text, who, to=assignee, reason=reason)
        return [IncidentChange("assigned", _snap(inc), now, actor=who)]

    def comment(self, incident_id: int, who: str, text: str, now: datetime) -> list[IncidentChange]:
        inc = self.get(incident_id)
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.ACTION, text, who)
        return [IncidentChange("commented", _snap(inc), now, actor=who)]

    def close(self, incident_id: int, who: str, cause_code: str, now: datetime) -> list[IncidentChange]:
        """Close by hand with a cause code (from open, investigating or resolved); its open tasks close with it."""
        inc = self.get(incident_id)
        if inc.state is IncidentState.CLOSED:
            raise IncidentNotFound(f"incident {incident_id} is already closed")
        inc.cause_code = cause_code
        for t in self.tasks_of(incident_id):
            if t.open:
                t.state, t.closed_by, t.closed_at = TaskState.CLOSED, who, now
                self._dirty.tasks.add(t.id)
        return self._close(inc, now, cause_code, who)

    def _task(self, task_id: int) -> Task:
        t = self.tasks.get(task_id)
        if t is None or not t.open:
            raise IncidentNotFound(f"task {task_id} is not open")
        return t

    def acknowledge_task(self, task_id: int, who: str, now: datetime, note: str | None = None) -> list[IncidentChange]:
        t = self._task(task_id)
        if t.state is TaskState.ACKNOWLEDGED:
            return []
        t.state, t.acknowledged_by, t.acknowledged_at = TaskState.ACKNOWLEDGED, who, now
        t.note = note or t.note
        self._dirty.tasks.add(t.id)
        inc = self.incidents[t.incident_id]
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.TASK, say("task_acknowledged", task=t.id, dept=t.department), who, task=t.id)
        return [IncidentChange("task_acknowledged", _snap(inc), now, task=replace(t), actor=who)]

    def close_task(self, task_id: int, who: str, now: datetime, note: str | None = None) -> list[IncidentChange]:
        """Close a department's task; the incident closes when the last of its tasks does."""
        t = self._task(task_id)
        t.state, t.closed_by, t.closed_at = TaskState.CLOSED, who, now
        if t.acknowledged_at is None:
            t.acknowledged_by, t.acknowledged_at = who, now
        t.note = note or t.note
        self._dirty.tasks.add(t.id)
        inc = self.incidents[t.incident_id]
        self._touch(inc, now)
        self._log(inc, now, TimelineKind.TASK, say("task_closed", task=t.id, dept=t.department), who, task=t.id)
        out = [IncidentChange("task_closed", _snap(inc), now, task=replace(t), actor=who)]
        if not any(x.open for x in self.tasks_of(inc.id)):
            out.extend(self._close(inc, now, "tasks_closed", who))
        return out

    # --- restart -------------------------------------------------------------------------------------------

    def windows(self) -> dict[str, Any]:
        """Every pattern's windows as JSON data (for the store)."""
        state = {
            pid: KINDS[self.patterns.patterns[pid].kind].dump(st)
            for pid, st in self.state.items()
            if pid in self.patterns.patterns
        }
        return {"v": 1, "state": state}

    def restore(
        self,
        incidents: Iterable[Incident],
        tasks: Iterable[Task],
        windows: Mapping[str, Any] | None,
        *,
        next_incident_id: int,
        next_task_id: int,
    ) -> None:
        self.incidents = {i.id: i for i in incidents}
        self.open_by_key = {i.group_key: i.id for i in self.incidents.values() if i.open}
        self.by_alert = {}
        self.muted = {}
        for inc in self.incidents.values():
            for m in inc.members.values():
                self.by_alert.setdefault(m.alert_id, set()).add(inc.id)
                if m.muted and inc.open:
                    self.muted[m.alert_id] = inc.id
        self.tasks = {t.id: t for t in tasks if t.incident_id in self.incidents}
        self._changed, self._dropped = {}, set()  # what was read is what the store has
        if windows and windows.get("v") == 1 and isinstance(windows.get("state"), dict):
            self.state = {
                pid: KINDS[self.patterns.patterns[pid].kind].load(doc)
                for pid, doc in windows["state"].items()
                if pid in self.patterns.patterns
            }
            self._dropped = {pid for pid in windows["state"] if pid not in self.patterns.patterns}
        self.next_incident_id = max(self.next_incident_id, next_incident_id)
        self.next_task_id = max(self.next_task_id, next_task_id)
