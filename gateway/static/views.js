// Lianfang control room, the views beyond the monitor: overview tiles, device view with its chart, vehicle map,
// silences, rule overrides, audit, users. Plain JS on app.js's helpers (state, t, $, el, api, apiSend, ...); the
// chart library (uPlot) is served from /static/vendor/, nothing is loaded from anywhere else.
"use strict";

// --- role: which views and buttons the page offers (GET /api/v1/me; the server checks every action anyway) -------

function role() {
  return state.me ? state.me.role : "";
}
function canAudit() {
  return can("audit.read");
}
function canSeeUsers() {
  return can("users.read");
}
function applyRole() {
  document.querySelectorAll('#tabs [data-view="audit"]').forEach((b) => { b.hidden = !canAudit(); });
  document.querySelectorAll('#tabs [data-view="users"]').forEach((b) => { b.hidden = !canSeeUsers(); });
  document.querySelectorAll(".needs-act").forEach((b) => { b.hidden = !canAct(); });
  $("us-new").hidden = !can("users.create");
  const tab = document.querySelector('#tabs [data-view="' + views.current + '"]');
  if (tab && tab.hidden) showView("monitor");
}

// --- small helpers -------------------------------------------------------------------------------------------

async function apiCall(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (state.token) headers.Authorization = "Bearer " + state.token;
  let r;
  try {
    r = await fetch("/api/v1" + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    return { status: 0, body: null };
  }
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401) askLogin();
  return { status: r.status, body: data };
}
function flash(id, r, okText) {
  if (r.status >= 200 && r.status < 300) {
    showMsg(id, okText || t("incDone"), "ok");
    setTimeout(() => showMsg(id, ""), 5000);
    return true;
  }
  showMsg(id, actionError(r.status, r.body), "err");
  return false;
}
function td(text, cls) {
  return el("td", cls || null, text === null || text === undefined ? "" : text);
}
function num(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB", { maximumFractionDigits: digits || 0 });
}
function regionName(id) {
  return id ? state.regionNames[id] || id : t("wholeTree");
}
// The region choices of a form come from the tree; a form opened before the tree arrived waits for it.
async function ensureRegions() {
  if (!Object.keys(state.regionNames).length) await loadRegions().catch(() => {});
}
// --- a form dialog: fields, a reason where the API takes one, submit -> the API's answer in the page's words -----

const formDialog = { submit: null };

// fields: [{name, label, type: text|textarea|select|number|password|checkbox|datetime, options: [[v, label]], value,
// required}]; submit(values) -> {status, body}
// The reason an action must give (ending a silence, editing or deleting an override): the API requires it, the audit
// log keeps it.
function reasonField() {
  return { name: "reason", label: t("whyReason"), type: "textarea", required: true };
}
function openForm(title, sub, okLabel, fields, submit) {
  $("fd-title").textContent = title;
  $("fd-sub").textContent = sub || "";
  $("fd-ok").textContent = okLabel;
  const box = $("fd-fields");
  box.replaceChildren();
  for (const f of fields) {
    const id = "fd-" + f.name;
    const label = el("label", null, f.label + (f.required ? " *" : ""));
    label.htmlFor = id;
    let input;
    if (f.type === "textarea") {
      input = el("textarea");
      input.rows = 3;
      input.maxLength = 2000;
    } else if (f.type === "select") {
      input = el("select");
      for (const [v, text] of f.options) {
        const o = el("option", null, text);
        o.value = v;
        input.append(o);
      }
    } else {
      input = el("input");
      input.type = f.type === "datetime" ? "datetime-local" : f.type || "text";
      if (f.type === "number") input.step = "any";
    }
    input.id = id;
    input.name = f.name;
    if (f.type === "checkbox") input.checked = !!f.value;
    else if (f.value !== undefined && f.value !== null) input.value = f.value;
    box.append(label, input);
  }
  showMsg("fd-msg", "");
  formDialog.submit = async () => {
    const values = {};
    for (const f of fields) {
      const input = $("fd-" + f.name);
      values[f.name] = f.type === "checkbox" ? input.checked : input.value.trim();
      if (f.required && !values[f.name]) {
        showMsg("fd-msg", t("required", { field: f.label }), "err");
        return;
      }
    }
    $("fd-ok").disabled = true;
    let r;
    try {
      r = await submit(values);
    } catch (e) {
      r = { status: 422, body: { detail: String(e.message || e) } };
    }
    $("fd-ok").disabled = false;
    if (r && r.status >= 200 && r.status < 300) {
      $("form-dialog").close();
      formDialog.submit = null;
    } else if (r) {
      showMsg("fd-msg", actionError(r.status, r.body), "err");
    }
  };
  $("form-dialog").showModal();
  const first = box.querySelector("input, textarea, select");
  if (first) first.focus();
}

// --- views ---------------------------------------------------------------------------------------------------

const views = { current: "monitor", loaders: {} };

function showView(name) {
  views.current = name;
  document.querySelectorAll("#tabs .tab").forEach((b) => b.classList.toggle("sel", b.dataset.view === name));
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "v-" + name; });
  const load = views.loaders[name];
  if (load) load().catch((e) => { if (!(e instanceof Unauthorized)) console.warn(e); });
}

// --- overview: KPI tiles (GET /api/v1/overview?region=R), polled and refreshed after live batches -------------

const DEVICE_TYPES = ["gate", "vehicle", "energy_meter", "sensor"];
let overviewTimer = null;

