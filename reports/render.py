"""Report renderers: JSON, CSV (UTF-8 with BOM), printable HTML (one self-contained file with inline SVG charts)
and PDF through an offline headless Chromium. Pure except ``render_pdf`` (runs the browser on a temporary file).

Every renderer takes a ``reports.model.Report``; times are shown in Beijing time (JSON: ISO-8601 with +08:00).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from alerts.calendar import beijing
from core.errors import UserError
from reports.model import Cell, Chart, Report, Table

Lang = Literal["zh", "en"]
Format = Literal["json", "csv", "html", "pdf"]
FORMATS: tuple[Format, ...] = ("json", "csv", "html", "pdf")
MEDIA_TYPES: dict[Format, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}
PDF_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
PDF_TIMEOUT_S = 180.0

KIND_TITLES: dict[str, tuple[str, str]] = {
    "vehicles": ("公务用车使用与配置报告", "Vehicle use and allocation report"),
    "energy": ("能耗与浪费报告", "Energy and waste report"),
    "coverage": ("数据覆盖与质量报告", "Data coverage and quality report"),
    "scorecard": ("区域评分卡", "Region scorecard"),
}

_WORDS: dict[str, tuple[str, str]] = {
    "region": ("区域", "Region"),
    "period": ("统计周期", "Period"),
    "generated": ("生成时间", "Generated"),
    "summary": ("概要", "Summary"),
    "findings": ("待办与建议", "Findings"),
    "charts": ("图表", "Charts"),
    "tables": ("明细", "Tables"),
    "none": ("无", "none"),
    "yes": ("是", "yes"),
    "no": ("否", "no"),
    "tz": ("北京时间", "Beijing time"),
    "item": ("项目", "Item"),
    "value": ("数值", "Value"),
}


def word(key: str, lang: Lang) -> str:
    zh, en = _WORDS[key]
    return zh if lang == "zh" else en


def pick(zh: str, en: str, lang: Lang) -> str:
    return zh if lang == "zh" else en


def iso(at: datetime) -> str:
    """ISO-8601 in Beijing time: ``2026-11-01T00:00:00+08:00``."""
    return beijing(at).isoformat(timespec="seconds")


def shown(at: datetime) -> str:
    return beijing(at).strftime("%Y-%m-%d %H:%M")


def fmt_cell(v: Cell, lang: Lang) -> str:
    """A cell as a person reads it: floats with at most 2 decimals, booleans as 是/否 (yes/no), None as —."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return word("yes" if v else "no", lang)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        text = f"{v:,.2f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if isinstance(v, int):
        return f"{v:,}"
    return v


def period_text(report: Report) -> str:
    return f"{shown(report.start)} – {shown(report.end)}"


# --- JSON --------------------------------------------------------------------------------------------------


def _json_value(v: Cell) -> Cell:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def report_json(report: Report) -> dict[str, Any]:
    """The report as a JSON-ready dict, keys in a fixed order, times ISO-8601 with +08:00."""
    return {
        "kind": report.kind,
        "region": {"id": report.region_id, "name": report.region_name},
        "period": {"start": iso(report.start), "end": iso(report.end)},
        "generated_at": iso(report.generated_at),
        "title": {"zh": report.title_zh, "en": report.title_en},
        "summary": [
            {
                "key": k,
                "label_zh": report.summary_labels.get(k, (k, k))[0],
                "label_en": report.summary_labels.get(k, (k, k))[1],
                "value": _json_value(v),
            }
            for k, v in report.summary.items()
        ],
        "tables": [
            {
                "key": t.key,
                "title": {"zh": t.title_zh, "en": t.title_en},
                "columns": [
                    {"key": c.key, "title_zh": c.title_zh, "title_en": c.title_en, "unit": c.unit} for c in t.columns
                ],
                "rows": [{c.key: _json_value(r.get(c.key)) for c in t.columns} for r in t.rows],
            }
            for t in report.tables
        ],
        "charts": [
            {
                "key": c.key,
                "title": {"zh": c.title_zh, "en": c.title_en},
                "kind": c.kind,
                "unit": c.unit,
                "x": list(c.x),
                "series": {name: [_json_value(v) for v in values] for name, values in c.series.items()},
            }
            for c in report.charts
        ],
        "findings": [
            {
                "key": f.key,
                "text_zh": f.text_zh,
                "text_en": f.text_en,
                "numbers": {k: _json_value(v) for k, v in f.numbers.items()},
            }
            for f in report.findings
        ],
    }


def render_json(report: Report) -> bytes:
    return (json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n").encode("utf-8")


# --- CSV ---------------------------------------------------------------------------------------------------


def _summary_table(report: Report) -> Table:
    from reports.model import Column

    cols = (Column("item", *_WORDS["item"]), Column("value", *_WORDS["value"]))
    rows = tuple({"item": k, "value": v} for k, v in report.summary.items())
    return Table("summary", *_WORDS["summary"], columns=cols, rows=rows)


def _header(t: Table, lang: Lang) -> list[str]:
    out = []
    for c in t.columns:
        title = pick(c.title_zh, c.title_en, lang)
        out.append(f"{title} ({c.unit})" if c.unit else title)
    return out


def _csv_value(v: Cell) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def table_csv(t: Table, lang: Lang = "zh") -> bytes:
    """One table as CSV: a header of column titles (with units), UTF-8 with BOM so Excel opens Chinese."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(_header(t, lang))
    for r in t.rows:
        w.writerow([_csv_value(r.get(c.key)) for c in t.columns])
    return buf.getvalue().encode("utf-8-sig")


def csv_tables(report: Report, lang: Lang = "zh") -> dict[str, bytes]:
    """Every table as its own CSV, by table key (the summary when the report has no table)."""
    tables = report.tables or (_summary_table(report),)
    return {t.key: table_csv(t, lang) for t in tables}


def render_csv(report: Report, table: str | None = None, lang: Lang = "zh") -> bytes:
    """One CSV: the table ``table`` (default the first). UserError naming the tables when there is no such one."""
    tables = report.tables or (_summary_table(report),)
    if table is None:
        return table_csv(tables[0], lang)
    for t in tables:
        if t.key == table:
            return table_csv(t, lang)
    raise UserError(f"report {report.kind} has no table {table!r}: one of {', '.join(t.key for t in tables)}")


# --- SVG charts --------------------------------------------------------------------------------------------

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563")
W, H = 720, 280
ML, MR, MT, MB = 56, 16, 16, 64  # margins: left (axis labels), right, top, bottom (category labels)


def _num(v: float) -> str:
    return f"{v:.1f}"


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _legend(names: Sequence[str]) -> str:
    if len(names) < 2:
        return ""
    parts = []
    for i, name in enumerate(names):
        x = ML + i * 140
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="{H - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{H - 5}" font-size="11">{html.escape(name)}</text>'
        )
    return "".join(parts)


def _axes(top: float, unit: str | None) -> str:
    plot_h = H - MT - MB
    out = [f'<line x1="{ML}" y1="{MT}" x2="{ML}" y2="{MT + plot_h}" stroke="#999"/>']
    out.append(f'<line x1="{ML}" y1="{MT + plot_h}" x2="{W - MR}" y2="{MT + plot_h}" stroke="#999"/>')
    for i in range(5):
        v = top * i / 4
        y = MT + plot_h - plot_h * i / 4
        label = fmt_cell(round(v, 2), "en")
        out.append(f'<text x="{ML - 4}" y="{_num(y + 4)}" font-size="10" text-anchor="end">{html.escape(label)}</text>')
        if i:
            out.append(f'<line x1="{ML}" y1="{_num(y)}" x2="{W - MR}" y2="{_num(y)}" stroke="#eee"/>')
    if unit:
        out.append(f'<text x="4" y="{MT + 8}" font-size="10">{html.escape(unit)}</text>')
    return "".join(out)


def _x_labels(labels: Sequence[str], step_w: float) -> str:
    every = max(1, math.ceil(len(labels) / 24))
    out = []
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = ML + step_w * (i + 0.5)
        y = H - MB + 12
        out.append(
            f'<text x="{_num(x)}" y="{y}" font-size="10" text-anchor="end" '
            f'transform="rotate(-35 {_num(x)} {y})">{html.escape(label)}</text>'
        )
    return "".join(out)


def _top(chart: Chart) -> float:
    values = [v for s in chart.series.values() for v in _finite(s)]
    top = max([0.0, *values])
    return top if top > 0 else 1.0


def svg_bar(chart: Chart) -> str:
    n = max(1, len(chart.x))
    names = list(chart.series)
    plot_w, plot_h = W - ML - MR, H - MT - MB
    step = plot_w / n
    bar_w = step * 0.8 / max(1, len(names))
    top = _top(chart)
    parts = [_axes(top, chart.unit)]
    for si, name in enumerate(names):
        colour = PALETTE[si % len(PALETTE)]
        for i, v in enumerate(chart.series[name][: len(chart.x)]):
            if v is None or not math.isfinite(v) or v <= 0:
                continue
            h = plot_h * v / top
            x = ML + step * i + step * 0.1 + bar_w * si
            parts.append(
                f'<rect x="{_num(x)}" y="{_num(MT + plot_h - h)}" width="{_num(bar_w)}" height="{_num(h)}" '
                f'fill="{colour}"><title>{html.escape(chart.x[i])}: {html.escape(fmt_cell(v, "en"))}</title></rect>'
            )
    parts.append(_x_labels(chart.x, step))
    parts.append(_legend(names))
    return _svg(chart, "".join(parts))


def svg_line(chart: Chart) -> str:
    n = max(1, len(chart.x))
    names = list(chart.series)
    plot_w, plot_h = W - ML - MR, H - MT - MB
    step = plot_w / n
    top = _top(chart)
    parts = [_axes(top, chart.unit)]
    for si, name in enumerate(names):
        colour = PALETTE[si % len(PALETTE)]
        points = [
            f"{_num(ML + step * (i + 0.5))},{_num(MT + plot_h - plot_h * max(v, 0.0) / top)}"
            for i, v in enumerate(chart.series[name][: len(chart.x)])
            if v is not None and math.isfinite(v)
        ]
        if points:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>')
    parts.append(_x_labels(chart.x, step))
    parts.append(_legend(names))
    return _svg(chart, "".join(parts))


def svg_heatmap(chart: Chart) -> str:
    """Rows are the series (name on the left), columns the x labels; darker blue is more."""
    rows = list(chart.series)
    cols = max(1, len(chart.x))
    label_w, cell_h = 120, 18
    cell_w = (W - label_w - MR) / cols
    height = MT + cell_h * len(rows) + 40
    top = _top(chart)
    parts = []
    for ri, name in enumerate(rows):
        y = MT + ri * cell_h
        parts.append(
            f'<text x="{label_w - 4}" y="{y + 13}" font-size="10" text-anchor="end">{html.escape(name)}</text>'
        )
        for ci, v in enumerate(chart.series[name][:cols]):
            share = 0.0 if v is None or not math.isfinite(v) else max(0.0, min(1.0, v / top))
            light = 97 - int(share * 60)
            parts.append(
                f'<rect x="{_num(label_w + ci * cell_w)}" y="{y}" width="{_num(cell_w)}" height="{cell_h}" '
                f'fill="hsl(217,90%,{light}%)"><title>{html.escape(name)} {html.escape(chart.x[ci])}: '
                f"{html.escape(fmt_cell(v, 'en'))}</title></rect>"
            )
    every = max(1, math.ceil(cols / 24))
    for ci, label in enumerate(chart.x):
        if ci % every == 0:
            x = label_w + ci * cell_w
            parts.append(
                f'<text x="{_num(x)}" y="{MT + cell_h * len(rows) + 14}" font-size="9">{html.escape(label)}</text>'
            )
    return _svg(chart, "".join(parts), height)


def _svg(chart: Chart, body: str, height: int = H) -> str:
    # inline SVG in HTML5 needs no xmlns (and the file then holds no URL at all)
    return (
        f'<svg viewBox="0 0 {W} {height}" width="100%" role="img" '
        f'aria-label="{html.escape(chart.title_en)}">{body}</svg>'
    )


def svg_chart(chart: Chart) -> str:
    if chart.kind == "bar":
        return svg_bar(chart)
    if chart.kind == "line":
        return svg_line(chart)
    return svg_heatmap(chart)


# --- HTML --------------------------------------------------------------------------------------------------

CSS = """
body{font-family:"Noto Sans CJK SC","Source Han Sans SC","WenQuanYi Micro Hei","Microsoft YaHei",
"PingFang SC",sans-serif;
color:#111;margin:24px;font-size:13px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;border-bottom:2px solid #2563eb;padding-bottom:2px;margin-top:24px}
h3{font-size:14px;margin:16px 0 6px}.meta{color:#555;margin-bottom:12px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f1f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
.summary{display:flex;flex-wrap:wrap;gap:8px}
.tile{border:1px solid #ccc;border-radius:4px;padding:6px 10px;min-width:120px}
.tile .v{font-size:18px;font-weight:bold}.tile .l{color:#555;font-size:12px}
ol.findings li{margin:4px 0}.chart{page-break-inside:avoid;break-inside:avoid}
svg text{font-family:inherit;fill:#333}
@page{size:A4;margin:14mm}
@media print{body{margin:0}h2{page-break-after:avoid;break-after:avoid}section.tables{page-break-before:always;
break-before:page}tr{page-break-inside:avoid;break-inside:avoid}thead{display:table-header-group}}
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _table_html(t: Table, lang: Lang) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in _header(t, lang))
    body = []
    for r in t.rows:
        cells = []
        for c in t.columns:
            v = r.get(c.key)
            cls = ' class="n"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{_e(fmt_cell(v, lang))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    empty = f'<tr><td colspan="{len(t.columns)}">{_e(word("none", lang))}</td></tr>' if not t.rows else ""
    return (
        f"<h3>{_e(pick(t.title_zh, t.title_en, lang))}</h3><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}{empty}</tbody></table>"
    )


def render_html(report: Report, lang: Lang = "zh") -> bytes:
    """One printable, self-contained HTML file: inline CSS and SVG, no script, nothing fetched."""
    title = pick(report.title_zh, report.title_en, lang)
    meta = (
        f"{_e(word('region', lang))}: {_e(report.region_name)} ({_e(report.region_id)}) · "
        f"{_e(word('period', lang))}: {_e(period_text(report))} ({_e(word('tz', lang))}) · "
        f"{_e(word('generated', lang))}: {_e(shown(report.generated_at))}"
    )
    tiles = "".join(
        f'<div class="tile"><div class="v">{_e(fmt_cell(v, lang))}</div>'
        f'<div class="l">{_e(pick(*report.summary_labels.get(k, (k, k)), lang))}</div></div>'
        for k, v in report.summary.items()
    )
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">',
        f"<title>{_e(title)} · {_e(report.region_name)}</title><style>{CSS}</style></head><body>",
        f'<h1>{_e(title)}</h1><div class="meta">{meta}</div>',
        f'<h2>{_e(word("summary", lang))}</h2><div class="summary">{tiles}</div>',
    ]
    parts.append(f"<h2>{_e(word('findings', lang))}</h2>")
    if report.findings:
        items = "".join(f"<li>{_e(pick(f.text_zh, f.text_en, lang))}</li>" for f in report.findings)
        parts.append(f'<ol class="findings">{items}</ol>')
    else:
        parts.append(f"<p>{_e(word('none', lang))}</p>")
    if report.charts:
        parts.append(f"<h2>{_e(word('charts', lang))}</h2>")
        for c in report.charts:
            parts.append(f'<div class="chart"><h3>{_e(pick(c.title_zh, c.title_en, lang))}</h3>{svg_chart(c)}</div>')
    if report.tables:
        parts.append(f'<section class="tables"><h2>{_e(word("tables", lang))}</h2>')
        parts.extend(_table_html(t, lang) for t in report.tables)
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


# --- PDF ---------------------------------------------------------------------------------------------------


def pdf_browser() -> str | None:
    """The headless browser used for PDF: Debian's ``chromium`` (or chromium-browser, google-chrome) on PATH."""
    for name in PDF_BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(page: bytes, timeout_s: float = PDF_TIMEOUT_S) -> bytes:
    """Print an HTML page to PDF with headless Chromium, offline (a local file; the page fetches nothing)."""
    browser = pdf_browser()
    if browser is None:
        raise UserError("PDF needs a headless Chromium on PATH: install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="lianfang-pdf-") as tmp:
        src, out = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        src.write_bytes(page)
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--no-pdf-header-footer",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--print-to-pdf={out}",
            src.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"PDF: {browser} did not finish within {timeout_s:.0f} s") from exc
        if not out.exists() or out.stat().st_size == 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise UserError(f"PDF: {browser} wrote no PDF (exit {proc.returncode}): {' | '.join(err)}")
        return out.read_bytes()


def render_pdf(report: Report, lang: Lang = "zh") -> bytes:
    return html_to_pdf(render_html(report, lang))


def render(report: Report, fmt: Format, *, lang: Lang = "zh", table: str | None = None) -> bytes:
    """The report in ``fmt``."""
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report, table, lang)
    if fmt == "html":
        return render_html(report, lang)
    return render_pdf(report, lang)
