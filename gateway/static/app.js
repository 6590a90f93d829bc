// Lianfang control room: plain JS, no dependencies, nothing loaded from outside this server.
"use strict";

const I18N = {
  zh: {
    title: "联防监控中心",
    subtitle: "物联网监控与联防联控",
    broker: "消息代理", store: "存储", ingest: "接入", stream: "实时流",
    token: "令牌", regions: "区域", devices: "设备", all: "全部", allTypes: "全部类型",
    online: "在线", offline: "离线", disabled: "停用",
    state: "状态", deviceId: "设备编号", name: "名称", type: "类型", region: "区域", lastSeen: "最后上报",
    prev: "上一页", next: "下一页", pageInfo: "第 {from}–{to} 条，共 {total} 条",
    liveFeed: "实时事件", rejections: "拒收消息", never: "从未上报", noData: "暂无数据",
    tokenTitle: "输入访问令牌",
    tokenHelp: "令牌由管理员使用 lianfang users add 创建，仅保存在本浏览器中。",
    save: "保存", wholeTree: "全部区域", agoS: "{n} 秒前", agoM: "{n} 分钟前", agoH: "{n} 小时前", agoD: "{n} 天前",
    statusOnline: "上线", statusOffline: "下线", dropped: "已丢弃 {n} 条（客户端过慢）",
    lvl_province: "省", lvl_city: "市", lvl_agency: "单位", lvl_building: "楼宇",
    type_gate: "门禁", type_vehicle: "公务车辆", type_energy_meter: "电能表", type_sensor: "传感器",
    ev_access: "通行", ev_door_forced: "强行开门", ev_door_held_open: "门长时间未关", ev_door_closed: "门已关闭",
    ev_request_to_exit: "出门请求", ev_tamper: "防拆报警", ev_ignition_on: "点火", ev_ignition_off: "熄火",
    ev_harsh_brake: "急刹车", ev_harsh_accel: "急加速", ev_power_cut: "断电", ev_driver_login: "司机登录",
    ev_power_loss: "失电", ev_power_restore: "恢复供电", ev_reset: "电表清零", ev_fault: "故障", ev_cmd_result: "指令结果",
    rs_not_json: "非 JSON", rs_not_object: "非对象", rs_too_large: "过大", rs_schema: "字段不合规",
    rs_bad_timestamp: "时间戳错误", rs_unknown_event: "未知事件", rs_forged_identity: "伪造身份",
    rs_unregistered_device: "未注册设备", rs_disabled_device: "已停用设备", rs_internal_error: "内部错误",
  },
  en: {
    title: "Lianfang Control Room",
    subtitle: "IoT monitoring and joint risk control",
    broker: "Broker", store: "Store", ingest: "Ingest", stream: "Live",
    token: "Token", regions: "Regions", devices: "Devices", all: "All", allTypes: "All types",
    online: "Online", offline: "Offline", disabled: "Disabled",
    state: "State", deviceId: "Device ID", name: "Name", type: "Type", region: "Region", lastSeen: "Last seen",
    prev: "Prev", next: "Next", pageInfo: "{from}–{to} of {total}",
    liveFeed: "Live events", rejections: "Rejected messages", never: "never", noData: "No data yet",
    tokenTitle: "Enter your API token",
    tokenHelp: "An administrator creates tokens with lianfang users add; it is kept in this browser only.",
    save: "Save", wholeTree: "All regions", agoS: "{n}s ago", agoM: "{n} min ago", agoH: "{n} h ago", agoD: "{n} d ago",
    statusOnline: "came online", statusOffline: "went offline", dropped: "{n} dropped (client too slow)",
    lvl_province: "Prov", lvl_city: "City", lvl_agency: "Agency", lvl_building: "Bldg",
    type_gate: "Gate", type_vehicle: "Vehicle", type_energy_meter: "Energy meter", type_sensor: "Sensor",
    ev_access: "Access", ev_door_forced: "Door forced", ev_door_held_open: "Door held open", ev_door_closed: "Door closed",
    ev_request_to_exit: "Request to exit", ev_tamper: "Tamper", ev_ignition_on: "Ignition on",
    ev_ignition_off: "Ignition off", ev_harsh_brake: "Harsh brake", ev_harsh_accel: "Harsh acceleration",
    ev_power_cut: "Power cut", ev_driver_login: "Driver login", ev_power_loss: "Power loss",
    ev_power_restore: "Power restored", ev_reset: "Meter reset", ev_fault: "Fault", ev_cmd_result: "Command result",
    rs_not_json: "not JSON", rs_not_object: "not an object", rs_too_large: "too large", rs_schema: "schema",
    rs_bad_timestamp: "bad timestamp", rs_unknown_event: "unknown event", rs_forged_identity: "forged identity",
    rs_unregistered_device: "unregistered device", rs_disabled_device: "disabled device",
    rs_internal_error: "internal error",
  },
};
const CRITICAL = new Set(["door_forced", "tamper", "power_cut", "power_loss"]);
const WARNING = new Set(["door_held_open", "harsh_brake", "harsh_accel", "fault"]);
const FEED_MAX = 200;
const PAGE = 50;
const TOKEN_KEY = "lianfang.token";
const LANG_KEY = "lianfang.lang";

