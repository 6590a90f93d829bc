"""`lianfang regions ...` and `lianfang devices ...`: the region tree and the device registry from the shell.

User errors (bad files, unknown ids) print one clear line per problem on stderr and exit with code 1; nothing
is half-applied. ``--json`` output goes to stdout alone, so scripts can pipe it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree
from sqlalchemy import func, select

from core import clock
from core.errors import StoreUnavailable, UserError
from core.protocol import DEFAULT_INTERVAL_S, DEVICE_TYPES
from core.settings import Settings
from devices.imports import (
    DeviceRow,
    DevicesWritten,
    ImportProblems,
    device_row_problems,
    import_devices,
    import_regions,
    write_devices,
)
from devices.liveness import GRACE_FACTOR, is_online
from devices.models import Device, Region
from devices.registry import Registry, expected_interval
from lianfang.context import open_registry, open_store, settings_from

regions_app = typer.Typer(
    help="The region tree: province > city > agency > building. Import it from a file, list it, draw it.",
    no_args_is_help=True,
)
devices_app = typer.Typer(
    help="The device registry: gates, vehicles, energy meters and sensors, each in one region.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Check the file and report what would change; write nothing.")
]


def devices_written_hook(settings: Settings) -> DevicesWritten | None:
    """What runs after devices are created or updated. Broker provisioning (per-device credentials) plugs in here;
    until it exists there is nothing to do."""
    return None


# --- plumbing ----------------------------------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _registry(ctx: typer.Context) -> Iterator[Registry]:
    """The registry for one command; user errors become one line on stderr and exit code 1."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
    except Exception as exc:  # a bad URL or an unreachable server: say which, without a traceback
        raise _fail(f"cannot open the database {_safe_url(settings.database_url)}: {exc}") from exc
    try:
        yield registry
    except ImportProblems as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        bad = len(exc.problems)
        raise _fail(f"{bad} problem{'s' if bad != 1 else ''} found; nothing was written") from exc
    except UserError as exc:
        raise _fail(str(exc)) from exc
    except StoreUnavailable as exc:
        raise _fail(f"database unavailable: {exc}") from exc
    finally:
        registry.engine.dispose()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


def _out() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


def _device_counts(registry: Registry) -> dict[str, int]:
    """Devices registered directly in each region."""
    with registry.session() as s:
        rows = s.execute(select(Device.region_id, func.count()).group_by(Device.region_id)).all()
    return {region_id: int(n) for region_id, n in rows}


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


# --- regions -----------------------------------------------------------------------------------------------


@regions_app.command("import")
def regions_import(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="A .yaml/.yml file (nested tree or flat list) or a .csv file.", show_default=False)
    ],
    dry_run: DryRunOpt = False,
) -> None:
    """Create or update regions from a file; safe to run again.

    YAML: a list under `regions:`, each entry with id, name, level and optional lat/lon.
    Levels: province, city, agency, building. Nest entries under `children:`, or give `parent_id:` (flat list).
    CSV: the header id,name,level,parent_id,lat,lon.
    Every problem is reported as FILE:LINE; if there is any, nothing is written.
    See devices/sample/regions.yaml for an example.
    """
    with _registry(ctx) as registry:
        report = import_regions(registry, file, now=clock.now(), dry_run=dry_run)
    verb = "would be " if dry_run else ""
    typer.echo(
        f"{file}: {len(report.created)} {verb}created, {len(report.updated)} {verb}updated, "
        f"{len(report.unchanged)} unchanged" + (" (dry run, nothing written)" if dry_run else "")
    )


