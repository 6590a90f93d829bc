from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import UserError
from reports.model import Column, Table
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


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
_cell = st.one_of(st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.floats(allow_nan=True), _text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_cell, min_size=2, max_size=2), max_size=8), _text)
def test_any_table_round_trips_through_csv_json_and_html(rows: list[list[Any]], title: str) -> None:
    cols = (Column("a", "甲" + title, "A"), Column("b", "乙", "B", "kWh"))
    table = Table("t", "表" + title, "T", cols, tuple({"a": r[0], "b": r[1]} for r in rows))
    r = replace(sample_report(), tables=(table,), title_zh=title or "空")
    back = list(csv.reader(io.StringIO(render_csv(r).decode("utf-8-sig"), newline="")))
    assert back[0] == ["甲" + title, "乙 (kWh)"] and len(back) == len(rows) + 1
    for got, row in zip(back[1:], rows, strict=True):
        assert got == [_plain(v) for v in row]
    doc = json.loads(render_json(r))
    for got_row, row in zip(doc["tables"][0]["rows"], rows, strict=True):
        for got, v in zip((got_row["a"], got_row["b"]), row, strict=True):
            assert got == (None if isinstance(v, float) and not math.isfinite(v) else v)
    page = render_html(r)
    parsed = _parse(page)
    body = "".join(parsed.text)
    for row in rows:
        for v in row:
            assert fmt_cell(v, "zh") in body
    assert "http://" not in page.decode() and "https://" not in page.decode()


def _plain(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)
