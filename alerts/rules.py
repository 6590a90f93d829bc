"""Rule models, YAML rule files, inheritance down the region tree, and ``explain``.

A rule file (YAML) has up to five sections::

    rules:            # rule definitions: id, kind, device types, severity, titles, params (see docs/alerts.md)
    overrides:        # per region (whole subtree), device type, device: enabled / severity / params
    rosters:          # duty rosters (who is on duty where, when)
    sealing:          # vehicle sealing periods (封存)
    days:             # region-specific extra days off / working days

Effective parameters of a rule for one device are the rule's own params, then the overrides applied from the
least to the most specific: device type only; each region from the root down to the device's region (general
before device-type-specific at the same region); the device itself. Every value remembers where it came from
(``explain``). Effective rules are computed once per (device type, region) or per overridden device and cached.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.calendar import BEIJING, Calendar, RosterEntry, SealingPeriod, WorkingHours
from alerts.specfile import finite as _finite
from alerts.specfile import fmt_errors as fmt_errors  # re-exported: alerts.rule_store, joint use it from here
from alerts.specfile import parse_doc, read_yaml, yaml_files
from alerts.types import Severity
from core.errors import UserError
from core.protocol import DEVICE_TYPES

Op = Literal[">", ">=", "<", "<=", "==", "!="]
Scalar = bool | float | str
PACKS_DIR = Path(__file__).parent / "packs"  # the default rule packs shipped with Lianfang
RULE_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def compare(op: str, left: Any, right: Any) -> bool:
    """``left op right``; False when the types do not compare."""
    try:
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if isinstance(left, bool) or isinstance(right, bool) or isinstance(left, str) or isinstance(right, str):
            return False
        if op == ">":
            return bool(left > right)
        if op == ">=":
            return bool(left >= right)
        if op == "<":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


# --- parameter models, one per kind ---------------------------------------------------------------------------


class Match(_Strict):
    """What a record must be: an event of a type (with data equal to ``where``), or a telemetry field compared
    with ``value``. A field match with ``edge`` only matches when the comparison turns true."""

    event: str | None = None
    field: str | None = None
    op: Op = "=="
    value: Scalar = True
    where: dict[str, Scalar] = Field(default_factory=dict)
    edge: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> Match:
        if (self.event is None) == (self.field is None):
            raise ValueError("exactly one of 'event' or 'field' is required")
        return self


class TimeWindow(_Strict):
    """Recurring local (Beijing) hours on days of a calendar class: e.g. a door's unlocked schedule, or the hours
    a building is occupied. ``hours`` may run overnight (end <= start: the hours belong to the day they start)."""

    hours: str = "08:30-17:30"
    days: Literal["working", "non_working", "any"] = "working"  # official calendar, 调休 and region days included

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        WorkingHours.parse(v)
        return v


class ThresholdParams(_Strict):
    field: str
    op: Op
    value: Scalar
    clear_value: float | None = None  # hysteresis: clears only past this value
    for_s: float = Field(default=0, ge=0)  # held for N seconds
    count: int = Field(default=1, ge=1)  # N records in a row
    where: dict[str, Scalar] = Field(default_factory=dict)  # other fields of the same reading must equal these
    # Suppressed inside this window (e.g. a door scheduled unlocked): the condition counts as false there, a firing
    # alert clears, and a held-for period counts from the end of the window.
    suppress_during: TimeWindow | None = None

    @model_validator(mode="after")
    def _hysteresis(self) -> ThresholdParams:
        if self.clear_value is not None:
            if self.op in (">", ">=") and not (isinstance(self.value, float | int) and self.clear_value <= self.value):
                raise ValueError("clear_value must be <= value for an upper threshold")
            if self.op in ("<", "<=") and not (isinstance(self.value, float | int) and self.clear_value >= self.value):
                raise ValueError("clear_value must be >= value for a lower threshold")
            if self.op in ("==", "!="):
                raise ValueError("clear_value needs a <, <=, > or >= threshold")
        return self


class DeltaParams(_Strict):
    field: str
    min_delta: float | None = None  # fires when delta < min_delta (0: the value went backwards)
    max_delta: float | None = None  # fires when delta > max_delta
    per_hour: bool = False  # compare the rate per hour instead of the raw delta
    reset_event: str | None = "reset"  # a logged event that legitimately resets the value
    flat_s: float | None = Field(default=None, gt=0)  # fires when the value did not change for this long
    flat_during: TimeWindow | None = None  # count only the flat time inside this window (e.g. while occupied)

    @model_validator(mode="after")
    def _something(self) -> DeltaParams:
        bounds = self.min_delta is not None or self.max_delta is not None
        if not bounds and self.flat_s is None:
            raise ValueError("set min_delta / max_delta, or flat_s")
        if bounds and self.flat_s is not None:
            raise ValueError("flat_s is a rule of its own: do not combine it with min_delta / max_delta")
        if self.flat_during is not None and self.flat_s is None:
            raise ValueError("flat_during needs flat_s")
        return self


class AbsenceParams(_Strict):
    interval_s: float | None = Field(default=None, gt=0)  # default: the device's expected interval (registry)
    factor: float = Field(default=2.5, ge=1)  # silent for factor x interval
    only_if: dict[str, Scalar] = Field(default_factory=dict)  # last known fields must equal these (ignition on)


class ScheduleParams(_Strict):
    match: Match
    mode: Literal["outside_working_hours", "sealed"] = "outside_working_hours"
    hours: str = "08:30-17:30"
    grace_s: float = Field(default=0, ge=0)  # tolerated after the end / before the start of working hours
    roster_keys: list[str] = Field(default_factory=lambda: ["credential", "person_id", "driver_id"])
    min_distance_m: float = Field(default=0, ge=0)  # vehicles: fire only once moved this far
    clear_after_s: float | None = Field(default=None, gt=0)

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        WorkingHours.parse(v)
        return v


class EventCountParams(_Strict):
    match: Match
    count: int = Field(default=1, ge=1)
    window_s: float = Field(default=60, gt=0)
    group_by: str | None = None  # event data key, e.g. credential: one alert per credential
    clear_after_s: float | None = Field(default=None, gt=0)  # quiet time that clears; None: by hand


class SequenceParams(_Strict):
    trigger: Match
    required: list[Match] = Field(min_length=1)  # any of these must be seen around the trigger
    before_s: float = Field(default=3, ge=0)
    after_s: float = Field(default=0, ge=0)
    settle_s: float = Field(default=2, ge=0)  # wait this long for late messages before firing
    clear_after_s: float | None = Field(default=None, gt=0)


class GeofenceParams(_Strict):
    polygons: list[list[tuple[float, float]]] = Field(min_length=1)  # [[lat, lon], ...] each
    mode: Literal["stay_inside", "stay_outside"] = "stay_inside"
    min_outside_s: float = Field(default=60, ge=0)
    lat_field: str = "lat"
    lon_field: str = "lon"

    @field_validator("polygons")
    @classmethod
    def _polygons(cls, v: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        for poly in v:
            if len(poly) < 3:
                raise ValueError("a polygon needs at least 3 points")
            for lat, lon in poly:
                if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                    raise ValueError(f"point ({lat}, {lon}) is not WGS-84 lat/lon")
        return v


class BaselineParams(_Strict):
    field: str
    source: Literal["value", "rate_per_hour"] = "value"  # rate_per_hour: kWh counter -> kW
    relative: float = Field(default=0.2, ge=0)  # above baseline x (1 + relative)
    absolute: float = Field(default=5, ge=0)  # AND more than this above the baseline
    for_s: float = Field(default=3600, ge=0)  # AND for this long
    days: Literal["any", "working", "non_working"] = "any"
    hours: tuple[int, int] | None = None  # [start, end) hour of day, Beijing time
    min_samples: int = Field(default=20, ge=1)  # per bin before judging
    alpha: float = Field(default=0.05, gt=0, le=1)  # learning rate floor (EWMA once warmed up)
    # daily_mean: judge once a day, the mean of the readings inside ``hours`` against the mean of their baseline
    # values (for_s is not used); fire after ``consecutive_days`` qualifying days in a row.
    aggregate: Literal["reading", "daily_mean"] = "reading"
    consecutive_days: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _window(self) -> BaselineParams:
        if self.hours is not None and not 0 <= self.hours[0] < self.hours[1] <= 24:
            raise ValueError("hours must be [start, end) with 0 <= start < end <= 24")
        if self.aggregate == "daily_mean" and self.hours is None:
            raise ValueError("aggregate daily_mean needs hours (the daily window to average)")
        if self.consecutive_days > 1 and self.aggregate != "daily_mean":
            raise ValueError("consecutive_days needs aggregate: daily_mean")
        return self


class DemandParams(_Strict):
    """Interval demand (e.g. 15-minute kW from an ``energy_kwh`` counter) against its own learned history: a spike
    above a streaming quantile x ``factor``, and / or a CUSUM step change of the residuals against an
    hour-of-week baseline."""

    field: str
    source: Literal["value", "rate_per_hour"] = "rate_per_hour"  # rate_per_hour: kWh counter -> kW
    interval_s: int = Field(default=900, ge=60, le=86400)  # demand intervals aligned to the clock (quarter hours)
    quantile: float | None = Field(default=0.99, gt=0, lt=1)  # spike test: above this quantile x factor; None: off
    factor: float = Field(default=1.2, gt=0)
    absolute: float = Field(default=0, ge=0)  # AND more than this above the quantile
    cusum_h: float | None = Field(default=None, gt=0)  # step test: CUSUM of residuals / sigma above h; None: off
    cusum_k: float = Field(default=0.5, ge=0)  # allowance per interval, in sigmas
    min_history: int = Field(default=96, ge=5)  # intervals learned before either test judges (96: one day)
    min_samples: int = Field(default=4, ge=1)  # per hour-of-week bin (pooled over the same hour of other days)
    alpha: float = Field(default=0.05, gt=0, le=1)  # learning rate floor of the baseline bins and of sigma
    clear_intervals: int = Field(default=4, ge=1)  # intervals in a row with no spike (and residuals back) clear
    # capacity test (E8): demand above this share of the contracted capacity: ``contracted_kw`` here (an override
    # per meter or region), else the ``contracted_kw`` region attribute nearest the meter (devices/region_attrs.py)
    capacity_share: float | None = Field(default=None, gt=0, le=2)
    contracted_kw: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _a_test(self) -> DemandParams:
        if self.quantile is None and self.cusum_h is None and self.capacity_share is None:
            raise ValueError("set quantile (spike test), cusum_h (step test) or capacity_share (peak demand)")
        return self


class ClockSkewParams(_Strict):
    """The device's own timestamp against the time the record was received (ingest's receive time, else ``now``
    of the evaluation on the stream)."""

    max_ahead_s: float | None = Field(default=300, gt=0)  # device clock ahead by more than this; None: not checked
    max_behind_s: float | None = Field(default=300, gt=0)  # device clock behind by more than this; None: not checked
    count: int = Field(default=3, ge=1)  # skewed records in a row to fire; records within bounds in a row to clear
    for_s: float = Field(default=0, ge=0)  # AND skewed for this long (receive time): a flushed backlog is not

    @model_validator(mode="after")
    def _a_bound(self) -> ClockSkewParams:
        if self.max_ahead_s is None and self.max_behind_s is None:
            raise ValueError("set max_ahead_s or max_behind_s, or both")
        return self


class DepotExitParams(_Strict):
    """V2 movement without dispatch: the vehicle is outside its home depot (the device attribute ``depot``) with no
    approved dispatch open (devices/dispatch.py) for ``min_outside_s``."""

    radius_m: float | None = Field(default=None, gt=0, le=5000)  # None: the depot's own radius_m (default 50 m)
    min_outside_s: float = Field(default=300, ge=0, le=86400)
    early_s: float = Field(default=1800, ge=0, le=86400)  # a dispatch covers from its start minus this
    late_s: float = Field(default=3600, ge=0, le=86400)  # to its end plus this


class UtilisationParams(_Strict):
    """V8 utilisation: km, trips (V9, core/trips.py) and engine hours per working day over each of the last
    ``windows`` days (one alert per window), against the targets; judged once a day after local midnight."""

    windows: list[int] = Field(default_factory=lambda: [7, 30], min_length=1, max_length=4)
    target_km_per_day: float = Field(default=60, gt=0, le=2000)
    target_trips_per_day: float = Field(default=2, gt=0, le=100)
    target_engine_h_per_day: float = Field(default=2, gt=0, le=24)
    under: float = Field(default=0.35, ge=0, le=1)  # under-use: every measure below this share of its target
    over: float = Field(default=1.1, ge=1, le=10)  # over-use: any measure above this share of its target

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if any(not 1 <= n <= 90 for n in v) or len(set(v)) != len(v):
            raise ValueError("windows are distinct numbers of days from 1 to 90")
        return v


class OvernightLotParams(_Strict):
    """V13 parked off-site overnight: at each check time (Beijing) the vehicle's last position is outside its lot
    (the device attribute ``lot``)."""

    at: list[str] = Field(default_factory=lambda: ["22:00", "06:00"], min_length=1, max_length=8)
    nights: Literal["any", "working", "non_working"] = "any"  # class of the night's evening (06:00: the day before)
    max_age_s: float = Field(default=172800, gt=0, le=30 * 86400)  # an older last position is not judged
    exempt_dispatched: bool = True  # an approved dispatch covering the check time (a trip away) is fine

    @field_validator("at")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", t):
                raise ValueError(f"{t!r} is not HH:MM")
        return v


class TravelParams(_Strict):
    match: Match = Match(event="access", where={"result": "granted"})
    key: str = "credential"
    max_speed_kmh: float = Field(default=120, gt=0)
    min_distance_km: float = Field(default=1, ge=0)
    forget_s: float = Field(default=86400, gt=0)
    clear_after_s: float | None = Field(default=None, gt=0)


class _PresenceParams(_Strict):
    """Who is inside an area, from access events with a ``direction`` (in / out): G3 and G10. The area of a gate is
    ``area`` when set (per-gate overrides name e.g. a floor), else the gate's region (its building)."""

    match: Match = Match(event="access", where={"result": "granted"})
    key: str = Field(default="credential", min_length=1, max_length=64)  # event data key: who
    area: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("match")
    @classmethod
    def _event(cls, v: Match) -> Match:
        if v.event is None:
            raise ValueError("presence rules match an event (an access with a direction)")
        return v


