"""`lianfang serve` (ingest + API in one process) and `lianfang ingest` (ingest only)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Annotated

import typer
import uvicorn

from core.logs import setup_logging
from core.settings import Settings
from devices.cli_security import admin_password
from gateway.app import GatewayContext, create_app
from gateway.ingress_publisher import IngressPublisher
from gateway.live import Broadcaster
from lianfang.context import settings_from
from lianfang.runtime import Runtime
from lianfang.startup import check_api_port, explain

logger = logging.getLogger(__name__)

# Called once everything runs, before the API serves; returns what to call on the way down.
OnStarted = Callable[[Runtime], Callable[[], None]]


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT / SIGTERM after a graceful stop, which would kill the process before the runtime
    (ingest acks, broker) is stopped; here the signal only ends serving and the caller shuts down in order."""

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
    runtime = Runtime(settings, listeners=[broadcaster.publish])
    ingress: IngressPublisher | None = None
    try:
        check_api_port(api_host, api_port)  # before the broker and ingest start, not after
        runtime.start()
        # HTTP ingress publishes accepted device messages into the broker: the same pipeline as MQTT.
        ingress = IngressPublisher.from_settings(runtime.settings, admin_password(runtime.settings))
        ingress.start()
    except BaseException as exc:
        if ingress is not None:
            ingress.close()
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
    stop_extra: Callable[[], None] | None = None
    try:
        if on_started is not None:
            stop_extra = on_started(runtime)
        server.run()  # handles SIGINT / SIGTERM
    finally:
        if stop_extra is not None:
            stop_extra()
        ingress.close()
        runtime.stop()


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
    """Run ingest only (MQTT -> store); for deployments that run each role in its own process."""
    settings = settings_from(ctx)
    setup_logging(settings.log_level)
    runtime = Runtime(settings)
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
        logger.info("ingest running; SIGTERM to stop")
        try:
            stop.wait()
        finally:
            runtime.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
