"""``lianfang report vehicles|energy|coverage|scorecard``: build a report now and show or write it.

On a terminal: the summary, the findings and the first rows of each table (rich). ``--json``: the report as JSON
on stdout. ``--format json|csv|html|pdf`` with ``--out FILE`` (or the format from the file's extension) writes the
file; without ``--out`` the text formats go to stdout. Docs: docs/reports.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from core import clock
from core.cliout import note, print_table
from core.errors import UserError
from devices.cli_context import open_registry, open_store, settings_from
from reports.model import Report, ReportKind, ReportRequest
from reports.period import PERIOD_HELP, parse_period
from reports.registry import build_report
from reports.render import FORMATS, Format, Lang, fmt_cell, pick, render, render_json
from reports.source import LiveSource, calendar_from_settings

report_app = typer.Typer(help="Reports: vehicles, energy, data coverage, region scorecards (docs/reports.md).")

RegionOpt = Annotated[str, typer.Option("--region", "-r", help="Region id; the report covers its whole subtree.")]
PeriodOpt = Annotated[str, typer.Option("--period", "-p", help=f"Period, Beijing time: {PERIOD_HELP}.")]
FormatOpt = Annotated[
    str | None, typer.Option("--format", "-f", help="json, csv, html or pdf (default: from --out's extension).")
]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file.")]
LangOpt = Annotated[str, typer.Option("--lang", help="zh (default) or en: the language of titles and findings.")]
TableOpt = Annotated[str | None, typer.Option("--table", help="CSV: the table to write (default: the first).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON for scripts.")]
ROWS_SHOWN = 20


def _format(fmt: str | None, out: Path | None) -> Format | None:
    if fmt is None and out is not None:
        fmt = out.suffix.lstrip(".").lower() or None
        if fmt == "htm":
            fmt = "html"
    if fmt is None:
        return None
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt


def _lang(lang: str) -> Lang:
    if lang not in ("zh", "en"):
        raise UserError(f"--lang {lang!r}: zh or en")
    return cast(Lang, lang)


def make_report(ctx: typer.Context, kind: ReportKind, region: str, period: str) -> Report:
    settings = settings_from(ctx)
    now = clock.now()
    p = parse_period(period, now)
    registry = open_registry(settings)
    store = open_store(settings)
    with LiveSource(registry.engine, store, calendar_from_settings(settings), _owned=True) as source:
        return build_report(source, ReportRequest(kind, region, p.start, p.end, now))


def show(report: Report, lang: Lang) -> None:
    """The report on the terminal: summary, findings, the first rows of each table."""
    note(f"{pick(report.title_zh, report.title_en, lang)} · {report.region_name} ({report.region_id})")
    rows = [[pick(*report.summary_labels.get(k, (k, k)), lang), fmt_cell(v, lang)] for k, v in report.summary.items()]
    print_table([pick("项目", "Item", lang), pick("数值", "Value", lang)], rows, title=pick("概要", "Summary", lang))
    if report.findings:
        print_table(
            ["#", pick("待办与建议", "Findings", lang)],
            [[str(i + 1), pick(f.text_zh, f.text_en, lang)] for i, f in enumerate(report.findings)],
        )
    for t in report.tables:
        head = [pick(c.title_zh, c.title_en, lang) for c in t.columns]
        body = [[fmt_cell(r.get(c.key), lang) for c in t.columns] for r in t.rows[:ROWS_SHOWN]]
        print_table(head, body, title=pick(t.title_zh, t.title_en, lang))
        if len(t.rows) > ROWS_SHOWN:
            note(f"… {len(t.rows) - ROWS_SHOWN} more rows: --format csv --table {t.key}")


def run(
    ctx: typer.Context,
    kind: ReportKind,
    region: str,
    period: str,
    fmt: str | None,
    out: Path | None,
    lang: str,
    table: str | None,
    json_out: bool,
) -> None:
    try:
        language = _lang(lang)
        chosen = _format("json" if json_out and fmt is None else fmt, out)
        if chosen == "pdf" and out is None:
            raise UserError("--format pdf needs --out FILE")
        report = make_report(ctx, kind, region, period)
        if chosen is None:
            show(report, language)
            return
        data = render_json(report) if chosen == "json" else render(report, chosen, lang=language, table=table)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    try:
        out.write_bytes(data)
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror}", err=True)
        raise typer.Exit(1) from exc
    note(f"wrote {out} ({len(data):,} bytes, {chosen})")


def _command(kind: ReportKind, default_period: str, doc: str) -> None:
    def command(
        ctx: typer.Context,
        region: RegionOpt,
        period: PeriodOpt = default_period,
        fmt: FormatOpt = None,
        out: OutOpt = None,
        lang: LangOpt = "zh",
        table: TableOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        run(ctx, kind, region, period, fmt, out, lang, table, json_out)

    command.__doc__ = doc
    report_app.command(kind)(command)


_command("vehicles", "30d", "Vehicle use and allocation: trips, utilisation, after-hours use, allocation advice.")
_command("energy", "30d", "Energy against the baseline, estimated waste, quota ranking, submeter balance.")
_command("coverage", "7d", "Data coverage and quality: devices reporting, gaps, rejections, skew; what to fix.")
_command("scorecard", "week", "Region scorecard: response times, coverage, risk, efficiency against siblings.")
