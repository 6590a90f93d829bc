"""``lianfang serve``'s runtime runs the joint service with the X pack by default, muting through the alert
notifier; ``joint.enabled: false`` switches it off; a pattern file that can never match refuses the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.errors import UserError
from core.settings import JointSettings, Settings
from lianfang.runtime import Runtime
from tests.ingest.conftest import mqtt_settings


def _settings(broker: Any, tmp_path: Path, **joint: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        mqtt=mqtt_settings(broker),
        gc_settle_s=0,
        joint=JointSettings(**joint),
    )


@pytest.mark.integration
def test_runtime_runs_the_joint_service_with_the_x_pack(broker: Any, tmp_path: Path) -> None:
    rt = Runtime(_settings(broker, tmp_path))
    rt.start()
    try:
        assert rt.joint is not None and rt.alerts is not None
        status = rt.joint.status()
        assert status["ok"] is True and status["patterns"] == 8
        assert rt.alerts.mutes == [rt.joint.held]
    finally:
        rt.stop()
    assert rt.joint is None


@pytest.mark.integration
def test_runtime_without_joint_and_a_bad_pattern_file(broker: Any, tmp_path: Path) -> None:
    rt = Runtime(_settings(broker, tmp_path, enabled=False))
    rt.start()
    try:
        assert rt.joint is None and rt.alerts is not None and rt.alerts.mutes == []
    finally:
        rt.stop()
    bad = tmp_path / "p.yaml"
    bad.write_text("overrides:\n  - {pattern: X4, region: nowhere, enabled: false}\n", encoding="utf-8")
    rt = Runtime(_settings(broker, tmp_path, patterns_paths=[bad]))
    with pytest.raises(UserError, match=r"overrides\[0\]\.region: unknown region 'nowhere'"):
        rt.start()
    rt.stop()
