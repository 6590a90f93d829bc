from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest

from core.errors import UserError
from reports.render import fmt_cell, pdf_browser, render, render_csv, render_html, render_json
from tests.reports.sample import sample_report


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: bytes) -> _Collect:
    p = _Collect()
    p.feed(page.decode("utf-8"))
    p.close()
    return p


def test_json_is_stable_with_beijing_offsets() -> None:
    r = sample_report()
    a, b = render_json(r), render_json(r)
    assert a == b
    doc = json.loads(a)
    assert doc["period"] == {"start": "2026-11-01T08:00:00+08:00", "end": "2026-11-08T08:00:00+08:00"}
    assert doc["generated_at"] == "2026-11-08T09:30:00+08:00"
    assert doc["tables"][0]["rows"][0] == {"device": "veh-苏A001", "messages": 1200, "km": 35.25}
    assert doc["summary"][0] == {"key": "expected", "label_zh": "应报设备", "label_en": "Expected", "value": 3}
    assert [c["kind"] for c in doc["charts"]] == ["bar", "line", "heatmap"]
    assert "南京市".encode() in a  # not \u-escaped


def test_csv_has_bom_and_the_chosen_table() -> None:
    r = sample_report()
    first = render_csv(r)
    assert first.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(first.decode("utf-8-sig"))))
    assert rows == [
        ["设备", "消息数", "里程 (km)"],
        ["veh-苏A001", "1200", "35.25"],
        ["veh-<b>", "0", ""],
        ["door-1", "7", "0.5"],
    ]
    en = list(csv.reader(io.StringIO(render_csv(r, "reasons", "en").decode("utf-8-sig"))))
    assert en == [["Reason", "Count", "Handled"], ["schema", "3", "1"], ["auth", "1", "0"]]
    with pytest.raises(UserError, match="devices, reasons"):
        render_csv(r, "nope")


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_html_is_self_contained_and_holds_every_row(lang: str) -> None:
    r = sample_report()
    page = render_html(r, lang)  # type: ignore[arg-type]
    text = page.decode("utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower() and "src=" not in text
    parsed = _parse(page)
    body = "".join(parsed.text)
    for t in r.tables:
        for row in t.rows:
            for v in row.values():
                assert fmt_cell(v, lang) in body  # type: ignore[arg-type]
    assert "veh-<b>" in body and "<b>" not in parsed.tags  # escaped, shown as text
    assert parsed.tags.count("svg") == 3 and parsed.tags.count("table") == 2
    assert parsed.tags.count("rect") >= 2 + 6  # two non-zero bars, six heatmap cells
    assert "polyline" in parsed.tags
    assert r.findings[0].text_zh in body if lang == "zh" else r.findings[0].text_en in body
    assert ("数据覆盖与质量报告" in body) == (lang == "zh")
    assert "@media print" in text and "break-before:page" in text


def test_cells_read_well() -> None:
    assert fmt_cell(1234567, "zh") == "1,234,567"
    assert fmt_cell(2.5, "zh") == "2.5"
    assert fmt_cell(66.667, "zh") == "66.67"
    assert fmt_cell(True, "zh") == "是" and fmt_cell(False, "en") == "no"
    assert fmt_cell(None, "zh") == "—"


@pytest.mark.skipif(pdf_browser() is None, reason="no chromium on PATH")
def test_pdf_through_headless_chromium() -> None:
    pdf = render(sample_report(), "pdf")
    assert pdf.startswith(b"%PDF")
    assert len(pdf) > 1000