function kvLine(box, label, value, cls) {
  const row = el("div", "kv-line" + (cls ? " " + cls : ""));
  row.append(el("span", null, label), el("b", null, value));
  box.append(row);
  return row;
}
function renderOverview(o) {
  const dev = $("kpi-dev-body");
  dev.replaceChildren();
  for (const ty of DEVICE_TYPES) {
    const c = (o.devices && o.devices.by_type && o.devices.by_type[ty]) || { total: 0, online: 0 };
    if (!c.total) continue;
    const row = kvLine(dev, t("type_" + ty), c.online + " / " + c.total);
    row.dataset.type = ty;
    if (c.online < c.total) row.classList.add("warn");
  }
  if (!dev.children.length) dev.append(el("div", "muted", t("noData")));
  const al = $("kpi-al-body");
  al.replaceChildren();
  const sev = (o.alerts && o.alerts.by_severity) || {};
  for (const s of SEVERITIES) {
    const row = kvLine(al, t("sev_" + s), sev[s] || 0, "sev-" + s + (sev[s] ? "" : " zero"));
    row.dataset.severity = s;
  }
  const inc = o.incidents || {};
  $("kpi-inc-open").textContent = String(inc.open || 0);
  const ib = $("kpi-inc-body");
  ib.replaceChildren();
  for (const s of SEVERITIES) if ((inc.by_severity || {})[s]) kvLine(ib, t("sev_" + s), inc.by_severity[s], "sev-" + s);
  const en = o.energy || {};
  $("kpi-en-today").textContent = num(en.today_kwh, 1) + " kWh";
  const bar = $("kpi-en-bar");
  if (en.baseline_kwh) {
    const pct = Math.round((100 * en.today_kwh) / en.baseline_kwh);
    $("kpi-en-base").textContent = t("vsBaseline", { base: num(en.baseline_kwh, 1), pct });
    bar.parentElement.hidden = false;
    bar.className = pct > 120 ? "over" : pct < 80 ? "under" : "";
    bar.parentElement.dataset.pct = pct;
    bar.parentElement.title = pct + "%";
    setBarWidth(bar, Math.min(pct, 200) / 2);
  } else {
    $("kpi-en-base").textContent = t("noBaseline");
    bar.parentElement.hidden = true;
  }
  const v = o.vehicles || {};
  $("kpi-veh").textContent = (v.in_use || 0) + " / " + (v.total || 0);
  $("kpi-veh-sub").textContent = t("vehInUse");
  $("kpi-at").textContent = t("asOf", { at: fmtFull(o.at) }) + (o.region_id ? " · " + regionName(o.region_id) : "");
  $("kpis").dataset.at = o.at || "";
}
// CSP forbids style attributes; widths go through the CSSOM (allowed), in steps of 5 % through classes would be
// coarse, so the property is set directly.
function setBarWidth(bar, pct) {
  bar.style.width = pct + "%";
}
async function loadOverview() {
  const q = new URLSearchParams();
  if (state.region) q.set("region", state.region);
  let o;
  try {
    o = await api("/overview" + (q.toString() ? "?" + q : ""));
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    $("kpi-at").textContent = t("overviewOff");
    return;
  }
  if (o && o.devices) renderOverview(o);
}
function scheduleOverview(delay) {
  if (overviewTimer) return;
  overviewTimer = setTimeout(() => { overviewTimer = null; loadOverview().catch(() => {}); }, delay);
}

// --- device view: its registry fields and state, a chart of one field over a range, its alerts -----------------

const device = { id: null, data: null, plot: null };