@regions_app.command("list")
def regions_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List every region, root first, with its parent and the number of devices registered in it."""
    with _registry(ctx) as registry:
        regions = registry.regions()
        counts = _device_counts(registry)
    if as_json:
        _emit_json(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "level": r.level,
                    "parent_id": r.parent_id,
                    "lat": r.lat,
                    "lon": r.lon,
                    "devices": counts.get(r.id, 0),
                }
                for r in regions
            ]
        )
        return
    if not regions:
        typer.echo("no regions yet; load some with `lianfang regions import FILE`")
        return
    table = Table("id", "name", "level", "parent", "lat", "lon", "devices")
    for r in regions:
        table.add_row(
            r.id,
            escape(r.name),
            r.level,
            r.parent_id or "",
            "" if r.lat is None else f"{r.lat:.4f}",
            "" if r.lon is None else f"{r.lon:.4f}",
            str(counts.get(r.id, 0)),
        )
    _out().print(table)


@regions_app.command("tree")
def regions_tree(
    ctx: typer.Context,
    root: Annotated[str | None, typer.Option("--root", help="Draw only this region's subtree.")] = None,
) -> None:
    """Draw the region tree with names, codes and device counts (each count includes the whole subtree)."""
    with _registry(ctx) as registry:
        regions = registry.regions()
        counts = _device_counts(registry)
    if root is not None and not any(r.id == root for r in regions):
        raise _fail(f"region {root!r} does not exist")
    if not regions:
        typer.echo("no regions yet; load some with `lianfang regions import FILE`")
        return
    children: dict[str | None, list[Region]] = {}
    for r in regions:
        children.setdefault(r.parent_id, []).append(r)
    totals: dict[str, int] = {}
    for r in sorted(regions, key=lambda r: r.path.count("/"), reverse=True):  # deepest first
        totals[r.id] = counts.get(r.id, 0) + sum(totals[c.id] for c in children.get(r.id, []))
    tops = [r for r in regions if r.id == root] if root else children.get(None, [])

    def label(r: Region) -> str:
        n = totals[r.id]
        return f"[bold]{escape(r.name)}[/bold] [dim]({r.id}, {r.level})[/dim] · {n} device{'s' if n != 1 else ''}"

    def grow(node: Tree, r: Region) -> None:
        for child in children.get(r.id, []):
            grow(node.add(label(child)), child)

    console = _out()
    for top in tops:
        tree = Tree(label(top))
        grow(tree, top)
        console.print(tree)


# --- devices -----------------------------------------------------------------------------------------------


@devices_app.command("add")
def devices_add(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id, e.g. gate-gz-0001.", show_default=False)],
    device_type: Annotated[
        str, typer.Option("--type", "-t", help=f"One of: {', '.join(DEVICE_TYPES)}.", show_default=False)
    ],
    region: Annotated[str, typer.Option("--region", "-r", help="Region id the device belongs to.", show_default=False)],
    name: Annotated[str | None, typer.Option("--name", help="Human-readable name (kept if omitted).")] = None,
    interval: Annotated[
        int | None,
        typer.Option(
            "--interval",
            help="Expected seconds between reports; the device counts as offline after 2.5x this "
            "(default per type: " + ", ".join(f"{k} {v}s" for k, v in DEFAULT_INTERVAL_S.items()) + ").",
        ),
    ] = None,
) -> None:
    """Register one device, or update it if it exists (fields you leave out keep their value)."""
    given = frozenset(k for k, v in (("name", name), ("expected_interval_s", interval)) if v is not None)
    row = DeviceRow(device_id, device_type, region, None, name or "", interval, given)
    settings = settings_from(ctx)
    with _registry(ctx) as registry:
        reasons = device_row_problems(row, {r.id for r in registry.regions()})
        if reasons:
            raise UserError("; ".join(reasons))
        plan = write_devices(registry, [row], now=clock.now(), on_written=devices_written_hook(settings))
    state = "created" if plan.created else "updated" if plan.updated else "unchanged"
    typer.echo(f"device {device_id} {state}")


@devices_app.command("import")
def devices_import(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV file with the header id,type,region_id,name,expected_interval_s (the last two may be left out).",
            show_default=False,
        ),
    ],
    dry_run: DryRunOpt = False,
    skip_invalid: Annotated[
        bool,
        typer.Option("--skip-invalid", help="Import the valid rows and list the invalid ones, instead of refusing."),
    ] = False,
) -> None:
    """Register or update many devices from a CSV file, in one transaction; safe to run again.

    Every row is checked first: id well formed and unique in the file, type known, region exists.
    Each bad row is printed as FILE:LINE: reason; if there is any, nothing is written and the exit code is 1
    (with --skip-invalid the valid rows are written and the bad ones listed).
    Running the same file again changes nothing: its rows are reported as unchanged.
    """
    settings = settings_from(ctx)
    with _registry(ctx) as registry:
        progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        with progress:
            task = progress.add_task("reading", total=None)

            def advance(phase: str, done: int, total: int) -> None:
                progress.update(task, description=phase, completed=done, total=total)

            report = import_devices(
                registry,
                file,
                now=clock.now(),
                dry_run=dry_run,
                skip_invalid=skip_invalid,
                on_written=devices_written_hook(settings),
                progress=advance,
            )
    for problem in report.skipped:
        typer.echo(f"skipped {problem}", err=True)
    verb = "would be " if dry_run else ""
    summary = (
        f"{file}: {report.rows} rows: {len(report.created)} {verb}created, {len(report.updated)} {verb}updated, "
        f"{len(report.unchanged)} unchanged"
    )
    if report.skipped:
        summary += f", {len(report.skipped)} skipped"
    if dry_run:
        summary += " (dry run, nothing written)"
    typer.echo(summary)


@devices_app.command("list")
def devices_list(
    ctx: typer.Context,
    region: Annotated[
        str | None, typer.Option("--region", "-r", help="Only devices in this region or anywhere below it.")
    ] = None,
    device_type: Annotated[
        str | None, typer.Option("--type", "-t", help=f"Only this type ({', '.join(DEVICE_TYPES)}).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="At most this many devices.")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many devices first (paging).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """List registered devices, sorted by id, one page at a time (--limit/--offset)."""
    if device_type is not None and device_type not in DEVICE_TYPES:
        raise _fail(f"type {device_type!r} is not one of {', '.join(DEVICE_TYPES)}")
    with _registry(ctx) as registry:
        region_ids: list[str] | None = None
        if region is not None:
            region_ids = registry.subtree_ids(region)
            if not region_ids:
                raise UserError(f"region {region!r} does not exist")
        page, total = registry.devices(region_ids=region_ids, device_type=device_type, offset=offset, limit=limit)
    if as_json:
        _emit_json({"total": total, "offset": offset, "limit": limit, "devices": [_device_json(d) for d in page]})
        return
    if not page:
        typer.echo(f"no devices match (total {total})")
        return
    table = Table("id", "type", "region", "name", "enabled", "interval")
    for d in page:
        table.add_row(
            d.id, d.type, d.region_id, escape(d.name), "yes" if d.enabled else "no", f"{expected_interval(d)}s"
        )
    console = _out()
    console.print(table)
    shown_to = offset + len(page)
    more = f"; next page: --offset {shown_to}" if shown_to < total else ""
    console.print(f"showing {offset + 1}-{shown_to} of {total}{more}")


def _device_json(d: Device) -> dict[str, Any]:
    return {
        "id": d.id,
        "type": d.type,
        "region_id": d.region_id,
        "name": d.name,
        "enabled": d.enabled,
        "expected_interval_s": expected_interval(d),
        "interval_overridden": d.expected_interval_s is not None,
        "attributes": d.attributes or {},
        "created_at": d.created_at.isoformat() if d.created_at else None,
        "updated_at": d.updated_at.isoformat() if d.updated_at else None,
    }


@devices_app.command("show")
def devices_show(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Show one device: its registry entry, when it last sent data, and whether it is online now.

    Online: it sent data within 2.5 times its expected interval and has not announced 'offline' since.
    """
    settings = settings_from(ctx)
    with _registry(ctx) as registry:
        device = registry.device(device_id)
        if device is None:
            raise UserError(f"device {device_id!r} does not exist")
        region = registry.region(device.region_id)
    try:
        store = open_store(settings)
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    try:
        state = store.device_states([device_id]).get(device_id)
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    finally:
        store.close()
    interval = expected_interval(device)
    now_ms = clock.now_ms()
    data = _device_json(device)
    data.update(
        {
            "region_name": region.name if region else None,
            "region_path": [p for p in region.path.split("/") if p] if region else [],
            "online": is_online(state, interval, now_ms),
            "offline_after_s": GRACE_FACTOR * interval,
            "last_seen": _iso(state.last_seen_ms if state else None),
            "last_seen_ms": state.last_seen_ms if state else None,
            "status": state.status if state else None,
            "status_at": _iso(state.status_ms if state else None),
            "firmware": state.fw if state else None,
            "messages": state.messages if state else 0,
            "gaps": state.gaps if state else 0,
            "duplicates": state.duplicates if state else 0,
            "rejected": state.rejected if state else 0,
        }
    )
    if as_json:
        _emit_json(data)
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    online = "[green]online[/green]" if data["online"] else "[red]offline[/red]"
    rows: list[tuple[str, str]] = [
        ("id", device.id),
        ("type", device.type),
        ("name", escape(device.name) or "-"),
        ("region", f"{escape(data['region_name'] or '?')} ({device.region_id})"),
        ("path", " > ".join(data["region_path"])),
        ("enabled", "yes" if device.enabled else "no (its messages are rejected)"),
        ("interval", f"{interval}s" + (" (set)" if device.expected_interval_s else " (type default)")),
        ("state", online),
        ("last seen", data["last_seen"] or "never"),
        ("status", f"{data['status']} at {data['status_at']}" if data["status"] else "-"),
        ("firmware", data["firmware"] or "-"),
        ("messages", f"{data['messages']} (gaps {data['gaps']}, duplicates {data['duplicates']})"),
        ("rejected", str(data["rejected"])),
    ]
    if device.attributes:
        rows.append(("attributes", escape(json.dumps(device.attributes, ensure_ascii=False))))
    for key, value in rows:
        table.add_row(key, value)
    _out().print(table)


@devices_app.command("disable")
def devices_disable(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.", show_default=False)],
) -> None:
    """Disable a device: ingest rejects its messages (reason disabled_device) until it is enabled again."""
    with _registry(ctx) as registry:
        registry.set_enabled(device_id, False, now=clock.now())
    typer.echo(f"device {device_id} disabled")


@devices_app.command("enable")
def devices_enable(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.", show_default=False)],
) -> None:
    """Enable a disabled device again."""
    with _registry(ctx) as registry:
        registry.set_enabled(device_id, True, now=clock.now())
    typer.echo(f"device {device_id} enabled")
