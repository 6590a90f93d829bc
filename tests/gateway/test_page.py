"""The control-room page: served at /, nothing from the internet, both languages complete, renders in Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from fastapi.testclient import TestClient

from alerts.rules import PACKS_DIR, RuleSet
from alerts.service import AlertService, regions_from_registry
from alerts.types import AlertState, Severity
from core.protocol import Event
from devices.broker import free_port
from devices.registry import RegionSpec
from gateway.app import create_app
from tests.gateway.conftest import NOW, NOW_MS, Api, Gateway
from tests.helpers import wait_until

STATIC = Path(__file__).resolve().parents[2] / "gateway" / "static"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")


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
    files = sorted(f for f in STATIC.rglob("*") if f.is_file())
    assert {f.name for f in files} >= {"index.html", "app.js", "app.css", "uPlot.iife.min.js", "LICENSE"}
    for f in files:
        if f.name in ("LICENSE", "SHA256SUMS"):
            continue
        # An XML namespace (the favicon's xmlns) names a vocabulary; nothing is fetched from it. The vendored
        # chart library names its home page in its header comment (the licence's attribution), nothing else.
        text = f.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
        text = text.replace("/*! https://github.com/leeoniya/uPlot (v1.6.32) */", "")
        assert not re.search(r"https?://", text), f"{f.name} references a remote URL"
        assert "@import" not in text and "//cdn" not in text, f.name


def test_the_vendored_chart_library_is_the_pinned_one_with_its_licence() -> None:
    vendor = STATIC / "vendor"
    assert "MIT License" in (vendor / "LICENSE").read_text(encoding="utf-8")
    for line in (vendor / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, name = line.split()
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    makefile = (STATIC.parents[1] / "Makefile").read_text(encoding="utf-8")
    assert "UPLOT_VERSION := 1.6.32" in makefile and "vendor" in makefile.split("setup:", 1)[1].splitlines()[0]


def test_every_page_string_exists_in_both_languages() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    views = (STATIC / "views.js").read_text(encoding="utf-8")
    zh_block = js[js.index("zh: {") : js.index("en: {")]
    en_block = js[js.index("en: {") : js.index("const CRITICAL")]
    keys = set(re.findall(r'data-i18n(?:-ph)?="([^"]+)"', html))
    for code in (js, views):
        keys |= set(re.findall(r'\bt\("([a-zA-Z_]*[a-zA-Z])"', code))
        # t(cond ? "a" : "b"): both
        for a, b in re.findall(r'\bt\([^()"]*\? "([a-zA-Z_]+)" : "([a-zA-Z_]+)"\)', code):
            keys |= {a, b}
    keys |= {f"role_{r}" for r in ("viewer", "operator", "admin", "sysadmin", "secadmin", "auditor")}
    keys |= {f"type_{d}" for d in ("gate", "vehicle", "energy_meter", "sensor")}
    keys |= {f"rs_{r}" for r in ("not_json", "schema", "bad_timestamp", "unregistered_device", "forged_identity")}
    # keys built at run time: severities, alert states, timeline entry kinds, the two actions
    keys |= {f"sev_{s}" for s in Severity} | {f"st_{s}" for s in AlertState}
    keys |= {f"tl_{k}" for k in ("created", "ack", "resolve", "assign", "comment")} | {"ack", "resolve"}
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


def test_page_polls_the_alerts_endpoint_and_acts_on_alerts() -> None:
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert 'api("/alerts?"' in js and 'state: "open"' in js  # the open alerts list
    assert 'api("/alerts/" + encodeURIComponent(id))' in js  # one alert with its timeline
    assert '"/alerts/" + act.alert.id + "/" + act.kind' in js and 'method: "POST"' in js  # ack / resolve
    for status in (403, 409, 422):
        assert f"status === {status}" in js, status
    assert 'id="alerts"' in html and 'id="al-drawer"' in html and 'id="act-dialog"' in html
    # the alerts panel is the top of the right column, above the live feed
    side = html[html.index('class="panel side"') :]
    assert side.index('id="alerts"') < side.index('data-i18n="liveFeed"')
    # CSP 'self': no inline script or style anywhere in the page
    assert "<style" not in html and " style=" not in html and "<script>" not in html
    assert re.findall(r"<script[^>]*>", html) == [
        '<script src="/static/vendor/uPlot.iife.min.js" defer>',
        '<script src="/static/app.js" defer>',
        '<script src="/static/views.js" defer>',
        '<script src="/static/reports.js" defer>',
    ]


@pytest.fixture
def firing(gateway: Gateway) -> int:
    """A real AlertService on the gateway's registry with one firing alert (a tampered gate in Guangzhou)."""
    reg = gateway.ctx.registry
    svc = AlertService(
        reg.engine, RuleSet.load([PACKS_DIR]), reg.snapshot, regions_from_registry(reg), clock_fn=lambda: NOW
    )
    svc.load(now=NOW)
    svc.process([Event("gate-gz-0001", "gz-b1", "gate", NOW_MS - 60_000, 1, "tamper", {})], now=NOW)
    gateway.ctx.alerts = svc
    [alert] = [a for a in svc.book.alerts.values() if a.open]
    return alert.id


