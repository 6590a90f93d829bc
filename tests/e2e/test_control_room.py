"""The control-room page end to end, in Debian's headless Chromium driven by Playwright.

A real ``lianfang serve`` (its own Mosquitto with the generated config, ingest, the alert engine, the gateway) on
free ports, over a registry with regions (with coordinates), a gate, an energy meter and a vehicle, and an operator
who logs in with a password. A simulated device publishes through the broker (the simulator's account); the page:

- logs in through the form; the overview tiles show the fleet and update live;
- shows the tamper alert that the gate's publish raises, without a reload (the live stream), and acknowledges it
  with a reason (stored with the alert);
- creates a silence for the device from the alert's drawer, with its reason (listed by the API and the page);
- opens the meter's device view with its chart (uPlot from /static/vendor/) and the vehicle map;
- raises no error and no CSP violation in the browser console.

Screenshots go to the test's tmp dir and, when ``LIANFANG_SCREENSHOTS=DIR`` is set, to DIR as well (the
README's docs/control-room.png is one of them: ``control-room.png``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.db import make_engine, migrate
from devices.registry import DeviceSpec, RegionSpec, Registry
from devices.sim_publisher import SharedPublisher
from devices.simulator import SimMessage
from gateway.auth import create_user
from tests.conftest import free_ports
from tests.helpers import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)"),
]

REGIONS = [
    RegionSpec("gd", "广东省", "province", None, 23.13, 113.26),
    RegionSpec("gz", "广州市", "city", "gd", 23.13, 113.26),
    RegionSpec("gz-jgj", "广州市机关事务管理局", "agency", "gz", 23.129, 113.264),
    RegionSpec("gz-b1", "市府一号楼", "building", "gz-jgj", 23.1291, 113.2644),
    RegionSpec("gz-b2", "市府二号楼", "building", "gz-jgj", 23.1335, 113.2712),
]
GATE, METER, CAR = "gate-gz-0001", "meter-gz-0001", "car-gz-0001"
DEVICES = [
    DeviceSpec(GATE, "gate", "gz-b1", "东门"),
    DeviceSpec(METER, "energy_meter", "gz-jgj", "总表"),
    DeviceSpec(CAR, "vehicle", "gz-jgj", "粤A00001"),
]
PASSWORD = "duty-pass-" + "x" * 8
REASON_ACK = "保安已前往东门现场核查"
REASON_SILENCE = "东门读卡器检修，维护期间静默"


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


@dataclass
class Stack:
    url: str
    mqtt_port: int
    data_dir: Path
    admin_token: str
    pub: SharedPublisher | None = None
    seq: dict[str, int] = field(default_factory=dict)

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(
            f"{self.url}/api/v1{path}", params=params, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def publish(self, device: str, kind: str, body: dict[str, Any], ts_ms: int | None = None) -> None:
        assert self.pub is not None
        seq = self.seq[device] = self.seq.get(device, 0) + 1
        ts = ts_ms if ts_ms is not None else _now_ms()
        payload = json.dumps({"ts": ts, "seq": seq, **body}).encode()
        self.pub.publish(SimMessage(device, kind, payload, ts, seq))

    def flush(self) -> None:
        assert self.pub is not None and self.pub.flush(15), "the broker did not acknowledge every message"


def _seed(db_url: str) -> str:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        reg = Registry(engine)
        now = datetime.now(UTC)
        reg.upsert_regions(REGIONS, now=now)
        reg.add_devices(DEVICES, now=now)
        create_user(engine, "duty", "operator", "gz", now, password=PASSWORD)
        return create_user(engine, "root", "admin", None, now)
    finally:
        engine.dispose()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """``lianfang serve`` on free ports over a seeded registry; the simulator's account publishes for devices."""
    api_port, mqtt_port, device_port = free_ports(3)  # the devices' listener given: mqtt.port + 1 may be taken
    db_url = f"sqlite:///{tmp_path}/registry.db"
    admin_token = _seed(db_url)
    env = dict(os.environ)
    env.update(
        {
            "LIANFANG_DATA_DIR": str(tmp_path),
            "LIANFANG_DATABASE_URL": db_url,
            "LIANFANG_STORE__SQLITE_PATH": str(tmp_path / "telemetry.db"),
            "LIANFANG_MQTT__PORT": str(mqtt_port),
            "LIANFANG_MQTT__DEVICE_PORT": str(device_port),
            "LIANFANG_MQTT__BROKER_DIR": str(tmp_path / "mosquitto"),
            "LIANFANG_API__PORT": str(api_port),
        }
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "lianfang", "serve"], env=env, stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{api_port}"
    s = Stack(url, mqtt_port, tmp_path, admin_token)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                r = httpx.get(f"{url}/api/v1/health/ready", timeout=2)
            except httpx.HTTPError:
                return False
            return r.json().get("checks", {}).get("ingest", {}).get("connected") is True

        wait_until(ready, 90, 0.3, "lianfang serve ready")
        secrets = json.loads((tmp_path / "broker-secrets.json").read_text(encoding="utf-8"))
        s.pub = SharedPublisher("127.0.0.1", mqtt_port, "lianfang-sim", secrets["sim"])
        s.pub.start()
        yield s
    finally:
        if s.pub is not None:
            s.pub.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _history(s: Stack) -> None:
    """Half an hour of the meter's readings, the vehicle's trip, the gate's heartbeat: what the views draw."""
    now = _now_ms()
    for i in range(30, 0, -1):
        ts = now - i * 60_000
        s.publish(METER, "telemetry", {"energy_kwh": 1000.0 + (30 - i) * 0.8, "power_kw": 40.0 + (i % 7) * 3.5}, ts)
        lat, lon = 23.1291 + (30 - i) * 0.00015, 113.2644 + (30 - i) * 0.00022
        s.publish(CAR, "telemetry", {"lat": lat, "lon": lon, "speed_kmh": 32.0, "ignition": True}, ts)
    s.publish(METER, "telemetry", {"energy_kwh": 1025.0, "power_kw": 48.5})
    s.publish(CAR, "telemetry", {"lat": 23.1336, "lon": 113.2710, "speed_kmh": 28.0, "ignition": True})
    s.publish(GATE, "telemetry", {"door_open": False, "occupancy": 2})
    s.flush()