function openDevice(id) {
  device.id = id;
  $("dv-input").value = id;
  showView("device");
}
function numericFields(d) {
  return Object.entries(d.last_values || {}).filter(([, v]) => typeof v.value === "number").map(([k]) => k);
}
async function loadDeviceView() {
  if (!device.id) {
    $("dv-id").textContent = "";
    showMsg("dv-msg", t("pickDevice"), "");
    return;
  }
  let d;
  try {
    d = await api("/devices/" + encodeURIComponent(device.id));
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    showMsg("dv-msg", t("errNotFound"), "err");
    return;
  }
  showMsg("dv-msg", "");
  device.data = d;
  $("dv-id").textContent = d.id;
  const kv = $("dv-kv");
  kv.replaceChildren();
  kvRow(kv, t("name"), d.name);
  kvRow(kv, t("type"), t("type_" + d.type));
  kvRow(kv, t("region"), regionTrail(d.region_path).join(" / ") || d.region_id);
  kvRow(kv, t("state"), t(!d.enabled ? "disabled" : d.online ? "online" : "offline"));
  kvRow(kv, t("lastSeen"), d.last_seen ? fmtFull(d.last_seen) + " · " + ago(d.last_seen_ms) : t("never"));
  kvRow(kv, t("firmware"), d.fw);
  const c = d.counters || {};
  kvRow(kv, t("counters"), t("countersText", { m: c.messages || 0, g: c.gaps || 0, d: c.duplicates || 0, r: c.rejected || 0 }));
  for (const [k, v] of Object.entries(d.last_values || {})) kvRow(kv, k, String(v.value) + " · " + fmtFull(v.ts), "mono");
  const acts = $("dv-actions");
  acts.replaceChildren();
  if (can("silences.create")) acts.append(smallBtn(t("silenceDevice"), "silence-device", () => newSilence({ device_id: d.id })));
  const sel = $("dv-field");
  const fields = numericFields(d);
  const keep = fields.includes(sel.value) ? sel.value : fields.includes("power_kw") ? "power_kw" : fields[0];
  sel.replaceChildren();
  for (const f of fields) {
    const o = el("option", null, f);
    o.value = f;
    sel.append(o);
  }
  if (keep) sel.value = keep;
  await Promise.all([loadChart(), loadDeviceAlerts()]);
}
function bucketFor(hours) {
  // about 300 points whatever the range: raw points up to 6 h, buckets beyond
  if (hours <= 6) return null;
  if (hours <= 24) return "5m";
  if (hours <= 168) return "30m";
  return "2h";
}
async function loadChart() {
  const box = $("dv-chart");
  const field = $("dv-field").value;
  const gen = (device.gen = (device.gen || 0) + 1);  // a newer call (field or range changed) wins
  const clear = () => {
    if (device.plot) { device.plot.destroy(); device.plot = null; }
    box.replaceChildren();
  };
  if (!field) {
    clear();
    box.append(el("div", "empty", t("noData")));
    $("dv-points").textContent = "";
    return;
  }
  const hours = Number($("dv-range").value);
  const end = Date.now();
  const q = new URLSearchParams({ field, start: new Date(end - hours * 3600e3).toISOString(), end: new Date(end).toISOString() });
  const bucket = bucketFor(hours);
  if (bucket) q.set("bucket", bucket);
  const r = await apiCall("GET", "/devices/" + encodeURIComponent(device.id) + "/telemetry?" + q);
  if (gen !== device.gen) return;
  clear();
  if (r.status !== 200) {
    box.append(el("div", "empty", actionError(r.status, r.body)));
    return;
  }
  const rows = r.body.points || r.body.buckets || [];
  const xs = [];
  const ys = [];
  for (const p of rows) {
    const ts = Array.isArray(p) ? p[0] : p.ts_ms !== undefined ? p.ts_ms : p.start_ms;
    const v = Array.isArray(p) ? p[1] : p.value;
    if (typeof v !== "number") continue;
    xs.push(ts / 1000);
    ys.push(v);
  }
  box.dataset.points = String(xs.length);
  box.dataset.range = String(hours);
  box.dataset.field = field;
  $("dv-points").textContent = t("nPoints", { n: xs.length }) + (bucket ? " · " + t("perBucket", { b: bucket }) : "");
  if (!xs.length) {
    box.append(el("div", "empty", t("noData")));
    return;
  }
  const width = Math.max(320, box.clientWidth || 800);
  device.plot = new uPlot({
    width,
    height: 280,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), TZ),
    scales: { x: { time: true } },
    legend: { show: true },
    series: [{}, { label: field, stroke: "#3b82f6", width: 2, fill: "rgba(59,130,246,0.12)", points: { show: xs.length < 60 } }],
    axes: [{ stroke: "#9aa4b2", grid: { stroke: "#243044" } }, { stroke: "#9aa4b2", grid: { stroke: "#243044" } }],
  }, [xs, ys], box);
}
async function loadDeviceAlerts() {
  const ul = $("dv-alerts");
  ul.replaceChildren();
  const data = await api("/alerts?" + new URLSearchParams({ device: device.id, limit: 50 }));
  for (const a of data.items || []) ul.append(alertRow(a, false));
  if (!(data.items || []).length) ul.append(el("li", "empty", data.items ? t("noDeviceAlerts") : t("alertsOff")));
}

// --- vehicle map: drawn from region coordinates and the vehicles' last positions; tiles only when configured ----

const map = { tileUrl: null, trip: null, vehicles: [], configLoaded: false };
const W = 1000;
const H = 600;