def _between(dom: str, start: str, end: str) -> str:
    i = dom.index(start)
    return dom[i : dom.index(end, i)]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium fonts-wqy-microhei)")
def test_alerts_panel_renders_a_firing_alert_in_headless_chromium(
    gateway: Gateway, firing: int, served: str, tmp_path: Path
) -> None:
    url = f"{served}/#token={gateway.tokens['gz']}"
    dom = _chromium("--dump-dom", url).stdout
    panel = _between(dom, 'id="alerts"', "</ul>")
    assert "门禁设备被破坏" in panel  # the rule's title_zh
    assert f'data-id="{firing}"' in panel and "sev-critical" in panel and "st-firing" in panel
    assert "gate-gz-0001" in panel and "一号办公楼" in panel  # device and region name from the tree
    assert ">紧急<" in panel and ">确认<" in panel and ">解决<" in panel
    badges = _between(dom, 'id="al-badges"', "</div>")
    assert re.search(r"紧急</span><b>1</b>", badges) and re.search(r"重要</span><b>0</b>", badges)
    assert re.search(r'id="al-total"[^>]*>1<', dom)
    # a Shenzhen viewer does not see the Guangzhou alert
    sz_dom = _chromium("--dump-dom", f"{served}/#token={gateway.tokens['sz']}").stdout
    assert "门禁设备被破坏" not in sz_dom and "当前无未处理告警" in _between(sz_dom, 'id="alerts"', "</ul>")

    shot = tmp_path / "alerts-panel.png"
    _chromium("--window-size=1600,900", f"--screenshot={shot}", url)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("LIANFANG_ALERTS_SCREENSHOT_TO"):
        shutil.copy(shot, os.environ["LIANFANG_ALERTS_SCREENSHOT_TO"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium fonts-wqy-microhei)")
def test_alert_link_opens_the_drawer_with_the_timeline(gateway: Gateway, firing: int, served: str) -> None:
    svc = gateway.ctx.alerts
    assert isinstance(svc, AlertService)
    svc.acknowledge(firing, "gz-duty", "保安已前往现场")
    url = f"{served}/#token={gateway.tokens['gz']}&alert={firing}"
    dom = _chromium("--dump-dom", url).stdout
    if os.environ.get("LIANFANG_DRAWER_SCREENSHOT_TO"):
        _chromium("--window-size=1600,900", f"--screenshot={os.environ['LIANFANG_DRAWER_SCREENSHOT_TO']}", url)
    drawer = _between(dom, 'id="al-drawer"', "</aside>")
    assert "hidden" not in drawer[: drawer.index(">")]  # the drawer is open
    assert (
        "门禁设备被破坏" in drawer and "G11.tamper" in drawer and "广州市 / 广州市机关事务管理局 / 一号办公楼" in drawer
    )
    timeline = _between(drawer, 'id="dr-timeline"', "</ol>")
    assert re.search(r"告警产生.*确认.*gz-duty.*保安已前往现场", timeline)
    assert ">确认<" not in _between(drawer, 'id="dr-actions"', 'id="dr-msg"')  # acknowledged: only 解决 is left
    assert ">解决<" in drawer
    panel = _between(dom, 'id="alerts"', "</ul>")
    assert "st-acknowledged" in panel and "已确认" in panel


def _page_messages(answers: list[tuple[int, Any]], lang: str) -> list[str]:
    """Run the page's own ``actionError`` (app.js, under node with a stub DOM) on real API answers."""
    assert NODE is not None
    lang_js = json.dumps(lang)
    stub = (
        f"globalThis.localStorage = {{getItem: (k) => (k === 'lianfang.lang' ? {lang_js} : null), setItem() {{}}}};"
        "globalThis.document = {addEventListener() {}};"
    )
    probe = f"\nconsole.log(JSON.stringify({json.dumps(answers)}.map(([s, b]) => actionError(s, b))));"
    js = stub + (STATIC / "app.js").read_text(encoding="utf-8") + probe
    out = subprocess.run([NODE, "-e", js], capture_output=True, text=True, timeout=30, check=True).stdout
    result: list[str] = json.loads(out)
    return result


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_action_errors_from_the_api_are_shown_clearly(gateway: Gateway, firing: int) -> None:
    with TestClient(create_app(gateway.ctx)) as client:

        def post(user: str, action: str, reason: str) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {gateway.tokens[user]}"}
            r = client.post(f"/api/v1/alerts/{firing}/{action}", json={"reason": reason}, headers=headers)
            return r.status_code, r.json()

        answers = [
            post("gzb1", "ack", "x"),  # viewer: 403
            post("sz", "ack", "x"),  # another city's viewer: 403 as well (role is checked first)
            post("gz", "resolve", " "),  # blank reason: 422
        ]
        assert post("gz", "ack", "保安已到场")[0] == 200
        answers.append(post("admin", "ack", "again"))  # 409 already acknowledged
        assert post("gz", "resolve", "误报")[0] == 200
        answers.append(post("gz", "resolve", "again"))  # 409 not open
    assert [a[0] for a in answers] == [403, 403, 422, 409, 409]
    zh = _page_messages(answers, "zh")
    assert zh[0] == zh[1] == "无权操作：只读（查看员）账号不能确认或解决告警。"
    assert zh[2].startswith("输入无效：reason:")
    assert zh[3] == "该告警已被 gz-duty 确认，无需重复确认。"
    assert zh[4] == "该告警已解决或已关闭，无法再操作。"
    en = _page_messages(answers, "en")
    assert en[0].startswith("Not allowed") and en[3] == "Already acknowledged by gz-duty."
    assert _page_messages([(0, None), (503, {"detail": "alerts not running"})], "zh") == [
        "无法连接服务器，请检查网络后重试。",
        "告警服务暂不可用，请稍后重试。",
    ]


# --- the page in a real browser, driven over the DevTools protocol -------------------------------------------

# Node (with its WebSocket client) speaks the DevTools protocol to a headless Chromium: opens the URL, then for each
# step evaluates a JavaScript expression in the page until it gives a truthy value (or the deadline passes: null),
# and prints the values as JSON. Runtime.evaluate is the DevTools' own, so the page's CSP stays as strict as ever.
_CDP_JS = r"""
const [port, url, stepsJson, timeoutMs] = process.argv.slice(1);
const steps = JSON.parse(stepsJson);
(async () => {
  const target = await (await fetch(`http://127.0.0.1:${port}/json/new?about:blank`, { method: "PUT" })).json();
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  const pending = new Map();
  let id = 0;
  ws.onmessage = (m) => {
    const d = JSON.parse(m.data);
    if (d.id && pending.has(d.id)) { pending.get(d.id)(d); pending.delete(d.id); }
  };
  await new Promise((res) => { ws.onopen = res; });
  const send = (method, params) => new Promise((res) => {
    id += 1;
    pending.set(id, res);
    ws.send(JSON.stringify({ id, method, params }));
  });
  await send("Page.navigate", { url });  // (a URL in /json/new would lose its #fragment, where the token is)
  const out = [];
  for (const expression of steps) {
    const deadline = Date.now() + Number(timeoutMs);
    let value = null;
    for (;;) {
      const d = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
      value = d.result && d.result.result ? d.result.result.value : null;
      if (value || Date.now() > deadline) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    out.push(value === undefined ? null : value);
  }
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
"""


def _in_browser(url: str, steps: list[str], tmp_path: Path, timeout_s: float = 15) -> list[Any]:
    """Open ``url`` in a headless Chromium (1600 x 900) and run ``steps`` (see _CDP_JS); their values."""
    assert CHROMIUM is not None and NODE is not None
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1600,900",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/json/version", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, interval=0.2, what="chromium's DevTools endpoint")
        run = subprocess.run(
            [
                NODE,
                "--experimental-websocket",
                "--no-warnings",
                "-e",
                _CDP_JS,
                str(port),
                url,
                json.dumps(steps),
                str(int(timeout_s * 1000)),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s * len(steps) + 30,
            check=True,
        )
        values: list[Any] = json.loads(run.stdout)
        return values
    finally:
        proc.terminate()
        proc.wait(10)


BROWSER = pytest.mark.skipif(CHROMIUM is None or NODE is None, reason="needs chromium and node")
LONG_NAME = "广州市机关事务管理局第二综合办公楼东区附属服务中心大楼"


def test_me_says_who_the_caller_is_and_whether_they_may_act_on_alerts(api: Api) -> None:
    me = api.get("/api/v1/me", "gz").json()
    assert {k: v for k, v in me.items() if k != "actions"} == {
        "name": "gz-duty",
        "role": "operator",
        "region_id": "gz",
        "can_act_on_alerts": True,
    }
    assert "alerts.ack" in me["actions"] and "devices.write" not in me["actions"]
    viewer = api.get("/api/v1/me", "gzb1").json()
    assert viewer["role"] == "viewer" and viewer["can_act_on_alerts"] is False and viewer["region_id"] == "gz-b1"
    assert viewer["actions"] == []
    assert api.get("/api/v1/me", "admin").json()["region_id"] is None
    assert api.get("/api/v1/me", None).status_code == 401


@BROWSER
def test_viewers_see_no_ack_or_resolve_buttons_operators_do(
    gateway: Gateway, firing: int, served: str, tmp_path: Path
) -> None:
    panel = (
        "(() => { const li = document.querySelector('#alerts li[data-id]'); const u = document.getElementById('user');"
        " return li && document.body.dataset.role"
        " ? {buttons: [...li.querySelectorAll('button')].map(b => b.textContent), user: u.textContent} : null; })()"
    )
    drawer = (
        "(() => { const t = document.getElementById('dr-title');"
        " if (!t.textContent || document.getElementById('al-drawer').hidden) return null;"
        " return [...document.querySelectorAll('#dr-actions button')].map(b => b.textContent); })()"
    )
    viewer = _in_browser(f"{served}/#token={gateway.tokens['gzb1']}&alert={firing}", [panel, drawer], tmp_path)
    assert viewer[0] == {"buttons": [], "user": "gz-b1-guard · 查看员"}  # the alert is listed, without actions
    assert viewer[1] == []  # nor in its drawer
    operator = _in_browser(f"{served}/#token={gateway.tokens['gz']}&alert={firing}", [panel, drawer], tmp_path)
    assert operator[0] == {"buttons": ["确认", "解决"], "user": "gz-duty · 值班员"}
    # the drawer adds comment, assign and silence (views.js) for those who may act
    assert operator[1] == ["确认", "解决", "备注", "指派", "静默"]


@BROWSER
def test_region_tree_shows_every_count_in_full(gateway: Gateway, served: str, tmp_path: Path) -> None:
    gateway.ctx.registry.upsert_regions([RegionSpec("gz-b9", LONG_NAME, "building", "gz-jgj")], now=NOW)
    measure = (
        "(() => { const rows = [...document.querySelectorAll('#tree .node')]; if (rows.length < 8) return null;"
        " const panel = document.querySelector('.panel.regions'); const box = panel.getBoundingClientRect();"
        " const right = box.right - parseFloat(getComputedStyle(panel).paddingRight);"
        " return {panelScrolls: panel.scrollWidth > panel.clientWidth, rows: rows.map(r => {"
        " const c = r.querySelector('.cnt'); const b = c.getBoundingClientRect();"
        " return {text: r.textContent, cntRight: b.right, right: right, cut: c.scrollWidth > c.clientWidth + 1,"
        " title: r.querySelector('.name').title}; })}; })()"
    )
    [got] = _in_browser(f"{served}/#token={gateway.tokens['admin']}", [measure], tmp_path)
    assert got is not None, "the tree did not render"
    assert got["panelScrolls"] is False
    for row in got["rows"]:
        assert row["cntRight"] <= row["right"] + 0.5 and not row["cut"], row
    long_row = next(r for r in got["rows"] if "gz-b9" in r["title"])
    assert long_row["title"] == f"{LONG_NAME} (gz-b9)"  # the full name, when the row shows it cut


def test_rejections_can_be_filtered_by_region(api: Api) -> None:
    everything = api.get("/api/v1/rejections").json()
    assert everything["total"] == 5
    b1 = api.get("/api/v1/rejections", region="gz-b1").json()
    assert b1["total"] == 2 and {x["device_id"] for x in b1["items"]} == {"gate-gz-0002"}
    assert b1["counts"] == {"not_json": 1, "schema": 1}
    sz = api.get("/api/v1/rejections", "sz", region="sz").json()
    assert {x["device_id"] for x in sz["items"]} == {"gate-sz-0001"}
    assert api.get("/api/v1/rejections", "sz", region="gz-b1").status_code == 404  # outside the caller's scope
    both = api.get("/api/v1/rejections", region="gz", device="gate-sz-0001").json()
    assert both["items"] == [] and both["total"] == 0


@BROWSER
def test_rejected_messages_panel_follows_the_selected_region(gateway: Gateway, served: str, tmp_path: Path) -> None:
    panel = (
        "(() => { const total = document.getElementById('rej-total').textContent;"
        " const devs = [...document.querySelectorAll('#rej .dev')].map(d => d.textContent);"
        " return total ? {total, devs: [...new Set(devs)].sort()} : null; })()"
    )
    click = (
        "(() => { const n = [...document.querySelectorAll('#tree .node')]"
        ".find(r => r.textContent.includes('一号办公楼'));"
        " if (!n) return null; n.click(); return true; })()"
    )
    selected = (
        "(() => { const total = document.getElementById('rej-total').textContent;"
        " const devs = [...document.querySelectorAll('#rej .dev')].map(d => d.textContent);"
        " return total === '2' ? {total, devs: [...new Set(devs)].sort()} : null; })()"
    )
    before, clicked, after = _in_browser(
        f"{served}/#token={gateway.tokens['admin']}", [panel, click, selected], tmp_path
    )
    assert before == {"total": "5", "devs": ["gate-gz-0002", "gate-sz-0001", "ghost-0001"]}
    assert clicked is True
    assert after == {"total": "2", "devs": ["gate-gz-0002"]}


def test_page_has_a_favicon_so_loading_it_makes_no_404(api: Api) -> None:
    page = api.client.get("/").text
    [href] = re.findall(r'<link rel="icon" href="([^"]+)"', page)
    r = api.client.get(href)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    assert ElementTree.fromstring(r.content).tag == "{http://www.w3.org/2000/svg}svg"


# --- incidents, linkage actions, region risk (joint prevention and control) --------------------------------------


@pytest.fixture
def incidents(gateway: Gateway) -> Any:
    """A real joint service on the gateway's registry with a Guangzhou building incident (a security task, a
    proposed lock), a Guangzhou city incident and a Shenzhen one; the service is where the gateway finds it."""
    from datetime import timedelta

    from joint.models import Incident, IncidentMember, IncidentState, ScopeLevel, Task, TaskState
    from joint.patterns import PatternSet
    from joint.service import JointService, RegionTree

    reg = gateway.ctx.registry
    svc = JointService(
        reg.engine, PatternSet(), RegionTree(reg.regions, reg.snapshot), lambda _r: "", clock_fn=lambda: NOW
    )

    def inc(
        iid: int, region: str, path: tuple[str, ...], level: ScopeLevel, members: list[tuple[int, str, str]]
    ) -> Incident:
        i = Incident(
            iid,
            "X2",
            "intrusion",
            f"入侵事件{iid}",
            f"Intrusion {iid}",
            Severity.CRITICAL,
            IncidentState.OPEN,
            level,
            region,
            f"k{iid}",
            NOW - timedelta(minutes=5),
            NOW,
            path,
        )
        for alert_id, device, r in members:
            i.members[alert_id] = IncidentMember(alert_id, NOW, "G1", device, r)
        return i

    svc.store.save(
        incidents=[
            inc(1, "gz-b1", ("gd", "gz", "gz-jgj", "gz-b1"), ScopeLevel.BUILDING, [(101, "gate-gz-0001", "gz-b1")]),
            inc(
                2,
                "gz",
                ("gd", "gz"),
                ScopeLevel.CITY,
                [(102, "gate-gz-0002", "gz-b1"), (103, "meter-gz-0001", "gz-jgj")],
            ),
            inc(3, "sz-b1", ("gd", "sz", "sz-jgj", "sz-b1"), ScopeLevel.BUILDING, [(104, "gate-sz-0001", "sz-b1")]),
        ],
        tasks=[Task(11, 1, "security", TaskState.OPEN, NOW, NOW + timedelta(minutes=30))],
        now=NOW,
    )
    svc.load()
    gateway.ctx.joint = svc  # type: ignore[attr-defined]
    gateway.ctx.linkage_publish = lambda topic, payload: True  # type: ignore[attr-defined]
    return svc


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium fonts-wqy-microhei)")
def test_incident_board_and_drawer_render_with_buttons_by_role(
    gateway: Gateway, incidents: Any, served: str, tmp_path: Path
) -> None:
    url = f"{served}/#token={gateway.tokens['gz']}&incident=1"
    dom = _chromium("--dump-dom", url).stdout
    board = _between(dom, 'id="incidents"', "</ul>")
    assert 'data-id="1"' in board and 'data-id="2"' in board and 'data-id="3"' not in board
    assert "入侵事件1" in board and "紧急" in board and "待处置" in board
    drawer = _between(dom, 'id="inc-drawer"', "</aside>")
    assert "hidden" not in drawer[: drawer.index(">")], "the incident link opened its drawer"
    assert "入侵事件1 · I1" in drawer and "安保" in drawer and "gate-gz-0001" in drawer
    # An operator: acknowledge, close, task buttons and proposals; confirming is an administrator's.
    for label in ("确认事件", "关闭事件", "确认任务", "完成任务", "建议锁闭门禁"):
        assert f">{label}<" in drawer, label
    assert ">批准执行<" not in drawer
    # A viewer of one building: the city incident is partly visible, and nothing can be changed.
    b1 = _chromium("--dump-dom", f"{served}/#token={gateway.tokens['gzb1']}&incident=2").stdout
    assert "部分可见" in _between(b1, 'id="incidents"', "</ul>")
    d2 = _between(b1, 'id="inc-drawer"', "</aside>")
    assert "仅可查看" in d2 and "另有 1 条不在您的管辖范围内" in d2
    assert ">确认事件<" not in d2 and ">建议锁闭门禁<" not in d2 and "meter-gz-0001" not in d2
    if os.environ.get("LIANFANG_INCIDENT_SCREENSHOT_TO"):
        _chromium("--window-size=1600,900", f"--screenshot={os.environ['LIANFANG_INCIDENT_SCREENSHOT_TO']}", url)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium fonts-wqy-microhei)")
