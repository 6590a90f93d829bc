"""`lianfang stats ...` and `lianfang risk ...`: statistics of alerts and incidents, and the riskiest regions now.

Reads the SQL database of the settings (the root ``--config`` file and the environment, handed down through the
typer context; this package never imports the composition root). Output: a table (tab-separated lines when stdout
is not a terminal), ``--json`` or ``--csv`` for scripts. User errors print one line and exit 1.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine

from core import clock
from core.cliout import note, print_table
from core.db import make_engine, migrate
from core.errors import StoreUnavailable, UserError
from core.settings import Settings, load_settings
from devices.registry import Registry
from joint.risk import RiskWeights, top_risks
from joint.risk_store import RiskReader, alert_records, incident_records, task_records
from joint.stats import CSV_HEADER, GroupStats, group_json, group_row, summarise

stats_app = typer.Typer(
    help="Statistics: counts, time to acknowledge and to resolve (mean, p50, p90) by region, rule, type, department.",
    no_args_is_help=True,
)
risk_app = typer.Typer(help="Region risk: the riskiest regions now (docs/risk.md).", no_args_is_help=True)

DEFAULT_DAYS = 7


class AlertGroup(StrEnum):
    region = "region"
    rule = "rule"
    severity = "severity"


class IncidentGroup(StrEnum):
    region = "region"
    type = "type"
    department = "department"
    severity = "severity"


class Level(StrEnum):
    province = "province"
    city = "city"
    agency = "agency"
    building = "building"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV (a header line, then one line per group).")]
StartOpt = Annotated[
    str | None, typer.Option("--start", help=f"ISO 8601 with a UTC offset (default: {DEFAULT_DAYS} days before end).")
]
EndOpt = Annotated[str | None, typer.Option("--end", help="ISO 8601 with a UTC offset, exclusive (default: now).")]
RegionOpt = Annotated[str | None, typer.Option("--region", help="Only this region's subtree.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=100_000, help="Groups shown, largest first.")]


def _fail(exc: Exception) -> typer.Exit:
    for line in str(exc).splitlines():
        typer.echo(f"error: {line}", err=True)
    return typer.Exit(1)


def _settings(ctx: typer.Context) -> Settings:
    """The settings the root command was given (``ctx.obj``: ``config`` path, or ``settings`` already loaded)."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    cached = obj.get("settings")
    if isinstance(cached, Settings):
        return cached
    config = obj.get("config")
    settings = load_settings(Path(config) if config else None)
    obj["settings"] = settings
    root.obj = obj
    return settings


@contextmanager
def _engine(settings: Settings) -> Iterator[Engine]:
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not Path(path).exists():
            raise UserError(f"no database at {path} yet (start `lianfang serve` or import regions first)")
    engine = make_engine(url)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


def parse_instant(value: str, name: str) -> datetime:
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise UserError(f"--{name}: {value!r} is not an ISO 8601 time") from exc
    if at.tzinfo is None or at.utcoffset() is None:
        raise UserError(f"--{name}: {value!r} has no UTC offset; write e.g. 2026-11-26T08:00:00+08:00")
    return at.astimezone(UTC)


def period(start: str | None, end: str | None, *, now: datetime, max_days: int) -> tuple[datetime, datetime]:
    """[start, end): end defaults to now, start to DEFAULT_DAYS before end; at most ``max_days`` long."""
    t1 = now if end is None else parse_instant(end, "end")
    t0 = t1 - timedelta(days=min(DEFAULT_DAYS, max_days)) if start is None else parse_instant(start, "start")
    if t0 >= t1:
        raise UserError("--start must be before --end")
    if t1 - t0 > timedelta(days=max_days):
        raise UserError(f"the period is longer than {max_days} days (api.max_range_days)")
    return t0, t1


