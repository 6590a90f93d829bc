"""Pure notification logic: what a notification is, where it goes, when it may be sent.

- ``Notification``: one thing to tell people about one alert (new firing, escalated, re-notify, resolved).
- ``plan``: which channels receive it, by route (region subtree, severity, rule, kind).
- ``Batcher``: groups several notifications for one channel that arrive within a short window into one message.
- ``WindowLimiter`` / ``TokenBucket``: per-channel rate limits (robots allow about 20 messages a minute).
- ``RetryPolicy``: the exponential backoff schedule of failed sends.

No I/O and no clock: everything takes ``now``.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from alerts.types import Alert, Severity

SEVERITY_RANK: dict[Severity, int] = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.MAJOR: 2,
    Severity.CRITICAL: 3,
}


def severity_at_least(severity: Severity, minimum: Severity) -> bool:
    return SEVERITY_RANK[severity] >= SEVERITY_RANK[minimum]


class NotificationKind(StrEnum):
    FIRING = "firing"  # a new alert
    ESCALATED = "escalated"  # not acknowledged in time: told to the next level up the region tree
    RENOTIFY = "renotify"  # still firing (e.g. when a silence or maintenance window ends)
    RESOLVED = "resolved"  # cleared automatically or by hand


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell about one alert.

    ``target_region_id`` is the region whose people are told: the alert's own region, or for an escalation the
    ancestor ``level`` steps up the tree. ``None`` means the alert's own region.
    """

    kind: NotificationKind
    alert: Alert
    at: datetime
    target_region_id: str | None = None
    level: int = 0

    @property
    def target(self) -> str:
        return self.target_region_id or self.alert.region_id

    @property
    def key(self) -> str:
        """Identifies the notification (not the delivery): alert, kind, level and target."""
        return f"{self.alert.id}:{self.kind.value}:{self.level}:{self.target}"


@dataclass(frozen=True, slots=True)
class Route:
    """Sends matching notifications to ``channels``.

    A route matches on the notification's target region: with ``include_subtree`` a region listed in ``regions``
    or any of its descendants; without it only the listed regions themselves (e.g. a city duty office that wants
    only what is escalated to the city). Empty ``regions`` / ``rules`` match everything; ``rules`` are
    shell-style patterns on the rule id (``G*``).
    """

    name: str
    channels: tuple[str, ...]
    regions: tuple[str, ...] = ()
    include_subtree: bool = True
    min_severity: Severity = Severity.INFO
    rules: tuple[str, ...] = ()
    kinds: frozenset[NotificationKind] = frozenset(NotificationKind)

    def matches(self, n: Notification, target_ancestors: Sequence[str]) -> bool:
        """``target_ancestors``: the target region's ancestors, root first, the region itself last."""
        if n.kind not in self.kinds:
            return False
        if not severity_at_least(n.alert.severity, self.min_severity):
            return False
        if self.rules and not any(fnmatch.fnmatchcase(n.alert.rule_id, p) for p in self.rules):
            return False
        if not self.regions:
            return True
        if self.include_subtree:
            return any(r in target_ancestors for r in self.regions)
        return n.target in self.regions


def targets(n: Notification, ancestors: Sequence[str]) -> list[tuple[Notification, list[str]]]:
    """The notifications to route, each with its target's ancestors (root first, target last).

    ``ancestors`` are the ancestors of the alert's region (root first, the region itself last). A resolution or
    re-notification of an alert that was escalated k levels is also told to every level it reached, so the people
    who were asked to act hear the outcome.
    """
    chain = list(ancestors) or [n.alert.region_id]
    if n.kind in (NotificationKind.RESOLVED, NotificationKind.RENOTIFY) and n.alert.escalation_level > 0:
        top = min(n.alert.escalation_level, len(chain) - 1)
        out: list[tuple[Notification, list[str]]] = []
        for level in range(top + 1):
            target = chain[len(chain) - 1 - level]
            out.append((Notification(n.kind, n.alert, n.at, target, level), chain[: len(chain) - level]))
        return out
    if n.target_region_id is not None and n.target_region_id in chain:
        idx = chain.index(n.target_region_id)
        return [(n, chain[: idx + 1])]
    if n.target_region_id is not None:
        return [(n, [n.target_region_id])]
    return [(n, chain)]


