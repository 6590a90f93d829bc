"""`lianfang dispatches list|add|approve|close`: vehicle dispatch records (派车单) from the terminal.

The same records and rules as ``/api/v1/dispatches`` (devices/dispatch.py): a dispatch is pending until approved,
closed once its actual end is recorded; the approver must not be the requester. The person at the terminal is the
OS user (``--by`` names someone else, e.g. the approving official when a clerk records a paper approval); every
write goes to the audit log (``dispatch.create`` / ``approve`` / ``close``). Times: ISO 8601 with an offset
(``2026-12-07T09:00+08:00``), shown in Beijing time; ``--json`` for scripts. User errors print one line, exit 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import typer

from alerts.calendar import BEIJING
from core import clock
from core.cliout import print_table
from core.errors import LianfangError, UserError
from devices.audit import Actor, AuditLog
from devices.cli_context import open_registry, settings_from
from devices.dispatch import STATUSES, Dispatch, DispatchStore
from devices.registry import Registry

dispatches_app = typer.Typer(
    help="Vehicle dispatch records (派车单): request, approve, close; rule V2 checks movements against them.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
ByOpt = Annotated[str | None, typer.Option("--by", help="Who acts (default: the OS user at this terminal).")]


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _ms(text: str, name: str) -> int:
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UserError(f"{name}: {text!r} is not an ISO 8601 time") from exc
    if at.tzinfo is None:
        raise UserError(f"{name}: {text!r} needs a UTC offset, e.g. 2026-12-07T09:00+08:00")
    return int(at.timestamp() * 1000)


def _local(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, BEIJING).strftime("%Y-%m-%d %H:%M")


def _as_json(d: Dispatch) -> dict[str, Any]:
    return d.as_dict()


def _open(ctx: typer.Context) -> tuple[Registry, DispatchStore]:
    registry = open_registry(settings_from(ctx))
    return registry, DispatchStore(registry.engine)


def _actor(by: str | None) -> Actor:
    me = Actor.from_cli()
    return Actor(by, me.origin) if by else me


def _audit(registry: Registry, actor: Actor, action: str, d: Dispatch, now: datetime) -> None:
    AuditLog(registry.session).write(actor, action, [f"dispatch {d.id}"], now=now, detail={"vehicle": d.vehicle_id})


def _show(d: Dispatch, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(_as_json(d), ensure_ascii=False))
        return
    rows = [
        ("id", str(d.id)),
        ("状态 status", d.status),
        ("车辆 vehicle", d.vehicle_id),
        ("区域 region", d.region_id),
        ("驾驶员 driver", d.driver),
        ("事由 purpose", d.purpose),
        ("申请人 requested by", d.requested_by),
        ("计划 planned", f"{_local(d.planned_start_ms)} – {_local(d.planned_end_ms)}"),
        ("审批人 approver", d.approver or ""),
        ("实际 actual", f"{_local(d.actual_start_ms)} – {_local(d.actual_end_ms)}"),
    ]
    print_table(["", ""], rows, show_header=False, key_column=True)


@dispatches_app.command("list")
def list_cmd(
    ctx: typer.Context,
    region: Annotated[str | None, typer.Option("--region", help="Only this region's subtree.")] = None,
    vehicle: Annotated[str | None, typer.Option("--vehicle", help="Only this vehicle.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="pending, approved or closed.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Dispatches, newest planned start first."""
    try:
        if status is not None and status not in STATUSES:
            raise UserError(f"--status must be one of {', '.join(STATUSES)}")
        registry, store = _open(ctx)
        region_ids = None
        if region is not None:
            if registry.region(region) is None:
                raise UserError(f"region {region!r} does not exist")
            region_ids = registry.subtree_ids(region)
        items, total = store.list(region_ids=region_ids, vehicle_id=vehicle, status=status, limit=limit)
    except LianfangError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps({"total": total, "items": [_as_json(d) for d in items]}, ensure_ascii=False))
        return
    rows = [
        (str(d.id), d.status, d.vehicle_id, d.driver, _local(d.planned_start_ms), _local(d.planned_end_ms), d.purpose)
        for d in items
    ]
    print_table(["id", "状态", "车辆", "驾驶员", "计划开始", "计划结束", "事由"], rows, title=f"{total} dispatches")


