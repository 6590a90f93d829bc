"""`lianfang demo`: the sample region tree, a simulated fleet, live data and alerts, the API and the page."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Annotated

import typer

from core import clock
from core.logs import setup_logging
from devices.fleet_credentials import provision_fleet
from devices.sample import demo_device_specs, sample_regions
from devices.sim_cli import devices_from_registry, run_simulation
from devices.sim_publisher import DevicePublisher
from devices.simulator import Fleet, parse_incident
from lianfang.context import open_registry, settings_from
from lianfang.runtime import Runtime
from lianfang.serve_cmd import run_service

logger = logging.getLogger(__name__)

# Scripted incidents of the demo, offsets in seconds from the start: the control room sees them arrive.
DEMO_INCIDENTS = (
    "door_forced:gate-gz-a01-b1-01:45",
    "energy_spike:meter-gz-a02-b1-01:90:600",
    "night_vehicle:car-sz-a01-01:120:600",
    "silent:sensor-gz-a01-b2-01:60",
)


def demo(
    ctx: typer.Context,
    per_building: Annotated[int, typer.Option(help="Devices per building (gates, meters, sensors).")] = 20,
    vehicles_per_agency: Annotated[int, typer.Option(help="Official vehicles per agency.")] = 10,
    rate_multiplier: Annotated[float, typer.Option(help="Make the fleet report this many times more often.")] = 1.0,
    simulate: Annotated[bool, typer.Option("--simulate/--no-simulate", help="Run the simulated fleet.")] = True,
) -> None:
    """Start the demo: sample regions (广东省, 广州市, 深圳市 …), a few hundred simulated devices with live data and
    scripted incidents, ingest and the control-room page on http://127.0.0.1:8000. Ctrl-C stops everything."""
    settings = settings_from(ctx)
    setup_logging(settings.log_level)
    now = clock.now()
    registry = open_registry(settings)
    registry.upsert_regions(sample_regions(), now=now)
    specs = demo_device_specs(registry.regions(), per_building=per_building, vehicles_per_agency=vehicles_per_agency)
    created, _ = registry.add_devices(specs, now=now)
    registry.engine.dispose()
    logger.info("demo registry ready: %d devices (%d new)", len(specs), created)

    def start_fleet(runtime: Runtime) -> Callable[[], None]:
        host, port = runtime.settings.mqtt.host, runtime.settings.mqtt.port
        url = f"http://{settings.api.host}:{settings.api.port}/"
        typer.echo(
            f"\n  联防 Lianfang demo\n"
            f"  control room: {url}   (API: {url}api/v1/docs, metrics: {url}metrics)\n"
            f"  broker: mqtt://{host}:{port}   devices: {len(specs)}   Ctrl-C stops everything\n",
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
        start = clock.now()
        fleet = Fleet(
            devices,
            rng=random.Random(),
            start=start,
            incidents=[parse_incident(text, start) for text in DEMO_INCIDENTS],
            rate_multiplier=rate_multiplier,
        )
        publisher = DevicePublisher(host, port, secrets)
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