function merc(lat, lon) {
  const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS("http" + "://www.w3.org/2000/svg", tag);  // the SVG namespace name, not fetched
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function flatRegions(nodes, out) {
  for (const n of nodes || []) {
    out.push(n);
    flatRegions(n.children, out);
  }
  return out;
}
async function loadPageConfig() {
  if (map.configLoaded) return;
  try {
    const r = await fetch("/page-config.json");
    if (r.ok) map.tileUrl = (await r.json()).map_tile_url || null;
  } catch (e) { /* no tiles */ }
  map.configLoaded = true;
}
async function loadMap() {
  await loadPageConfig();
  const q = new URLSearchParams({ limit: 2000 });
  if (state.region) q.set("region", state.region);
  // One request for every vehicle's last position (GET /vehicles/positions), not one per vehicle.
  const [tree, list] = await Promise.all([api("/regions"), api("/vehicles/positions?" + q)]);
  map.vehicles = (list.items || []).filter((v) => typeof v.lat === "number" && typeof v.lon === "number").map((v) => ({
    id: v.id, name: v.name, online: v.online, region_id: v.region_id, lat: v.lat, lon: v.lon,
    speed: v.speed_kmh, ignition: v.ignition, at: v.position_at,
  }));
  const regions = flatRegions(tree.regions, []).filter((r) => typeof r.lat === "number" && typeof r.lon === "number"
    && (!state.subtree || state.subtree.has(r.id)));
  drawMap(regions, map.vehicles, list.total || 0);
}
function drawMap(regions, vehicles, total) {
  const svg = $("map");
  svg.replaceChildren();
  const pts = regions.map((r) => merc(r.lat, r.lon)).concat(vehicles.map((v) => merc(v.lat, v.lon)));
  if (map.trip) for (const [la, lo] of map.trip.points) pts.push(merc(la, lo));
  $("map-info").textContent = t("mapInfo", { shown: vehicles.length, total });
  $("map-tiles").textContent = map.tileUrl ? t("tilesOn") : t("tilesOff");
  if (!pts.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "map-empty" }, t("noCoords")));
    return;
  }
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of pts) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  const span = Math.max(x1 - x0, ((y1 - y0) * W) / H, 0.00005) * 1.25;
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  const k = W / span;  // pixels per world unit
  const P = ([x, y]) => [(x - cx) * k + W / 2, (y - cy) * k + H / 2];
  svg.append(svgEl("rect", { x: 0, y: 0, width: W, height: H, class: "map-bg" }));
  if (map.tileUrl) drawTiles(svg, k, cx, cy);
  const g = svgEl("g", { class: "regions" });
  for (const r of regions) {
    const [x, y] = P(merc(r.lat, r.lon));
    const rad = { province: 9, city: 7, agency: 5, building: 4 }[r.level] || 4;
    const node = svgEl("g", { class: "rg lvl-" + r.level + " risk-" + riskLevel(state.risk[r.id] || 0), "data-id": r.id });
    node.append(svgEl("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: rad }),
      svgEl("text", { x: (x + rad + 3).toFixed(1), y: (y + 4).toFixed(1) }, r.name));
    node.append(svgEl("title", {}, t("lvl_" + r.level) + " " + r.name + " · " + r.devices.online + "/" + r.devices.total));
    g.append(node);
  }
  svg.append(g);
  if (map.trip && map.trip.points.length > 1) {
    const d = map.trip.points.map((p, i) => (i ? "L" : "M") + P(merc(p[0], p[1])).map((n) => n.toFixed(1)).join(" ")).join(" ");
    svg.append(svgEl("path", { d, class: "trip" }));
  }
  const vg = svgEl("g", { class: "vehicles" });
  for (const v of vehicles) {
    const [x, y] = P(merc(v.lat, v.lon));
    const inUse = v.online && (v.ignition === true || (v.speed || 0) > 1);
    const node = svgEl("g", { class: "veh" + (inUse ? " in-use" : "") + (v.online ? "" : " off") + (map.trip && map.trip.id === v.id ? " sel" : ""),
      "data-id": v.id, transform: "translate(" + x.toFixed(1) + " " + y.toFixed(1) + ")", tabindex: "0" });
    node.append(svgEl("path", { d: "M0 -8 L6 6 L0 3 L-6 6 Z" }), svgEl("title", {},
      v.id + " " + (v.name || "") + " · " + t(inUse ? "inUse" : "parked") + " · " + fmtFull(v.at)));
    node.addEventListener("click", () => loadTrip(v.id).catch(() => {}));
    vg.append(node);
  }
  svg.append(vg);
  const legend = $("map-legend");
  legend.replaceChildren(el("li", "lg-in-use", t("inUse")), el("li", "lg-parked", t("parked")), el("li", "lg-off", t("offline")),
    el("li", "lg-trip", map.trip ? t("tripOf", { id: map.trip.id, n: map.trip.points.length }) : t("tripHint")));
}
function drawTiles(svg, k, cx, cy) {
  // Web Mercator tiles at the zoom whose 256 px tiles best match the drawing's scale.
  const z = Math.max(0, Math.min(19, Math.round(Math.log2(k / 256))));
  const n = 2 ** z;
  const size = k / n;
  const [wx0, wy0] = [cx - W / 2 / k, cy - H / 2 / k];
  const [wx1, wy1] = [cx + W / 2 / k, cy + H / 2 / k];
  const g = svgEl("g", { class: "tiles" });
  for (let tx = Math.floor(wx0 * n); tx <= Math.floor(wx1 * n); tx += 1) {
    for (let ty = Math.max(0, Math.floor(wy0 * n)); ty <= Math.min(n - 1, Math.floor(wy1 * n)); ty += 1) {
      const href = map.tileUrl.replace("{z}", z).replace("{x}", ((tx % n) + n) % n).replace("{y}", ty);
      g.append(svgEl("image", { href, x: ((tx / n - cx) * k + W / 2).toFixed(1), y: ((ty / n - cy) * k + H / 2).toFixed(1),
        width: size.toFixed(1), height: size.toFixed(1) }));
    }
  }
  svg.append(g);
}
async function loadTrip(id) {
  const hours = Number($("map-range").value);
  const end = Date.now();
  const range = { start: new Date(end - hours * 3600e3).toISOString(), end: new Date(end).toISOString() };
  const base = "/devices/" + encodeURIComponent(id) + "/telemetry?";
  const [la, lo] = await Promise.all(["lat", "lon"].map((field) => apiCall("GET", base + new URLSearchParams({ field, ...range }))));
  if (la.status !== 200 || lo.status !== 200) {
    map.trip = { id, points: [] };
  } else {
    const lons = new Map(lo.body.points.map(([ts, v]) => [ts, v]));
    map.trip = { id, points: la.body.points.filter(([ts]) => lons.has(ts)).map(([ts, v]) => [v, lons.get(ts)]) };
  }
  await loadMap();
}

// --- silences: list, create (with its reason), end ------------------------------------------------------------