class Shots:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.extra = Path(os.environ["LIANFANG_SCREENSHOTS"]) if os.environ.get("LIANFANG_SCREENSHOTS") else None
        self.taken: list[Path] = []

    def take(self, page: Any, name: str) -> None:
        path = self.tmp / f"{name}.png"
        page.screenshot(path=str(path))
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
        self.taken.append(path)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)


def test_operator_logs_in_sees_an_alert_arrive_live_acks_it_silences_and_opens_the_views(
    stack: Stack, tmp_path: Path
) -> None:
    _history(stack)
    wait_until(lambda: stack.api(f"/devices/{CAR}")["online"], 20, 0.3, "the vehicle's readings stored")
    shots = Shots(tmp_path)
    problems: list[str] = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900}, locale="zh-CN", timezone_id="UTC")
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            _run(page, stack, shots)
        finally:
            browser.close()
    assert not [p for p in problems if "Content Security Policy" in p or "page error" in p], problems
    assert not [p for p in problems if "request failed" in p and "/api/v1/stream" not in p], problems
    assert {p.name for p in shots.taken} >= {
        "control-room.png",
        "device-view.png",
        "map.png",
        "silences.png",
        "rules.png",
    }


def _run(page: Any, s: Stack, shots: Shots) -> None:
    expect = playwright_api.expect
    page.goto(s.url + "/")
    # --- log in through the form ------------------------------------------------------------------------------
    expect(page.locator("#login-dialog")).to_be_visible(timeout=15_000)
    page.fill("#login-name", "duty")
    page.fill("#login-password", "wrong-password-1")
    page.click('#login-form button[type="submit"]')
    expect(page.locator("#login-error")).to_contain_text("登录失败", timeout=10_000)
    page.fill("#login-password", PASSWORD)
    page.click('#login-form button[type="submit"]')
    expect(page.locator("#login-dialog")).to_be_hidden(timeout=10_000)
    expect(page.locator("#user")).to_contain_text("duty · 值班员", timeout=15_000)
    expect(page.locator("#h-stream")).to_have_class(re.compile(r"\bok\b"), timeout=15_000)
    # the operator's views: no audit, no users (those are the officers')
    expect(page.locator('#tabs [data-view="audit"]')).to_be_hidden()
    expect(page.locator('#tabs [data-view="users"]')).to_be_hidden()

    # --- the overview tiles: the fleet of the operator's scope -------------------------------------------------
    expect(page.locator('#kpi-dev-body [data-type="energy_meter"] b')).to_have_text("1 / 1", timeout=20_000)
    expect(page.locator('#kpi-dev-body [data-type="vehicle"] b')).to_have_text("1 / 1")
    expect(page.locator("#kpi-veh")).to_have_text("1 / 1")
    expect(page.locator("#kpi-en-today")).to_contain_text("kWh")
    expect(page.locator('#kpi-al-body [data-severity="critical"] b')).to_have_text("0")
    expect(page.locator(f'#alerts li.al:has-text("{GATE}")')).to_have_count(0)  # (the car may be out after hours)

    # --- a device publishes: the alert arrives live, the tiles follow ------------------------------------------
    s.publish(GATE, "event", {"type": "tamper"})
    s.flush()
    alert = page.locator(f'#alerts li.al:has-text("{GATE}")')
    expect(alert).to_be_visible(timeout=20_000)
    expect(alert).to_contain_text("门禁设备被破坏")
    expect(alert.locator(".sev")).to_have_text("紧急")
    expect(page.locator('#kpi-al-body [data-severity="critical"] b')).to_have_text("1", timeout=20_000)
    alert_id = int(alert.get_attribute("data-id") or 0)
    assert alert_id > 0
    shots.take(page, "control-room")

    # --- acknowledge it with a reason ---------------------------------------------------------------------------
    alert.locator('button[data-act="ack"]').click()
    expect(page.locator("#act-dialog")).to_be_visible()
    expect(page.locator("#act-title")).to_have_text("确认告警")
    page.fill("#act-reason", REASON_ACK)
    page.click("#act-ok")
    expect(page.locator("#al-msg")).to_contain_text(f"已确认告警 #{alert_id}", timeout=10_000)
    expect(alert.locator(".tag.acked")).to_be_visible(timeout=10_000)
    stored = s.api(f"/alerts/{alert_id}")
    assert stored["state"] == "acknowledged" and stored["acknowledged_by"] == "duty"
    assert stored["ack_reason"] == REASON_ACK

    # --- a silence for the device, from the alert's drawer, with its reason -------------------------------------
    alert.click()
    drawer = page.locator("#al-drawer")
    expect(drawer).to_be_visible()
    expect(page.locator("#dr-kv")).to_contain_text(GATE)
    drawer.locator('button[data-act="silence"]').click()
    expect(page.locator("#form-dialog")).to_be_visible()
    expect(page.locator("#fd-device_id")).to_have_value(GATE)
    page.click("#fd-ok")  # without a reason: the page asks for it
    expect(page.locator("#fd-msg")).to_contain_text("请填写", timeout=5_000)
    page.fill("#fd-hours", "2")
    page.fill("#fd-reason", REASON_SILENCE)
    page.click("#fd-ok")
    expect(page.locator("#form-dialog")).to_be_hidden(timeout=10_000)
    silences = s.api("/silences")["items"]
    assert [(x["device_id"], x["reason"], x["creator"]) for x in silences] == [(GATE, REASON_SILENCE, "duty")]
    # a comment and an assignment, each through its form, on the alert's timeline
    drawer.locator('button[data-act="comment"]').click()
    page.fill("#fd-text", "读卡器外壳被撬，已通知维修")
    page.click("#fd-ok")
    expect(page.locator("#dr-timeline")).to_contain_text("读卡器外壳被撬", timeout=10_000)
    drawer.locator('button[data-act="assign"]').click()
    page.fill("#fd-assignee", "zhang.wei")
    page.click("#fd-ok")
    expect(page.locator("#dr-kv")).to_contain_text("zhang.wei", timeout=10_000)
    assert s.api(f"/alerts/{alert_id}")["assignee"] == "zhang.wei"
    page.click("#dr-close")
    page.click('#tabs [data-view="silences"]')
    row = page.locator(f'#si-body tr[data-id="{silences[0]["id"]}"]')
    expect(row).to_contain_text(REASON_SILENCE, timeout=10_000)
    expect(row).to_contain_text(GATE)
    expect(row.locator('button[data-act="silence-end"]')).to_be_visible()
    shots.take(page, "silences")
    row.locator('button[data-act="silence-end"]').click()
    page.fill("#fd-reason", "检修提前完成")  # ending early needs a reason (audited)
    page.click("#fd-ok")
    expect(page.locator("#si-msg")).to_contain_text(f"已结束静默 #{silences[0]['id']}", timeout=10_000)
    expect(row).to_have_count(0)  # the list shows active silences; the ended one is in "all"
    page.select_option("#si-active", "false")
    expect(row).to_have_class(re.compile(r"\bended\b"), timeout=10_000)
    assert s.api("/silences", active="false")["items"][0]["ended"] is True

    # --- the meter's device view: its chart over the last hour and its alerts -----------------------------------
    page.click('#tabs [data-view="monitor"]')
    page.click(f'#dev-body tr[data-id="{METER}"]')
    expect(page.locator("#v-device")).to_be_visible()
    expect(page.locator("#dv-id")).to_have_text(METER, timeout=10_000)
    expect(page.locator("#dv-kv")).to_contain_text("总表")
    expect(page.locator("#dv-field")).to_have_value("power_kw")
    page.select_option("#dv-range", "1")
    chart = page.locator("#dv-chart")
    expect(chart).to_have_attribute("data-range", "1", timeout=10_000)  # the last hour: raw points
    expect(chart.locator("canvas")).to_be_visible(timeout=10_000)
    expect(chart.locator(".u-legend")).to_contain_text("power_kw")
    assert int(chart.get_attribute("data-points") or 0) >= 30
    expect(page.locator("#dv-alerts")).to_contain_text("该设备没有告警")
    shots.take(page, "device-view")

    # --- the vehicle map: regions from their coordinates, the vehicle at its last position, its trip ------------
    page.click('#tabs [data-view="map"]')
    car = page.locator(f'#map .veh[data-id="{CAR}"]')
    expect(car).to_be_visible(timeout=15_000)
    expect(car).to_have_class(re.compile(r"\bin-use\b"))
    expect(page.locator('#map .rg[data-id="gz-b2"]')).to_contain_text("市府二号楼")
    expect(page.locator("#map-tiles")).to_contain_text("无")  # no tile server configured: nothing fetched
    car.click()
    expect(page.locator("#map path.trip")).to_be_visible(timeout=15_000)
    expect(page.locator("#map-legend")).to_contain_text(CAR)
    shots.take(page, "map")

    # --- a rule override for the operator's region: severity tuned (switching off is for admins only) -----------
    page.click('#tabs [data-view="rules"]')
    page.locator('#ru-list li[data-id="G11.tamper"]').click()
    expect(page.locator("#ru-title")).to_contain_text("G11.tamper", timeout=10_000)
    page.locator('#ru-actions button[data-act="override-new"]').click()
    assert page.locator("#fd-enabled option").all_inner_texts() == ["继承", "是"]  # no "off" for an operator
    page.select_option("#fd-region", "gz-b1")
    page.select_option("#fd-severity", "major")
    page.fill("#fd-reason", "门禁误报较多，调高级别")  # an override edit needs a reason (audited)
    page.click("#fd-ok")
    expect(page.locator("#ru-ov")).to_contain_text("市府一号楼", timeout=10_000)
    expect(page.locator("#ru-ov")).to_contain_text("重要")
    rule = s.api("/rules/G11.tamper")
    assert [(o["region"], o["severity"], o["created_by"]) for o in rule["overrides"] if o["source"] == "api"] == [
        ("gz-b1", "major", "duty")
    ]
    shots.take(page, "rules")

    # --- the reports view: the data coverage report of the operator's city, its CSV ----------------------------
    page.click('#tabs [data-view="reports"]')
    page.select_option("#rp-region", "gz")
    page.fill("#rp-period", "7d")
    page.click("#rp-build")
    expect(page.locator("#rp-title")).to_contain_text("数据覆盖与质量报告", timeout=30_000)
    expect(page.locator("#rp-summary")).to_contain_text("应报设备")
    expect(page.locator("#rp-tables table").first).to_contain_text("gz")
    with page.expect_download() as download:
        page.click("#rp-csv")
    name = download.value.suggested_filename
    assert name.startswith("coverage-gz-") and name.endswith(".csv"), name
    shots.take(page, "reports")

    # --- English, the same view --------------------------------------------------------------------------------
    page.click("#lang")
    expect(page.locator('#tabs [data-view="map"]')).to_have_text("Vehicle map")
    expect(page.locator("#kpi-vehicles h3")).to_have_text("Vehicles in use")
    time.sleep(0.2)
