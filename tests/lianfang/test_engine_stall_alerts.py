"""The "alert engine stalled" poller: raised once while the engine is behind, resolved once when it catches up."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alerts.types import AlertChange
from lianfang.engine_role import ENGINE_STALLED_RULE, EngineStallAlerts

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def test_engine_stall_is_raised_once_and_resolved_once() -> None:
    status: dict[str, Any] = {"stalled": True, "reason": "the alert engine is 40 s behind ingest", "lag_s": 40.0}
    sent: list[AlertChange] = []
    poller = EngineStallAlerts(lambda: status, sent.extend, lambda: ("gd",), clock_fn=lambda: NOW)
    assert [(c.rule_id, c.firing) for c in poller.poll_once()] == [(ENGINE_STALLED_RULE, True)]
    assert poller.poll_once() == []  # still stalled: nothing new
    status.update(stalled=False, reason=None, lag_s=0.0)
    assert [(c.rule_id, c.firing) for c in poller.poll_once()] == [(ENGINE_STALLED_RULE, False)]
    assert [c.firing for c in sent] == [True, False]
    assert sent[0].region_path == ("gd",)
    assert (poller.raised, poller.resolved) == (1, 1)
