// Lianfang control room, the reports view: pick a kind, a region and a period; GET /api/v1/reports/{kind} shows
// the summary, the findings and the tables; CSV and the printable HTML download with the session's token.
// Plain JS on app.js's and views.js's helpers (state, t, $, el, apiCall, showMsg, actionError, views); its strings
// are in app.js's I18N with the others.
"use strict";

const REPORT_ROWS = 200;
const report = { last: null, params: null, link: null };

function pickLang(zh, en) {
  return state.lang === "en" ? en || zh : zh || en;
}
function reportCell(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "boolean") return pickLang(v ? "是" : "否", v ? "yes" : "no");
  if (typeof v === "number") return num(v, 2);
  return String(v);
}
function reportQuery(extra) {
  const p = report.params || {};
  const q = new URLSearchParams({ period: p.period || "7d", lang: state.lang === "en" ? "en" : "zh" });
  if (p.region) q.set("region", p.region);
  for (const [k, v] of Object.entries(extra || {})) if (v) q.set(k, v);
  return q;
}

async function fillReportRegions() {
  await ensureRegions();
  const sel = $("rp-region");
  const keep = sel.value || state.region || "";
  sel.replaceChildren();
  for (const [id, name] of Object.entries(state.regionNames)) {
    const o = el("option", null, name + " (" + id + ")");
    o.value = id;
    sel.append(o);
  }
  if (keep && state.regionNames[keep]) sel.value = keep;
}

// Parameters from the address (#reports?kind=&region=&period=): the links of scheduled report messages. Read when
// the script runs, before app.js takes its own parameters (token, region) from the address and clears it.
function reportParamsFromHash() {
  const h = location.hash || "";
  if (!h.startsWith("#reports")) return null;
  const q = new URLSearchParams(h.split("?")[1] || "");
  return { kind: q.get("kind"), region: q.get("region"), period: q.get("period") };
}
report.link = reportParamsFromHash();

async function loadReports() {
  await fillReportRegions();
  const fromHash = report.link;
  report.link = null;
  if (fromHash) {
    if (fromHash.kind) $("rp-kind").value = fromHash.kind;
    if (fromHash.region && state.regionNames[fromHash.region]) $("rp-region").value = fromHash.region;
    if (fromHash.period) $("rp-period").value = fromHash.period;
    await buildReport();
  } else if (report.last) {
    renderReport(report.last);
  }
}

async function buildReport() {
  report.params = { kind: $("rp-kind").value, region: $("rp-region").value, period: $("rp-period").value.trim() };
  showMsg("rp-msg", t("rpBuilding"), "");
  $("rp-csv").disabled = $("rp-html").disabled = true;
  const r = await apiCall("GET", "/reports/" + encodeURIComponent(report.params.kind) + "?" + reportQuery());
  if (r.status !== 200) {
    showMsg("rp-msg", r.status === 501 ? t("rpNotAvailable", { detail: detailText(r.body) }) : actionError(r.status, r.body), "err");
    return;
  }
  showMsg("rp-msg", "");
  report.last = r.body;
  renderReport(r.body);
}

function renderReport(doc) {
  $("rp-title").textContent = pickLang(doc.title.zh, doc.title.en) + " · " + doc.region.name;
  $("rp-period-text").textContent = t("rpPeriod", { start: fmtFull(doc.period.start), end: fmtFull(doc.period.end) });
  const tiles = $("rp-summary");
  tiles.replaceChildren();
  for (const s of doc.summary) {
    const tile = el("div", "kpi");
    tile.append(el("h3", null, pickLang(s.label_zh, s.label_en)), el("div", "big", reportCell(s.value)));
    tiles.append(tile);
  }
  const list = $("rp-findings");
  list.replaceChildren();
  for (const f of doc.findings) list.append(el("li", null, pickLang(f.text_zh, f.text_en)));
  if (!doc.findings.length) list.append(el("li", "muted", t("rpNone")));
  const tables = $("rp-tables");
  tables.replaceChildren();
  const pick = $("rp-table");
  pick.replaceChildren();
  for (const tb of doc.tables) {
    const title = pickLang(tb.title.zh, tb.title.en);
    const o = el("option", null, title);
    o.value = tb.key;
    pick.append(o);
    tables.append(el("h3", null, title));
    const wrap = el("div", "rp-table-wrap");
    const table = el("table", "table");
    const head = el("tr");
    for (const c of tb.columns) head.append(el("th", null, pickLang(c.title_zh, c.title_en) + (c.unit ? " (" + c.unit + ")" : "")));
    const thead = el("thead");
    thead.append(head);
    const body = el("tbody");
    for (const row of tb.rows.slice(0, REPORT_ROWS)) {
      const tr = el("tr");
      for (const c of tb.columns) tr.append(el("td", null, reportCell(row[c.key])));
      body.append(tr);
    }
    if (!tb.rows.length) {
      const tr = el("tr");
      const cell = el("td", "empty", t("rpNone"));
      cell.colSpan = tb.columns.length;
      tr.append(cell);
      body.append(tr);
    }
    table.append(thead, body);
    wrap.append(table);
    tables.append(wrap);
    if (tb.rows.length > REPORT_ROWS) tables.append(el("div", "muted", t("rpMoreRows", { n: REPORT_ROWS })));
  }
  $("rp-csv").disabled = $("rp-html").disabled = false;
}

async function downloadReport(format) {
  if (!report.params) return;
  const extra = format === "csv" ? { format, table: $("rp-table").value } : { format };
  const url = "/api/v1/reports/" + encodeURIComponent(report.params.kind) + "?" + reportQuery(extra);
  let r;
  try {
    r = await fetch(url, { headers: { Authorization: "Bearer " + state.token } });
  } catch (e) {
    showMsg("rp-msg", t("errNetwork"), "err");
    return;
  }
  if (!r.ok) {
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    showMsg("rp-msg", actionError(r.status, body), "err");
    return;
  }
  const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
  const name = m ? m[1] : "report." + format;
  const blob = await r.blob();
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  showMsg("rp-msg", t("rpDownloaded", { name }), "ok");
}

views.loaders.reports = loadReports;

document.addEventListener("DOMContentLoaded", () => {
  $("rp-form").addEventListener("submit", (ev) => { ev.preventDefault(); buildReport().catch(() => {}); });
  $("rp-csv").addEventListener("click", () => { downloadReport("csv").catch(() => {}); });
  $("rp-html").addEventListener("click", () => { downloadReport("html").catch(() => {}); });
  // A link to the reports view (a scheduled report's message): open it once the page knows who is logged in.
  window.addEventListener("hashchange", () => {
    report.link = reportParamsFromHash();
    if (report.link && state.me) showView("reports");
  });
  if (report.link) {
    let tries = 0;
    const wait = setInterval(() => {
      tries += 1;
      const ready = state.me && !document.querySelector("dialog[open]");  // logged in, no login form open
      if (ready || tries > 1200) {
        clearInterval(wait);
        if (ready) showView("reports");
      }
    }, 500);
  }
});