def test_an_admin_sees_the_confirm_button_of_a_proposed_linkage_action(
    gateway: Gateway, incidents: Any, served: str
) -> None:
    r = httpx.post(
        f"{served}/api/v1/incidents/1/actions",
        json={"name": "lock", "device_ids": ["gate-gz-0001"]},
        headers={"Authorization": f"Bearer {gateway.tokens['gz']}"},
    )
    assert r.status_code == 201, r.text
    dom = _chromium("--dump-dom", f"{served}/#token={gateway.tokens['admin']}&incident=1").stdout
    linkage = _between(dom, 'id="inc-linkage"', "</ul>")
    assert "锁闭" in linkage and "待批准" in linkage and ">批准执行<" in linkage and ">拒绝<" in linkage


def test_the_page_reads_incidents_risk_and_shows_the_incident_of_an_alert() -> None:
    js = (STATIC / "app.js").read_text(encoding="utf-8")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert 'api("/incidents?"' in js and 'api("/incidents/" + encodeURIComponent(id))' in js
    assert 'api("/risk")' in js and 'api("/risk/top?' in js
    assert 'event === "incident"' in js  # live through the stream
    assert "a.incident_id" in js and 'id="incidents"' in html and 'id="top-risks"' in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium fonts-wqy-microhei)")
