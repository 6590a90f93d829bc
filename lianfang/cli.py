"""The `lianfang` command: one sub-app per noun, composed here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lianfang",
    help="Lianfang (联防): IoT monitoring and joint risk control for facility-management bureaus.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def main() -> None:
    from lianfang import commands  # noqa: F401  (registers the sub-apps and commands)

    app()
