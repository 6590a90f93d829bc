"""`lianfang demo`: the sample region tree, a simulated fleet, live data and alerts, the API and the page."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from core import clock
from core.logs import setup_logging
from core.settings import Settings
from devices.backfill import BackfillOptions, backfill_once
from devices.dispatch import DispatchStore, seed_demo_dispatches
from devices.fleet_credentials import provision_fleet
from devices.registry import DeviceSpec, Registry
from devices.sample import RegionLike, demo_device_specs, sample_regions
from devices.sim_cli import (
    alert_history_into,
    backfill_devices,
    devices_from_registry,
    run_simulation,
    stored_last_values,
)
from devices.sim_publisher import DevicePublisher
from devices.simulator import BEIJING, Fleet, SimDevice, parse_incident
from lianfang.context import open_registry, open_store, settings_from
from lianfang.runtime import Runtime
from lianfang.serve_cmd import run_service

logger = logging.getLogger(__name__)

# Scripted incidents of the demo, offsets in seconds from the fleet's start, and the alert each one raises. Every
# one fires within two minutes at any hour of any day (tests/lianfang/test_demo.py runs the script at fixed clock
# times); lianfang/demo-rules.yaml and demo_rules_now() say how.
DEMO_INCIDENTS: tuple[tuple[str, str], ...] = (
    ("night_vehicle:car-sz-a01-01:10", "V1"),
    ("silent:sensor-gz-a01-b2-01:20", "DEMO.S1"),
    # An intrusion (X2): a forced door, then the reader of a second door of the same building reports a forced
    # door 10 s later (G1.event, and G1 as that door opens with no access).
    ("door_forced:gate-gz-a01-b1-01:30", "G1"),
    ("door_forced_event:gate-gz-a01-b1-02:40", "G1.event"),
    ("energy_spike:meter-gz-a02-b1-01:40:600:6", "DEMO.E4"),
    # A regional cluster (X5): readers tampered with at five gates in five buildings (three agencies) of Shenzhen
    # within 40 s; G11.tamper is critical and event-driven, with no calendar.
    ("tamper:gate-sz-a01-b1-01:50", "G11.tamper"),
    ("tamper:gate-sz-a01-b2-01:60", "G11.tamper"),
    ("tamper:gate-sz-a02-b1-01:70", "G11.tamper"),
    ("tamper:gate-sz-a02-b2-01:80", "G11.tamper"),
    ("tamper:gate-sz-a03-b1-01:90", "G11.tamper"),
)
# The joint incidents (joint/packs/joint.yaml) the script opens within three minutes at any hour, with the tasks
# of their departments (the pack's routing): (pattern, incident type, scope region, rule of the members,
# departments). X2 needs a forced door and another door or sensor alert of another device of the building within
# 60 s; X5 needs 5 alerts of one rule (warning or worse) in 3 buildings of one city within 30 min. Neither has a
# calendar, nor do G1, G1.event and G11.tamper: the pack's values hold, no demo pattern file is needed.
DEMO_JOINT_INCIDENTS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("X2", "intrusion", "gd-gz-a01-b1", "G1", ("security",)),
    ("X5", "regional_cluster", "gd-sz", "G11.tamper", ("security", "it")),
)
# The fewest devices per building that hold every scripted device (two gates: gate-...-b1-02; a sensor; a meter).
MIN_PER_BUILDING = 4
# The scripted devices report more often than their type's default (registry expected_interval_s), so that the
# rules see their incidents within the two minutes: the meter every 15 s, the sensor every 20 s.
DEMO_INTERVALS: dict[str, int] = {"meter-gz-a02-b1-01": 15, "sensor-gz-a01-b2-01": 20}
# The scripted meter's nominal power, which DEMO.E4's limit (80 kW) is set against.
DEMO_NOMINAL_KW: dict[str, float] = {"meter-gz-a02-b1-01": 60.0}
DEMO_RULES_FILE = Path(__file__).with_name("demo-rules.yaml")
DEMO_RULES_NOW_FILE = "demo-rules-now.yaml"
DEFAULT_SEED = 1
# Weeks of history the demo back-fills at its first start (devices/backfill.py): a month, and a previous week.
DEMO_HISTORY_WEEKS = 5


def demo_rules_now(start: datetime, device_ids: Collection[str] | None = None) -> str:
    """The demo's clock-dependent rule overrides, as YAML (written to DATA_DIR/demo-rules-now.yaml at each start).

    The night-vehicle car's V1 working hours are one hour three hours away, so that the demo's start is outside
    them whatever the hour or the day (on non-working days V1 holds anyway), with no grace; and it fires once the
    car has moved 200 m (the pack's 500 m take a city car a few minutes). Nothing when the car is not among
    ``device_ids`` (a demo without vehicles)."""
    local = start.astimezone(BEIJING)
    hours = f"{local + timedelta(hours=3):%H:%M}-{local + timedelta(hours=4):%H:%M}"
    car = next(spec.split(":")[1] for spec, _ in DEMO_INCIDENTS if spec.startswith("night_vehicle:"))
    head = (
        f"# Written by 'lianfang demo' at {local.isoformat(timespec='seconds')}; rewritten at every start.\n"
        "# The scripted night-vehicle car's working hours exclude the demo's start (see lianfang/demo-rules.yaml).\n"
    )
    if device_ids is not None and car not in device_ids:
        return head + "overrides: []\n"
    return (
        head + "overrides:\n"
        f"  - {{rule: V1, device: {car}, params: {{hours: '{hours}', grace_s: 0, min_distance_m: 200}}}}\n"
    )


def demo_rule_paths(data_dir: Path, start: datetime, device_ids: Collection[str] | None = None) -> list[Path]:
    """Write the clock-dependent overrides; return the demo's rule files (static, then the generated one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    now_file = data_dir / DEMO_RULES_NOW_FILE
    now_file.write_text(demo_rules_now(start, device_ids), encoding="utf-8")
    return [DEMO_RULES_FILE, now_file]


def demo_specs(regions: Sequence[RegionLike], per_building: int, vehicles_per_agency: int) -> list[DeviceSpec]:
    """The demo's devices: the sample fleet, the scripted ones with their short intervals (DEMO_INTERVALS)."""
    specs = demo_device_specs(regions, per_building=per_building, vehicles_per_agency=vehicles_per_agency)
    return [replace(s, expected_interval_s=DEMO_INTERVALS[s.id]) if s.id in DEMO_INTERVALS else s for s in specs]


def demo_fleet(
    devices: Sequence[SimDevice],
    start: datetime,
    *,
    seed: int | None = DEFAULT_SEED,
    rate_multiplier: float = 1.0,
    resume: Mapping[str, Mapping[str, float | bool]] | None = None,
    script: Sequence[str] | None = None,
) -> Fleet:
    """The demo's simulated fleet with its scripted incidents (those whose device is in ``devices``); ``script``:
    other incident specs than DEMO_INCIDENTS'."""
    devices = [replace(d, nominal_kw=DEMO_NOMINAL_KW[d.id]) if d.id in DEMO_NOMINAL_KW else d for d in devices]
    ids = {d.id for d in devices}
    specs = [spec for spec, _ in DEMO_INCIDENTS] if script is None else script
    incidents = [parse_incident(spec, start) for spec in specs]
    return Fleet(
        devices,
        rng=random.Random(seed),
        start=start,
        incidents=[i for i in incidents if i.device_id in ids],
        rate_multiplier=rate_multiplier,
        resume=resume,
    )


def backfill_demo_history(settings: Settings, registry: Registry, *, weeks: int, seed: int, now: datetime) -> None:
    """Back-fill ``weeks`` of the fleet's history up to ``now`` once: nothing when the store already holds data of
    the fleet (a demo that ran before)."""
    devices, parents = backfill_devices(registry)
    start = now - timedelta(weeks=weeks)
    store = open_store(settings)
    try:
        t0 = time.monotonic()
        counts = backfill_once(store, devices, start, now, options=BackfillOptions(seed=seed), parents=parents)
    finally:
        store.close()
    if counts is None:
        logger.info("demo history: the store already holds data of the fleet, nothing back-filled")
        return
    # Resolved alerts and the risk snapshots they make (the service is not running yet: alert ids are free).
    history = alert_history_into(registry, settings, devices, start, now, seed=seed)
    logger.info(
        "demo history: %d weeks back-filled in %.1f s: %d readings, %d events, %d resolved alerts, %d closed "
        "incidents, %d risk points",
        weeks,
        time.monotonic() - t0,
        counts.readings,
        counts.events,
        history.alerts,
        history.incidents,
        history.risk_points,
    )


def demo(
    ctx: typer.Context,
    per_building: Annotated[
        int,
        typer.Option(
            min=MIN_PER_BUILDING,
            help="Devices per building (half gates, one in ten sensors, the rest meters); at least 4, so that every"
            " scripted device (two gates of a building) exists.",
        ),
    ] = 20,
    vehicles_per_agency: Annotated[int, typer.Option(min=0, help="Official vehicles per agency.")] = 10,
    rate_multiplier: Annotated[float, typer.Option(help="Make the fleet report this many times more often.")] = 1.0,
    simulate: Annotated[bool, typer.Option("--simulate/--no-simulate", help="Run the simulated fleet.")] = True,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated fleet (the same seed, the same run).")] = (
        DEFAULT_SEED
    ),
    history_weeks: Annotated[
        int,
        typer.Option(
            min=0,
            max=52,
            help="Weeks of history back-filled at the first start, so that the reports show numbers (0: none; "
            "skipped when the store already holds data of the fleet).",
        ),
    ] = DEMO_HISTORY_WEEKS,
) -> None:
    """Start the demo: sample regions (广东省, 广州市, 深圳市 …), a few hundred simulated devices with live data and
    scripted incidents (an intrusion and a regional cluster among them, with department tasks, within three
    minutes), ingest and the control-room page on http://127.0.0.1:8000. Ctrl-C stops everything."""
    settings = settings_from(ctx)
    setup_logging(settings.log_level)
    now = clock.now()
    registry = open_registry(settings)
    registry.upsert_regions(sample_regions(), now=now)
    specs = demo_specs(registry.regions(), per_building, vehicles_per_agency)
    # With history, the fleet is registered as old as its history (reports count devices created before a period).
    back_to = now - timedelta(weeks=history_weeks) if simulate else now
    created, _ = registry.add_devices(specs, now=back_to)
    # Approved dispatches (V2) for every vehicle but the first, this week's working hours (devices/dispatch.py).
    cars = sorted((sp.id, sp.region_id) for sp in specs if sp.type == "vehicle")
    seed_demo_dispatches(DispatchStore(registry.engine), cars, int(now.timestamp() * 1000))
    if simulate and history_weeks:
        backfill_demo_history(settings, registry, weeks=history_weeks, seed=seed, now=now)
    registry.engine.dispose()
    logger.info("demo registry ready: %d devices (%d new)", len(specs), created)
    if not settings.joint.enabled or not (settings.joint.packs or settings.joint.patterns_paths):
        logger.warning("joint correlation is off (joint.enabled / joint.packs): the demo opens no incidents (X2, X5)")
    rules = [*settings.alerts.rules_paths, *demo_rule_paths(settings.data_dir, now, {s.id for s in specs})]
    settings = settings.model_copy(update={"alerts": settings.alerts.model_copy(update={"rules_paths": rules})})

    def start_fleet(runtime: Runtime) -> Callable[[], None]:
        host, port = runtime.settings.mqtt.host, runtime.settings.mqtt.port
        # Devices log in on their own listener (port + 1 with the default password file, ADR 0006); the platform's
        # accounts on mqtt.port.
        device_port = runtime.settings.mqtt.device_listener_port
        url = f"http://{settings.api.host}:{settings.api.port}/"
        broker = f"mqtt://{host}:{port}" + (f" (devices: {device_port})" if device_port != port else "")
        typer.echo(
            f"\n  联防 Lianfang demo\n"
            f"  control room: {url}   (API: {url}api/v1/docs, metrics: {url}metrics)\n"
            f"  broker: {broker}   devices: {len(specs)}   Ctrl-C stops everything\n",
            err=True,
        )
        if not simulate:
            return lambda: None
        assert runtime.registry is not None
        devices = devices_from_registry(runtime.registry)
        # Every simulated device connects with its own identity (client id = username = device id) and ACL.
        secrets = provision_fleet(
            runtime.settings,
            runtime.registry,
            [d.id for d in devices],
            clock.now(),
            process=runtime.broker,
            offline_threshold=100,
        )
        # Meters (and odometers) continue from what the store holds: a restarted demo sends no counter going back.
        assert runtime.store is not None
        resume = stored_last_values(runtime.store, devices)
        fleet = demo_fleet(devices, clock.now(), seed=seed, rate_multiplier=rate_multiplier, resume=resume)
        logger.info("demo fleet: %d devices, %d resumed from the store", len(devices), len(resume))
        publisher = DevicePublisher(host, device_port, secrets)
        publisher.gate_control = fleet.set_locked  # linkage commands: a locked gate grants no access
        publisher.start()
        stop = threading.Event()
        thread = threading.Thread(
            target=run_simulation, args=(fleet, publisher), kwargs={"stop": stop}, name="demo-fleet", daemon=True
        )
        thread.start()

        def stop_fleet() -> None:
            stop.set()
            thread.join(10)
            publisher.close(5)
            logger.info("demo fleet stopped: %s", publisher.counts)

        return stop_fleet

    # The demo is a dev setup on loopback: until someone creates an API user, the page needs no token.
    run_service(settings, dev_open=settings.env == "dev", on_started=start_fleet)