def _emit(
    kind: str,
    group_by: str,
    t0: datetime,
    t1: datetime,
    groups: list[GroupStats],
    total: GroupStats,
    truncated: bool,
    *,
    json_out: bool,
    csv_out: bool,
) -> None:
    if json_out:
        doc: dict[str, Any] = {
            "kind": kind,
            "group_by": group_by,
            "start": t0.isoformat(),
            "end": t1.isoformat(),
            "truncated": truncated,
            "total": group_json(total),
            "groups": [group_json(g) for g in groups],
        }
        typer.echo(json.dumps(doc, ensure_ascii=False))
        return
    if csv_out:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(CSV_HEADER)
        for g in [*groups, total]:
            w.writerow(group_row(g))
        return
    print_table(
        CSV_HEADER,
        [group_row(g) for g in [*groups, total]],
        title=f"{kind} by {group_by}, {t0.isoformat()} to {t1.isoformat()}",
    )
    if truncated:
        note("truncated: more rows than risk.stats_max_rows in the period; the newest were left out")


def _check_region(registry: Registry, region: str | None) -> None:
    if region is not None and registry.region(region) is None:
        raise UserError(f"no region {region!r}")


@stats_app.command("alerts")
def stats_alerts(
    ctx: typer.Context,
    group_by: Annotated[AlertGroup, typer.Option("--group-by", help="One row per ...")] = AlertGroup.region,
    start: StartOpt = None,
    end: EndOpt = None,
    region: RegionOpt = None,
    limit: LimitOpt = 1000,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
) -> None:
    """Alerts raised in [start, end): count, acknowledged, resolved, open, time to acknowledge and to resolve
    (seconds: mean, p50, p90). Regions are where each alert was raised (not rolled up); the last row is the
    total."""
    try:
        if json_out and csv_out:
            raise UserError("choose one of --json and --csv")
        settings = _settings(ctx)
        t0, t1 = period(start, end, now=clock.now(), max_days=settings.api.max_range_days)
        with _engine(settings) as engine:
            _check_region(Registry(engine), region)
            records, cut = alert_records(engine, t0, t1, within=region, limit=settings.risk.stats_max_rows)
    except (UserError, StoreUnavailable) as exc:
        raise _fail(exc) from exc
    groups, total = summarise(records, str(group_by))
    _emit("alerts", str(group_by), t0, t1, groups[:limit], total, cut, json_out=json_out, csv_out=csv_out)


@stats_app.command("incidents")
def stats_incidents(
    ctx: typer.Context,
    group_by: Annotated[IncidentGroup, typer.Option("--group-by", help="One row per ...")] = IncidentGroup.type,
    start: StartOpt = None,
    end: EndOpt = None,
    region: RegionOpt = None,
    limit: LimitOpt = 1000,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
) -> None:
    """Incidents opened in [start, end): acknowledged when their first department task was, resolved when they
    were. ``--group-by department`` counts those incidents' department tasks (acknowledged, closed) instead."""
    try:
        if json_out and csv_out:
            raise UserError("choose one of --json and --csv")
        settings = _settings(ctx)
        t0, t1 = period(start, end, now=clock.now(), max_days=settings.api.max_range_days)
        read = task_records if group_by is IncidentGroup.department else incident_records
        with _engine(settings) as engine:
            _check_region(Registry(engine), region)
            records, cut = read(engine, t0, t1, within=region, limit=settings.risk.stats_max_rows)
    except (UserError, StoreUnavailable) as exc:
        raise _fail(exc) from exc
    groups, total = summarise(records, str(group_by))
    kind = "tasks" if group_by is IncidentGroup.department else "incidents"
    _emit(kind, str(group_by), t0, t1, groups[:limit], total, cut, json_out=json_out, csv_out=csv_out)