const state = {
  lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "zh",
  token: "",
  region: null,
  regionNames: {},
  offset: 0,
  total: 0,
  feedCount: 0,
  streamAbort: null,
  subtree: null,
};

function t(key, vars) {
  let s = (I18N[state.lang] && I18N[state.lang][key]) || I18N.zh[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", String(v));
  return s;
}
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function applyLang() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach((n) => { n.textContent = t(n.dataset.i18n); });
  $("lang").textContent = state.lang === "zh" ? "English" : "中文";
}

function fmtTime(ms) {
  if (ms === null || ms === undefined) return t("never");
  return new Date(ms).toLocaleTimeString(state.lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
}
function ago(ms) {
  if (ms === null || ms === undefined) return t("never");
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return t("agoS", { n: s });
  if (s < 3600) return t("agoM", { n: Math.floor(s / 60) });
  if (s < 86400) return t("agoH", { n: Math.floor(s / 3600) });
  return t("agoD", { n: Math.floor(s / 86400) });
}

// --- token -------------------------------------------------------------------------------------------------

function takeTokenFromHash() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = localStorage.getItem(TOKEN_KEY) || "";
}
function askToken() {
  const d = $("token-dialog");
  if (!d.open) {
    $("token-input").value = "";
    d.showModal();
  }
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const r = await fetch("/api/v1" + path, { headers });
  if (r.status === 401) {
    askToken();
    throw new Unauthorized();
  }
  if (!r.ok && r.status !== 503) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// --- health ------------------------------------------------------------------------------------------------

function setPill(id, ok, title) {
  const p = $(id);
  p.classList.toggle("ok", ok === true);
  p.classList.toggle("bad", ok === false);
  p.title = title || "";
}
async function loadHealth() {
  try {
    const h = await api("/health/ready");
    const c = h.checks || {};
    setPill("h-broker", c.broker && c.broker.ok, JSON.stringify(c.broker || {}));
    setPill("h-store", c.store && c.registry && c.store.ok && c.registry.ok, JSON.stringify({ store: c.store, registry: c.registry }));
    setPill("h-ingest", c.ingest && c.ingest.ok, JSON.stringify(c.ingest || {}));
  } catch (e) {
    for (const id of ["h-broker", "h-store", "h-ingest"]) setPill(id, false, String(e));
  }
}

// --- regions -----------------------------------------------------------------------------------------------

function renderNode(node) {
  const li = el("li");
  const row = el("div", "node" + (state.region === node.id ? " sel" : ""));
  const label = el("span");
  label.append(el("span", "lvl", t("lvl_" + node.level)), el("span", null, node.name));
  const cnt = el("span", "cnt");
  cnt.append(el("span", "on", node.devices.online), "/", el("span", "off", node.devices.offline), "/" + node.devices.total);
  cnt.title = t("online") + " / " + t("offline") + " / " + t("all");
  row.append(label, cnt);
  row.addEventListener("click", () => {
    state.region = state.region === node.id ? null : node.id;
    state.offset = 0;
    refreshAll();
  });
  li.append(row);
  state.regionNames[node.id] = node.name;
  if (node.children && node.children.length) {
    const ul = el("ul");
    node.children.forEach((c) => ul.append(renderNode(c)));
    li.append(ul);
  }
  return li;
}
async function loadRegions() {
  const data = await api("/regions");
  const tree = $("tree");
  tree.replaceChildren();
  const ul = el("ul");
  data.regions.forEach((n) => ul.append(renderNode(n)));
  tree.append(data.regions.length ? ul : el("div", "empty", t("noData")));
  state.subtree = state.region ? collectSubtree(data.regions, state.region, false, new Set()) : null;
}

// --- devices -----------------------------------------------------------------------------------------------

async function loadDevices() {
  const q = new URLSearchParams({ limit: PAGE, offset: state.offset });
  if (state.region) q.set("region", state.region);
  if ($("f-online").value) q.set("online", $("f-online").value);
  if ($("f-type").value) q.set("type", $("f-type").value);
  const data = await api("/devices?" + q);
  state.total = data.total;
  const body = $("dev-body");
  body.replaceChildren();
  for (const d of data.items) {
    const tr = el("tr");
    tr.dataset.id = d.id;
    const st = el("td");
    const cls = !d.enabled ? "dis" : d.online ? "on" : "off";
    st.append(el("span", "dot " + cls), t(!d.enabled ? "disabled" : d.online ? "online" : "offline"));
    const seen = el("td", "seen", ago(d.last_seen_ms));
    seen.dataset.ms = d.last_seen_ms === null ? "" : d.last_seen_ms;
    seen.title = d.last_seen || "";
    tr.append(st, el("td", "id", d.id), el("td", null, d.name), el("td", null, t("type_" + d.type)),
      el("td", null, state.regionNames[d.region_id] || d.region_id), seen);
    body.append(tr);
  }
  if (!data.items.length) {
    const tr = el("tr");
    const td = el("td", "empty", t("noData"));
    td.colSpan = 6;
    tr.append(td);
    body.append(tr);
  }
  const from = data.total ? state.offset + 1 : 0;
  $("page-info").textContent = t("pageInfo", { from, to: state.offset + data.items.length, total: data.total });
  $("prev").disabled = state.offset === 0;
  $("next").disabled = state.offset + PAGE >= data.total;
  $("dev-scope").textContent = state.region ? state.regionNames[state.region] || state.region : t("wholeTree");
}

function touchDevice(id, ms) {
  const tr = document.querySelector('#dev-body tr[data-id="' + CSS.escape(id) + '"]');
  if (!tr) return;
  const seen = tr.querySelector(".seen");
  seen.dataset.ms = ms;
  seen.textContent = ago(ms);
  tr.classList.remove("flash");
  void tr.offsetWidth;
  tr.classList.add("flash");
}

// --- feed --------------------------------------------------------------------------------------------------

function feedItem(ms, title, device, cls) {
  const li = el("li", cls || "");
  const what = el("span", "what");
  what.append(el("b", null, title), el("span", "dev", device));
  li.append(el("span", "t", fmtTime(ms)), what);
  return li;
}
function pushFeed(li) {
  const feed = $("feed");
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  state.feedCount += 1;
  $("feed-count").textContent = String(state.feedCount);
}
function eventTitle(e) {
  let s = t("ev_" + e.type);
  if (e.data && e.data.result === "denied") s += " ✕";
  return s;
}
function eventClass(type) {
  return CRITICAL.has(type) ? "crit" : WARNING.has(type) ? "warn" : "";
}
async function loadEvents() {
  const q = new URLSearchParams({ limit: 50 });
  if (state.region) q.set("region", state.region);
  const data = await api("/events?" + q);
  $("feed").replaceChildren();
  state.feedCount = 0;
  for (const e of data.items.slice().reverse()) pushFeed(feedItem(e.ts_ms, eventTitle(e), e.device_id, eventClass(e.type)));
}

async function loadRejections() {
  const data = await api("/rejections?limit=30");
  $("rej-total").textContent = String(data.total);
  const chips = $("rej-counts");
  chips.replaceChildren();
  for (const [reason, n] of Object.entries(data.counts)) {
    const c = el("span", "chip", t("rs_" + reason));
    c.append(el("b", null, n));
    chips.append(c);
  }
  const ul = $("rej");
  ul.replaceChildren();
  for (const x of data.items) {
    const li = feedItem(x.received_ms, t("rs_" + x.reason), x.device_id, "warn");
    const p = el("span", "payload", x.detail + "  " + x.payload);
    p.title = x.payload;
    li.append(p);
    ul.append(li);
  }
  if (!data.items.length) ul.append(el("li", "empty", t("noData")));
}

// --- live stream (SSE over fetch, so the token goes in a header, not the URL) ---------------------------------

function inRegion(regionId) {
  return !state.region || (state.subtree !== null && state.subtree.has(regionId));
}
function onBatch(msg) {
  for (const e of msg.events || []) {
    if (inRegion(e.region_id)) pushFeed(feedItem(e.ts_ms, eventTitle(e), e.device_id, eventClass(e.type)));
  }
  for (const s of msg.statuses || []) {
    if (inRegion(s.region_id)) {
      pushFeed(feedItem(s.ts_ms, t(s.state === "online" ? "statusOnline" : "statusOffline"), s.device_id,
        s.state === "online" ? "" : "warn"));
    }
  }
  for (const r of msg.readings || []) touchDevice(r.device_id, r.ts_ms);
  if (msg.dropped) pushFeed(feedItem(Date.now(), t("dropped", { n: msg.dropped }), "", "warn"));
}
function parseFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trim());
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "batch") onBatch(payload);
  if (event === "hello") {
    $("user").textContent = payload.user;
  }
}
async function stream() {
  let delay = 1000;
  for (;;) {
    const ctrl = new AbortController();
    state.streamAbort = ctrl;
    try {
      const r = await fetch("/api/v1/stream", { headers: { Authorization: "Bearer " + state.token }, signal: ctrl.signal });
      if (r.status === 401) { askToken(); setPill("h-stream", false); return; }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      setPill("h-stream", true);
      delay = 1000;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, i);
          buf = buf.slice(i + 2);
          try { parseFrame(frame); } catch (e) { console.warn("bad frame", e); }
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    setPill("h-stream", false);
    await new Promise((res) => setTimeout(res, delay));
    delay = Math.min(delay * 2, 30000);
  }
}