function silenceScope(s) {
  const parts = [];
  if (s.region_id) parts.push(t("region") + " " + regionName(s.region_id));
  if (s.device_id) parts.push(t("f_device") + " " + s.device_id);
  return parts.join(" · ") || t("wholeTree");
}
async function loadSilences() {
  await ensureRegions();  // region names in the rows
  const q = new URLSearchParams({ active: $("si-active").value, limit: 200 });
  const data = await api("/silences?" + q);
  const body = $("si-body");
  body.replaceChildren();
  if (!data.items) {
    const tr = el("tr");
    const cell = td(t("alertsOff"), "empty");
    cell.colSpan = 8;
    tr.append(cell);
    body.append(tr);
    return;
  }
  $("si-total").textContent = String(data.total);
  for (const s of data.items) {
    const over = s.ended || s.active === false;  // ended by hand, expired, or not started yet
    const tr = el("tr", over ? "ended" : "");
    tr.dataset.id = s.id;
    const acts = el("td");
    const scoped = state.me && state.me.region_id !== null;
    if (can("silences.end") && !s.ended && !(scoped && !s.region_id && !s.device_id)) {
      acts.append(smallBtn(t("siEnd"), "silence-end", () => endSilence(s)));
    }
    tr.append(td(s.id, "mono"), td(silenceScope(s)), td(s.rule_id || t("allRules"), "mono"), td(s.reason),
      td(s.creator + (s.approver ? " / " + s.approver : "")), td(fmtFull(s.starts_at)), td(fmtFull(s.ends_at)), acts);
    body.append(tr);
  }
  if (!data.items.length) {
    const tr = el("tr");
    const cell = td(t("noSilences"), "empty");
    cell.colSpan = 8;
    tr.append(cell);
    body.append(tr);
  }
}
function toIso(local) {
  // a datetime-local value is read as Beijing time (UTC+8, no daylight saving)
  return local ? local + (local.length === 16 ? ":00" : "") + "+08:00" : null;
}
async function newSilence(preset) {
  await ensureRegions();
  const p = preset || {};
  const hours = role() === "admin" ? "8" : "2";
  const regionOpts = [["", "—"]].concat(Object.entries(state.regionNames).map(([id, name]) => [id, name + " (" + id + ")"]));
  openForm(t("siNew"), t("siHelp"), t("siCreate"), [
    { name: "region_id", label: t("region"), type: "select", options: regionOpts, value: p.region_id || state.region || "" },
    { name: "device_id", label: t("f_device"), value: p.device_id || "" },
    { name: "rule_id", label: t("f_rule"), value: p.rule_id || "" },
    { name: "hours", label: t("siHours"), type: "number", value: hours, required: true },
    { name: "approver", label: t("siApprover") },
    { name: "reason", label: t("siReason"), type: "textarea", required: true },
  ], async (v) => {
    const h = Number(v.hours);
    if (!(h > 0)) return { status: 422, body: { detail: t("siHours") } };
    const body = { reason: v.reason, ends_at: new Date(Date.now() + h * 3600e3).toISOString() };
    if (v.region_id && !v.device_id) body.region_id = v.region_id;
    if (v.device_id) body.device_id = v.device_id;
    if (v.rule_id) body.rule_id = v.rule_id;
    if (v.approver) body.approver = v.approver;
    const r = await apiCall("POST", "/silences", body);
    if (r.status === 201) {
      showMsg("si-msg", t("siCreated", { id: r.body.id }), "ok");
      showMsg("al-msg", t("siCreated", { id: r.body.id }), "ok");
      loadSilences().catch(() => {});
      scheduleAlerts(300);
    }
    return r;
  });
}
function endSilence(s) {
  openForm(t("siEnd") + " #" + s.id, silenceScope(s) + " · " + s.reason, t("siEnd"), [reasonField()], async (v) => {
    const r = await apiCall("POST", "/silences/" + s.id + "/end", { reason: v.reason });
    if (r.status === 200) {
      showMsg("si-msg", t("siEnded", { id: s.id }), "ok");
      loadSilences().catch(() => {});
      scheduleAlerts(300);
    }
    return r;
  });
}

// --- rules and their overrides: view for all; edit (operator, admin) where the role allows ---------------------

const rules = { selected: null };