@dispatches_app.command("add")
def add_cmd(
    ctx: typer.Context,
    vehicle: Annotated[str, typer.Argument(help="The vehicle's device id.")],
    driver: Annotated[str, typer.Option("--driver", help="Who drives.")],
    purpose: Annotated[str, typer.Option("--purpose", help="Why (事由).")],
    start: Annotated[str, typer.Option("--start", help="Planned start, ISO 8601 with an offset.")],
    end: Annotated[str, typer.Option("--end", help="Planned end, ISO 8601 with an offset.")],
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Request a dispatch of a vehicle (pending until approved)."""
    actor, now = _actor(by), clock.now()
    try:
        if not driver.strip() or len(driver) > 100 or not purpose.strip() or len(purpose) > 500:
            raise UserError("--driver (up to 100 characters) and --purpose (up to 500) must not be blank")
        registry, store = _open(ctx)
        device = registry.device(vehicle)
        if device is None or device.type != "vehicle":
            raise UserError(f"{vehicle!r} is not a registered vehicle")
        d = store.create(
            vehicle_id=device.id,
            region_id=device.region_id,
            driver=driver,
            purpose=purpose,
            requested_by=actor.who,
            planned_start_ms=_ms(start, "--start"),
            planned_end_ms=_ms(end, "--end"),
            now_ms=int(now.timestamp() * 1000),
        )
        _audit(registry, actor, "dispatch.create", d, now)
    except LianfangError as exc:
        raise _fail(exc) from exc
    _show(d, as_json)


def _change(
    ctx: typer.Context,
    dispatch_id: int,
    by: str | None,
    action: str,
    change: Callable[[DispatchStore, str, int], Dispatch],
    as_json: bool,
) -> None:
    """``change(store, who, now_ms)`` on one dispatch, audited as ``action``; user errors exit 1 with one line."""
    actor, now = _actor(by), clock.now()
    try:
        registry, store = _open(ctx)
        try:
            d = change(store, actor.who, int(now.timestamp() * 1000))
        except LookupError as exc:
            raise UserError(f"dispatch {dispatch_id} does not exist") from exc
        _audit(registry, actor, action, d, now)
    except LianfangError as exc:
        raise _fail(exc) from exc
    _show(d, as_json)


@dispatches_app.command("approve")
def approve_cmd(
    ctx: typer.Context,
    dispatch_id: Annotated[int, typer.Argument(min=1, help="The dispatch id.")],
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending dispatch (not one's own request)."""

    def approve(store: DispatchStore, who: str, now_ms: int) -> Dispatch:
        return store.approve(dispatch_id, approver=who, now_ms=now_ms)

    _change(ctx, dispatch_id, by, "dispatch.approve", approve, as_json)


@dispatches_app.command("close")
def close_cmd(
    ctx: typer.Context,
    dispatch_id: Annotated[int, typer.Argument(min=1, help="The dispatch id.")],
    started: Annotated[str | None, typer.Option("--started", help="Actual start, ISO 8601 with an offset.")] = None,
    ended: Annotated[str | None, typer.Option("--ended", help="Actual end (default: now).")] = None,
    by: ByOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record the actual end (and start) of a dispatch; closing a pending one cancels it."""

    def close(store: DispatchStore, who: str, now_ms: int) -> Dispatch:
        return store.close(
            dispatch_id,
            now_ms=now_ms,
            actual_start_ms=_ms(started, "--started") if started else None,
            actual_end_ms=_ms(ended, "--ended") if ended else None,
        )

    _change(ctx, dispatch_id, by, "dispatch.close", close, as_json)