def test_alert_of_an_incident_is_tagged_and_the_tree_is_coloured_by_risk(
    gateway: Gateway, firing: int, served: str
) -> None:
    from joint.models import Incident, IncidentMember, IncidentState, ScopeLevel
    from joint.store import JointStore

    store = JointStore(gateway.ctx.registry.engine)
    inc = Incident(
        5, "X2", "intrusion", "入侵事件5", "Intrusion 5", Severity.CRITICAL, IncidentState.OPEN, ScopeLevel.BUILDING,
        "gz-b1", "k5", NOW, NOW, ("gd", "gz", "gz-jgj", "gz-b1"),
    )  # fmt: skip
    inc.members[firing] = IncidentMember(firing, NOW, "G11.tamper", "gate-gz-0001", "gz-b1")
    store.save(incidents=[inc], now=NOW)
    dom = _chromium("--dump-dom", f"{served}/#token={gateway.tokens['gz']}").stdout
    panel = _between(dom, 'id="alerts"', "</ul>")
    assert re.search(r'class="tag inc-ref"[^>]*>事件 I5<', panel), "the alert shows its incident"
    tree = _between(dom, 'id="tree"', 'id="top-risks"')
    assert re.search(r'class="node[^"]*risk-\d"[^>]*data-id="gz-b1"', tree), "the building is coloured by its risk"
    top = _between(dom, 'id="top-risks"', "</ol>")
    assert "一号办公楼" in top, "the building is among the top risks"