async function loadRules() {
  const data = await api("/rules");
  const ul = $("ru-list");
  ul.replaceChildren();
  if (!data.items) {
    ul.append(el("li", "empty", t("alertsOff")));
    return;
  }
  $("ru-total").textContent = String(data.total);
  for (const r of data.items) {
    const li = el("li", "rule sev-" + r.severity + (r.enabled ? "" : " off") + (rules.selected === r.id ? " sel" : ""));
    li.dataset.id = r.id;
    li.tabIndex = 0;
    li.append(el("span", "mono", r.id), el("span", "sev", t("sev_" + r.severity)),
      el("span", null, (state.lang === "en" ? r.title_en || r.title_zh : r.title_zh || r.title_en) || ""));
    li.addEventListener("click", () => { rules.selected = r.id; loadRule().catch(() => {}); });
    ul.append(li);
  }
  if (rules.selected) await loadRule();
}
function ovScope(o) {
  const parts = [];
  if (o.region) parts.push(regionName(o.region));
  if (o.device_type) parts.push(t("type_" + o.device_type));
  if (o.device) parts.push(o.device);
  return parts.join(" · ") || t("wholeTree");
}
function ovQuery(o) {
  const q = new URLSearchParams();
  if (o.region) q.set("region", o.region);
  if (o.device_type) q.set("device_type", o.device_type);
  if (o.device) q.set("device", o.device);
  return q;
}
async function loadRule() {
  const id = rules.selected;
  document.querySelectorAll("#ru-list li").forEach((n) => n.classList.toggle("sel", n.dataset.id === id));
  const r = await api("/rules/" + encodeURIComponent(id));
  if (!r.id) return;
  $("ru-title").textContent = r.id + " · " + ((state.lang === "en" ? r.title_en || r.title_zh : r.title_zh || r.title_en) || "");
  const kv = $("ru-kv");
  kv.replaceChildren();
  kvRow(kv, t("f_type"), r.kind, "mono");
  kvRow(kv, t("f_severity"), t("sev_" + r.severity));
  kvRow(kv, t("ovEnabled"), t(r.enabled ? "yes" : "no"));
  kvRow(kv, t("type"), (r.device_types || []).map((x) => t("type_" + x)).join(", "));
  kvRow(kv, t("ovSource"), r.source + " · " + r.defined_in, "mono");
  kvRow(kv, t("ovParams"), JSON.stringify(r.params || {}), "mono");
  kvRow(kv, t("detail"), r.description);
  const acts = $("ru-actions");
  acts.replaceChildren();
  if (can("rules.override")) acts.append(smallBtn(t("ovNew"), "override-new", () => editOverride(r, null)));
  const body = $("ru-ov");
  body.replaceChildren();
  for (const o of r.overrides || []) {
    const tr = el("tr", o.applied ? "" : "ended");
    const cell = el("td");
    if (can("rules.override") && o.source === "api") {
      cell.append(smallBtn(t("edit"), "override-edit", () => editOverride(r, o)),
        smallBtn(t("delete"), "override-delete", () => deleteOverride(r, o)));
    }
    tr.append(td(ovScope(o)), td(o.enabled === null || o.enabled === undefined ? "–" : t(o.enabled ? "yes" : "no")),
      td(o.severity ? t("sev_" + o.severity) : "–"), td(JSON.stringify(o.params || {}), "mono"),
      td(o.source + (o.created_by ? " · " + o.created_by : ""), "mono"), cell);
    body.append(tr);
  }
  if (!body.children.length) {
    const tr = el("tr");
    const cell = td(t("noOverrides"), "empty");
    cell.colSpan = 6;
    tr.append(cell);
    body.append(tr);
  }
}
async function editOverride(rule, o) {
  await ensureRegions();
  const cur = o || {};
  const regionOpts = [["", "—"]].concat(Object.entries(state.regionNames).map(([id, name]) => [id, name + " (" + id + ")"]));
  const enabledOpts = [["", t("inherit")], ["true", t("yes")]];
  if (can("rules.disable")) enabledOpts.push(["false", t("no")]);  // switching a rule off: region admins only
  openForm(t(o ? "ovEdit" : "ovNew") + " · " + rule.id, t("ovHelp"), t("save"), [
    { name: "region", label: t("region"), type: "select", options: regionOpts, value: cur.region || state.region || "" },
    { name: "device", label: t("f_device"), value: cur.device || "" },
    { name: "enabled", label: t("ovEnabled"), type: "select", options: enabledOpts,
      value: cur.enabled === true ? "true" : cur.enabled === false ? "false" : "" },
    { name: "severity", label: t("f_severity"), type: "select",
      options: [["", t("inherit")]].concat(SEVERITIES.map((s) => [s, t("sev_" + s)])), value: cur.severity || "" },
    { name: "params", label: t("ovParams") + " (JSON)", type: "textarea", value: JSON.stringify(cur.params || {}) },
    reasonField(),
  ], async (v) => {
    let params;
    try { params = JSON.parse(v.params || "{}"); } catch (e) { return { status: 422, body: { detail: t("badJson") } }; }
    const body = { params, reason: v.reason };
    if (v.enabled) body.enabled = v.enabled === "true";
    if (v.severity) body.severity = v.severity;
    const q = ovQuery({ region: v.device ? null : v.region, device: v.device || null });
    const r = await apiCall("PUT", "/rules/" + encodeURIComponent(rule.id) + "/overrides?" + q, body);
    if (r.status === 200 || r.status === 201) { showMsg("ru-msg", t("incDone"), "ok"); loadRule().catch(() => {}); }
    return r;
  });
}
function deleteOverride(rule, o) {
  openForm(t("delete") + " · " + rule.id, ovScope(o), t("delete"), [reasonField()], async (v) => {
    const q = ovQuery(o) + "&" + new URLSearchParams({ reason: v.reason });
    const r = await apiCall("DELETE", "/rules/" + encodeURIComponent(rule.id) + "/overrides?" + q);
    if (r.status === 200) { showMsg("ru-msg", t("incDone"), "ok"); loadRule().catch(() => {}); }
    return r;
  });
}

// --- audit (auditors; an admin of the whole tree): list, filter, export, verify --------------------------------

const audit = { offset: 0 };
const AUDIT_PAGE = 50;