def plan(
    n: Notification, routes: Sequence[Route], ancestors_of: Callable[[str], Sequence[str]]
) -> list[tuple[str, Notification]]:
    """(channel, notification) pairs to deliver; a channel hears about one alert at most once per call."""
    out: list[tuple[str, Notification]] = []
    seen: set[tuple[str, str]] = set()
    for target_n, target_anc in targets(n, ancestors_of(n.alert.region_id)):
        for route in routes:
            if not route.matches(target_n, target_anc):
                continue
            for channel in route.channels:
                if (channel, target_n.alert.dedup_key) in seen:
                    continue
                seen.add((channel, target_n.alert.dedup_key))
                out.append((channel, target_n))
    return out


# --- grouping -------------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(slots=True)
class Batcher(Generic[T]):
    """Collects items for one channel; they become ready ``window`` after the first of them arrived.

    ``take`` returns at most ``max_items`` (one message); what is left stays ready at once, so a backlog held
    back by a rate limit drains in full messages and nothing is dropped.
    """

    window: timedelta
    max_items: int = 20
    _items: deque[T] = field(default_factory=deque)
    _opened_at: datetime | None = None

    def add(self, item: T, now: datetime) -> None:
        if not self._items:
            self._opened_at = now
        self._items.append(item)

    def extend(self, items: Iterable[T], now: datetime) -> None:
        for item in items:
            self.add(item, now)

    def __len__(self) -> int:
        return len(self._items)

    def ready_at(self) -> datetime | None:
        if not self._items or self._opened_at is None:
            return None
        return self._opened_at + self.window

    def is_ready(self, now: datetime) -> bool:
        at = self.ready_at()
        return at is not None and now >= at

    def take(self, now: datetime, *, force: bool = False) -> list[T]:
        if not self._items or not (force or self.is_ready(now)):
            return []
        n = min(self.max_items, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        if not self._items:
            self._opened_at = None
        return batch


# --- rate limits ----------------------------------------------------------------------------------------


class Limiter(Protocol):
    def try_acquire(self, now: datetime) -> bool:
        """Take one send slot if there is one."""
        ...

    def next_free(self, now: datetime) -> datetime:
        """When the next slot is free (``now`` if one is free already)."""
        ...


class Unlimited:
    def try_acquire(self, now: datetime) -> bool:
        return True

    def next_free(self, now: datetime) -> datetime:
        return now


class WindowLimiter:
    """At most ``limit`` sends in any ``window`` (a sliding log): the robots' own rule ("20 a minute")."""

    def __init__(self, limit: int, window: timedelta) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.window = window
        self._sent: deque[datetime] = deque()

    def _expire(self, now: datetime) -> None:
        while self._sent and self._sent[0] + self.window <= now:
            self._sent.popleft()

    def try_acquire(self, now: datetime) -> bool:
        self._expire(now)
        if len(self._sent) >= self.limit:
            return False
        self._sent.append(now)
        return True

    def next_free(self, now: datetime) -> datetime:
        self._expire(now)
        if len(self._sent) < self.limit:
            return now
        return self._sent[0] + self.window


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` tokens per second; one send takes one token.

    Allows a burst of ``capacity`` and then ``rate`` per second on average. Note that in a window W it can pass
    up to capacity + rate * W sends; use ``WindowLimiter`` where a hard "N per minute" applies.
    """

    def __init__(self, capacity: float, rate_per_s: float, now: datetime) -> None:
        if capacity < 1 or rate_per_s <= 0:
            raise ValueError("capacity must be >= 1 and rate > 0")
        self.capacity = capacity
        self.rate = rate_per_s
        self._tokens = capacity
        self._at = now

    def _refill(self, now: datetime) -> None:
        elapsed = (now - self._at).total_seconds()
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._at = now

    def try_acquire(self, now: datetime) -> bool:
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def next_free(self, now: datetime) -> datetime:
        self._refill(now)
        if self._tokens >= 1:
            return now
        return now + timedelta(seconds=(1 - self._tokens) / self.rate)


# --- retries --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: the delay after failed attempt k (1-based) is base * factor**(k-1), capped."""

    max_attempts: int = 6
    base: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    max_delay: timedelta = timedelta(minutes=5)

    def delay(self, attempt: int) -> timedelta:
        if attempt < 1:
            raise ValueError("attempts count from 1")
        seconds = self.base.total_seconds() * self.factor ** (attempt - 1)
        return min(timedelta(seconds=seconds), self.max_delay)

    def schedule(self) -> list[timedelta]:
        """The delays between all attempts (``max_attempts - 1`` of them)."""
        return [self.delay(k) for k in range(1, self.max_attempts)]

    def next_attempt_at(self, attempt: int, now: datetime) -> datetime | None:
        """When to try again after failed attempt ``attempt``; ``None`` when it was the last one."""
        if attempt >= self.max_attempts:
            return None
        return now + self.delay(attempt)
