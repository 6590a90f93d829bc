"""Builds the shared resources of a command from its settings (composition root helpers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from core.db import make_engine, migrate
from core.errors import UserError
from core.settings import Settings, load_settings
from core.store import TelemetryStore
from core.store.sqlite import SqliteStore
from devices.cli_context import CommandContext
from devices.registry import Registry


def settings_from(ctx: typer.Context) -> Settings:
    """Settings for a command: the root ``--config`` file (if any) plus the environment."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    cached = obj.get("settings")
    if isinstance(cached, Settings):
        return cached
    config = obj.get("config")
    try:
        settings = load_settings(Path(config) if config else None)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    obj["settings"] = settings
    root.obj = obj
    return settings


def command_context() -> CommandContext:
    """What the root command hands down to the package CLIs in ``ctx.obj["context"]`` (CONVENTIONS.md 16)."""
    return CommandContext(settings=settings_from, open_registry=open_registry, open_store=open_store)


def open_registry(settings: Settings) -> Registry:
    """The registry, with the SQL schema migrated to the newest version."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    return Registry(engine)


def open_store(settings: Settings) -> TelemetryStore:
    """The telemetry store of ``store.backend``: the embedded SQLite store or InfluxDB (docs/influxdb.md)."""
    st = settings.store
    if st.backend == "influxdb":
        from lianfang.store_cmd import influx_store

        return influx_store(settings, region_paths=_region_paths(settings.database_url))
    return SqliteStore(st.sqlite_path)


def _region_paths(database_url: str) -> Callable[[], dict[str, str]]:
    """Region id -> materialised path ("/root/.../self/"), read from the registry (the InfluxDB tag region_path)."""
    from sqlalchemy import select

    from devices.models import Region

    engine = make_engine(database_url)

    def load() -> dict[str, str]:
        with engine.connect() as conn:
            return {str(i): str(p) for i, p in conn.execute(select(Region.id, Region.path))}

    return load
