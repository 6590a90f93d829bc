"""Statistics of alerts, incidents and department tasks: counts, time to acknowledge, time to resolve. Pure.

The records come from ``joint/risk_store.py`` (bounded SQL reads over a period [start, end)); this module groups
them and summarises each group:

* ``count``: records raised in the period; ``acknowledged`` / ``resolved``: how many of them have that time;
  ``open``: not resolved (yet);
* ``tta`` (time to acknowledge) = acknowledged_at - raised_at, over the acknowledged ones;
  ``ttr`` (time to resolve) = resolved_at - raised_at, over the resolved ones; each with ``mean``, ``p50`` and
  ``p90`` in seconds (nearest-rank percentiles: always a value that occurred), ``None`` without any;
* a negative duration (a device clock behind the platform's) counts as 0.

"raised_at" is when the platform learned of an alert (``learned_at``; ``started_at`` for rows from before it
existed), when an incident was opened, when a task was created. Groups are per region where the item was raised
(not rolled up the tree: a city's row counts the city's own incidents; ``total`` covers everything asked for).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Record:
    keys: Mapping[str, str]  # the group keys it has: region, rule, type, department, severity
    raised_at: datetime
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Durations:
    n: int
    mean_s: float
    p50_s: float
    p90_s: float


@dataclass(slots=True)
class GroupStats:
    key: str
    count: int = 0
    acknowledged: int = 0
    resolved: int = 0
    open: int = 0
    tta: Durations | None = None
    ttr: Durations | None = None
    _tta: list[float] = field(default_factory=list, repr=False)
    _ttr: list[float] = field(default_factory=list, repr=False)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ascending values (``q`` in (0, 1]): the smallest value with at least ``q`` of
    the values at or below it."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def durations(values: Iterable[float]) -> Durations | None:
    vals = sorted(values)
    if not vals:
        return None
    return Durations(len(vals), sum(vals) / len(vals), percentile(vals, 0.5), percentile(vals, 0.9))


def _add(g: GroupStats, r: Record) -> None:
    g.count += 1
    if r.acknowledged_at is not None:
        g.acknowledged += 1
        g._tta.append(max((r.acknowledged_at - r.raised_at).total_seconds(), 0.0))
    if r.resolved_at is not None:
        g.resolved += 1
        g._ttr.append(max((r.resolved_at - r.raised_at).total_seconds(), 0.0))
    else:
        g.open += 1


def _finish(g: GroupStats) -> GroupStats:
    g.tta, g.ttr = durations(g._tta), durations(g._ttr)
    g._tta, g._ttr = [], []
    return g


def summarise(records: Iterable[Record], group_by: str) -> tuple[list[GroupStats], GroupStats]:
    """Per group (``group_by`` names a key of the records; a record without it goes to ``"-"``), sorted by count
    (highest first) then key; and the total over all records."""
    groups: dict[str, GroupStats] = {}
    total = GroupStats("total")
    for r in records:
        key = r.keys.get(group_by) or "-"
        g = groups.get(key)
        if g is None:
            g = groups[key] = GroupStats(key)
        _add(g, r)
        _add(total, r)
    out = sorted((_finish(g) for g in groups.values()), key=lambda g: (-g.count, g.key))
    return out, _finish(total)


def group_json(g: GroupStats) -> dict[str, object]:
    def d(x: Durations | None) -> dict[str, float | int] | None:
        if x is None:
            return None
        return {"n": x.n, "mean_s": round(x.mean_s, 3), "p50_s": round(x.p50_s, 3), "p90_s": round(x.p90_s, 3)}

    return {
        "key": g.key,
        "count": g.count,
        "acknowledged": g.acknowledged,
        "resolved": g.resolved,
        "open": g.open,
        "tta": d(g.tta),
        "ttr": d(g.ttr),
    }


CSV_HEADER: tuple[str, ...] = (
    "key",
    "count",
    "acknowledged",
    "resolved",
    "open",
    "tta_mean_s",
    "tta_p50_s",
    "tta_p90_s",
    "ttr_mean_s",
    "ttr_p50_s",
    "ttr_p90_s",
)


def group_row(g: GroupStats) -> list[str]:
    """One CSV / table row (empty cells where there is no duration)."""

    def d(x: Durations | None) -> list[str]:
        return ["", "", ""] if x is None else [f"{x.mean_s:.3f}", f"{x.p50_s:.3f}", f"{x.p90_s:.3f}"]

    return [g.key, str(g.count), str(g.acknowledged), str(g.resolved), str(g.open), *d(g.tta), *d(g.ttr)]