@risk_app.command("top")
def risk_top(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="Regions shown.")] = 10,
    level: Annotated[
        Level | None, typer.Option("--level", help="Rank this level's regions by their rolled-up score.")
    ] = None,
    region: RegionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """The riskiest regions now: without --level, where the trouble sits (each region's own score); with it, that
    level's regions by their rolled-up score. Each with its highest-scoring open alerts and incidents."""
    try:
        settings = _settings(ctx)
        now = clock.now()
        with _engine(settings) as engine:
            registry = Registry(engine)
            _check_region(registry, region)
            r = settings.risk
            picture = RiskReader(engine, registry.regions, max_items=r.max_items).picture(
                RiskWeights.from_settings(r), now=now, top_contributors=max(r.top_contributors, 1)
            )
    except (UserError, StoreUnavailable) as exc:
        raise _fail(exc) from exc
    visible = None if region is None else picture.subtree(region)
    lvl = None if level is None else str(level)
    ranked = top_risks(picture, limit, level=lvl, visible=visible, contributors=settings.risk.top_contributors)
    if json_out:
        doc = {
            "at": now.isoformat(),
            "ranked_by": "own" if lvl is None else "score",
            "truncated": picture.truncated,
            "items": [
                {
                    "id": rr.id,
                    "name": rr.name,
                    "level": rr.level,
                    "own": round(rr.own, 4),
                    "score": round(rr.score, 4),
                    "subtree_alerts": rr.subtree_alerts,
                    "subtree_incidents": rr.subtree_incidents,
                    "contributors": [
                        {
                            "kind": c.item.kind,
                            "id": c.item.id,
                            "region_id": c.item.region_id,
                            "severity": c.item.severity,
                            "label": c.item.label,
                            "title": c.item.title,
                            "since": c.item.since.isoformat(),
                            "handled": c.item.handled,
                            "points": round(c.points, 4),
                        }
                        for c in cs
                    ],
                }
                for rr, cs in ranked
            ],
        }
        typer.echo(json.dumps(doc, ensure_ascii=False))
        return
    if not ranked:
        note("no open risk: no open alerts or incidents in these regions")
        return
    rows = []
    for i, (rr, cs) in enumerate(ranked, 1):
        top = cs[0] if cs else None
        what = "" if top is None else f"{top.item.kind} {top.item.id} {top.item.label} {top.item.severity}"
        rows.append(
            [
                str(i),
                rr.id,
                rr.name,
                rr.level,
                f"{rr.own:.2f}",
                f"{rr.score:.2f}",
                str(rr.subtree_alerts),
                str(rr.subtree_incidents),
                what,
            ]
        )
    print_table(
        ["#", "region", "name", "level", "own", "score", "alerts", "incidents", "top contributor"],
        rows,
        title=f"top risks at {now.isoformat()}",
    )
    if picture.truncated:
        note("truncated: more open items than risk.max_items; the oldest were not counted")


# --- lianfang incidents ... : the state machine through the running server's API ---------------------------------

incidents_app = typer.Typer(
    help="Incidents (联防事件): list, show, and move them open -> investigating -> resolved -> closed with a cause "
    "code, through the running server's API (as the user of --token; the server checks role and region).",
    no_args_is_help=True,
)
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", envvar="LIANFANG_API_URL", help="The server (default: http://api.host:api.port)."),
]
TokenOpt = Annotated[str, typer.Option("--token", envvar="LIANFANG_TOKEN", help="Your API token.", show_default=False)]
IdArg = Annotated[int, typer.Argument(min=1, max=2**53 - 1, help="incident id")]
CAUSES = ("false_alarm", "handled", "maintenance", "device_fault", "duplicate", "other")


def _api(ctx: typer.Context, url: str | None, token: str, method: str, path: str, body: Any = None) -> Any:
    """One call of /api/v1; the server's refusal (409 wrong state, 403 role, 404 scope, 422 input) as a UserError
    with its reason."""
    import httpx

    if url is None:
        api = _settings(ctx).api
        url = f"http://{api.host}:{api.port}"
    try:
        r = httpx.request(
            method,
            f"{url.rstrip('/')}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach the server at {url}: {exc}") from exc
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        if isinstance(detail, list):  # 422: one entry per field
            detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)
        raise UserError(f"{r.status_code}: {detail}")
    return r.json()


