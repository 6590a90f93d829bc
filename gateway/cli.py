"""`lianfang users ...`: API users with a role and a region scope; tokens are printed once and never stored."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from core import clock
from core.cliout import print_table
from core.errors import StoreUnavailable, UserError
from gateway.auth import ROLES, create_user, list_users, set_user_enabled
from lianfang.context import open_registry, settings_from

users_app = typer.Typer(
    help="API users of the control-room page and the REST API: a role (admin, operator, viewer) and a region "
    "whose subtree is all they can see.",
    no_args_is_help=True,
)

ALL_REGIONS = "*"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@users_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Login name, e.g. zhang.san or gz-duty.")],
    role: Annotated[str, typer.Option("--role", "-r", help=f"One of: {', '.join(ROLES)}.")],
    region: Annotated[
        str,
        typer.Option(
            "--region", help=f"Region id; the user sees only its subtree. '{ALL_REGIONS}' for the whole tree."
        ),
    ],
) -> None:
    """Create a user and print its API token. The token is shown only this once: keep it."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            token = create_user(registry.engine, name, role, None if region == ALL_REGIONS else region, clock.now())
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"user {name} created ({role}, region {region}). API token, shown only once:", err=True)
    typer.echo(token)
    typer.echo(f"open the control room with http://{settings.api.host}:{settings.api.port}/#token=<token>", err=True)


@users_app.command("list")
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")] = False,
) -> None:
    """List users with their role, region and state (never their tokens)."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            users = list_users(registry.engine)
        finally:
            registry.engine.dispose()
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    rows = [
        {
            "name": u.name,
            "role": u.role,
            "region_id": u.region_id or ALL_REGIONS,
            "enabled": u.enabled,
            "created_at": u.created_at.isoformat(),
        }
        for u in users
    ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    print_table(
        ("name", "role", "region", "enabled", "created"),
        [
            (
                u.name,
                u.role,
                u.region_id or ALL_REGIONS,
                "yes" if u.enabled else "no",
                u.created_at.isoformat("T", "seconds"),
            )
            for u in users
        ],
    )


@users_app.command("disable")
def disable(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user to lock out.")]) -> None:
    """Revoke a user's token at once (the user stays listed)."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            set_user_enabled(registry.engine, name, False)
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"user {name} disabled")
