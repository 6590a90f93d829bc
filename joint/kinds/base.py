"""What every pattern kind shares: the alert fact it sees, window entries, hits, the protocol, scopes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from alerts.types import Severity
from joint.patterns import member_matches

if TYPE_CHECKING:
    from joint.patterns import EffectivePattern, Members


@dataclass(frozen=True, slots=True)
class AlertFact:
    """One alert as the correlator sees it (from a lifecycle event, enriched by the service)."""

    alert_id: int
    rule_id: str
    rule_kind: str  # the alert rule's kind ("absence": a device-offline alert)
    device_id: str
    device_type: str
    region_path: tuple[str, ...]  # root first, the device's region last
    severity: Severity
    at: datetime  # when the platform learned of it (the lifecycle event's time)
    title_zh: str = ""
    title_en: str = ""
    related_path: tuple[str, ...] = ()  # another site the alert names (G7: where the credential was before)

    @property
    def region_id(self) -> str:
        return self.region_path[-1] if self.region_path else ""


@dataclass(slots=True)
class Entry:
    """An alert in a window (JSON: a list, see ``dump`` / ``load``)."""

    alert_id: int
    rule_id: str
    device_id: str
    region_id: str
    building: str  # the building (or deepest) region of the alert, for "distinct buildings"
    at_ms: int
    severity: str
    fires: int = 1
    open: bool = True

    def dump(self) -> list[Any]:
        return [
            self.alert_id,
            self.rule_id,
            self.device_id,
            self.region_id,
            self.building,
            self.at_ms,
            self.severity,
            self.fires,
            self.open,
        ]

    @classmethod
    def load(cls, v: Sequence[Any]) -> Entry:
        return cls(int(v[0]), str(v[1]), str(v[2]), str(v[3]), str(v[4]), int(v[5]), str(v[6]), int(v[7]), bool(v[8]))

    @classmethod
    def of(cls, fact: AlertFact, building: str) -> Entry:
        return cls(
            fact.alert_id,
            fact.rule_id,
            fact.device_id,
            fact.region_id,
            building,
            ms(fact.at),
            str(fact.severity),
        )


@dataclass(frozen=True, slots=True)
class Hit:
    """These alerts make (or extend) the incident ``key`` of a pattern in the scope ``scope``."""

    key: str
    scope: tuple[str, ...]  # root .. the scope region
    members: tuple[Entry, ...]
    detail: Mapping[str, Any] = field(default_factory=dict)


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def from_ms(v: int) -> datetime:
    return datetime.fromtimestamp(v / 1000, tz=UTC)


def scope_path(path: Sequence[str], level: str, levels: Mapping[str, str]) -> tuple[str, ...] | None:
    """The prefix of ``path`` (root first) that ends at the region of ``level`` ("building", "city", ...); None
    when the path has no region of that level (a device registered above buildings has no building scope)."""
    for i, region in enumerate(path):
        if levels.get(region) == level:
            return tuple(path[: i + 1])
    return None


def building_of(path: Sequence[str], levels: Mapping[str, str]) -> str:
    found = scope_path(path, "building", levels)
    return found[-1] if found else (path[-1] if path else "")


def entry_of(fact: AlertFact, levels: Mapping[str, str]) -> Entry:
    """The window entry of a fact, with the building it was raised in."""
    return Entry.of(fact, building_of(fact.region_path, levels))


def matches(m: Members, f: AlertFact) -> bool:
    """Whether the fact meets a member condition (``first`` / ``then``, ``anchor`` / ``expect``, ...)."""
    return member_matches(m, f.rule_id, f.rule_kind, f.device_type, f.severity)


def since(entries: list[list[Any]], horizon_ms: int) -> list[list[Any]]:
    """The raw entries (``Entry.dump`` lists) at or after ``horizon_ms``."""
    return [e for e in entries if e[5] >= horizon_ms]


class KindParams(BaseModel):
    """The base of a kind's params: unknown keys and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Changed = set[str]  # the keys of the windows a call changed ("" for the state outside ``windows``)


def mark(changed: Changed | None, key: str) -> None:
    """Note that the window ``key`` (added, modified or gone) or, with ``""``, the rest of the state changed."""
    if changed is not None:
        changed.add(key)


class JsonWindows:
    """For a kind whose windows are JSON already and that forgets nothing when an alert resolves. Its windows, if
    any, are ``state["windows"]`` (key -> JSON); everything else in the state is one part (``""``)."""

    def resolved(
        self, p: EffectivePattern, alert_id: int, state: dict[str, Any], changed: Changed | None = None
    ) -> None:
        return None

    def dump(self, state: dict[str, Any]) -> dict[str, Any]:
        return state

    def dump_part(self, state: dict[str, Any], key: str) -> Any:
        if key:
            return state.get("windows", {}).get(key)
        return {k: ({} if k == "windows" else v) for k, v in state.items()}

    def load(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return dict(doc)


class PatternKind(Protocol):
    """One kind of correlation pattern. ``state`` is the kind's windows for one pattern (JSON-able, mutated).

    ``changed`` (optional on every call that mutates): the kind adds the key of every window it adds, modifies or
    drops, and ``""`` when the rest of its state changes, so the store writes only those parts (``dump_part``)."""

    params_model: type[BaseModel]

    def member_conditions(self, params: Any) -> list[tuple[str, Members]]:
        """The member conditions inside the params (path, condition), for ``rules check``."""
        ...

    def key(self, p: EffectivePattern, fact: AlertFact, scope: tuple[str, ...]) -> str | None:
        """The incident key a fact belongs to when it is a member of this pattern; None if it never is."""
        ...

    def observe(
        self,
        p: EffectivePattern,
        fact: AlertFact,
        scope: tuple[str, ...],
        state: dict[str, Any],
        levels: Mapping[str, str],
        now: datetime,
        changed: Changed | None = None,
    ) -> list[Hit]:
        """Take a fired alert into the windows; the hits it completes."""
        ...

    def resolved(
        self, p: EffectivePattern, alert_id: int, state: dict[str, Any], changed: Changed | None = None
    ) -> None:
        """An alert resolved (its windows may forget it)."""
        ...

    def tick(self, pattern: Any, state: dict[str, Any], now: datetime, changed: Changed | None = None) -> list[Hit]:
        """What is due at ``now`` (``pattern(scope)`` gives the effective pattern of a scope); prunes windows. A
        tick that prunes nothing changes nothing."""
        ...

    def dump(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state as JSON data (for the store)."""
        ...

    def dump_part(self, state: dict[str, Any], key: str) -> Any:
        """One part of ``dump(state)``: the window ``key`` (None when it is gone), or with ``""`` the rest (the
        dump with ``"windows"``, if it has them, as ``{}``)."""
        ...

    def load(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The state back from ``dump``'s JSON."""
        ...
