"""The page shows instants in Beijing time whatever the browser's own time zone, and says why a silenced alert
sends nothing (the silence's reason, who set it and until when)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.gateway.conftest import NOW, Gateway
from tests.gateway.test_page import BROWSER, _in_browser, firing  # noqa: F401  (a fixture)

STARTED = (
    "(() => { const dd = [...document.querySelectorAll('#dr-kv dt')].find(d => d.textContent === '开始时间');"
    " return dd && !document.getElementById('al-drawer').hidden ? dd.nextElementSibling.textContent : null; })()"
)
SILENCED = "(() => { const b = document.querySelector('#alerts li[data-id] .tag.silenced'); return b && b.title; })()"


@BROWSER
def test_times_are_beijing_time_in_a_browser_elsewhere_and_a_silence_says_why(
    gateway: Gateway,
    firing: int,  # noqa: F811  (the fixture imported above)
    served: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc = gateway.ctx.alerts
    assert svc is not None
    svc.add_silence(
        reason="年度检修",
        creator="gz-duty",
        starts_at=NOW - timedelta(minutes=5),
        ends_at=NOW + timedelta(hours=2),
        device_id="gate-gz-0001",
    )
    monkeypatch.setenv("TZ", "America/New_York")  # Chromium takes its zone from TZ: 02:59 there, 15:59 in Beijing
    started, silenced = _in_browser(
        f"{served}/#token={gateway.tokens['gz']}&alert={firing}", [STARTED, SILENCED], tmp_path
    )
    assert "15:59:00" in started, started  # the tamper event was stamped 07:59:00Z
    assert "年度检修" in silenced and "gz-duty" in silenced and "18:00:00" in silenced, silenced
