"""The control-room page: served at /, nothing from the internet, both languages complete, renders in Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import Api, Gateway

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_is_served_in_chinese_with_a_strict_csp(api: Api) -> None:
    r = api.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN">' in r.text
    assert "<title>联防监控中心</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for asset in re.findall(r'(?:src|href)="([^"]+)"', r.text):
        assert asset.startswith("/static/"), asset
        assert api.client.get(asset).status_code == 200, asset


def test_no_asset_comes_from_the_internet() -> None:
    files = sorted(STATIC.iterdir())
    assert {f.name for f in files} >= {"index.html", "app.js", "app.css"}
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{f.name} references a remote URL"
        assert "@import" not in text and "//cdn" not in text, f.name


def test_every_page_string_exists_in_both_languages() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    zh_block = js[js.index("zh: {") : js.index("en: {")]
    en_block = js[js.index("en: {") : js.index("const CRITICAL")]
    keys = set(re.findall(r'data-i18n="([^"]+)"', html))
    keys |= set(re.findall(r'\bt\("([a-zA-Z]+)"', js))
    keys |= {f"rs_{r}" for r in ("not_json", "schema", "bad_timestamp", "unregistered_device", "forged_identity")}
    assert len(keys) > 30
    for key in sorted(keys):
        assert re.search(rf"\b{key}:", zh_block), f"{key} missing in zh"
        assert re.search(rf"\b{key}:", en_block), f"{key} missing in en"


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium fonts-wqy-microhei)")
def test_page_renders_in_headless_chromium_with_a_token(gateway: Gateway, served: str, tmp_path: Path) -> None:
    url = f"{served}/#token={gateway.tokens['gz']}"
    dom = _chromium("--dump-dom", url).stdout
    assert re.search(r'<h1 id="title"[^>]*>联防监控中心</h1>', dom)
    # the token from the URL was used: the Guangzhou operator's devices and regions are on the page, nothing else
    assert 'data-id="meter-gz-0001"' in dom and 'data-id="gate-gz-0002"' in dom
    assert "sz-0001" not in dom and "深圳" not in dom
    assert "广州市" in dom and "强行开门" in dom and "字段不合规" in dom
    assert "gz-duty" in dom  # the stream's hello arrived

    shot = tmp_path / "control-room.png"
    _chromium("--window-size=1600,900", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("LIANFANG_SCREENSHOT_TO"):
        shutil.copy(shot, os.environ["LIANFANG_SCREENSHOT_TO"])
