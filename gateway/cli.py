"""`lianfang users ...`: API users with a role and a region scope, their passwords, TOTP and integration tokens;
tokens and secrets are printed once and never stored. `lianfang users policy show|set`: the security policy
(gateway/policy.py). Every change is written to the audit log with the OS user and host (success or refusal)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer

from core import clock
from core.cliout import print_table
from core.errors import StoreUnavailable, UserError
from devices.audit import Actor, AuditLog
from devices.cli_context import open_registry, settings_from
from devices.registry import Registry
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
from gateway.policy import BOUNDS, FIELDS, save_policy, stored_policy

users_app = typer.Typer(
    help="API users of the control-room page and the REST API: a role (admin alias region_admin, operator, viewer; "
    "the three officers sysadmin, secadmin, auditor) and a region whose subtree is all they can see.",
    no_args_is_help=True,
)

ALL_REGIONS = "*"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@contextmanager
def _acting(ctx: typer.Context, action: str, target: str, detail: Mapping[str, Any] | None) -> Iterator[Registry]:
    """The registry for one change; the change is audited (ok, or refused with the error), errors are one line."""
    settings = settings_from(ctx)
    actor = Actor.from_cli()
    try:
        registry = open_registry(settings)
        try:
            log = AuditLog(registry.session)
            try:
                yield registry
            except UserError as exc:
                refused = {**(detail or {}), "error": str(exc)}
                log.write(actor, action, [target], now=clock.now(), outcome="refused", detail=refused)
                raise
            log.write(actor, action, [target], now=clock.now(), detail=detail)
        finally:
            registry.engine.dispose()
    except (UserError, StoreUnavailable) as exc:
        raise _fail(str(exc)) from exc


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
    with _acting(
        ctx,
        "user.create",
        name,
        {
            "role": role,
            "region_id": region,
            "person_id": person or name,
            "password": password,
            "expires_days": expires_days,
        },
    ) as registry:
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
    with _acting(ctx, "user.update", name, {"enabled": False}) as registry:
        set_user_enabled(registry.engine, name, False)
    typer.echo(f"user {name} disabled")


@users_app.command("passwd")
def passwd(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Set a user's password (typed twice); ends a lockout."""
    secret = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    with _acting(ctx, "user.update", name, {"password_reset": True}) as registry:
        update_user(registry.engine, name, password=secret, now=clock.now())
    typer.echo(f"password of {name} set")


@users_app.command("totp")
def totp(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The user.")]) -> None:
    """Give a user a new TOTP secret and print it once (and its otpauth:// URI) for an authenticator app."""
    import pyotp

    with _acting(ctx, "user.totp", name, None) as registry:
        secret = enable_totp(registry.engine, name)
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
    with _acting(ctx, "user.token.issue", name, {"expires_days": expires_days}) as registry:
        token_id, value, expires = issue_token(registry.engine, name, now=clock.now(), expires_days=expires_days)
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
    with _acting(ctx, "user.token.revoke", name, {"id": token_id, "all": all_}) as registry:
        n = revoke_tokens(registry.engine, name, now=clock.now(), token_id=token_id, legacy=all_)
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
    with _acting(ctx, "user.update", name, {"role": role, "region_id": region, "enable": enable}) as registry:
        user = update_user(
            registry.engine,
            name,
            role=role,
            region_id=None if region in (None, ALL_REGIONS) else region,
            set_region=region is not None,
            enabled=True if enable else None,
            now=clock.now(),
        )
    typer.echo(
        f"user {name}: {user.role}, region {user.region_id or ALL_REGIONS}, enabled {'yes' if user.enabled else 'no'}"
    )


policy_app = typer.Typer(
    help="The security policy (passwords, lockout, sessions, TOTP, token lifetime): the security administrator's.",
    no_args_is_help=True,
)
users_app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")] = False,
) -> None:
    """The security policy in force; fields not set take their defaults from the settings (auth.*)."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            stored = stored_policy(registry.engine, settings.auth)
        finally:
            registry.engine.dispose()
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(stored.as_json(), ensure_ascii=False, indent=2))
        return
    values = stored.policy.as_json()
    print_table(
        ("field", "value", "from"),
        [(f, str(values[f]).lower(), "policy" if f in stored.set_fields else "default") for f in FIELDS],
    )


def _policy_value(name: str, text: str) -> Any:
    if text == "default":
        return None
    if name == "totp_required_for_admins":
        if text not in ("true", "false"):
            raise UserError(f"{name} must be true, false or default")
        return text == "true"
    try:
        return int(text)
    except ValueError:
        lo, hi = BOUNDS[name]
        raise UserError(f"{name} must be an integer from {lo} to {hi}, or default") from None


@policy_app.command("set")
def policy_set(
    ctx: typer.Context,
    assignments: Annotated[
        list[str],
        typer.Argument(
            metavar="FIELD=VALUE...",
            help=f"One or more of: {', '.join(FIELDS)}; VALUE 'default' restores the default.",
            show_default=False,
        ),
    ],
) -> None:
    """Change the security policy; it applies at once (open sessions are cut to the new limits)."""
    changes: dict[str, Any] = {}
    for item in assignments:
        name, sep, text = item.partition("=")
        if not sep or name not in FIELDS:
            raise _fail(f"{item!r}: give FIELD=VALUE with FIELD one of {', '.join(FIELDS)}")
        try:
            changes[name] = _policy_value(name, text.strip().lower())
        except UserError as exc:
            raise _fail(str(exc)) from exc
    settings = settings_from(ctx)
    actor = Actor.from_cli()
    with _acting(ctx, "security.policy", "security_policy", changes) as registry:
        stored = save_policy(
            registry.engine, changes, now=clock.now(), by=f"{actor.who} ({actor.origin})", auth=settings.auth
        )
    values = stored.policy.as_json()
    typer.echo("security policy: " + ", ".join(f"{f}={str(values[f]).lower()}" for f in FIELDS))
