"""The page's role-bound views in headless Chromium (Playwright, Debian's chromium): the three officers' screens
(users for the system and security administrators, the audit log for the auditor), a viewer who is offered no
action, and the map with an operator-configured tile server. The gateway runs on a real uvicorn server over the
seeded registry and store (tests/gateway/conftest.py); the full stack with a broker is tests/e2e/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import create_user
from tests.gateway.conftest import NOW, Gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _open(browser: Any, url: str, token: str, problems: list[str]) -> Any:
    page = browser.new_page(viewport={"width": 1500, "height": 900}, accept_downloads=True)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(f"{url}/#token={token}")
    return page


def test_officers_manage_users_and_read_verify_and_export_the_audit(
    gateway: Gateway, served: str, browser: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    engine = gateway.ctx.registry.engine
    sys_token = create_user(engine, "sys-li", "sysadmin", None, NOW)
    sec_token = create_user(engine, "sec-wang", "secadmin", None, NOW)
    aud_token = create_user(engine, "aud-zhao", "auditor", None, NOW)
    problems: list[str] = []

    # the system administrator creates a user (a viewer; no role choice: that is the security administrator's)
    page = _open(browser, served, sys_token, problems)
    expect(page.locator("#user")).to_contain_text("系统管理员", timeout=15_000)
    expect(page.locator('#tabs [data-view="audit"]')).to_be_hidden()
    page.click('#tabs [data-view="users"]')
    expect(page.locator('#us-body tr[data-name="gz-duty"]')).to_be_visible(timeout=10_000)
    expect(page.locator('#us-body tr[data-name="gz-duty"] button[data-act="user-role"]')).to_have_count(0)
    page.click("#us-new")
    page.fill("#fd-name", "new-guard")
    page.fill("#fd-password", "a-long-password-123")
    page.select_option("#fd-region_id", "gz-b1")
    page.click("#fd-ok")
    row = page.locator('#us-body tr[data-name="new-guard"]')
    expect(row).to_contain_text("查看员", timeout=10_000)
    expect(row).to_contain_text("一号办公楼")
    page.close()

    # the security administrator makes them an operator of Guangzhou
    page = _open(browser, served, sec_token, problems)
    page.click('#tabs [data-view="users"]')
    expect(page.locator("#us-new")).to_be_hidden()
    page.locator('#us-body tr[data-name="new-guard"] button[data-act="user-role"]').click()
    page.select_option("#fd-role", "operator")
    page.select_option("#fd-region_id", "gz")
    page.click("#fd-ok")
    row = page.locator('#us-body tr[data-name="new-guard"]')
    expect(row).to_contain_text("值班员", timeout=10_000)
    expect(row).to_contain_text("广州市")
    page.close()

    # the auditor reads both changes, filters, verifies the chain and exports it; changes nothing
    page = _open(browser, served, aud_token, problems)
    expect(page.locator('#tabs [data-view="audit"]')).to_be_visible(timeout=15_000)
    page.click('#tabs [data-view="users"]')
    expect(page.locator('#us-body tr[data-name="new-guard"]')).to_be_visible(timeout=10_000)
    expect(page.locator("#us-body button")).to_have_count(0)
    page.click('#tabs [data-view="audit"]')
    body = page.locator("#au-body")
    expect(body).to_contain_text("user.create", timeout=10_000)
    expect(body).to_contain_text("new-guard")
    page.fill("#au-actor", "sec-wang")
    page.click('#au-filter button[type="submit"]')
    expect(body.locator("tr")).not_to_have_count(0, timeout=10_000)
    # the filtered page replaces the unfiltered one: wait for it before reading every row
    expect(body.locator("tr td:nth-child(3)").first).to_contain_text("sec-wang", timeout=10_000)
    for actor in body.locator("tr td:nth-child(3)").all_inner_texts():
        assert "sec-wang" in actor, actor
    page.click("#au-verify")
    expect(page.locator("#au-msg")).to_contain_text("哈希链完好", timeout=10_000)
    with page.expect_download() as download:
        page.click("#au-export")
    saved = tmp_path / "audit.csv"
    download.value.save_as(saved)
    text = saved.read_text(encoding="utf-8")
    assert "sec-wang" in text and "new-guard" in text and "user.create" not in text  # the filter applies
    page.screenshot(path=str(tmp_path / "audit.png"))
    page.close()
    assert not [p for p in problems if "Content Security Policy" in p or "page error" in p], problems


def test_a_viewer_is_offered_no_action_and_the_map_uses_the_configured_tile_server(
    gateway: Gateway, served: str, browser: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    # the tile server of the bureau's own network; here the gateway itself serves a stand-in image
    gateway.ctx.settings.api.map_tile_url = served + "/static/favicon.svg?z={z}&x={x}&y={y}"
    problems: list[str] = []
    page = _open(browser, served, gateway.tokens["sz"], problems)
    expect(page.locator("#user")).to_contain_text("查看员", timeout=15_000)
    for view in ("audit", "users"):
        expect(page.locator(f'#tabs [data-view="{view}"]')).to_be_hidden()
    page.click('#tabs [data-view="silences"]')
    expect(page.locator("#si-new")).to_be_hidden()
    page.click('#tabs [data-view="map"]')
    car = page.locator('#map .veh[data-id="car-sz-0001"]')
    expect(car).to_be_visible(timeout=15_000)
    expect(car).to_have_class(re.compile(r"\boff\b"))  # announced offline
    expect(page.locator("#map-tiles")).to_contain_text("瓦片")
    tiles = page.locator("#map image")
    expect(tiles).not_to_have_count(0)
    assert all(
        h.startswith(served + "/static/favicon.svg?z=")
        for h in tiles.evaluate_all("l => l.map(e => e.getAttribute('href'))")
    )
    # the device view from the device list: the viewer sees the car's state, no silence button
    page.click('#tabs [data-view="monitor"]')
    page.click('#dev-body tr[data-id="car-sz-0001"]')
    expect(page.locator("#dv-id")).to_have_text("car-sz-0001", timeout=10_000)
    expect(page.locator("#dv-kv")).to_contain_text("粤B00001")
    expect(page.locator('#dv-actions button[data-act="silence-device"]')).to_have_count(0)
    page.close()
    assert not [p for p in problems if "Content Security Policy" in p or "page error" in p], problems