def _show_incident(doc: dict[str, Any], json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(doc, ensure_ascii=False))
        return
    print_table(
        ["id", "state", "severity", "type", "region", "title", "cause", "members", "tasks"],
        [
            [
                str(doc["id"]),
                doc["state"],
                doc["severity"],
                doc["type"],
                doc["region_id"],
                doc["title_zh"],
                doc.get("cause_code") or "",
                str(doc.get("member_count", "")),
                " ".join(f"{t['department']}:{t['state']}" for t in doc.get("tasks", [])),
            ]
        ],
    )


@incidents_app.command("list")
def incidents_list(
    ctx: typer.Context,
    token: TokenOpt,
    url: UrlOpt = None,
    state: Annotated[
        str | None, typer.Option("--state", help="open, investigating, resolved, closed, or active")
    ] = None,
    region: RegionOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Incidents newest first (those your token may see)."""
    from urllib.parse import urlencode

    query = {k: v for k, v in {"state": state, "region": region, "limit": limit}.items() if v is not None}
    try:
        doc = _api(ctx, url, token, "GET", f"/incidents?{urlencode(query)}")
    except UserError as exc:
        raise _fail(exc) from exc
    if json_out:
        typer.echo(json.dumps(doc, ensure_ascii=False))
        return
    print_table(
        ["id", "state", "severity", "type", "region", "title", "opened"],
        [
            [str(i["id"]), i["state"], i["severity"], i["type"], i["region_id"], i["title_zh"], i["opened_at"]]
            for i in doc["items"]
        ],
        title=f"{doc['total']} incidents",
    )


@incidents_app.command("show")
def incidents_show(
    ctx: typer.Context, incident_id: IdArg, token: TokenOpt, url: UrlOpt = None, json_out: JsonOpt = False
) -> None:
    """One incident with its tasks (``--json``: members, timeline and actions too)."""
    try:
        _show_incident(_api(ctx, url, token, "GET", f"/incidents/{incident_id}"), json_out)
    except UserError as exc:
        raise _fail(exc) from exc


def _transition(ctx: typer.Context, url: str | None, token: str, path: str, body: Any, json_out: bool) -> None:
    try:
        _show_incident(_api(ctx, url, token, "POST", path, body), json_out)
    except UserError as exc:
        raise _fail(exc) from exc


@incidents_app.command("investigate")
def incidents_investigate(
    ctx: typer.Context, incident_id: IdArg, token: TokenOpt, url: UrlOpt = None, json_out: JsonOpt = False
) -> None:
    """open -> investigating: someone is on it."""
    _transition(ctx, url, token, f"/incidents/{incident_id}/investigate", {}, json_out)


@incidents_app.command("resolve")
def incidents_resolve(
    ctx: typer.Context,
    incident_id: IdArg,
    reason: Annotated[str, typer.Option("--reason", help="why it is resolved (required)", show_default=False)],
    token: TokenOpt,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """open or investigating -> resolved, by hand; its tasks stay until the departments close them."""
    _transition(ctx, url, token, f"/incidents/{incident_id}/resolve", {"reason": reason}, json_out)


@incidents_app.command("close")
def incidents_close(
    ctx: typer.Context,
    incident_id: IdArg,
    cause: Annotated[str, typer.Option("--cause", help=f"one of {', '.join(CAUSES)}", show_default=False)],
    token: TokenOpt,
    note: Annotated[str, typer.Option("--note", help="a note for the timeline")] = "",
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """-> closed with a cause code (from open, investigating or resolved); its open tasks close with it."""
    _transition(ctx, url, token, f"/incidents/{incident_id}/close", {"cause_code": cause, "note": note}, json_out)


@incidents_app.command("comment")
def incidents_comment(
    ctx: typer.Context,
    incident_id: IdArg,
    text: Annotated[str, typer.Argument(help="the comment")],
    token: TokenOpt,
    url: UrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Add a comment to the incident's timeline."""
    _transition(ctx, url, token, f"/incidents/{incident_id}/comments", {"text": text}, json_out)
