"""Escalation up the region tree (pure).

An alert that is still firing (not acknowledged, not resolved) ``after[0]`` after people were told of it is told
to the region one level up; ``after[1]`` later to the next level up, and so on (the last step repeats) until it is
acknowledged or resolved, the top of the tree is reached or ``max_levels`` is. The policy is set per region and
inherited down the tree: a region's override changes only the fields it names.

The clock is the platform's, never the device's: it starts at ``Alert.escalation_from``, which is when the
platform learned of the alert (``learned_at``; a record stamped two hours ago does not escalate at once), when the
alert reached its current level, or when a silence over it ended. A silenced alert does not escalate at all, and
an alert nobody has been told of (``escalation_from`` is ``None``: raised under a silence) neither.

The due level is computed from ``escalation_from`` and the alert's persisted ``escalation_level`` alone, so it
survives a restart: after downtime an alert jumps straight to the level it should be at (one notification, to
that level's region), never repeating a level it already reached.

``Escalator.tick(now)`` drives it; call it periodically (e.g. every few seconds from apscheduler). It remembers
when each alert snapshot can next escalate (``next_due``), keyed by the snapshot object (``AlertService.open_alerts``
makes a new one for every change of an alert), so a tick over 10,000 open alerts of which none is due costs a
dictionary lookup per alert, not a policy and region-chain computation; the memo is dropped every
``Escalator.memo_s`` of ``now`` (policies or region tree changed meanwhile) and when ``policies`` is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from alerts.notify.routing import Notification, NotificationKind, severity_at_least
from alerts.types import Alert, AlertState, Severity

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    enabled: bool = True
    # Delay before each next level; the last one repeats for the levels after it.
    after: tuple[timedelta, ...] = (timedelta(minutes=15),)
    # At most this many levels up (None: up to the root).
    max_levels: int | None = None
    min_severity: Severity = Severity.WARNING

    def __post_init__(self) -> None:
        if not self.after or any(d <= timedelta(0) for d in self.after):
            raise ValueError("escalation delays must be positive and at least one")

    def step(self, level: int) -> timedelta:
        """The delay from reaching ``level`` (0 = not escalated) to escalating to ``level + 1``."""
        return self.after[min(level, len(self.after) - 1)]

    def due_at(self, started_at: datetime, level: int, from_level: int = 0) -> datetime:
        """When an alert whose clock started at ``started_at`` at ``from_level`` should reach ``level``."""
        return started_at + sum((self.step(k) for k in range(from_level, level)), timedelta(0))


@dataclass(frozen=True, slots=True)
class PolicyOverride:
    """A region's changes to the inherited policy; ``None`` fields are inherited."""

    enabled: bool | None = None
    after: tuple[timedelta, ...] | None = None
    max_levels: int | None = None
    min_severity: Severity | None = None

    def apply(self, base: EscalationPolicy) -> EscalationPolicy:
        return EscalationPolicy(
            enabled=base.enabled if self.enabled is None else self.enabled,
            after=base.after if self.after is None else self.after,
            max_levels=base.max_levels if self.max_levels is None else self.max_levels,
            min_severity=base.min_severity if self.min_severity is None else self.min_severity,
        )


@dataclass(frozen=True, slots=True)
class EscalationPolicies:
    default: EscalationPolicy = EscalationPolicy()
    overrides: Mapping[str, PolicyOverride] | None = None

    def effective(self, ancestors: Sequence[str]) -> EscalationPolicy:
        """The policy of the last region in ``ancestors`` (root first), overrides applied root to leaf."""
        policy = self.default
        for region_id in ancestors:
            override = (self.overrides or {}).get(region_id)
            if override is not None:
                policy = override.apply(policy)
        return policy


@dataclass(frozen=True, slots=True)
class Escalation:
    alert_id: int
    dedup_key: str
    from_level: int
    level: int
    target_region_id: str
    due_at: datetime


def _clock(alert: Alert, policies: EscalationPolicies, chain: Sequence[str]) -> tuple[EscalationPolicy, int] | None:
    """The policy and the top level of an alert that may escalate now (firing, told, not silenced), else None."""
    if alert.state != AlertState.FIRING or alert.silenced or alert.escalation_from is None:
        return None
    policy = policies.effective(chain)
    if not policy.enabled or not severity_at_least(alert.severity, policy.min_severity):
        return None
    top = len(chain) - 1
    if policy.max_levels is not None:
        top = min(top, policy.max_levels)
    return policy, top


def _due(alert: Alert, policies: EscalationPolicies, ancestors: Sequence[str], now: datetime) -> Escalation | None:
    chain = list(ancestors) or [alert.region_id]
    found = _clock(alert, policies, chain)
    if found is None or alert.escalation_from is None:
        return None
    policy, top = found
    start, base = alert.escalation_level, alert.escalation_from
    level = start
    while level < top and policy.due_at(base, level + 1, start) <= now:
        level += 1
    if level <= start:
        return None
    return Escalation(
        alert_id=alert.id,
        dedup_key=alert.dedup_key,
        from_level=start,
        level=level,
        target_region_id=chain[len(chain) - 1 - level],
        due_at=policy.due_at(base, level, start),
    )