class PassbackParams(_PresenceParams):
    """G3 anti-passback: in twice with no out between (or out twice) in the same area, within the timeout."""

    mode: Literal["soft", "hard"] = "soft"  # soft: logged (raised and resolved at once); hard: stays open
    presence_timeout_s: float = Field(default=43200, gt=0, le=7 * 86400)  # older presence is forgotten
    clear_after_s: float | None = Field(default=None, gt=0, le=30 * 86400)  # hard: quiet time that clears


class StillInsideParams(_PresenceParams):
    """G10 still inside at close: an entry with no exit by the building's next close (the end of ``open_hours`` on
    an open day) + ``grace_s``. Clears on the exit."""

    open_hours: TimeWindow = TimeWindow(hours="08:30-17:30", days="working")  # building open (calendar days)
    grace_s: float = Field(default=1800, ge=0, le=86400)
    forget_s: float = Field(default=86400, gt=0, le=7 * 86400)  # an entry unanswered this long is dropped


class SubmeterBalanceParams(_Strict):
    """E6: a parent meter's day of use (its ``energy_kwh`` counter) against the sum of its children's (meters whose
    ``parent_meter`` device attribute names it); judged once per Beijing day by the energy checks job."""

    field: str = "energy_kwh"
    tolerance: float = Field(default=0.08, gt=0, lt=1)  # |parent - children| / parent above this fires
    min_kwh: float = Field(default=10, ge=0)  # a parent day below this is not judged


