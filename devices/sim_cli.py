"""`lianfang simulate`: run the simulated fleet of the registry against the broker until Ctrl-C.

Also :func:`run_simulation`, the loop the demo runs in a thread (stop it with a ``threading.Event``).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Protocol

import typer

from core import clock
from core.errors import BrokerUnavailable, StoreUnavailable, UserError
from core.settings import Settings
from devices.fleet_credentials import load_secrets
from devices.registry import Registry
from devices.sim_publisher import SIM_USERNAME, DevicePublisher, Publisher, SharedPublisher
from devices.simulator import (
    RESUMED_FIELDS,
    Fleet,
    Incident,
    RegionPoint,
    SimDevice,
    fleet_from_registry,
    parse_incident,
)
from lianfang.context import open_registry, open_store, settings_from

if TYPE_CHECKING:
    from devices.backfill import HistoryCounts

logger = logging.getLogger(__name__)


def devices_from_registry(registry: Registry) -> list[SimDevice]:
    """Every enabled device of the registry, placed at its region's coordinates."""
    regions = [RegionPoint(r.id, r.parent_id, r.level, r.lat, r.lon) for r in registry.regions()]
    rows, _ = registry.devices(enabled=True)
    return fleet_from_registry([(d.id, d.type, d.region_id, d.expected_interval_s) for d in rows], regions)


class LastValues(Protocol):
    """What resuming needs of the telemetry store (``SqliteStore``)."""

    def last_values(self, device_id: str) -> dict[str, tuple[int, float | bool]]: ...


def stored_last_values(store: LastValues, devices: Sequence[SimDevice]) -> dict[str, dict[str, float | bool]]:
    """The stored counters the simulated devices continue from (``Fleet(resume=...)``): a meter's ``energy_kwh``,
    a vehicle's ``odometer_km`` and ``fuel_pct``. A restarted simulation therefore never sends a meter reading below
    the one already stored (which E5.negative would flag as a meter going backwards)."""
    out: dict[str, dict[str, float | bool]] = {}
    for dev in devices:
        wanted = RESUMED_FIELDS.get(dev.type)
        if not wanted:
            continue
        last = {k: v for k, (_, v) in store.last_values(dev.id).items() if k in wanted}
        if last:
            out[dev.id] = last
    return out


def resume_from_settings(settings: Settings, devices: Sequence[SimDevice]) -> dict[str, dict[str, float | bool]]:
    """:func:`stored_last_values` from the telemetry store of the settings ({} when it does not exist yet)."""
    if not settings.store.sqlite_path.exists():
        return {}
    store = open_store(settings)
    try:
        return stored_last_values(store, devices)
    finally:
        store.close()


def dev_sim_password(settings: Settings) -> str | None:
    """The shared simulator account's password that the embedded broker generated (DATA_DIR/broker-secrets.json),
    only with ``env: dev`` (the account exists only there); None when there is none."""
    if settings.env != "dev" or not settings.mqtt.embedded_broker:
        return None
    from lianfang.runtime import BrokerSecrets, broker_secrets_path

    path = broker_secrets_path(settings)
    if not path.exists():
        return None
    try:
        return BrokerSecrets.load_or_create(path).sim
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the broker's generated passwords in {path}: {exc}") from exc


def run_simulation(
    fleet: Fleet,
    publisher: Publisher,
    *,
    stop: threading.Event,
    duration_s: float | None = None,
    tick_s: float = 1.0,
    now: Callable[[], datetime] = clock.now,
) -> None:
    """Advance the fleet to the wall clock every ``tick_s`` and publish what fell due, until ``stop`` is set
    or ``duration_s`` has passed."""
    started = now()
    while not stop.is_set():
        current = now()
        for msg in fleet.advance(current):
            publisher.publish(msg)
        if duration_s is not None and (current - started).total_seconds() >= duration_s:
            return
        stop.wait(tick_s)


