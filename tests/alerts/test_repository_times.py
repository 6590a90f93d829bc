"""alerts/repository.py keeps instants: a silence or alert time with any offset reads back as the same instant
(SQLite's DateTime drops the offset, so the repository writes UTC), on SQLite and, where reachable, PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import text

from alerts.lifecycle import Silence
from alerts.repository import AlertRepository
from devices.registry import Registry

BEIJING = timezone(timedelta(hours=8))
AT = datetime(2026, 11, 26, 20, 5, tzinfo=BEIJING)  # 12:05Z


def test_silence_times_with_an_offset_are_stored_as_the_instant(registry: Registry) -> None:
    repo = AlertRepository(registry.engine)
    far_west = timezone(-timedelta(hours=23, minutes=59))
    silence = Silence(7, "检修", "gz-duty", AT, AT.astimezone(far_west) + timedelta(hours=1), device_id="gate-0001")
    silence.created_at = AT
    repo.save(silences=[silence], now=AT)
    back = repo.silence(7)
    assert back is not None
    assert back.starts_at == AT and back.ends_at == AT + timedelta(hours=1) and back.created_at == AT
    assert back.starts_at.tzinfo is UTC
    assert [s.id for s in repo.silences(active_only=True, offset=0, limit=5)] == [7]
    assert repo.silences(offset=1, limit=5) == []
    if registry.engine.dialect.name == "sqlite":
        with registry.engine.connect() as conn:
            raw = conn.execute(text("SELECT ends_at FROM alert_silences WHERE id = 7")).scalar_one()
        assert str(raw).startswith("2026-11-26 13:05:00")  # UTC digits, not Beijing wall time


def test_a_missing_silence_is_none(registry: Registry) -> None:
    assert AlertRepository(registry.engine).silence(1) is None


def test_alert_clock_times_with_an_offset_are_stored_as_the_instant(registry: Registry) -> None:
    from tests.alerts.notify_fixtures import make_alert

    repo = AlertRepository(registry.engine)
    alert = make_alert(41, started_at=AT, escalation_from=AT + timedelta(minutes=5))
    repo.save(alerts=[alert], now=AT)
    (back,) = [a for a in repo.alerts(limit=10) if a.id == 41]
    assert back.learned_at == AT and back.escalation_from == AT + timedelta(minutes=5)
    assert back.started_at == AT