class QuotaParams(_Strict):
    """E7: an agency's calendar month of use per capita / per m2 against its quota (region attributes); judged once
    the month is complete, by the energy checks job."""

    field: str = "energy_kwh"
    basis: Literal["any", "per_capita", "per_m2"] = "any"  # any: over either quota fires
    margin: float = Field(default=0, ge=0, le=1)  # fires above quota x (1 + margin)


Kind = Literal[
    "threshold",
    "depot_exit",
    "utilisation",
    "overnight_lot",
    "delta",
    "absence",
    "schedule",
    "event_count",
    "sequence",
    "geofence",
    "baseline",
    "travel",
    "demand",
    "clock_skew",
    "passback",
    "still_inside",
    "submeter_balance",
    "quota",
]
PARAMS: dict[str, type[_Strict]] = {
    "threshold": ThresholdParams,
    "depot_exit": DepotExitParams,
    "utilisation": UtilisationParams,
    "overnight_lot": OvernightLotParams,
    "delta": DeltaParams,
    "absence": AbsenceParams,
    "schedule": ScheduleParams,
    "event_count": EventCountParams,
    "sequence": SequenceParams,
    "geofence": GeofenceParams,
    "baseline": BaselineParams,
    "travel": TravelParams,
    "demand": DemandParams,
    "clock_skew": ClockSkewParams,
    "passback": PassbackParams,
    "still_inside": StillInsideParams,
    "submeter_balance": SubmeterBalanceParams,
    "quota": QuotaParams,
}
# Kinds judged over whole days or months by the energy checks job (alerts/energy_jobs.py), not on the stream.
PERIODIC_KINDS = frozenset({"submeter_balance", "quota"})
# Kinds whose alerts go stale when the device is offline: held back while the device's offline alert is open.
INHIBITABLE_KINDS = frozenset({"threshold", "delta", "geofence", "baseline", "demand"})