def next_due(alert: Alert, policies: EscalationPolicies, ancestors: Sequence[str]) -> datetime | None:
    """When ``alert`` would escalate next as it is now (None: it will not, unless it changes)."""
    chain = list(ancestors) or [alert.region_id]
    found = _clock(alert, policies, chain)
    if found is None or alert.escalation_from is None:
        return None
    policy, top = found
    if alert.escalation_level >= top:
        return None
    return policy.due_at(alert.escalation_from, alert.escalation_level + 1, alert.escalation_level)


def due_escalations(
    alerts: Iterable[Alert],
    policies: EscalationPolicies,
    ancestors_of: Callable[[str], Sequence[str]],
    now: datetime,
) -> list[Escalation]:
    """The escalations due at ``now``: at most one per alert, to the highest level it should have reached.

    ``ancestors_of(region_id)`` returns the region's ancestors, root first, the region itself last.
    """
    out: list[Escalation] = []
    for alert in alerts:
        esc = _due(alert, policies, ancestors_of(alert.region_id), now)
        if esc is not None:
            out.append(esc)
    return out


def next_escalation_at(
    alerts: Iterable[Alert],
    policies: EscalationPolicies,
    ancestors_of: Callable[[str], Sequence[str]],
) -> datetime | None:
    """The earliest time any of ``alerts`` will escalate, or ``None`` (for scheduling a one-shot timer)."""
    best: datetime | None = None
    for alert in alerts:
        chain = list(ancestors_of(alert.region_id)) or [alert.region_id]
        found = _clock(alert, policies, chain)
        if found is None or alert.escalation_from is None:
            continue
        policy, top = found
        if alert.escalation_level >= top:
            continue
        at = policy.due_at(alert.escalation_from, alert.escalation_level + 1, alert.escalation_level)
        if best is None or at < best:
            best = at
    return best


class Escalator:
    """Drives escalation; no I/O of its own, everything goes through the callables.

    - ``open_alerts()``: the alerts that may escalate (at least every firing alert).
    - ``record(escalation, now)``: persist ``escalation_level = escalation.level`` (and ``escalation_from =
      escalation.due_at``) if the alert is still firing below that level and not silenced, and return the updated
      alert; return ``None`` if it no longer applies (acknowledged, resolved or silenced meanwhile, or already
      escalated by another worker). Persisting first means a restart never
      escalates the same level twice.
    - ``notify(notification)``: hand the ESCALATED notification to the dispatcher.
    """

    def __init__(
        self,
        policies: EscalationPolicies,
        ancestors_of: Callable[[str], Sequence[str]],
        open_alerts: Callable[[], Iterable[Alert]],
        record: Callable[[Escalation, datetime], Alert | None],
        notify: Callable[[Notification], None],
    ) -> None:
        self.policies = policies
        self.ancestors_of = ancestors_of
        self.open_alerts = open_alerts
        self.record = record
        self.notify = notify
        self.memo_s = 60.0
        self._memo: dict[int, tuple[Alert, datetime | None]] = {}  # alert id -> (snapshot, its next_due)
        self._memo_from: datetime | None = None
        self._memo_policies: EscalationPolicies | None = None

    def _candidates(self, now: datetime) -> list[Alert]:
        """The open alerts whose next escalation is due at ``now`` (the memo skips the rest)."""
        if (
            self._memo_from is None
            or self._memo_policies is not self.policies
            or not (self._memo_from <= now < self._memo_from + timedelta(seconds=self.memo_s))
        ):
            self._memo, self._memo_from, self._memo_policies = {}, now, self.policies
        old, memo = self._memo, {}
        out: list[Alert] = []
        for alert in self.open_alerts():
            hit = old.get(alert.id)
            if hit is not None and hit[0] is alert:
                due = hit[1]
            else:
                due = next_due(alert, self.policies, self.ancestors_of(alert.region_id))
            memo[alert.id] = (alert, due)
            if due is not None and due <= now:
                out.append(alert)
        self._memo = memo
        return out

    def tick(self, now: datetime) -> list[Escalation]:
        """Escalate what is due at ``now``; returns the escalations that were recorded and notified."""
        done: list[Escalation] = []
        for esc in due_escalations(self._candidates(now), self.policies, self.ancestors_of, now):
            updated = self.record(esc, now)
            if updated is None:
                continue
            if updated.escalation_level != esc.level:
                updated = replace(updated, escalation_level=esc.level)
            self.notify(
                Notification(
                    NotificationKind.ESCALATED, updated, now, target_region_id=esc.target_region_id, level=esc.level
                )
            )
            done.append(esc)
        if done:
            logger.info("escalated %d alert(s)", len(done))
        return done

    def next_at(self) -> datetime | None:
        return next_escalation_at(self.open_alerts(), self.policies, self.ancestors_of)
