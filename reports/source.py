"""What report builders read (reports/model.py ``ReportSource``), over the configured stores.

``LiveSource.from_settings`` opens the SQL database (registry, alerts, incidents, risk history) and the telemetry
store as the CLI does (lianfang/context.py), and the working calendar from the rule files (the official calendar
plus the regions' extra days, rosters and sealing periods). The gateway and ``serve`` hand their open resources to
``LiveSource`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from alerts.calendar import Calendar
from core.settings import Settings
from core.store import TelemetryStore


def calendar_from_settings(settings: Settings) -> Calendar:
    """The calendar of the built-in packs and ``alerts.rules_paths`` (extra days off, make-up days, rosters)."""
    from alerts.rules import PACKS_DIR, RuleSet

    return RuleSet.load([PACKS_DIR, *settings.alerts.rules_paths]).calendar


@dataclass
class LiveSource:
    engine: Engine
    telemetry: TelemetryStore
    calendar: Calendar = field(default_factory=Calendar)
    _owned: bool = field(default=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveSource:
        """Open the configured database (migrated) and telemetry store; ``close()`` releases them."""
        from lianfang.context import open_registry, open_store

        registry = open_registry(settings)
        try:
            store = open_store(settings)
        except BaseException:
            registry.engine.dispose()
            raise
        return cls(registry.engine, store, calendar_from_settings(settings), _owned=True)

    def close(self) -> None:
        if self._owned:
            self.telemetry.close()
            self.engine.dispose()

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