# --- file models ----------------------------------------------------------------------------------------------


class RuleSpec(_Strict):
    id: str = Field(pattern=RULE_ID_RE)
    kind: Kind
    device_types: list[str] = Field(min_length=1)
    severity: Severity = Severity.WARNING
    title_zh: str = Field(min_length=1)
    title_en: str = Field(min_length=1)
    description: str = ""
    enabled: bool = True
    dedup_key: str = "{rule}:{device}"
    inhibit_when_offline: bool | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite(v)  # type: ignore[no-any-return]

    @field_validator("device_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in DEVICE_TYPES:
                raise ValueError(f"{t!r} is not one of {', '.join(DEVICE_TYPES)}")
        return v

    @field_validator("dedup_key")
    @classmethod
    def _dedup(cls, v: str) -> str:
        try:
            v.format(rule="r", device="d", region="g", group="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"may use only {{rule}}, {{device}}, {{region}}, {{group}}: {exc}") from exc
        return v


class OverrideSpec(_Strict):
    rule: str  # a rule id, or "*" for every rule
    region: str | None = None
    device_type: str | None = None
    device: str | None = None
    enabled: bool | None = None
    severity: Severity | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite_params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite(v)  # type: ignore[no-any-return]


class RosterSpec(_Strict):
    region: str
    who: str
    start: datetime
    end: datetime


class SealingSpec(_Strict):
    region: str
    start: datetime
    end: datetime
    reason: str = ""
    exempt: list[str] = Field(default_factory=list)


class DaySpec(_Strict):
    region: str
    date: date
    working: bool


class RuleFile(_Strict):
    rules: list[RuleSpec] = Field(default_factory=list)
    overrides: list[OverrideSpec] = Field(default_factory=list)
    rosters: list[RosterSpec] = Field(default_factory=list)
    sealing: list[SealingSpec] = Field(default_factory=list)
    days: list[DaySpec] = Field(default_factory=list)


# --- effective rules -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EffectiveRule:
    """A rule as it applies to one device (or every device of a type in one region)."""

    rule_id: str
    kind: str
    severity: Severity
    title_zh: str
    title_en: str
    enabled: bool
    dedup_key: str
    inhibitable: bool
    params: Any  # the kind's params model (ThresholdParams, ...)
    sources: Mapping[str, str] = field(default_factory=dict)  # setting -> where its value came from

    @property
    def offline_signal(self) -> bool:
        return self.kind == "absence"


@dataclass(frozen=True, slots=True)
class _Layer:
    spec: OverrideSpec
    origin: str
    order: int


def _validate_params(kind: str, params: Mapping[str, Any], origin: str, prefix: str) -> _Strict:
    try:
        return PARAMS[kind].model_validate(dict(params))
    except ValidationError as exc:
        raise UserError(fmt_errors(exc, origin, prefix)) from exc


class RuleSet:
    """Loaded rule files: rules, overrides, calendar data; computes effective rules per device (cached)."""

    def __init__(self) -> None:
        self.rules: dict[str, RuleSpec] = {}
        self.rule_origin: dict[str, str] = {}
        self.layers: list[_Layer] = []
        self.calendar = Calendar()
        self._by_type: dict[str, list[RuleSpec]] = {t: [] for t in DEVICE_TYPES}
        self._device_overrides: set[str] = set()
        self._cache: dict[tuple[str, tuple[str, ...], str | None], list[EffectiveRule]] = {}

    # loading

    @classmethod
    def load(cls, paths: Iterable[Path]) -> RuleSet:
        """Load and validate rule files (directories: every *.yaml inside, sorted). Raises UserError."""
        return cls.from_parsed(cls.read(paths))

    @classmethod
    def read(cls, paths: Iterable[Path]) -> list[tuple[str, RuleFile]]:
        """Read and parse rule files (directories: every *.yaml inside, sorted) without combining them: (origin,
        parsed file). Raises UserError naming the file and field path."""
        return [(str(f), cls._read(f)) for f in yaml_files(paths)]

    @classmethod
    def from_parsed(cls, docs: Sequence[tuple[str, RuleFile]]) -> RuleSet:
        """Combine parsed rule files: every file's rules first, then every file's overrides and calendar data."""
        rs = cls()
        for origin, doc in docs:
            rs._add_rules(doc, origin)
        for origin, doc in docs:
            rs._add_rest(doc, origin)
        return rs

    @classmethod
    def from_documents(cls, docs: Sequence[tuple[str, Mapping[str, Any]]]) -> RuleSet:
        """Build from already-parsed YAML documents: (origin, document)."""
        rs = cls()
        parsed = [(origin, cls._parse(doc, origin)) for origin, doc in docs]
        for origin, doc in parsed:
            rs._add_rules(doc, origin)
        for origin, doc in parsed:
            rs._add_rest(doc, origin)
        return rs

    @staticmethod
    def _read(path: Path) -> RuleFile:
        return RuleSet._parse(read_yaml(path, "rule file"), str(path))

    @staticmethod
    def _parse(doc: object, origin: str) -> RuleFile:
        return parse_doc(RuleFile, doc, origin)

    def _add_rules(self, doc: RuleFile, origin: str) -> None:
        for i, spec in enumerate(doc.rules):
            self.add_rule(spec, origin, f"rules[{i}]")

    def add_rule(self, spec: RuleSpec, origin: str, where: str = "") -> None:
        """Add one rule definition after validating its params for its kind. ``origin`` names where it came from
        (a file, or ``api``); errors read ``{origin}: {where}.{field path}: {problem}``. Raises UserError and
        changes nothing then."""
        if spec.id in self.rules:
            raise UserError(
                f"{origin}: {_at(where, 'id')}: rule {spec.id!r} is already defined in {self.rule_origin[spec.id]}"
            )
        _validate_params(spec.kind, spec.params, origin, _at(where, "params"))
        self.rules[spec.id] = spec
        self.rule_origin[spec.id] = origin
        for t in spec.device_types:
            self._by_type[t].append(spec)
        self._cache.clear()

    def add_override(self, ov: OverrideSpec, origin: str, where: str = "") -> None:
        """Add one override after the ones already loaded (it wins over them at the same level); validated against
        the rules loaded so far. Its values show in ``explain`` as coming from ``{origin} {where}``. Raises
        UserError and changes nothing then."""
        if ov.device_type is not None and ov.device_type not in DEVICE_TYPES:
            hint = _closest(ov.device_type, DEVICE_TYPES) or f" (one of {', '.join(DEVICE_TYPES)})"
            raise UserError(f"{origin}: {_at(where, 'device_type')}: {ov.device_type!r} is not a device type{hint}")
        targets = list(self.rules.values()) if ov.rule == "*" else [self.rules.get(ov.rule)]
        if targets == [None]:
            raise UserError(f"{origin}: {_at(where, 'rule')}: unknown rule {ov.rule!r}{_closest(ov.rule, self.rules)}")
        if ov.rule == "*" and ov.params:
            raise UserError(f"{origin}: {_at(where, 'params')}: an override of every rule ('*') cannot set params")
        for target in targets:
            assert target is not None
            _validate_params(target.kind, {**target.params, **ov.params}, origin, _at(where, "params"))
        self.layers.append(_Layer(ov, f"{origin} {where}" if where else origin, len(self.layers)))
        if ov.device is not None:
            self._device_overrides.add(ov.device)
        self._cache.clear()

    def _add_rest(self, doc: RuleFile, origin: str) -> None:
        for i, ov in enumerate(doc.overrides):
            self.add_override(ov, origin, f"overrides[{i}]")
        cal = self.calendar
        for r in doc.rosters:
            cal.rosters.append(RosterEntry(r.region, r.who, _aware(r.start), _aware(r.end)))
        for s in doc.sealing:
            cal.sealing.append(SealingPeriod(s.region, _aware(s.start), _aware(s.end), s.reason, frozenset(s.exempt)))
        for d in doc.days:
            (cal.extra_workdays if d.working else cal.extra_days_off).setdefault(d.region, set()).add(d.date)
        cal.invalidate()
        self._cache.clear()

    # effective rules

    def rules_for_type(self, device_type: str) -> list[RuleSpec]:
        return self._by_type.get(device_type, [])

    def for_device(self, device_id: str, device_type: str, region_path: Sequence[str]) -> list[EffectiveRule]:
        """Enabled effective rules of one device (cached per type+region unless the device has overrides)."""
        return [r for r in self.explain(device_id, device_type, region_path) if r.enabled]

    def explain(self, device_id: str, device_type: str, region_path: Sequence[str]) -> list[EffectiveRule]:
        """Every effective rule of a device, disabled ones included, with the origin of each value."""
        key = (device_type, tuple(region_path), device_id if device_id in self._device_overrides else None)
        cached = self._cache.get(key)
        if cached is None:
            cached = [self._effective(spec, device_id, device_type, region_path) for spec in self._by_type[device_type]]
            self._cache[key] = cached
        return cached

    def _effective(self, spec: RuleSpec, device_id: str, device_type: str, region_path: Sequence[str]) -> EffectiveRule:
        origin = f"rule {spec.id} ({self.rule_origin[spec.id]})"
        params: dict[str, Any] = dict(spec.params)
        sources: dict[str, str] = {"enabled": origin, "severity": origin}
        for k in PARAMS[spec.kind].model_fields:
            sources[k] = origin if k in spec.params else f"default of kind {spec.kind}"
        enabled, severity = spec.enabled, spec.severity
        depth = {r: i + 1 for i, r in enumerate(region_path)}
        applicable: list[tuple[tuple[int, int, int, int], _Layer]] = []
        for layer in self.layers:
            ov = layer.spec
            if ov.rule not in ("*", spec.id):
                continue
            if ov.device is not None and ov.device != device_id:
                continue
            if ov.device_type is not None and ov.device_type != device_type:
                continue
            if ov.region is not None and ov.region not in depth:
                continue
            score = (
                1 if ov.device else 0,
                depth.get(ov.region, 0) if ov.region else 0,
                1 if ov.device_type else 0,
                layer.order,
            )
            applicable.append((score, layer))
        for _, layer in sorted(applicable, key=lambda x: x[0]):
            ov = layer.spec
            if ov.enabled is not None:
                enabled = ov.enabled
                sources["enabled"] = layer.origin
            if ov.severity is not None:
                severity = ov.severity
                sources["severity"] = layer.origin
            for k, v in ov.params.items():
                params[k] = v
                sources[k] = layer.origin
        model = PARAMS[spec.kind].model_validate(params)  # validated at load; cannot fail here
        inhibitable = spec.inhibit_when_offline
        if inhibitable is None:
            inhibitable = spec.kind in INHIBITABLE_KINDS
        return EffectiveRule(
            spec.id,
            spec.kind,
            severity,
            spec.title_zh,
            spec.title_en,
            enabled,
            spec.dedup_key,
            inhibitable,
            model,
            sources,
        )


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _closest(name: str, known: Iterable[str]) -> str:
    found = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {found[0]!r}?" if found else ""


def _aware(at: datetime) -> datetime:
    """Rule files may write local (Beijing) times without an offset."""
    return at if at.tzinfo is not None else at.replace(tzinfo=BEIJING)


def explain_rows(rules: Sequence[EffectiveRule]) -> list[dict[str, Any]]:
    """Flat rows for display / JSON: one per rule setting with its value and its origin."""
    rows: list[dict[str, Any]] = []
    for r in rules:
        values: dict[str, Any] = {"enabled": r.enabled, "severity": str(r.severity)}
        values.update(r.params.model_dump(mode="json"))
        for key, value in values.items():
            rows.append(
                {
                    "rule": r.rule_id,
                    "kind": r.kind,
                    "setting": key,
                    "value": value,
                    "source": r.sources.get(key, "default"),
                }
            )
    return rows