def simulate(
    ctx: typer.Context,
    devices_from_registry_: Annotated[
        bool,
        typer.Option(
            "--devices-from-registry/--no-devices-from-registry",
            help="Simulate every enabled device of the registry (the only source today).",
        ),
    ] = True,
    rate_multiplier: Annotated[
        float,
        typer.Option(help="Report this many times more often (heartbeats and gate traffic), e.g. 10 for load."),
    ] = 1.0,
    incident: Annotated[
        list[str] | None,
        typer.Option(
            "--incident",
            help="KIND:DEVICE:START_OFFSET_S[:DURATION_S[:FACTOR]], repeatable. KIND is door_forced, "
            "door_forced_event, denied_burst (FACTOR denials), tamper, night_vehicle, overspeed (FACTOR km/h), "
            "idling, power_cut, energy_spike (power x FACTOR), meter_reset_drop, meter_flat, visit (a card in, "
            "out after DURATION_S), passback (a card in twice) or silent; the offset "
            "counts from the start of the run.",
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed, for a repeatable run.")] = None,
    host: Annotated[str | None, typer.Option(help="MQTT broker host (default: settings mqtt.host).")] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="MQTT broker port (default: settings mqtt.port; with --credentials the devices' listener, "
            "mqtt.device_port, port + 1 with the embedded broker's password file)."
        ),
    ] = None,
    username: Annotated[str, typer.Option(help="MQTT account allowed to publish for every device.")] = SIM_USERNAME,
    password: Annotated[
        str | None,
        typer.Option(
            envvar="LIANFANG_SIM_PASSWORD",
            help="Its password (env LIANFANG_SIM_PASSWORD). Default with env=dev and the embedded broker: the "
            "generated one in DATA_DIR/broker-secrets.json (written when 'lianfang serve' or 'demo' first runs).",
            show_default=False,
        ),
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            "--credentials",
            help="File of 'device_id,secret' lines (what 'lianfang devices import --secret-file F' writes): each "
            "device connects with its own identity (client id = username = device id, with its Last Will) instead "
            "of the shared simulator account. Devices without a secret in the file are not simulated. The demo "
            "writes DATA_DIR/demo-device-secrets.csv.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Simulate the registry's gates, vehicles, energy meters and sensors, publishing to the MQTT broker.

    Gates follow the working day and the official Chinese calendar, vehicles drive between the sites of their
    region, meters follow an hour-of-week load shape. Ctrl-C stops cleanly and prints the counts.
    """
    settings = settings_from(ctx)
    if not devices_from_registry_:
        typer.echo("error: --no-devices-from-registry: the registry is the only device source today", err=True)
        raise typer.Exit(1)
    if not password and credentials is None:
        try:
            password = dev_sim_password(settings)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    if not password and credentials is None:
        typer.echo(
            "error: the simulator password is required: set LIANFANG_SIM_PASSWORD or --password "
            "(or give per-device secrets with --credentials FILE); with env=dev and the embedded broker it is read "
            "from DATA_DIR/broker-secrets.json once 'lianfang serve' has run",
            err=True,
        )
        raise typer.Exit(1)
    start = clock.now()
    try:
        devices = devices_from_registry(open_registry(settings))
        if not devices:
            raise UserError("the registry has no enabled devices: run 'lianfang devices import FILE.csv' first")
        device_secrets: dict[str, str] | None = None
        if credentials is not None:
            known = load_secrets(credentials)
            without = [d.id for d in devices if d.id not in known]
            devices = [d for d in devices if d.id in known]
            if not devices:
                raise UserError(f"{credentials} holds no secret of an enabled device of the registry")
            if without:
                typer.echo(f"{len(without)} device(s) have no secret in {credentials}: not simulated", err=True)
            device_secrets = {d.id: known[d.id] for d in devices}
        incidents: Sequence[Incident] = [parse_incident(text, start) for text in incident or []]
        fleet = Fleet(
            devices,
            rng=random.Random(seed),
            start=start,
            incidents=incidents,
            rate_multiplier=rate_multiplier,
            resume=resume_from_settings(settings, devices),  # meters continue from their stored readings
        )
        broker_host, broker_port = host or settings.mqtt.host, port or settings.mqtt.port
        publisher: DevicePublisher | SharedPublisher
        if device_secrets is not None:  # each device logs in with its own account: the device listener
            broker_port = port or settings.mqtt.device_listener_port
            publisher = DevicePublisher(broker_host, broker_port, device_secrets, tls_ca=settings.mqtt.tls_ca)
        else:
            assert password is not None
            publisher = SharedPublisher(broker_host, broker_port, username, password)
        publisher.gate_control = fleet.set_locked  # linkage commands: a locked gate grants no access
        publisher.start()
    except (UserError, BrokerUnavailable, StoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"simulating {len(devices)} devices on {broker_host}:{broker_port}"
        + (" with their own credentials" if device_secrets is not None else "")
        + f" ({', '.join(f'{i.kind} {i.device_id}' for i in incidents) or 'no incidents'}); Ctrl-C stops"
    )
    stop = threading.Event()

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    failed: BrokerUnavailable | None = None
    try:
        run_simulation(fleet, publisher, stop=stop, duration_s=duration)
    except KeyboardInterrupt:
        pass
    except BrokerUnavailable as exc:
        failed = exc
    finally:
        signal.signal(signal.SIGTERM, previous)
        publisher.close(timeout=5.0)
    counts = publisher.counts
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(fleet.counts.by_kind.items()))
    typer.echo(
        f"stopped: {counts.published} published ({by_kind}), {counts.acked} acknowledged, "
        f"{counts.rejected} refused by the broker, {counts.pending} unacknowledged"
    )
    if failed is not None:
        typer.echo(f"error: {failed}", err=True)
        raise typer.Exit(1)


# --- lianfang sim backfill ----------------------------------------------------------------------------------------

sim_app = typer.Typer(help="The simulated fleet's history: back-fill weeks of data into the telemetry store.")


def backfill_devices(
    registry: Registry, *, region: str | None = None, device_ids: Sequence[str] | None = None
) -> tuple[list[SimDevice], dict[str, str]]:
    """The enabled devices of the registry (inside ``region``'s subtree, among ``device_ids`` when given) and the
    sub-meters' parents (attribute ``parent_meter``)."""
    regions = registry.regions()
    if region is not None:
        root = next((r for r in regions if r.id == region), None)
        if root is None:
            raise UserError(f"region {region!r} does not exist")
        inside = {r.id for r in regions if r.path.startswith(root.path)}
    rows, _ = registry.devices(enabled=True)
    if region is not None:
        rows = [d for d in rows if d.region_id in inside]
    if device_ids:
        wanted = set(device_ids)
        unknown = wanted - {d.id for d in rows}
        if unknown:
            raise UserError(
                f"not enabled devices of the registry (or outside the region): {', '.join(sorted(unknown))}"
            )
        rows = [d for d in rows if d.id in wanted]
    points = [RegionPoint(r.id, r.parent_id, r.level, r.lat, r.lon) for r in regions]
    devices = fleet_from_registry([(d.id, d.type, d.region_id, d.expected_interval_s) for d in rows], points)
    parents = {d.id: str(d.attributes["parent_meter"]) for d in rows if (d.attributes or {}).get("parent_meter")}
    return devices, parents


def alert_history_into(
    registry: Registry, settings: Settings, devices: Sequence[SimDevice], start: datetime, end: datetime, *, seed: int
) -> HistoryCounts:
    """``devices.backfill.write_alert_history`` into the registry's database, with the settings' risk weights.
    Only with the alert service stopped."""
    from devices.backfill import write_alert_history
    from joint.risk import RiskWeights

    regions = registry.regions()
    paths = {r.id: r.path for r in regions}
    weights = RiskWeights.from_settings(settings.risk)
    return write_alert_history(registry.engine, devices, regions, paths, start, end, seed=seed, weights=weights)


@sim_app.command("backfill")
def backfill_cmd(
    ctx: typer.Context,
    weeks: Annotated[int, typer.Option(min=1, max=104, help="Weeks of history up to now.")] = 4,
    region: Annotated[str | None, typer.Option(help="Only the devices of this region's subtree.")] = None,
    devices: Annotated[
        list[str] | None, typer.Option("--devices", help="Only these device ids (repeatable).", show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same history.")] = 1,
    meter_interval: Annotated[int, typer.Option(min=60, max=3600, help="Seconds between a meter's readings.")] = 900,
    alerts: Annotated[
        bool,
        typer.Option(
            "--alerts/--no-alerts",
            help="Also write resolved alerts and the risk snapshots they make into the SQL database. Only with the "
            "service stopped: a running alert engine allocates ids from the highest it read at its start.",
        ),
    ] = False,
) -> None:
    """Write weeks of realistic history (gates with rosters on the official calendar, vehicle trips between the
    region's buildings, meters with a daily/weekly baseline and a few waste patterns, sensors) straight into the
    configured telemetry store, up to now, so that the reports have something to show. Idempotent per device and
    time (the same seed writes the same rows again)."""
    from devices.backfill import BackfillOptions, backfill

    settings = settings_from(ctx)
    end = clock.now()
    start = end - timedelta(weeks=weeks)
    try:
        registry = open_registry(settings)
        try:
            sim_devices, parents = backfill_devices(registry, region=region, device_ids=devices)
            ids = {d.id for d in sim_devices}
            rows, _ = registry.devices(enabled=True)
            younger = sum(1 for d in rows if d.id in ids and d.created_at is not None and _aware(d.created_at) > start)
        finally:
            registry.engine.dispose()
        if not sim_devices:
            raise UserError("no enabled device to back-fill: run 'lianfang devices import FILE.csv' first")
        store = open_store(settings)
        try:
            counts = backfill(
                store,
                sim_devices,
                start,
                end,
                options=BackfillOptions(seed=seed, meter_interval_s=meter_interval),
                parents=parents,
            )
        finally:
            store.close()
        history = ""
        if alerts:
            registry = open_registry(settings)
            try:
                h = alert_history_into(registry, settings, sim_devices, start, end, seed=seed)
            finally:
                registry.engine.dispose()
            history = f", {h.alerts} resolved alerts, {h.incidents} closed incidents, {h.risk_points} risk points"
    except (UserError, StoreUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    by_type = ", ".join(f"{k} {n}" for k, n in sorted(counts.by_type.items()))
    typer.echo(
        f"back-filled {len(sim_devices)} devices over {counts.days} days: {counts.readings} readings ({by_type}), "
        f"{counts.events} events{history}"
    )
    if younger:
        typer.echo(
            f"note: {younger} of them were registered after the history's start; reports count a device only in "
            "periods that end after its registration",
            err=True,
        )


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
