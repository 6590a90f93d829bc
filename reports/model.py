"""The one shape every report has, so that the CLI, the API, the HTML renderer and the schedule treat all alike.

A builder is `build(source: ReportSource, request: ReportRequest) -> Report`: it reads through `source` (the
registry and SQL database, the telemetry store, the working calendar) and computes; `request.now` is the only clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy.engine import Engine

from alerts.calendar import Calendar
from core.store import TelemetryStore

ReportKind = Literal["vehicles", "energy", "coverage", "scorecard"]
REPORT_KINDS: tuple[ReportKind, ...] = ("vehicles", "energy", "coverage", "scorecard")

Cell = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    title_zh: str
    title_en: str
    unit: str | None = None  # "km", "kWh", "元", "%", "h", "s"


@dataclass(frozen=True, slots=True)
class Table:
    key: str
    title_zh: str
    title_en: str
    columns: tuple[Column, ...]
    rows: tuple[dict[str, Cell], ...]  # keyed by Column.key


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    title_zh: str
    title_en: str
    kind: Literal["bar", "line", "heatmap"]
    x: tuple[str, ...]  # category labels (bar/line) or column labels (heatmap)
    series: dict[str, tuple[float, ...]]  # name -> values aligned with x (heatmap: one series per row)
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One sentence a reader acts on (advice, a problem to fix), with the numbers behind it."""

    key: str
    text_zh: str
    text_en: str
    numbers: dict[str, Cell] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReportRequest:
    kind: ReportKind
    region_id: str
    start: datetime  # aware, inclusive
    end: datetime  # aware, exclusive
    now: datetime  # aware
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    kind: ReportKind
    region_id: str
    region_name: str
    start: datetime
    end: datetime
    generated_at: datetime
    title_zh: str
    title_en: str
    summary: dict[str, Cell]  # headline figures, keyed; labels for them live in `summary_labels`
    summary_labels: dict[str, tuple[str, str]]  # key -> (zh, en)
    tables: tuple[Table, ...] = ()
    charts: tuple[Chart, ...] = ()
    findings: tuple[Finding, ...] = ()


class ReportSource(Protocol):
    """What a builder may read. Implemented by reports.source.LiveSource over the configured stores."""

    @property
    def engine(self) -> Engine: ...  # the SQL database: registry, alerts, incidents, risk history, dispatches

    @property
    def telemetry(self) -> TelemetryStore: ...

    @property
    def calendar(self) -> Calendar: ...


class ReportBuilder(Protocol):
    def __call__(self, source: ReportSource, request: ReportRequest) -> Report: ...