// --- wiring ------------------------------------------------------------------------------------------------

function collectSubtree(nodes, wanted, inside, out) {
  for (const n of nodes) {
    const here = inside || n.id === wanted;
    if (here) out.add(n.id);
    collectSubtree(n.children || [], wanted, here, out);
  }
  return out;
}

async function refreshAll() {
  try {
    await loadRegions();
    await Promise.all([loadDevices(), loadEvents(), loadRejections(), loadHealth()]);
  } catch (e) {
    if (!(e instanceof Unauthorized)) console.warn(e);
  }
}

function start() {
  if (state.streamAbort) state.streamAbort.abort();
  refreshAll();
  stream();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromHash();
  applyLang();
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem(LANG_KEY, state.lang);
    applyLang();
    refreshAll();
  });
  $("token-btn").addEventListener("click", askToken);
  $("token-form").addEventListener("submit", () => {
    const v = $("token-input").value.trim();
    if (v) {
      localStorage.setItem(TOKEN_KEY, v);
      state.token = v;
      start();
    }
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadDevices().catch(() => {}); });
  $("next").addEventListener("click", () => { state.offset += PAGE; loadDevices().catch(() => {}); });
  $("f-online").addEventListener("change", () => { state.offset = 0; loadDevices().catch(() => {}); });
  $("f-type").addEventListener("change", () => { state.offset = 0; loadDevices().catch(() => {}); });
  setInterval(loadHealth, 10000);
  setInterval(() => { loadRegions().then(loadDevices).catch(() => {}); }, 15000);
  setInterval(() => { loadRejections().catch(() => {}); }, 15000);
  setInterval(() => {
    document.querySelectorAll("#dev-body .seen").forEach((c) => { if (c.dataset.ms) c.textContent = ago(Number(c.dataset.ms)); });
  }, 5000);
  loadHealth();
  start();
});
