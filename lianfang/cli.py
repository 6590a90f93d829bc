"""The `lianfang` command: one sub-app per noun, composed here."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="lianfang",
    help="Lianfang (联防): IoT monitoring and joint risk control for facility-management bureaus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", envvar="LIANFANG_CONFIG", help="YAML settings file (see docs/configuration.md)."
        ),
    ] = None,
) -> None:
    """Lianfang (联防): IoT monitoring and joint risk control for facility-management bureaus."""
    from lianfang.context import command_context

    # Convention 16: the package CLIs take their settings, registry and store from here (devices/cli_context.py).
    ctx.obj = {"config": config, "context": command_context()}


def main() -> None:
    from core.errors import LianfangError
    from lianfang import commands  # noqa: F401  (registers the sub-apps and commands)

    try:
        app()
    except LianfangError as exc:  # a command that let one through: still one line, never a traceback
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
