"""`lianfang serve` (everything), `lianfang ingest` (ingest only) and `lianfang alerts` (the alert engine only).

With ``alerts.engine: separate`` (the default) ``serve`` runs the alert and joint-control engine beside the gateway
and ingest as its child process, fed over the broker (lianfang/ingest_child.py, ingest/forward.py); with
``inline`` everything runs in one process, as before.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer
import uvicorn

from core.logs import setup_logging
from core.settings import Settings
from devices.cli_security import admin_password
from gateway.app import GatewayContext, create_app
from gateway.ingress_publisher import IngressPublisher
from gateway.live import Broadcaster
from lianfang.context import settings_from
from lianfang.engine_live import LiveSubscriber
from lianfang.runtime import Runtime
from lianfang.startup import check_api_port, explain

logger = logging.getLogger(__name__)

# Called once everything runs, before the API serves; returns what to call on the way down.
OnStarted = Callable[[Runtime], Callable[[], None]]


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT / SIGTERM after a graceful stop, which would kill the process before the runtime
    (ingest acks, broker) is stopped; here the signal only ends serving and the caller shuts down in order.
    The signal also closes the live streams (``on_exit``): uvicorn waits for open connections before it stops,
    and an SSE stream never ends on its own."""

    on_exit: Callable[[], None] | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:  # not in the signal handler: it takes locks the interrupted code may hold
            threading.Thread(target=self.on_exit, name="close-streams", daemon=True).start()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_service(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    dev_open: bool = False,
    on_started: OnStarted | None = None,
) -> None:
    """Start the runtime and serve the API until SIGINT / SIGTERM; then stop everything in reverse order."""
    api_host, api_port = host or settings.api.host, port or settings.api.port
    broadcaster = Broadcaster()
    split = settings.alerts.enabled and settings.alerts.engine == "separate"
    runtime = Runtime(
        settings, listeners=[broadcaster.publish], with_ingest=not split, with_engine=True, spawn_ingest=split
    )
    ingress: IngressPublisher | None = None
    live: LiveSubscriber | None = None
    try:
        check_api_port(api_host, api_port)  # before the broker and ingest start, not after
        runtime.start()
        runtime.wait_ingest()
        live = _live_of_other_engines(runtime, broadcaster)
        # HTTP ingress publishes accepted device messages into the broker: the same pipeline as MQTT.
        ingress = IngressPublisher.from_settings(runtime.settings, admin_password(runtime.settings))
        ingress.start()
    except BaseException as exc:
        if ingress is not None:
            ingress.close()
        if live is not None:
            live.stop()
        runtime.stop()
        line = explain(exc, settings) if isinstance(exc, Exception) else None
        if line is None:
            raise
        typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1) from exc
    assert runtime.registry is not None and runtime.store is not None
    gw = GatewayContext(
        runtime.settings,
        runtime.registry,
        runtime.store,
        runtime.broker_status,
        runtime.ingest_status,
        dev_open=dev_open,
        broadcaster=broadcaster,
        ingress=ingress,
        alerts=runtime.alerts,
        warm_fleet=True,  # the overview's counts built at start-up, not by the first request
    )
    server = _Server(
        uvicorn.Config(
            create_app(gw),
            host=api_host,
            port=api_port,
            log_config=None,
            access_log=False,
        )
    )
    server.on_exit = broadcaster.close
    stop_extra: Callable[[], None] | None = None
    try:
        if on_started is not None:
            stop_extra = on_started(runtime)
        server.run()  # handles SIGINT / SIGTERM
    finally:
        if stop_extra is not None:
            stop_extra()
        ingress.close()
        if live is not None:
            live.stop()
        runtime.stop()


def _live_of_other_engines(runtime: Runtime, broadcaster: Broadcaster) -> LiveSubscriber | None:
    """With several engine processes: the other partitions' live items into this gateway's stream
    (lianfang/engine_live.py). None with one engine (it owns every partition)."""
    alerts = runtime.alerts
    if alerts is None or alerts.owns is None:
        return None
    others = [k for k in range(runtime.settings.alerts.partitions) if k not in alerts.owned]
    if not others:
        return None
    base = runtime.engine.client_id if runtime.engine is not None else runtime.settings.mqtt.client_id
    return LiveSubscriber(runtime.settings.mqtt, others, broadcaster, client_id=f"{base}-live").start()


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address of the API and page (default: settings api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port of the API and page (default: settings api.port).")] = None,
) -> None:
    """Run everything in one process: the broker (if embedded), ingest, the REST API and the control-room page.

    Stops cleanly on Ctrl-C or SIGTERM: ingest writes and acknowledges what it holds, then the broker stops.
    """
    settings = settings_from(ctx)
    setup_logging(settings.log_level)
    run_service(settings, host=host, port=port)


def ingest(ctx: typer.Context) -> None:
    """Run ingest only (MQTT -> store); for deployments that run each role in its own process.

    With ``alerts.engine: separate`` (default) its batches go to the alert engine role (`lianfang alerts`) over
    the broker; with ``inline`` the alert engine runs in this process."""
    settings = settings_from(ctx)
    _run_role(settings, Runtime(settings, with_engine=settings.alerts.engine == "inline"), "ingest")


def alerts(ctx: typer.Context) -> None:
    """Run the alert and joint-control engine only, fed by ingest over the broker (its partitions:
    ``alerts.engine_partitions``); for deployments that run each role in its own process. Start it before the
    first ingest process of a new installation: its persistent session must exist before batches are sent."""
    settings = settings_from(ctx)
    if not settings.alerts.enabled:
        typer.echo("error: alerts.enabled is false: there is no engine to run", err=True)
        raise typer.Exit(1)
    _run_role(settings, Runtime(settings, with_ingest=False, with_engine=True), "alert engine")


def _run_role(settings: Settings, runtime: Runtime, name: str) -> None:
    setup_logging(settings.log_level)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            runtime.start()
        except BaseException as exc:
            runtime.stop()
            line = explain(exc, settings) if isinstance(exc, Exception) else None
            if line is None:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1) from exc
        logger.info("%s running; SIGTERM to stop", name)
        try:
            stop.wait()
        finally:
            runtime.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
