"""Builds the shared resources of a command from its settings (composition root helpers)."""

from __future__ import annotations

from pathlib import Path

import typer

from core.db import make_engine, migrate
from core.errors import UserError
from core.settings import Settings, load_settings
from core.store.sqlite import SqliteStore
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


def open_registry(settings: Settings) -> Registry:
    """The registry, with the SQL schema migrated to the newest version."""
    engine = make_engine(settings.database_url)
    migrate(engine)
    return Registry(engine)


def open_store(settings: Settings) -> SqliteStore:
    return SqliteStore(settings.store.sqlite_path)
