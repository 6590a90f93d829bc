"""Region attributes: the facts about an agency or building that the energy rules and report need.

Stored as a JSON mapping on ``regions.attributes`` (migration 0014_region_attributes) and given per region in the
region YAML file under ``attributes:``. Known keys (anything else is refused, naming its line):

- ``headcount`` (int >= 0): staff of an agency (E7 per-capita quota);
- ``floor_area_m2`` (float > 0): floor area (E7 per-m2 quota);
- ``quota_kwh_per_capita_month``, ``quota_kwh_per_m2_month`` (float > 0): the monthly energy quotas (E7);
- ``tariff``: ``{flat: 0.65}`` (yuan/kWh) or time of use ``{periods: [{from: "08:00", to: "22:00", price: 1.1},
  {from: "22:00", to: "08:00", price: 0.4}]}`` covering the whole day, once (a period may wrap midnight);
- ``contracted_kw`` (float > 0): the contracted capacity of a building's supply (E8).

A region without a key inherits it from the nearest ancestor that has it (``inherited``): a tariff set on a city
applies to every building in it. Everything here is pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_NUMBERS: dict[str, tuple[str, bool]] = {
    # key: (description, zero allowed)
    "floor_area_m2": ("a floor area in m2", False),
    "quota_kwh_per_capita_month": ("kWh per person per month", False),
    "quota_kwh_per_m2_month": ("kWh per m2 per month", False),
    "contracted_kw": ("a capacity in kW", False),
}
KNOWN_KEYS: tuple[str, ...] = ("headcount", *_NUMBERS, "tariff")
MINUTES_PER_DAY = 24 * 60
_HHMM = re.compile(r"^(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))$")


class BadAttribute(ValueError):
    """One bad attribute value; the message names what is expected (the caller adds where)."""


@dataclass(frozen=True, slots=True)
class Tariff:
    """Yuan per kWh by minute of the (Beijing) day; a flat tariff has one price for every minute."""

    # (start minute, end minute exclusive, price), sorted, covering 0..1440 exactly.
    spans: tuple[tuple[int, int, float], ...]

    @staticmethod
    def of(value: Mapping[str, Any]) -> Tariff:
        """From a stored (already validated) ``tariff`` attribute."""
        if "flat" in value:
            return Tariff(((0, MINUTES_PER_DAY, float(value["flat"])),))
        spans: list[tuple[int, int, float]] = []
        for p in value["periods"]:
            start, end, price = _minute(p["from"]), _minute(p["to"]), float(p["price"])
            if end <= start:  # wraps midnight
                spans.append((start, MINUTES_PER_DAY, price))
                if end > 0:
                    spans.append((0, end, price))
            else:
                spans.append((start, end, price))
        return Tariff(tuple(sorted(spans)))

    def price_at_minute(self, minute: int) -> float:
        for start, end, price in self.spans:
            if start <= minute < end:
                return price
        return self.spans[-1][2]

    def hourly_prices(self) -> tuple[float, ...]:
        """The mean price of each hour 0..23 (minute-weighted where a period changes inside an hour)."""
        out: list[float] = []
        for h in range(24):
            lo, hi = h * 60, h * 60 + 60
            out.append(sum(p * max(0, min(hi, e) - max(lo, s)) for s, e, p in self.spans) / 60)
        return tuple(out)


def _minute(text: str) -> int:
    """Minutes since midnight of "HH:MM" ("24:00" is 1440); ValueError otherwise."""
    m = _HHMM.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not HH:MM")
    hh, mm = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    return int(hh) * 60 + int(mm)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def check_attribute(key: str, value: Any) -> Any:
    """The normalised value of one attribute; raises BadAttribute saying what is wrong."""
    if key not in KNOWN_KEYS:
        raise BadAttribute(f"unknown attribute (known: {', '.join(KNOWN_KEYS)})")
    if key == "headcount":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadAttribute(f"{value!r} must be a whole number of people (0 or more)")
        return value
    if key == "tariff":
        return _check_tariff(value)
    what, zero_ok = _NUMBERS[key]
    return _number(value, what, zero_ok=zero_ok)


def _number(value: Any, what: str, *, zero_ok: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadAttribute(f"{value!r} must be a number ({what})")
    if value < 0 or (value == 0 and not zero_ok):
        raise BadAttribute(f"{value!r} must be {'0 or more' if zero_ok else 'more than 0'} ({what})")
    return float(value)


def _check_tariff(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) not in ({"flat"}, {"periods"}):
        raise BadAttribute("must be {flat: PRICE} or {periods: [{from: 'HH:MM', to: 'HH:MM', price: PRICE}, ...]}")
    if "flat" in value:
        return {"flat": _number(value["flat"], "yuan per kWh", zero_ok=True)}
    periods = value["periods"]
    if not isinstance(periods, list) or not periods:
        raise BadAttribute("periods must be a non-empty list of {from, to, price}")
    out: list[dict[str, Any]] = []
    covered = [0] * MINUTES_PER_DAY
    for i, p in enumerate(periods):
        if not isinstance(p, Mapping) or set(p) != {"from", "to", "price"}:
            raise BadAttribute(f"periods[{i}] must be {{from: 'HH:MM', to: 'HH:MM', price: PRICE}}")
        try:
            start, end = _minute(str(p["from"])), _minute(str(p["to"]))
        except (ValueError, TypeError) as exc:
            raise BadAttribute(f"periods[{i}]: from/to must be times of day 'HH:MM' (quote them)") from exc
        if start in (MINUTES_PER_DAY, end):
            raise BadAttribute(f"periods[{i}]: {p['from']}-{p['to']} is not a period of the day")
        price = _number(p["price"], "yuan per kWh", zero_ok=True)
        minutes = range(start, end) if end > start else [*range(start, MINUTES_PER_DAY), *range(end)]
        for m in minutes:
            covered[m] += 1
        out.append({"from": str(p["from"]), "to": str(p["to"]), "price": price})
    if any(c > 1 for c in covered):
        raise BadAttribute("periods overlap")
    gaps = [m for m, c in enumerate(covered) if c == 0]
    if gaps:
        end = next((m for m in range(gaps[0], MINUTES_PER_DAY) if covered[m]), MINUTES_PER_DAY)
        raise BadAttribute(
            f"periods leave {_hhmm(gaps[0])}-{_hhmm(end)} uncovered (cover the whole day once, e.g. wrap midnight)"
        )
    return {"periods": out}


def inherited(key: str, chain: Iterable[Mapping[str, Any] | None]) -> Any:
    """The value of ``key`` from the nearest region that has it; ``chain`` runs from the region up to the root."""
    for attrs in chain:
        if attrs and key in attrs:
            return attrs[key]
    return None
