"""`lianfang regions ...` and `lianfang devices ...`: the region tree and the device registry from the shell.

User errors (bad files, unknown ids) print one clear line per problem on stderr and exit with code 1; nothing
is half-applied. ``--json`` output goes to stdout alone, so scripts can pipe it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text
from rich.tree import Tree
from sqlalchemy import func, select

from core import clock
from core.cliout import Cell, console, note, print_table
from core.errors import BrokerUnavailable, LianfangError, StoreUnavailable, UserError
from core.protocol import DEFAULT_INTERVAL_S, DEVICE_TYPES
from core.settings import Settings
from devices import cli_security
from devices.audit import Actor
from devices.broker_adapter_passwd import adapter_for
from devices.cli_context import open_registry, open_store, settings_from
from devices.cli_security import SecretFileOpt, TimeoutOpt, admin_password, hand_out_secrets
from devices.dynsec import DynsecClient
from devices.imports import (
    DeviceRow,
    ImportProblems,
    device_row_problems,
    import_devices,
    import_regions,
    write_devices,
)
from devices.liveness import GRACE_FACTOR, is_online
from devices.models import Device, Region
from devices.provisioning import DeviceCredential, Provisioner, ProvisioningError, ProvisionOnWrite
from devices.registry import Registry, expected_interval

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


@contextmanager
def open_device_provisioner(
    settings: Settings,
    registry: Registry,
    *,
    timeout: float = 10.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[Provisioner]:
    """A Provisioner on ``registry`` and the configured broker (dynsec admin), connected for the block.
    Raises BrokerUnavailable (one line: address and what did not answer) or UserError (admin password)."""
    with DynsecClient(
        settings.mqtt.host, settings.mqtt.port, admin_password(settings), timeout=timeout, tls_ca=settings.mqtt.tls_ca
    ) as dynsec:
        adapter = adapter_for(settings, dynsec, progress=progress)
        yield Provisioner(registry, dynsec, actor=Actor.from_cli(), progress=progress, adapter=adapter)


@contextmanager
def devices_written_hook(
    settings: Settings,
    registry: Registry,
    now: datetime,
    *,
    timeout: float = 10.0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[ProvisionOnWrite]:
    """The ``DevicesWritten`` hook of `devices add` / `devices import`: gives written devices without a credential
    their broker identity (a ProvisionOnWrite collecting the new secrets). Connects to the broker on entry, so an
    unreachable broker is known before anything is written."""
    with open_device_provisioner(settings, registry, timeout=timeout, progress=progress) as prov:
        yield ProvisionOnWrite(prov, now)


def _credentialed(registry: Registry, ids: list[str], *, chunk: int = 500) -> set[str]:
    have: set[str] = set()
    with registry.session() as s:
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            have.update(s.scalars(select(DeviceCredential.device_id).where(DeviceCredential.device_id.in_(part))))
    return have


def _disabled(registry: Registry, ids: list[str], *, chunk: int = 500) -> list[str]:
    out: list[str] = []
    with registry.session() as s:
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            out += s.scalars(select(Device.id).where(Device.id.in_(part), Device.enabled.is_(False)))
    return sorted(out)


MAX_LISTED = 50


def give_identities(
    hook: ProvisionOnWrite,
    registry: Registry,
    ids: list[str],
    secret_file: Path | None,
    before_output: Callable[[], None] | None = None,
) -> tuple[int, bool]:
    """Broker identities for every device in ``ids`` that has none yet (idempotent), then hand out the new secrets.

    Returns (identities created, secrets shown on stdout). On failure the secrets that were issued are still handed
    out, every device left without an identity is named on stderr, and the command exits 1; running it again
    finishes the job.
    """
    failure: LianfangError | None = None
    try:
        hook(ids, [])
        # A device an operator disabled gets its identity disabled too (the broker refuses it, as ingest does).
        for device_id in _disabled(registry, list(hook.secrets)):
            hook.provisioner.disable(device_id, hook.now)
    except (ProvisioningError, BrokerUnavailable, StoreUnavailable, UserError) as exc:
        failure = exc
    except LianfangError as exc:  # e.g. a dynsec command error
        failure = exc
    if before_output is not None:
        before_output()
    shown = bool(hook.secrets) and secret_file is None
    hand_out_secrets(hook.secrets, secret_file)
    if failure is None:
        return len(hook.secrets), shown
    reasons = failure.failed if isinstance(failure, ProvisioningError) else {}
    try:
        missing = [i for i in ids if i not in _credentialed(registry, ids)]
    except StoreUnavailable:
        missing = [i for i in ids if i not in hook.secrets]
    for device_id in missing[:MAX_LISTED]:
        typer.echo(f"no broker identity: {device_id}: {reasons.get(device_id, str(failure))}", err=True)
    if len(missing) > MAX_LISTED:
        typer.echo(
            f"... and {len(missing) - MAX_LISTED} more (`lianfang devices reconcile --dry-run` lists them)", err=True
        )
    raise _fail(
        f"the devices are registered, but {len(missing)} of {len(ids)} have no broker identity "
        f"({len(hook.secrets)} created now); run the same command again to finish"
    )


def _broker_error(exc: LianfangError) -> typer.Exit:
    return _fail(f"broker unavailable: {exc}; nothing was written")


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
    return console()


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

    YAML: a list under `regions:`, each entry with id, name, level and optional lat/lon and attributes
    (headcount, floor_area_m2, quotas, tariff, contracted_kw: see docs/cli.md).
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
                    "attributes": dict(r.attributes or {}),
                    "devices": counts.get(r.id, 0),
                }
                for r in regions
            ]
        )
        return
    if not regions:
        note("no regions yet; load some with `lianfang regions import FILE`")
        return
    print_table(
        ("id", "name", "level", "parent", "lat", "lon", "devices"),
        [
            (
                r.id,
                r.name,
                r.level,
                r.parent_id or "",
                "" if r.lat is None else f"{r.lat:.4f}",
                "" if r.lon is None else f"{r.lon:.4f}",
                str(counts.get(r.id, 0)),
            )
            for r in regions
        ],
    )


@regions_app.command("tree")
def regions_tree(
    ctx: typer.Context,
    root: Annotated[str | None, typer.Option("--root", help="Draw only this region's subtree.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the tree as nested JSON (id, name, level, devices, children).")
    ] = False,
) -> None:
    """Draw the region tree with names, codes and device counts (each count includes the whole subtree)."""
    with _registry(ctx) as registry:
        regions = registry.regions()
        counts = _device_counts(registry)
    if root is not None and not any(r.id == root for r in regions):
        raise _fail(f"region {root!r} does not exist")
    if not regions:
        if as_json:
            _emit_json([])
            return
        note("no regions yet; load some with `lianfang regions import FILE`")
        return
    children: dict[str | None, list[Region]] = {}
    for r in regions:
        children.setdefault(r.parent_id, []).append(r)
    totals: dict[str, int] = {}
    for r in sorted(regions, key=lambda r: r.path.count("/"), reverse=True):  # deepest first
        totals[r.id] = counts.get(r.id, 0) + sum(totals[c.id] for c in children.get(r.id, []))
    tops = [r for r in regions if r.id == root] if root else children.get(None, [])
    if as_json:

        def node(r: Region) -> dict[str, Any]:
            kids = [node(c) for c in children.get(r.id, [])]
            return {"id": r.id, "name": r.name, "level": r.level, "devices": totals[r.id], "children": kids}

        _emit_json([node(top) for top in tops])
        return

    def label(r: Region) -> str:
        n = totals[r.id]
        return (
            f"[bold]{escape(r.name)}[/bold] [dim]({escape(r.id)}, {r.level})[/dim] · {n} device{'s' if n != 1 else ''}"
        )

    def grow(node: Tree, r: Region) -> None:
        for child in children.get(r.id, []):
            grow(node.add(label(child)), child)

    out = _out()
    for top in tops:
        tree = Tree(label(top))
        grow(tree, top)
        out.print(tree)


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
    secret_file: SecretFileOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Register one device (or update it) and give it its broker identity: a new secret, shown once.

    Fields you leave out keep their value. The secret is printed once on stdout as ID,SECRET (or written to
    --secret-file, mode 0600); the registry keeps only a hash. A device that already has its identity keeps it
    (use `lianfang devices rotate ID` for a new secret). Needs the broker: if it cannot be reached, nothing is
    written.
    """
    given = frozenset(k for k, v in (("name", name), ("expected_interval_s", interval)) if v is not None)
    row = DeviceRow(device_id, device_type, region, None, name or "", interval, given)
    settings = settings_from(ctx)
    now = clock.now()
    with _registry(ctx) as registry:
        reasons = device_row_problems(row, {r.id for r in registry.regions()})
        if reasons:
            raise UserError("; ".join(reasons))
        with ExitStack() as stack:
            try:
                hook = stack.enter_context(devices_written_hook(settings, registry, now, timeout=timeout))
            except BrokerUnavailable as exc:
                raise _broker_error(exc) from exc
            plan = write_devices(registry, [row], now=now)
            created, shown = give_identities(hook, registry, [device_id], secret_file)
    state = "created" if plan.created else "updated" if plan.updated else "unchanged"
    identity = "broker identity created and verified" if created else "broker identity already present"
    typer.echo(f"device {device_id} {state}; {identity}", err=shown)


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
    secret_file: SecretFileOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Register or update many devices from a CSV file, with their broker identities; safe to run again.

    Every row is checked first: id well formed and unique in the file, type known, region exists.
    Each bad row is printed as FILE:LINE: reason; if there is any, nothing is written and the exit code is 1
    (with --skip-invalid the valid rows are written and the bad ones listed).
    Then the devices are written in one transaction and every device without a broker identity gets one: the
    new secrets are printed once on stdout as ID,SECRET lines (or written to --secret-file, mode 0600).
    If the broker cannot be reached, nothing is written. If it fails part-way, the devices left without an
    identity are named and the exit code is 1: run the same command again to finish.
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

            now = clock.now()
            # Check every row first (nothing written), so bad rows are reported even when the broker is down.
            report = import_devices(registry, file, now=now, dry_run=True, skip_invalid=skip_invalid, progress=advance)
            if not dry_run:
                with ExitStack() as stack:
                    try:
                        hook = stack.enter_context(
                            devices_written_hook(settings, registry, now, timeout=timeout, progress=advance)
                        )
                    except BrokerUnavailable as exc:
                        progress.stop()
                        raise _broker_error(exc) from exc
                    report = import_devices(registry, file, now=now, skip_invalid=skip_invalid, progress=advance)
                    progress.update(task, description="broker", completed=0, total=None)
                    ids = [*report.created, *report.updated, *report.unchanged]
                    created, shown = give_identities(hook, registry, ids, secret_file, progress.stop)
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
        return
    if created:
        summary += f"; {created} broker identit{'y' if created == 1 else 'ies'} created and verified"
    else:
        summary += "; every device already has its broker identity"
    typer.echo(summary, err=shown)


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
        note(f"no devices match (total {total})")
        return
    print_table(
        ("id", "type", "region", "name", "enabled", "interval"),
        [(d.id, d.type, d.region_id, d.name, "yes" if d.enabled else "no", f"{expected_interval(d)}s") for d in page],
    )
    shown_to = offset + len(page)
    more = f"; next page: --offset {shown_to}" if shown_to < total else ""
    note(f"showing {offset + 1}-{shown_to} of {total}{more}")


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
    online = Text("online", style="green") if data["online"] else Text("offline", style="red")
    rows: list[tuple[str, Cell]] = [
        ("id", device.id),
        ("type", device.type),
        ("name", device.name or "-"),
        ("region", f"{data['region_name'] or '?'} ({device.region_id})"),
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
        rows.append(("attributes", json.dumps(device.attributes, ensure_ascii=False)))
    print_table(("field", "value"), rows, show_header=False, key_column=True)


def _set_enabled(ctx: typer.Context, device_id: str, enabled: bool, timeout: float) -> None:
    settings = settings_from(ctx)
    word = "enabled" if enabled else "disabled"
    with _registry(ctx) as registry:
        if registry.device(device_id) is None:
            raise UserError(f"device {device_id!r} does not exist")
        now = clock.now()
        if not _credentialed(registry, [device_id]):
            registry.set_enabled(device_id, enabled, now=now)
            typer.echo(f"device {device_id} {word} (it has no broker identity)")
            return
        try:
            with open_device_provisioner(settings, registry, timeout=timeout) as prov:
                if enabled:
                    prov.enable(device_id, now)
                else:
                    prov.disable(device_id, now)
        except BrokerUnavailable as exc:
            raise _fail(f"broker unavailable: {exc}; device {device_id} was not {word}") from exc
    typer.echo(f"device {device_id} {word}" + ("" if enabled else "; a connected session was disconnected"))


@devices_app.command("disable")
def devices_disable(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.", show_default=False)],
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Disable a device: the broker refuses it (a connected device is disconnected) and ingest rejects its
    messages (reason disabled_device), until it is enabled again. Its secret and history stay."""
    _set_enabled(ctx, device_id, False, timeout)


@devices_app.command("enable")
def devices_enable(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id.", show_default=False)],
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Enable a disabled device again: the broker accepts it with its current secret, ingest stores its data."""
    _set_enabled(ctx, device_id, True, timeout)


# The credential commands of issue 3 under the devices noun (same code as `lianfang credentials ...`).
devices_app.command("provision")(cli_security.provision)
devices_app.command("rotate")(cli_security.rotate)
devices_app.command("reprovision")(cli_security.reprovision)
devices_app.command("delete")(cli_security.delete)
devices_app.command("check")(cli_security.check)
devices_app.command("reconcile")(cli_security.reconcile)
devices_app.command("export-config")(cli_security.export_config)
devices_app.command("expiring")(cli_security.expiring)
