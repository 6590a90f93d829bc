"""What the composition root hands down to a package's CLI (CONVENTIONS.md 16: context flows down, never up).

The root command (``lianfang/cli.py``) puts a :class:`CommandContext` in typer's ``ctx.obj["context"]``; the
package CLIs (``devices/cli.py``, ``devices/cli_security.py``, ``alerts/cli.py``, ``gateway/cli.py``) take their
settings, registry and telemetry store from it and never import ``lianfang``. A command run without the root (a
sub-app invoked on its own) gets a clear error instead of a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from core.errors import UserError
from core.settings import Settings
from core.store import TelemetryStore
from devices.registry import Registry


@dataclass(frozen=True, slots=True)
class CommandContext:
    """``settings``: the settings of the command (the root ``--config`` plus the environment), loaded once;
    ``open_registry``: the registry, schema migrated; ``open_store``: the configured telemetry store."""

    settings: Callable[[typer.Context], Settings]
    open_registry: Callable[[Settings], Registry]
    open_store: Callable[[Settings], TelemetryStore]


def _current() -> Any:
    """The running command's context (typer carries its own click)."""
    from typer._click.globals import get_current_context

    return get_current_context()


def command_context(ctx: typer.Context | None = None) -> CommandContext:
    """The CommandContext the root command handed down (``ctx``: the command's, else the current one)."""
    current: Any = ctx if ctx is not None else _current()
    obj = current.find_root().obj
    found = obj.get("context") if isinstance(obj, dict) else None
    if not isinstance(found, CommandContext):
        raise RuntimeError("run the command through the `lianfang` root command (it hands down the context)")
    return found


def settings_from(ctx: typer.Context) -> Settings:
    return command_context(ctx).settings(ctx)


def open_registry(settings: Settings) -> Registry:
    return command_context().open_registry(settings)


def open_store(settings: Settings) -> TelemetryStore:
    return command_context().open_store(settings)


# The embedded broker's generated passwords, written by the runtime (lianfang/runtime.py, BrokerSecrets) once.
BROKER_SECRETS_FILE = "broker-secrets.json"


def broker_admin_password(settings: Settings) -> str:
    """The dynsec admin password: ``mqtt.admin_password``, else the embedded broker's generated one."""
    if settings.mqtt.admin_password is not None:
        return settings.mqtt.admin_password.get_secret_value()
    if settings.mqtt.embedded_broker:
        path = settings.mqtt.broker_dir.parent / BROKER_SECRETS_FILE
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["admin"])
        except FileNotFoundError:
            raise UserError(f"{path} does not exist: start the embedded broker once ('lianfang serve') first") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} cannot be read: {exc}") from exc
    raise UserError("mqtt.admin_password is not set (LIANFANG_MQTT__ADMIN_PASSWORD) for the external broker")
