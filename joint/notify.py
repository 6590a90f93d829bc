"""Incident and department-task notifications, through the alert channels (alerts/notify), grouped.

What is told (``alerts.notify.templates.IncidentLine`` kinds): an incident opened, member alerts added, escalated
(its scope raised: the city, then the province), resolved, closed; a department task created, and overdue
(escalated once per overdue period); a linkage action's outcome.

Where it goes (:func:`plan_line`, pure):

- incident lines: every route of the notification config (``routes``, with ``incidents: true``, the default)
  whose regions cover the incident's region (its scope region: a city incident goes to the city's routes), at or
  above the route's ``min_severity``, ``rules`` patterns matched against the pattern id (``X*``);
- task lines: the department's own channels (``departments``: department -> channels, optionally per region
  subtree); a department without an entry falls back to the incident's routes, so no task goes untold;
- an overdue task at level k also goes to the routes of the region k levels above the incident's region
  (escalation up the tree until someone acknowledges).

Grouping: per channel, lines arriving within the channel's ``group_window_s`` go out as one message (at most
``max_group`` lines); a burst of member additions to one incident becomes one line ("新增 30 条关联告警"). Each
channel keeps its rate limit (robots: 20 a minute) and retries failures with the config's backoff; a message
waiting for a retry holds the channel's next ones (what arrives meanwhile is grouped).

Limits (docs/joint-api.md): incident messages are not written to the alert delivery log (its rows are keyed by
alert), and this notifier keeps its own rate limiter per channel beside the alert dispatcher's: a robot shared by
both can see up to twice its limit in a burst; give incidents their own robot where that matters.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from alerts.notify.channels import Channel, ChannelUnavailable, DeliveryRejected, OutboundMessage, build_channel
from alerts.notify.config import NotifyConfig, effective_rate_limit
from alerts.notify.dispatcher import make_limiter
from alerts.notify.routing import Limiter, RetryPolicy, severity_at_least
from alerts.notify.templates import IncidentLine, IncidentNoteKind, IncidentRenderer
from core import clock as core_clock
from joint.correlator import IncidentChange
from joint.models import Incident, Task

if TYPE_CHECKING:
    from alerts.wiring import AlertsRuntime
    from joint.service import JointService

logger = logging.getLogger(__name__)

__all__ = [
    "IncidentNotifier",
    "coalesce",
    "incident_line",
    "plan_line",
    "start_notifications",
    "subscriber",
    "task_line",
]


# --- pure ---------------------------------------------------------------------------------------------------------


def incident_line(
    kind: IncidentNoteKind, incident: Incident, at: datetime, *, count: int = 0, text: str = ""
) -> IncidentLine:
    return IncidentLine(
        kind=kind,
        incident_id=incident.id,
        title_zh=incident.title_zh,
        title_en=incident.title_en,
        severity=incident.severity,
        region_id=incident.region_id,
        state=str(incident.state),
        at=at,
        count=count,
        text=text,
    )


def task_line(kind: IncidentNoteKind, incident: Incident, task: Task, at: datetime) -> IncidentLine:
    return IncidentLine(
        kind=kind,
        incident_id=incident.id,
        title_zh=incident.title_zh,
        title_en=incident.title_en,
        severity=incident.severity,
        region_id=incident.region_id,
        state=str(task.state),
        at=at,
        count=task.escalation_level if kind == "task_overdue" else 0,
        department=task.department,
        deadline=task.deadline,
    )


def _covers(regions: Sequence[str], include_subtree: bool, region_id: str, ancestors: Sequence[str]) -> bool:
    if not regions:
        return True
    if include_subtree:
        return any(r in ancestors for r in regions)
    return region_id in regions


def plan_line(
    line: IncidentLine, pattern_id: str, config: NotifyConfig, ancestors_of: Callable[[str], Sequence[str]]
) -> list[str]:
    """The channels that hear about ``line`` (each once), in config order."""
    chain = list(ancestors_of(line.region_id)) or [line.region_id]

    def by_routes(region_id: str, ancestors: Sequence[str]) -> list[str]:
        out: list[str] = []
        for r in config.routes:
            if not r.incidents or not severity_at_least(line.severity, r.min_severity):
                continue
            if r.rules and not any(fnmatch.fnmatchcase(pattern_id, p) for p in r.rules):
                continue
            if _covers(r.regions, r.include_subtree, region_id, ancestors):
                out.extend(r.channels)
        return out

    channels: list[str] = []
    if line.department is not None:
        for d in config.departments:
            if d.department == line.department and _covers(d.regions, True, line.region_id, chain):
                channels.extend(d.channels)
        if not channels:
            channels = by_routes(line.region_id, chain)
        if line.kind == "task_overdue" and line.count > 0:
            up = max(0, len(chain) - 1 - line.count)
            channels += by_routes(chain[up], chain[: up + 1])
    else:
        channels = by_routes(line.region_id, chain)
    return list(dict.fromkeys(channels))


def coalesce(lines: Sequence[IncidentLine]) -> list[IncidentLine]:
    """Member additions to the same incident become one line (their counts summed, the latest time); every other
    line stays, in order."""
    out: list[IncidentLine] = []
    members_at: dict[int, int] = {}
    for line in lines:
        if line.kind == "members":
            i = members_at.get(line.incident_id)
            if i is not None:
                prev = out[i]
                out[i] = replace(prev, count=prev.count + line.count, at=max(prev.at, line.at), state=line.state)
                continue
            members_at[line.incident_id] = len(out)
        out.append(line)
    return out


def _doc(line: IncidentLine) -> dict[str, object]:
    return {
        "kind": line.kind,
        "incident_id": line.incident_id,
        "title_zh": line.title_zh,
        "title_en": line.title_en,
        "severity": str(line.severity),
        "region_id": line.region_id,
        "state": line.state,
        "at": line.at.isoformat(),
        "count": line.count,
        "department": line.department,
        "deadline": line.deadline.isoformat() if line.deadline is not None else None,
        "text": line.text,
    }


# --- the adapter --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    message: OutboundMessage
    attempts: int
    next_at: datetime


class _ChannelState:
    """One channel's pending lines (grouped: ready ``window`` after the first arrived; member bursts coalesced
    before a message takes at most ``max_group`` lines), its limiter and the message waiting for a retry."""

    def __init__(
        self,
        name: str,
        channel: Channel,
        renderer: IncidentRenderer,
        window: timedelta,
        max_group: int,
        limiter: Limiter,
    ) -> None:
        self.name = name
        self.channel = channel
        self.renderer = renderer
        self.window = window
        self.max_group = max_group
        self.limiter = limiter
        self.pending: list[IncidentLine] = []
        self.opened_at: datetime | None = None
        self.retry: _Pending | None = None
        self.sent = 0
        self.failed = 0

    def add(self, line: IncidentLine, now: datetime) -> None:
        if not self.pending:
            self.opened_at = now
        self.pending.append(line)

    def ready_at(self) -> datetime | None:
        return None if not self.pending or self.opened_at is None else self.opened_at + self.window

    def take(self) -> list[IncidentLine]:
        lines = coalesce(self.pending)
        out, rest = lines[: self.max_group], lines[self.max_group :]
        self.pending = rest  # what is left is ready at once (opened_at stays in the past)
        if not rest:
            self.opened_at = None
        return out


class IncidentNotifier:
    """Queues incident and task lines (``incident``, ``task``: thread-safe, never block), and sends them from one
    thread, grouped per channel. ``channels`` overrides adapters by name (a test seam); by default they are built
    from the config, like the alert dispatcher's."""

    def __init__(
        self,
        config: NotifyConfig,
        ancestors_of: Callable[[str], Sequence[str]],
        *,
        channels: Mapping[str, Channel] | None = None,
        region_name: Callable[[str], str] | None = None,
        clock: Callable[[], datetime] = core_clock.now,
        retry: RetryPolicy | None = None,
        idle_wait_s: float = 0.5,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.config = config
        self.ancestors_of = ancestors_of
        self.clock = clock
        self.retry = retry or config.retry.to_policy()
        self.idle_wait_s = idle_wait_s
        self.stop_timeout_s = stop_timeout_s
        overrides = dict(channels or {})
        now = clock()
        self.channels: dict[str, _ChannelState] = {}
        for cfg in config.channels:
            self.channels[cfg.name] = _ChannelState(
                cfg.name,
                overrides.get(cfg.name) or build_channel(cfg),
                IncidentRenderer(cfg.language, region_name),
                timedelta(seconds=cfg.group_window_s),
                cfg.max_group,
                make_limiter(effective_rate_limit(cfg), now),
            )
        self._cond = threading.Condition()
        self._inbox: list[tuple[IncidentLine, str]] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.unrouted = 0

    # --- the hand-off ---------------------------------------------------------------------------------

    def line(self, line: IncidentLine, pattern_id: str) -> None:
        with self._cond:
            if self._stopping:
                logger.warning("incident notification for I%d after stop: ignored", line.incident_id)
                return
            self._inbox.append((line, pattern_id))
            self._cond.notify()

    def incident(
        self, kind: IncidentNoteKind, incident: Incident, *, at: datetime | None = None, count: int = 0, text: str = ""
    ) -> None:
        self.line(incident_line(kind, incident, at or self.clock(), count=count, text=text), incident.pattern_id)

    def task(self, kind: IncidentNoteKind, incident: Incident, task: Task, *, at: datetime | None = None) -> None:
        self.line(task_line(kind, incident, task, at or self.clock()), incident.pattern_id)

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="joint-notify", daemon=False)
            self._thread.start()

    def stop(self) -> None:
        """Send what is grouped at once (within the rate limits) until ``stop_timeout_s``; close the adapters."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(self.stop_timeout_s + 2 * self.idle_wait_s + 30)
            self._thread = None
        for st in self.channels.values():
            try:
                st.channel.close()
            except Exception:
                logger.exception("closing notification channel %s", st.name)

    # --- the loop ---------------------------------------------------------------------------------------

    def _route(self, items: Iterable[tuple[IncidentLine, str]], now: datetime) -> None:
        for line, pattern_id in items:
            names = [c for c in plan_line(line, pattern_id, self.config, self.ancestors_of) if c in self.channels]
            if not names:
                self.unrouted += 1
                logger.debug("no route for incident I%d (%s)", line.incident_id, line.kind)
            for name in names:
                self.channels[name].add(line, now)

    def _next_wait(self, now: datetime, force: bool) -> float:
        wait = self.idle_wait_s
        for st in self.channels.values():
            at: datetime | None = None
            if st.retry is not None:
                at = max(st.retry.next_at, st.limiter.next_free(now))
            elif st.pending:
                ready = now if force else (st.ready_at() or now)
                at = max(ready, st.limiter.next_free(now))
            if at is not None:
                wait = min(wait, max(0.0, (at - now).total_seconds()))
        return wait

    def _run(self) -> None:
        deadline: datetime | None = None
        while True:
            with self._cond:
                if not self._inbox:
                    timeout = self._next_wait(self.clock(), self._stopping)
                    if timeout > 0:
                        self._cond.wait(timeout)
                items, self._inbox = self._inbox, []
                stopping = self._stopping
            now = self.clock()
            if stopping and deadline is None:
                deadline = now + timedelta(seconds=self.stop_timeout_s)
            try:
                self._route(items, now)
                for st in self.channels.values():
                    self._step(st, now, force=stopping)
            except Exception:
                logger.exception("incident notifications: unexpected error")
            if stopping:
                idle = all(st.retry is None and not st.pending for st in self.channels.values())
                if idle or (deadline is not None and self.clock() >= deadline):
                    if not idle:
                        logger.warning("incident notifications stopped with messages unsent")
                    return

    def _step(self, st: _ChannelState, now: datetime, force: bool) -> None:
        if st.retry is not None:
            if now >= st.retry.next_at and st.limiter.try_acquire(now):
                self._send(st, st.retry, now)
            return
        ready = st.ready_at()
        if ready is None or not (force or now >= ready) or not st.limiter.try_acquire(now):
            return
        lines = st.take()
        message = OutboundMessage(
            message_id=uuid.uuid4().hex,
            rendered=st.renderer.render(lines),
            notifications=(),
            language=st.renderer.language,
            extra={"incidents": [_doc(x) for x in lines]},
        )
        self._send(st, _Pending(message, 0, now), now)

    def _send(self, st: _ChannelState, out: _Pending, now: datetime) -> None:
        attempt = out.attempts + 1
        retryable, error = True, ""
        try:
            st.channel.send(out.message, now)
            st.retry = None
            st.sent += 1
            return
        except ChannelUnavailable as exc:
            error = str(exc)
        except DeliveryRejected as exc:
            error, retryable = str(exc), False
        except Exception as exc:  # an adapter bug must not kill the loop; retried like a transient failure
            logger.exception("incident notification on %s: send raised", st.name)
            error = f"{type(exc).__name__}: {exc}"
        next_at = self.retry.next_attempt_at(attempt, self.clock()) if retryable else None
        if next_at is None:
            st.retry = None
            st.failed += 1
            logger.error("incident notification on %s failed after %d attempt(s): %s", st.name, attempt, error)
        else:
            st.retry = _Pending(out.message, attempt, next_at)
            logger.warning(
                "incident notification on %s: attempt %d failed (%s), retry at %s", st.name, attempt, error, next_at
            )


# --- wiring -------------------------------------------------------------------------------------------------------

_CHANGE_LINES: dict[str, IncidentNoteKind] = {
    "opened": "opened",
    "member_added": "members",
    "escalated": "escalated",
    "resolved": "resolved",
    "closed": "closed",
    "task_created": "task",
    "task_overdue": "task_overdue",
}


def subscriber(notifier: IncidentNotifier) -> Callable[[IncidentChange], None]:
    """The joint service's subscriber (``JointService.subscribe``) that tells the notifier: incidents opened,
    members added (a burst coalesced per channel), escalated, resolved, closed (with the cause), tasks created and
    overdue. Other changes (comments, acknowledgements, mutes) are not notified."""

    def on_change(change: IncidentChange) -> None:
        kind = _CHANGE_LINES.get(change.kind)
        if kind is None:
            return
        inc = change.incident
        if change.task is not None and kind in ("task", "task_overdue"):
            notifier.task(kind, inc, change.task, at=change.at)
        elif kind == "members":
            notifier.incident(kind, inc, at=change.at, count=max(1, len(change.alert_ids)))
        elif kind == "opened":
            notifier.incident(kind, inc, at=change.at, count=len(inc.members))
        elif kind == "escalated":
            notifier.incident(kind, inc, at=change.at, count=inc.escalation_level)
        else:
            notifier.incident(kind, inc, at=change.at, text=(inc.cause_code or "") if kind == "closed" else "")

    return on_change


def start_notifications(joint: JointService, alerts: AlertsRuntime) -> IncidentNotifier | None:
    """Incident notifications on the alert runtime's channels and region directory, subscribed to ``joint``;
    None when no channel is configured."""
    config = alerts.notify_config
    if not config.channels:
        return None
    notifier = IncidentNotifier(config, alerts.regions.ancestors, region_name=alerts.regions.name)
    joint.subscribe(subscriber(notifier))
    notifier.start()
    return notifier