function auditQuery() {
  const q = new URLSearchParams();
  for (const [k, id] of [["actor", "au-actor"], ["action", "au-action"], ["target", "au-target"]]) {
    if ($(id).value.trim()) q.set(k, $(id).value.trim());
  }
  if ($("au-start").value) q.set("start", toIso($("au-start").value));
  if ($("au-end").value) q.set("end", toIso($("au-end").value));
  return q;
}
async function loadAudit() {
  const q = auditQuery();
  q.set("limit", AUDIT_PAGE);
  q.set("offset", audit.offset);
  const r = await apiCall("GET", "/audit?" + q);
  const body = $("au-body");
  body.replaceChildren();
  if (r.status !== 200) {
    showMsg("au-msg", actionError(r.status, r.body), "err");
    return;
  }
  showMsg("au-msg", "");
  $("au-total").textContent = String(r.body.total);
  for (const x of r.body.items) {
    const tr = el("tr", x.verified ? "" : "bad");
    tr.dataset.seq = x.seq;
    const detail = x.detail && Object.keys(x.detail).length ? JSON.stringify(x.detail) : "";
    const tgt = td(x.target, "mono");
    tgt.title = detail;
    tr.append(td(x.seq, "mono"), td(fmtFull(x.at)), td(x.actor), td(x.source, "mono"), td(x.action, "mono"), tgt,
      td(x.outcome), td(t(x.verified ? "auOk" : "auBroken")));
    body.append(tr);
  }
  const from = r.body.total ? audit.offset + 1 : 0;
  $("au-page").textContent = t("pageInfo", { from, to: audit.offset + r.body.items.length, total: r.body.total });
  $("au-prev").disabled = audit.offset === 0;
  $("au-next").disabled = audit.offset + AUDIT_PAGE >= r.body.total;
}
async function verifyAudit() {
  const r = await apiCall("GET", "/audit/verify");
  if (r.status !== 200) {
    showMsg("au-msg", actionError(r.status, r.body), "err");
    return;
  }
  const v = r.body;
  const problems = v.problems || [];
  const text = v.ok ? t("auChainOk", { n: v.records, seq: v.last_seq })
    : t("auChainBad", { n: problems.length }) + " " + problems.slice(0, 5).map((p) => "#" + (p.seq || "?") + " " + (p.kind || p.problem || "")).join("; ");
  showMsg("au-msg", text, v.ok ? "ok" : "err");
}
async function exportAudit() {
  let r;
  try {
    r = await fetch("/api/v1/audit/export?" + auditQuery(), { headers: { Authorization: "Bearer " + state.token } });
  } catch (e) {
    showMsg("au-msg", t("errNetwork"), "err");
    return;
  }
  if (!r.ok) {
    showMsg("au-msg", actionError(r.status, null), "err");
    return;
  }
  const blob = await r.blob();
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = "lianfang-audit.csv";
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  showMsg("au-msg", t("auExported", { kb: Math.ceil(blob.size / 1024) }), "ok");
}

// --- users: sysadmin creates and resets passwords, secadmin gives roles and scopes, both enable / disable ---------

const ROLE_NAMES = ["viewer", "operator", "admin", "sysadmin", "secadmin", "auditor"];

async function loadUsers() {
  await ensureRegions();  // region names in the rows
  const r = await apiCall("GET", "/users");
  const body = $("us-body");
  body.replaceChildren();
  if (r.status !== 200) {
    showMsg("us-msg", actionError(r.status, r.body), "err");
    return;
  }
  $("us-total").textContent = String(r.body.length);
  for (const u of r.body) {
    const tr = el("tr", u.enabled ? "" : "ended");
    tr.dataset.name = u.name;
    const sec = [u.has_password ? t("usPw") : null, u.has_totp ? "TOTP" : null,
      u.locked_until ? t("usLocked", { until: fmtFull(u.locked_until) }) : null].filter(Boolean).join(" · ");
    const acts = el("td");
    if (can("users.roles")) acts.append(smallBtn(t("usRoleBtn"), "user-role", () => editUserRole(u)));
    if (can("users.password")) acts.append(smallBtn(t("usPwBtn"), "user-password", () => resetPassword(u)));
    if (can("users.enable")) {
      acts.append(smallBtn(t(u.enabled ? "usDisable" : "usEnable"), "user-enable", () => toggleUser(u)));
    }
    tr.append(td(u.name, "mono"), td(t("role_" + u.role)), td(regionName(u.region_id)), td(u.person_id, "mono"),
      td(t(u.enabled ? "usEnabled" : "disabled")), td(sec), acts);
    body.append(tr);
  }
}
function patchUser(u, change, done) {
  return apiCall("PATCH", "/users/" + encodeURIComponent(u.name), change).then((r) => {
    if (r.status === 200) { showMsg("us-msg", done, "ok"); loadUsers().catch(() => {}); }
    return r;
  });
}
async function newUser() {
  await ensureRegions();
  const regionOpts = [["", t("myScope")]].concat(Object.entries(state.regionNames).map(([id, name]) => [id, name + " (" + id + ")"]));
  openForm(t("usNew"), t("usNewHelp"), t("usCreate"), [
    { name: "name", label: t("loginName"), required: true },
    { name: "password", label: t("loginPassword"), type: "password", required: true },
    { name: "person_id", label: t("usPerson") },
    { name: "region_id", label: t("region"), type: "select", options: regionOpts },
  ], async (v) => {
    const body = { name: v.name, password: v.password };
    if (v.person_id) body.person_id = v.person_id;
    if (v.region_id) body.region_id = v.region_id;
    const r = await apiCall("POST", "/users", body);
    if (r.status === 201) { showMsg("us-msg", t("usCreated", { name: v.name }), "ok"); loadUsers().catch(() => {}); }
    return r;
  });
}
async function editUserRole(u) {
  await ensureRegions();
  const regionOpts = [["*", t("wholeTree")]].concat(Object.entries(state.regionNames).map(([id, name]) => [id, name + " (" + id + ")"]));
  openForm(t("usRoleBtn") + " · " + u.name, t("usRoleHelp"), t("save"), [
    { name: "role", label: t("usRole"), type: "select", options: ROLE_NAMES.map((x) => [x, t("role_" + x)]), value: u.role },
    { name: "region_id", label: t("region"), type: "select", options: regionOpts, value: u.region_id || "*" },
  ], (v) => patchUser(u, { role: v.role, region_id: v.region_id === "*" ? null : v.region_id }, t("incDone")));
}
function resetPassword(u) {
  openForm(t("usPwBtn") + " · " + u.name, "", t("save"), [
    { name: "password", label: t("loginPassword"), type: "password", required: true },
  ], (v) => patchUser(u, { password: v.password }, t("incDone")));
}
function toggleUser(u) {
  openForm(t(u.enabled ? "usDisable" : "usEnable") + " · " + u.name, "", t(u.enabled ? "usDisable" : "usEnable"), [],
    () => patchUser(u, { enabled: !u.enabled }, t("incDone")));
}

