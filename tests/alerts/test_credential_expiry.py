"""Rule CRED1: a warning alert before a device's broker credential lapses (issue 3), through the real engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerts.wiring import AlertsRuntime
from core.settings import AlertSettings, Settings
from devices.provisioning import DeviceCredential
from devices.registry import DeviceSpec, RegionSpec, Registry

NOW = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)


def _credential(registry: Registry, device_id: str, expires_in: timedelta) -> None:
    with registry.session() as s, s.begin():
        s.add(
            DeviceCredential(device_id=device_id, secret_hash="scrypt$x", created_at=NOW, expires_at=NOW + expires_in)
        )


def test_expiring_credentials_raise_one_warning_each_and_clear_after_rotation(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    reg = sqlite_registry
    reg.upsert_regions([RegionSpec("gd", "广东省", "province"), RegionSpec("gd-gz", "广州市", "city", "gd")], now=NOW)
    reg.add_devices([DeviceSpec(d, "gate", "gd-gz") for d in ("gate-soon", "gate-later", "gate-none")], now=NOW)
    _credential(reg, "gate-soon", timedelta(days=3))
    _credential(reg, "gate-later", timedelta(days=40))
    only_cred = tmp_path / "only-cred.yaml"
    only_cred.write_text("overrides:\n  - {rule: '*', enabled: false}\n  - {rule: CRED1, enabled: true}\n")
    clock = [NOW]
    rt = AlertsRuntime(
        Settings(alerts=AlertSettings(rules_paths=[only_cred], credential_warning_days=14)),
        reg,
        clock_fn=lambda: clock[0],
    )
    assert rt.check_credentials() == 1
    assert rt.check_credentials() == 1  # hourly re-check: same alert, not a second one
    (alert,) = [a for a in rt.service.open_alerts() if a.rule_id == "CRED1"]
    assert alert.device_id == "gate-soon" and alert.severity == "warning" and alert.title_zh == "设备接入凭据即将过期"
    # rotated: a new expiry far away; the warning clears once the window has passed without a new event
    with reg.session() as s, s.begin():
        row = s.get(DeviceCredential, "gate-soon")
        assert row is not None
        row.expires_at = NOW + timedelta(days=365)
    clock[0] = NOW + timedelta(hours=3)
    assert rt.check_credentials() == 0
    rt.service.tick(clock[0])
    assert [a for a in rt.service.open_alerts() if a.rule_id == "CRED1"] == []
