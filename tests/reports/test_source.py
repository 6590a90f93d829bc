"""LiveSource.from_settings opens the configured database (migrated) and telemetry store, and the calendar of the
rule files: a region's extra day off in a user rule file is a day off in the source's calendar."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import inspect

from core.settings import Settings
from reports.source import LiveSource


def test_from_settings_opens_the_stores_and_the_rule_files_calendar(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("days:\n  - {region: gd, date: 2026-11-18, working: false}\n", encoding="utf-8")
    settings = Settings(data_dir=tmp_path, alerts={"rules_paths": [rules]})
    with LiveSource.from_settings(settings) as source:
        assert "regions" in inspect(source.engine).get_table_names()
        assert source.telemetry.ping()
        assert not source.calendar.is_working_day(date(2026, 11, 18), ["gd"])  # a Wednesday, off in gd
        assert source.calendar.is_working_day(date(2026, 11, 18), ["zj"])
        assert not source.calendar.is_working_day(date(2026, 10, 1))  # National Day, the official calendar
    assert (tmp_path / "registry.db").exists() and (tmp_path / "telemetry.db").exists()