// --- alert and incident drawers: comment, assign, silence; incident notes ---------------------------------------

function alertExtraButtons(a) {
  const box = el("span", "al-btns extra");
  if (!canAct()) return box;
  box.append(smallBtn(t("comment"), "comment", () => commentOn("/alerts/" + a.id + "/comments", "#" + a.id, () => loadDrawer(a.id))));
  if (a.state !== "resolved") {
    box.append(smallBtn(t("assign"), "assign", () => openForm(t("assign") + " #" + a.id, alertTitle(a), t("assign"), [
      { name: "assignee", label: t("f_assignee"), value: a.assignee || (state.me ? state.me.name : "") },
    ], async (v) => {
      const r = await apiCall("POST", "/alerts/" + a.id + "/assign", { assignee: v.assignee || null });
      if (r.status === 200) { loadDrawer(a.id).catch(() => {}); scheduleAlerts(200); }
      return r;
    })));
  }
  box.append(smallBtn(t("silence"), "silence", () => newSilence({ device_id: a.device_id, rule_id: a.rule_id })));
  return box;
}
function commentOn(path, what, reload) {
  openForm(t("comment") + " " + what, "", t("comment"), [
    { name: "text", label: t("commentText"), type: "textarea", required: true },
  ], async (v) => {
    const r = await apiCall("POST", path, { text: v.text });
    if (r.status === 201) reload().catch(() => {});
    return r;
  });
}
// An incident action with the note the API takes (acknowledge, investigate, close with a cause).
function incidentNote(i, kind) {
  const fields = [];
  if (kind === "close") {
    fields.push({ name: "cause_code", label: t("f_cause"), type: "select",
      options: ["false_alarm", "handled", "maintenance", "device_fault", "duplicate", "other"].map((c) => [c, t("cause_" + c)]) });
  }
  if (kind === "resolve") fields.push({ name: "reason", label: t("resolveReasonInc"), type: "textarea", required: true });
  else fields.push({ name: "note", label: t("noteLabel"), type: "textarea" });
  const label = t({ ack: "incAck", close: "incClose", resolve: "incResolve" }[kind]);
  const body = (v) => (kind === "close" ? { cause_code: v.cause_code, note: v.note } : kind === "resolve" ? { reason: v.reason } : { note: v.note });
  openForm(label + " · I" + i.id, incTitle(i), label, fields, (v) => incSend("/incidents/" + i.id + "/" + kind, body(v)));
}

// Assign an incident and its open department tasks (the API requires the reason); an empty name unassigns.
function incidentAssign(i) {
  openForm(t("assign") + " · I" + i.id, incTitle(i) + " · " + t("unassignHint"), t("assign"), [
    { name: "assignee", label: t("f_assignee"), value: i.assignee || (state.me ? state.me.name : "") },
    { name: "reason", label: t("assignReasonInc"), type: "textarea", required: true },
  ], (v) => incSend("/incidents/" + i.id + "/assign", { assignee: v.assignee || null, reason: v.reason }));
}

// --- wiring --------------------------------------------------------------------------------------------------

views.loaders = {
  device: loadDeviceView,
  map: loadMap,
  silences: loadSilences,
  rules: loadRules,
  audit: loadAudit,
  users: loadUsers,
};

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("#tabs .tab").forEach((b) => b.addEventListener("click", () => showView(b.dataset.view)));
  $("fd-form").addEventListener("submit", (ev) => { ev.preventDefault(); if (formDialog.submit) formDialog.submit(); });
  $("fd-cancel").addEventListener("click", () => { $("form-dialog").close(); formDialog.submit = null; });
  $("dv-pick").addEventListener("submit", (ev) => { ev.preventDefault(); const v = $("dv-input").value.trim(); if (v) openDevice(v); });
  $("dv-field").addEventListener("change", () => { loadChart().catch(() => {}); });
  $("dv-range").addEventListener("change", () => { loadChart().catch(() => {}); });
  $("dev-body").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]");
    if (tr) openDevice(tr.dataset.id);
  });
  $("map-range").addEventListener("change", () => { if (map.trip) loadTrip(map.trip.id).catch(() => {}); });
  $("si-active").addEventListener("change", () => { loadSilences().catch(() => {}); });
  $("si-new").addEventListener("click", () => newSilence(null));
  $("au-filter").addEventListener("submit", (ev) => { ev.preventDefault(); audit.offset = 0; loadAudit().catch(() => {}); });
  $("au-prev").addEventListener("click", () => { audit.offset = Math.max(0, audit.offset - AUDIT_PAGE); loadAudit().catch(() => {}); });
  $("au-next").addEventListener("click", () => { audit.offset += AUDIT_PAGE; loadAudit().catch(() => {}); });
  $("au-verify").addEventListener("click", () => { verifyAudit().catch(() => {}); });
  $("au-export").addEventListener("click", () => { exportAudit().catch(() => {}); });
  $("us-new").addEventListener("click", newUser);
  setInterval(() => { if (state.token) loadOverview().catch(() => {}); }, 15000);
  setInterval(() => {
    if (views.current === "map" && state.token) loadMap().catch(() => {});
    if (views.current === "device" && device.id && state.token) loadDeviceView().catch(() => {});
  }, 30000);
});