def test_a_tile_server_is_the_one_origin_the_csp_adds_for_images() -> None:
    from core.settings import ApiSettings
    from gateway.views import page_config, page_csp

    assert "img-src 'self' data:;" in page_csp(None)
    url = "http://tiles.bureau.lan:8080/osm/{z}/{x}/{y}.png"
    csp = page_csp(ApiSettings(map_tile_url=url).map_tile_url)
    assert "img-src 'self' data: http://tiles.bureau.lan:8080;" in csp
    assert "connect-src 'self';" in csp and "script-src 'self';" in csp  # images only
    assert page_config(url) == {"map_tile_url": url}
    assert ApiSettings(map_tile_url="").map_tile_url is None
    for bad in (
        "tiles/{z}/{x}/{y}",
        "http://t/{z}/{x}.png",
        "http://t/{z}/{x}/{y}.png; script-src *",
        "ftp://t/{z}/{x}/{y}",
    ):
        with pytest.raises(ValueError):
            ApiSettings(map_tile_url=bad)


def test_the_page_gets_the_tile_server_setting_and_its_csp(api: Api) -> None:
    api.ctx.settings.api.map_tile_url = "https://tiles.gov.lan/{z}/{x}/{y}.png"
    try:
        r = api.client.get("/")
        assert "img-src 'self' data: https://tiles.gov.lan;" in r.headers["content-security-policy"]
        assert api.client.get("/page-config.json").json() == {"map_tile_url": "https://tiles.gov.lan/{z}/{x}/{y}.png"}
    finally:
        api.ctx.settings.api.map_tile_url = None
    assert api.client.get("/page-config.json").json() == {"map_tile_url": None}
