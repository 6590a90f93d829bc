"""`lianfang users ...`: API users with a role and a region scope, their passwords, TOTP and integration tokens;
tokens and secrets are printed once and never stored."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

from core import clock
from core.cliout import print_table
from core.errors import StoreUnavailable, UserError
from gateway.auth import (
    ROLE_ALIASES,
    ROLES,
    create_user,
    enable_totp,
    issue_token,
    list_users,
    revoke_tokens,
    set_user_enabled,
    update_user,
)
from lianfang.context import open_registry, settings_from

users_app = typer.Typer(
    help="API users of the control-room page and the REST API: a role (admin alias region_admin, operator, viewer; "
    "the three officers sysadmin, secadmin, auditor) and a region whose subtree is all they can see.",
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
    role: Annotated[str, typer.Option("--role", "-r", help=f"One of: {', '.join((*ROLES, *ROLE_ALIASES))}.")],
    region: Annotated[
        str,
        typer.Option(
            "--region", help=f"Region id; the user sees only its subtree. '{ALL_REGIONS}' for the whole tree."
        ),
    ],
    person: Annotated[
        str | None,
        typer.Option("--person", help="The person's id (default: the user name); one person holds one 三员 role."),
    ] = None,
    password: Annotated[
        bool, typer.Option("--password", help="Ask for a password (typed twice) so the user can log in.")
    ] = False,
    expires_days: Annotated[
        int | None,
        typer.Option("--expires-days", min=1, max=3660, help="The printed token expires after this many days."),
    ] = None,
) -> None:
    """Create a user and print its API token. The token is shown only this once: keep it."""
    settings = settings_from(ctx)
    secret = typer.prompt("password", hide_input=True, confirmation_prompt=True) if password else None
    now = clock.now()
    try:
        registry = open_registry(settings)
        try:
            token = create_user(
                registry.engine,
                name,
                role,
                None if region == ALL_REGIONS else region,
                now,
                password=secret,
                person_id=person,
                token_expires_at=None if expires_days is None else now + timedelta(days=expires_days),
            )
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
            "person_id": u.person_id or u.name,
            "password": u.password_hash is not None,
            "totp": u.totp_secret is not None,
            "locked_until": None if u.locked_until is None else u.locked_until.isoformat(),
            "token_expires_at": None if u.token_expires_at is None else u.token_expires_at.isoformat(),
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


@users_app.command("passwd")
def passwd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Set a user's password (typed twice); ends a lockout."""
    settings = settings_from(ctx)
    secret = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    try:
        registry = open_registry(settings)
        try:
            update_user(registry.engine, name, password=secret, now=clock.now())
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"password of {name} set")


@users_app.command("totp")
def totp(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Give a user a new TOTP secret and print it once (and its otpauth:// URI) for an authenticator app."""
    import pyotp

    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            secret = enable_totp(registry.engine, name)
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"TOTP secret of {name}, shown only once:", err=True)
    typer.echo(secret)
    typer.echo(pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name="Lianfang"), err=True)


@users_app.command("token")
def token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user the integration acts as.")],
    expires_days: Annotated[int, typer.Option("--expires-days", min=1, max=3660, help="Days until it expires.")],
) -> None:
    """Issue an API token for an integration, expiring after --expires-days; printed only this once."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            token_id, value, expires = issue_token(registry.engine, name, now=clock.now(), expires_days=expires_days)
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"token {token_id} of {name}, expires {expires.isoformat('T', 'seconds')}; shown only once:", err=True)
    typer.echo(value)


@users_app.command("revoke-token")
def revoke_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user.")],
    token_id: Annotated[int | None, typer.Option("--id", help="The token's id (from `users token`).")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="All the user's tokens and sessions, and the token made with the user.")
    ] = False,
) -> None:
    """Revoke one integration token (--id) or all of a user's tokens and sessions (--all)."""
    if (token_id is None) == (not all_):
        raise _fail("give exactly one of --id and --all")
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            n = revoke_tokens(registry.engine, name, now=clock.now(), token_id=token_id, legacy=all_)
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{n} token(s) of {name} revoked")


@users_app.command("set")
def set_(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user.")],
    role: Annotated[
        str | None, typer.Option("--role", "-r", help=f"New role: {', '.join((*ROLES, *ROLE_ALIASES))}.")
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help=f"New region scope; '{ALL_REGIONS}' for the whole tree.")
    ] = None,
    enable: Annotated[bool, typer.Option("--enable", help="Enable a disabled user.")] = False,
) -> None:
    """Change a user's role, region scope or (--enable) re-enable them; a second 三员 role of one person is refused."""
    if role is None and region is None and not enable:
        raise _fail("nothing to change: give --role, --region or --enable")
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            user = update_user(
                registry.engine,
                name,
                role=role,
                region_id=None if region in (None, ALL_REGIONS) else region,
                set_region=region is not None,
                enabled=True if enable else None,
                now=clock.now(),
            )
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"user {name}: {user.role}, region {user.region_id or ALL_REGIONS}, enabled {'yes' if user.enabled else 'no'}"
    )
