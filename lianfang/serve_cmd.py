"""`lianfang serve` (ingest + API in one process) and `lianfang ingest` (ingest only)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer
import uvicorn

from core.errors import LianfangError
from core.logs import setup_logging
from gateway.app import GatewayContext, create_app
from gateway.live import Broadcaster
from lianfang.context import settings_from
from lianfang.runtime import Runtime

logger = logging.getLogger(__name__)


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
    broadcaster = Broadcaster()
    runtime = Runtime(settings, listeners=[broadcaster.publish])
    try:
        runtime.start()
    except LianfangError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    assert runtime.registry is not None and runtime.store is not None
    gw = GatewayContext(
        runtime.settings,
        runtime.registry,
        runtime.store,
        runtime.broker_status,
        runtime.ingest_status,
        broadcaster=broadcaster,
    )
    app = create_app(gw)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host or settings.api.host, port=port or settings.api.port, log_config=None, access_log=False
        )
    )
    try:
        server.run()  # handles SIGINT / SIGTERM
    finally:
        runtime.stop()


def ingest(ctx: typer.Context) -> None:
    """Run ingest only (MQTT -> store); for deployments that run each role in its own process."""
    settings = settings_from(ctx)
    setup_logging(settings.log_level)
    runtime = Runtime(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runtime.start()
    except LianfangError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    logger.info("ingest running; SIGTERM to stop")
    try:
        stop.wait()
    finally:
        runtime.stop()
