"""GET /api/v1/reports/{kind}: a report built now for one region's subtree and period (docs/reports.md).

Region-scoped: the region must be in the caller's scope (else 404, as if it did not exist); without ``region`` the
caller's own region (a whole-tree caller: the root region, when there is one). Every call is a sensitive read
(audited: reports are exports). Reports can take seconds: the build runs in a worker thread, at most
``MAX_CONCURRENT`` at a time, never on the event loop.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response

from alerts.calendar import Calendar, beijing
from core.errors import UserError
from devices.registry import Registry
from gateway.audit import SENSITIVE_READ
from gateway.auth import Principal
from gateway.context import GatewayContext
from gateway.deps import ContextDep, NowDep, PrincipalDep, ReadRegistryDep
from gateway.params import ErrorBody, RegionQuery, error_responses
from gateway.routes import API_PREFIX
from gateway.scope import not_found, region_or_404
from reports.model import REPORT_KINDS, Report, ReportRequest
from reports.period import PERIOD_PATTERN, parse_period
from reports.registry import ReportNotAvailable, build_report
from reports.render import MEDIA_TYPES, render_csv, render_html, report_json
from reports.source import LiveSource, calendar_from_settings

router = APIRouter(prefix=API_PREFIX, tags=["reports"], responses=error_responses(401, 403, 404, 422, 503))

MAX_CONCURRENT = 2
_LIMITER: anyio.CapacityLimiter | None = None
_CAL_LOCK = threading.Lock()

KindPath = Annotated[str, Path(min_length=1, max_length=16, description="vehicles, energy, coverage or scorecard")]
PeriodQuery = Annotated[
    str,
    Query(
        min_length=2,
        max_length=32,
        pattern=PERIOD_PATTERN,
        description="7d, 30d, 90d, week (last full ISO week), month (last full month), 2026-11, 2026-W47, "
        "2026-11-01..2026-11-15; Beijing time",
    ),
]
FormatQuery = Annotated[Literal["json", "csv", "html"], Query(description="json, csv (one table) or html")]
LangQuery = Annotated[Literal["zh", "en"], Query(description="language of the CSV header and the HTML")]
TableQuery = Annotated[
    str | None, Query(min_length=1, max_length=64, pattern=r"^[a-z0-9_]+$", description="CSV: the table's key")
]


def _limiter() -> anyio.CapacityLimiter:
    global _LIMITER
    if _LIMITER is None:
        _LIMITER = anyio.CapacityLimiter(MAX_CONCURRENT)
    return _LIMITER


def calendar_of(request: Request, ctx: GatewayContext) -> Calendar:
    """The running rule set's calendar (extra days, rosters) when the alert engine is here, else the rule files'
    (read once), else the official calendar alone."""
    rules = getattr(ctx.alerts, "rules", None)
    cal = getattr(rules, "calendar", None)
    if isinstance(cal, Calendar):
        return cal
    state = request.app.state
    with _CAL_LOCK:
        cached = getattr(state, "report_calendar", None)
        if not isinstance(cached, Calendar):
            try:
                cached = calendar_from_settings(ctx.settings)
            except UserError:
                cached = Calendar()
            state.report_calendar = cached
    return cached


def _root_region(registry: Registry) -> str:
    roots = [r.id for r in registry.regions() if r.parent_id is None]
    if len(roots) != 1:
        raise HTTPException(422, detail="region is required")
    return roots[0]


def _filename(report: Report, ext: str) -> str:
    return f"{report.kind}-{report.region_id}-{beijing(report.start):%Y%m%d}-{beijing(report.end):%Y%m%d}.{ext}"


def _build(
    ctx: GatewayContext,
    registry: Registry,
    principal: Principal,
    cal: Calendar,
    kind: str,
    region: str | None,
    period: str,
    now: Any,
) -> Report:
    region_id = region if region is not None else principal.region_id or _root_region(registry)
    region_or_404(registry, principal, region_id)  # outside the scope: 404 as if it did not exist
    if kind not in REPORT_KINDS:
        raise not_found("report", kind)
    try:
        p = parse_period(period, now)
        source = LiveSource(registry.engine, ctx.store, cal)
        return build_report(source, ReportRequest(kind, region_id, p.start, p.end, now))
    except ReportNotAvailable as exc:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, detail=str(exc)) from exc
    except UserError as exc:
        raise HTTPException(422, detail=str(exc)) from exc


@router.get(
    "/reports/{kind}",
    dependencies=[SENSITIVE_READ],
    responses={501: {"model": ErrorBody, "description": "the builder of this report is not available"}},
)
async def get_report(
    request: Request,
    ctx: ContextDep,
    registry: ReadRegistryDep,
    principal: PrincipalDep,
    now: NowDep,
    kind: KindPath,
    region: RegionQuery = None,
    period: PeriodQuery = "7d",
    format: FormatQuery = "json",
    lang: LangQuery = "zh",
    table: TableQuery = None,
) -> Response:
    """The report ``kind`` of ``region``'s subtree over ``period``: JSON (the Report shape of reports/model.py,
    times ISO-8601 with +08:00), one table as CSV (UTF-8 with BOM; ``table``, default the first) or the printable
    HTML (self-contained, zh-CN or English). Unknown kind: 404; a builder that is not installed: 501."""
    cal = await anyio.to_thread.run_sync(calendar_of, request, ctx, limiter=_limiter())
    report = await anyio.to_thread.run_sync(
        lambda: _build(ctx, registry, principal, cal, kind, region, period, now), limiter=_limiter()
    )
    if format == "json":
        return JSONResponse(report_json(report))
    if format == "csv":
        try:
            body = render_csv(report, table, lang)
        except UserError as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        disposition = f'attachment; filename="{_filename(report, "csv")}"'
        return Response(body, media_type=MEDIA_TYPES["csv"], headers={"Content-Disposition": disposition})
    body = await anyio.to_thread.run_sync(render_html, report, lang, limiter=_limiter())
    disposition = f'attachment; filename="{_filename(report, "html")}"'
    return Response(body, media_type=MEDIA_TYPES["html"], headers={"Content-Disposition": disposition})
