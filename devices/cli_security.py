"""`lianfang credentials ...` (device identities on the broker) and `lianfang certs init` (TLS).

Secrets are shown once on stdout, or written to a file with mode 0600 (``--secret-file``); they are never
logged and never stored in clear. Errors print one line on stderr and exit with code 1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from core import clock
from core.cliout import is_terminal, note, print_table
from core.errors import BrokerUnavailable, LianfangError, StoreUnavailable, UserError
from core.fsperm import private_dir
from core.settings import Settings
from devices.audit import Actor, AuditLog, AuditRecord, canonical, utc_instant
from devices.broker import DEVICE_PASSWD_FILE
from devices.broker_adapter_passwd import PasswdFileAdapter, adapter_for, parse_passwd
from devices.certs import init_certs
from devices.cli_context import broker_admin_password, open_registry, settings_from
from devices.dynsec import DynsecClient
from devices.provisioning import (
    Drift,
    Provisioner,
    ProvisioningError,
    installer_config,
    read_secret_file,
    write_secrets_file,
)
from devices.provisioning import (
    expiring as expiring_credentials,
)

creds_app = typer.Typer(
    help="Device credentials on the broker: provision, rotate, disable/enable, delete, reprovision, check, "
    "reconcile, export-config, expiring.",
    no_args_is_help=True,
)
certs_app = typer.Typer(
    help="TLS for the broker: a private CA and the broker's server certificate.", no_args_is_help=True
)
audit_app = typer.Typer(
    help="The hash-chained audit log: verify (find edited, deleted, reordered records), list, export.",
    no_args_is_help=True,
)

SecretFileOpt = Annotated[
    Path | None,
    typer.Option("--secret-file", help="Write new secrets here (mode 0600) instead of showing them once."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the broker before giving up.")]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="Device id, e.g. gate-gz-0001.", show_default=False)]


SECRET_ENV = "LIANFANG_DEVICE_SECRET"


def device_secret(device_id: str, secret_file: Path | None) -> str:
    """A device's secret for `check`: --secret-file, else $LIANFANG_DEVICE_SECRET, else the first line of stdin
    when it is not a terminal, else a hidden prompt. UserError (one line) when none gives one."""
    if secret_file is not None:
        return read_secret_file(secret_file, device_id)
    from_env = os.environ.get(SECRET_ENV, "").strip()
    if from_env:
        return from_env
    if not _interactive():
        line = sys.stdin.readline().strip()
        if not line:
            raise UserError(
                f"no secret for {device_id}: give --secret-file FILE, set {SECRET_ENV}, or pipe the secret on stdin"
            )
        return line
    secret: str = typer.prompt(f"secret of {device_id}", hide_input=True, err=True)
    return secret


def _interactive() -> bool:
    """Whether a person can be asked: stdin is a terminal."""
    return is_terminal(sys.stdin)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


# The dynsec admin password (``mqtt.admin_password`` or the embedded broker's generated one).
admin_password = broker_admin_password


@contextmanager
def open_provisioner(settings: Settings, *, timeout: float = 10.0, actor: Actor | None = None) -> Iterator[Provisioner]:
    """A Provisioner on the configured registry and broker, closed afterwards."""
    registry = open_registry(settings)
    try:
        tls_ca = settings.mqtt.tls_ca
        with DynsecClient(
            settings.mqtt.host, settings.mqtt.port, admin_password(settings), timeout=timeout, tls_ca=tls_ca
        ) as dynsec:
            adapter = adapter_for(settings, dynsec)
            yield Provisioner(registry, dynsec, actor=actor or Actor.from_cli(), adapter=adapter)
    finally:
        registry.engine.dispose()


@contextmanager
def _provisioner(ctx: typer.Context, timeout: float) -> Iterator[Provisioner]:
    settings = settings_from(ctx)
    try:
        with open_provisioner(settings, timeout=timeout) as prov:
            yield prov
    except ProvisioningError:
        raise
    except BrokerUnavailable as exc:
        raise _fail(f"broker unavailable: {exc}") from exc
    except StoreUnavailable as exc:
        raise _fail(f"database unavailable: {exc}") from exc
    except LianfangError as exc:
        raise _fail(str(exc)) from exc


def _existing_secrets(path: Path) -> dict[str, str]:
    """``device_id,secret`` lines already in a secret file (so a re-run that adds secrets never drops earlier ones)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UserError(f"cannot read secret file {path}: {exc.strerror}") from exc
    out: dict[str, str] = {}
    for line in text.splitlines():
        device_id, sep, secret = line.strip().partition(",")
        if sep and secret and device_id != "device_id":
            out[device_id] = secret
    return out


def hand_out_secrets(device_secrets: dict[str, str], secret_file: Path | None) -> None:
    """Show new secrets once (stdout) or write them to a 0600 file; ``device_id,secret`` lines already in that
    file for other devices are kept, so running a command again never loses a secret written before."""
    if not device_secrets:
        return
    if secret_file is not None:
        kept = _existing_secrets(secret_file)
        for device_id in device_secrets:
            kept.pop(device_id, None)
        write_secrets_file(secret_file, {**kept, **device_secrets})
        more = f"; {len(kept)} earlier one(s) kept" if kept else ""
        typer.echo(f"{len(device_secrets)} secret(s) written to {secret_file} (mode 0600{more})", err=True)
        return
    typer.echo("new secret(s), shown once — store them now / 新密钥仅显示一次，请立即保存:", err=True)
    for device_id, secret in device_secrets.items():
        typer.echo(f"{device_id},{secret}")


@creds_app.command("provision")
def provision(
    ctx: typer.Context,
    device_ids: Annotated[list[str], typer.Argument(help="Registered device ids.")],
    secret_file: SecretFileOpt = None,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Give devices without a credential their broker identity (already provisioned ones are left alone)."""
    with _provisioner(ctx, timeout) as prov:
        try:
            out = prov.provision_new(device_ids, clock.now())
        except ProvisioningError as exc:
            hand_out_secrets(exc.provisioned, secret_file)
            raise _fail(str(exc)) from exc
        hand_out_secrets(out, secret_file)
        skipped = len(set(device_ids)) - len(out)
        if skipped:
            typer.echo(f"{skipped} device(s) already had a credential (left alone)", err=True)


def _single(ctx: typer.Context, action: str, device_id: str, secret_file: Path | None, timeout: float) -> None:
    with _provisioner(ctx, timeout) as prov:
        now = clock.now()
        try:
            if action == "rotate":
                hand_out_secrets({device_id: prov.rotate(device_id, now)}, secret_file)
            elif action == "reprovision":
                hand_out_secrets({device_id: prov.reprovision(device_id, now)}, secret_file)
            elif action == "disable":
                prov.disable(device_id, now)
            elif action == "enable":
                prov.enable(device_id, now)
            elif action == "delete":
                prov.delete(device_id, now)
        except LianfangError as exc:
            raise _fail(str(exc)) from exc
        typer.echo(f"{device_id}: {action} done and verified on the broker", err=True)


@creds_app.command("rotate")
def rotate(ctx: typer.Context, device_id: IdArg, secret_file: SecretFileOpt = None, timeout: TimeoutOpt = 10.0) -> None:
    """New secret; a connected device is disconnected and the old secret is refused from now on."""
    _single(ctx, "rotate", device_id, secret_file, timeout)


@creds_app.command("reprovision")
def reprovision(
    ctx: typer.Context, device_id: IdArg, secret_file: SecretFileOpt = None, timeout: TimeoutOpt = 10.0
) -> None:
    """After a factory reset: a new secret and a fresh broker identity; the registry row and history stay."""
    _single(ctx, "reprovision", device_id, secret_file, timeout)


@creds_app.command("disable")
def disable(ctx: typer.Context, device_id: IdArg, timeout: TimeoutOpt = 10.0) -> None:
    """Refuse the device on the broker (a connected session is kicked) and mark it disabled."""
    _single(ctx, "disable", device_id, None, timeout)


@creds_app.command("enable")
def enable(ctx: typer.Context, device_id: IdArg, timeout: TimeoutOpt = 10.0) -> None:
    """Accept the device again with its current secret."""
    _single(ctx, "enable", device_id, None, timeout)


@creds_app.command("delete")
def delete(
    ctx: typer.Context,
    device_id: IdArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Remove the device's broker identity and credential (kicks it); the registry row stays, disabled."""
    if not yes:
        if not _interactive():
            raise _fail(f"deleting the broker identity of {device_id} needs --yes when there is no terminal to ask")
        if not typer.confirm(f"delete the broker identity of {device_id}?", default=False, err=True):
            raise _fail("nothing changed")
    _single(ctx, "delete", device_id, None, timeout)


@creds_app.command("check")
def check(
    ctx: typer.Context,
    device_id: IdArg,
    secret_file: Annotated[
        Path | None,
        typer.Option(
            "--secret-file",
            help=f"File with the device's secret (else ${SECRET_ENV}, else one line on stdin, else you are asked).",
        ),
    ] = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 5.0,
) -> None:
    """Connect with the device's credentials and prove what it may and may not publish and subscribe.

    The secret comes from --secret-file, else the LIANFANG_DEVICE_SECRET environment variable, else the first
    line of stdin when it is not a terminal (`echo "$SECRET" | lianfang devices check ID`), else a hidden prompt.
    The check uses the device's client id, so a connected device is taken over for a moment: run it at
    installation or while the device is offline.
    """
    settings = settings_from(ctx)
    try:
        secret = device_secret(device_id, secret_file)
    except UserError as exc:
        raise _fail(str(exc)) from exc
    with _provisioner(ctx, timeout) as prov:
        try:
            port = settings.mqtt.device_listener_port
            if isinstance(prov.adapter, PasswdFileAdapter):  # an identity an older version left in dynsec: mqtt.port
                port = prov.adapter.login_port(device_id)
            report = prov.check(
                device_id,
                secret,
                host=settings.mqtt.host,
                port=port,
                now=clock.now(),
                timeout=timeout,
            )
        except LianfangError as exc:
            raise _fail(str(exc)) from exc
    if json_out:
        doc = {
            "device_id": device_id,
            "ok": report.ok,
            "probes": [
                {
                    "action": p.action,
                    "topic": p.topic,
                    "expected": "allowed" if p.expect_allowed else "refused",
                    "result": p.reason,
                    "ok": p.ok,
                }
                for p in report.probes
            ],
        }
        typer.echo(json.dumps(doc, ensure_ascii=False, indent=1))
    else:
        print_table(
            ("action", "topic", "expected", "broker said", "ok"),
            [
                (p.action, p.topic, "allowed" if p.expect_allowed else "refused", p.reason, "✓" if p.ok else "✗")
                for p in report.probes
            ],
            title=f"{device_id}: {'OK' if report.ok else 'FAILED'}",
        )
    if not report.ok:
        raise typer.Exit(1)


# A reconcile that would delete more broker identities than this (or more than MASS_DELETE_SHARE of those on the
# broker) looks like the wrong broker or the wrong database (e.g. two data dirs sharing one broker): it needs --force.
MASS_DELETE_MAX = 10
MASS_DELETE_SHARE = 0.2
_PLAN_LISTED = 50


@dataclass(frozen=True)
class ReconcilePlan:
    """What `reconcile` would change on the broker, from a dry run."""

    creates: list[str]
    deletes: list[str]
    updates: list[str]
    identities: int  # device identities on the broker now

    @property
    def total(self) -> int:
        return len(self.creates) + len(self.deletes) + len(self.updates)

    @property
    def mass_deletion(self) -> bool:
        n = len(self.deletes)
        return n > MASS_DELETE_MAX or (n > 0 and n > MASS_DELETE_SHARE * self.identities)

    def as_json(self) -> dict[str, Any]:
        return {
            "identities_on_broker": self.identities,
            "create": self.creates,
            "delete": self.deletes,
            "update": self.updates,
        }


def reconcile_plan(drift: list[Drift], identities: int, *, reprovision_missing: bool) -> ReconcilePlan:
    creates = [d.device_id for d in drift if d.kind == "missing_on_broker" and reprovision_missing]
    deletes = sorted({d.device_id for d in drift if d.kind == "orphan_on_broker"})
    updates = sorted({d.device_id for d in drift if d.kind in ("wrong_on_broker", "enabled_mismatch")})
    return ReconcilePlan(creates, deletes, updates, identities)


def _device_identities(prov: Provisioner) -> int:
    """Device identities on the broker (dynsec: clients with their own lf-dev-<id> role; or the password file)."""
    return len(prov.adapter.list())


def _show_plan(plan: ReconcilePlan, where: str) -> None:
    typer.echo(
        f"reconcile would change {plan.total} broker identit{'y' if plan.total == 1 else 'ies'} on {where} "
        f"({plan.identities} device identities there now): create {len(plan.creates)}, delete {len(plan.deletes)}, "
        f"update {len(plan.updates)}",
        err=True,
    )
    for verb, ids in (("create", plan.creates), ("delete", plan.deletes), ("update", plan.updates)):
        if ids:
            more = f" ... and {len(ids) - _PLAN_LISTED} more" if len(ids) > _PLAN_LISTED else ""
            typer.echo(f"  {verb}: {' '.join(ids[:_PLAN_LISTED])}{more}", err=True)


@creds_app.command("reconcile")
def reconcile(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the drift.")] = False,
    reprovision_missing: Annotated[
        bool,
        typer.Option("--reprovision-missing", help="Re-create devices missing on the broker with NEW secrets."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply the changes without asking.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=f"Allow deleting more than {MASS_DELETE_MAX} broker identities or more than "
            f"{MASS_DELETE_SHARE:.0%} of them.",
        ),
    ] = False,
    secret_file: SecretFileOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Compare the registry with the broker, show the drift and fix it (idempotent).

    Before changing anything it shows what it would create, delete and update on the broker and asks (--yes to
    apply without asking; without a terminal --yes is required). A mass deletion (more than 10 identities, or
    more than 20% of the broker's) is refused without --force: it usually means the wrong broker or database.
    """
    settings = settings_from(ctx)
    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    with _provisioner(ctx, timeout) as prov:
        try:
            report = prov.reconcile(clock.now(), fix=False, reprovision_missing=reprovision_missing)
            plan = reconcile_plan(report.drift, _device_identities(prov), reprovision_missing=reprovision_missing)
            if not dry_run and plan.total:
                _show_plan(plan, where)
                if plan.mass_deletion and not force:
                    raise _fail(
                        f"refusing to delete {len(plan.deletes)} of the {plan.identities} device identities on "
                        f"{where} (is this the right broker and database?); re-run with --force if it is meant"
                    )
                if not yes:
                    if not _interactive():
                        raise _fail(
                            f"reconcile would change {plan.total} broker identities and there is no terminal to "
                            "ask: re-run with --yes to apply, or --dry-run to only see the drift"
                        )
                    if not typer.confirm(f"apply these {plan.total} changes?", default=False, err=True):
                        raise _fail("nothing changed")
                report = prov.reconcile(clock.now(), fix=True, reprovision_missing=reprovision_missing)
        except LianfangError as exc:
            raise _fail(str(exc)) from exc
    hand_out_secrets(report.new_secrets, secret_file)
    rows: list[dict[str, Any]] = [
        {"device_id": d.device_id, "kind": d.kind, "detail": d.detail, "fixed": d.fixed} for d in report.drift
    ]
    if json_out:
        doc: dict[str, Any] = {"drift": rows, "changes": report.changes}
        if plan.total:
            doc["plan"] = plan.as_json()
        typer.echo(json.dumps(doc, ensure_ascii=False, indent=1))
        return
    if not rows:
        note("registry and broker agree: no drift")
        return
    print_table(
        ("device", "kind", "detail", "fixed"),
        [(str(r["device_id"]), str(r["kind"]), str(r["detail"]), "yes" if r["fixed"] else "no") for r in rows],
        title=f"drift: {len(rows)}, fixed: {report.changes}",
    )


@creds_app.command("export-config")
def export_config(
    ctx: typer.Context,
    device_id: IdArg,
    secret_file: Annotated[
        Path | None, typer.Option("--secret-file", help="Include the secret from this file.")
    ] = None,
    host: Annotated[str | None, typer.Option("--host", help="Broker address as the device sees it.")] = None,
    tls_port: Annotated[int | None, typer.Option("--tls-port", help="The broker's TLS port, if any.")] = None,
    ca_file: Annotated[str | None, typer.Option("--ca-file", help="CA certificate to load into the device.")] = None,
    timeout: TimeoutOpt = 5.0,
) -> None:
    """What an installer types into the device (JSON).

    The port is where this device logs in: the devices' listener (mqtt.device_port) for an identity in the
    password file, mqtt.port for one an older version left in dynsec (asked of the broker only then)."""
    settings = settings_from(ctx)
    try:
        registry = open_registry(settings)
        try:
            if registry.device(device_id) is None:
                raise UserError(f"device {device_id!r} does not exist in the registry")
        finally:
            registry.engine.dispose()
        secret = read_secret_file(secret_file, device_id) if secret_file is not None else None
    except LianfangError as exc:
        raise _fail(str(exc)) from exc
    port, warning = export_port(settings, device_id, timeout=timeout)
    if warning is not None:
        typer.echo(f"warning: {warning}", err=True)  # stdout is the JSON
    doc = installer_config(
        device_id,
        host=host or settings.mqtt.host,
        port=port,
        tls_port=tls_port,
        secret=secret,
        ca_file=ca_file,
    )
    typer.echo(json.dumps(doc, ensure_ascii=False, indent=1))


def export_port(settings: Settings, device_id: str, *, timeout: float) -> tuple[int, str | None]:
    """The port ``device_id`` logs in on, and a warning when it could not be known.

    With password-file identities (ADR 0006) a device in the file uses the devices' listener (no broker asked); one
    that is not there may still hold a dynsec identity an older version created, which logs in on mqtt.port only:
    the broker's dynsec is asked (PasswdFileAdapter.login_port). Unreachable: the devices' listener, with a warning."""
    mqtt = settings.mqtt
    port = mqtt.device_listener_port
    if port == mqtt.port:
        return port, None
    try:
        in_file = device_id in parse_passwd((mqtt.broker_dir / DEVICE_PASSWD_FILE).read_text(encoding="utf-8"))
    except OSError:
        in_file = False
    if in_file:
        return port, None
    try:
        with DynsecClient(mqtt.host, mqtt.port, admin_password(settings), timeout=timeout, tls_ca=mqtt.tls_ca) as dyn:
            adapter = adapter_for(settings, dyn)
            return (adapter.login_port(device_id) if adapter is not None else port), None
    except LianfangError as exc:
        return port, (
            f"could not ask the broker whether {device_id} still has a dynsec identity (those log in on mqtt.port "
            f"{mqtt.port}): {exc}; printed the devices' listener {port}"
        )


@creds_app.command("expiring")
def expiring(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", help="Window in days.")] = 30,
    json_out: JsonOpt = False,
) -> None:
    """Credentials that expire within the window (already expired included)."""
    settings = settings_from(ctx)
    registry = open_registry(settings)
    try:
        due = expiring_credentials(registry, clock.now(), timedelta(days=days))
    finally:
        registry.engine.dispose()
    items: list[dict[str, Any]] = [{"device_id": e.device_id, "expires_at": e.expires_at.isoformat()} for e in due]
    if json_out:
        typer.echo(json.dumps(items, indent=1))
    else:
        for item in items:
            typer.echo(f"{item['device_id']}\t{item['expires_at']}")
        typer.echo(f"{len(items)} credential(s) expire within {days} day(s)", err=True)


@certs_app.command("init")
def certs_init(
    ctx: typer.Context,
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to write (default: DATA_DIR/certs).")] = None,
    hosts: Annotated[
        list[str] | None, typer.Option("--host", help="Broker DNS name or IP for the certificate (repeatable).")
    ] = None,
    organization: Annotated[str, typer.Option("--org", help="Organisation in the certificates.")] = "Lianfang",
    key_type: Annotated[str, typer.Option("--key-type", help="rsa (widest device support) or ec.")] = "rsa",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA and certificate.")] = False,
) -> None:
    """Make a CA and a broker server certificate signed by it."""
    settings = settings_from(ctx)
    target = directory or settings.mqtt.tls_dir or settings.data_dir / "certs"
    names = hosts or list(dict.fromkeys(["localhost", "127.0.0.1", settings.mqtt.host, socket.gethostname()]))
    try:
        private_dir(target)  # 0700: the CA key and the broker key live here
        paths = init_certs(target, names, now=clock.now(), organization=organization, force=force, key_type=key_type)
    except UserError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"CA certificate (give to devices): {paths.ca_cert}")
    typer.echo(f"CA key (keep offline, 0600):     {paths.ca_key}")
    typer.echo(f"broker certificate:              {paths.server_cert} ({', '.join(names)})")
    typer.echo(f"broker key (0600):               {paths.server_key}")
    print(
        f"to serve MQTT over TLS with them: LIANFANG_MQTT__TLS_PORT=8883 (and LIANFANG_MQTT__TLS_DIR={target} "
        "if not the default)",
        file=sys.stderr,
    )


# --- lianfang audit ------------------------------------------------------------------------------------------------


def _parse_anchor(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise UserError(f"--anchor {value!r}: expected SEQ:HASH (a number, a colon, 64 hex digits)")
    return int(seq), digest.lower()


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise UserError(f"{option} {value!r}: expected an ISO 8601 time, e.g. 2026-12-01T08:00:00+08:00") from exc
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def audit_json(r: AuditRecord, *, verified: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": r.seq,
        "id": r.id,
        "at": utc_instant(r.ts),
        "actor": r.actor,
        "source": r.origin,
        "action": r.action,
        "target": r.target,
        "outcome": r.outcome,
        "detail": r.detail,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    }
    if verified is not None:
        out["verified"] = verified
    return out


AUDIT_CSV_FIELDS = ("seq", "at", "actor", "source", "action", "target", "outcome", "detail", "prev_hash", "hash")


def _cell(value: str) -> str:
    """A CSV cell a spreadsheet will not run as a formula (a leading = + - @ gets a quote)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def audit_csv_row(r: AuditRecord) -> list[str]:
    d = audit_json(r)
    text = [_cell(str(d[k])) for k in ("at", "actor", "source", "action", "target", "outcome")]
    return [str(r.seq), *text, _cell(canonical(r.detail)), r.prev_hash, r.hash]


def _record_audit_read(settings: Settings, action: str, detail: dict[str, Any], outcome: str = "ok") -> None:
    """Reading the audit log from the CLI is itself audited (who at this terminal: ``Actor.from_cli``)."""
    registry = open_registry(settings)
    try:
        AuditLog(registry.session).write(
            Actor.from_cli(), action, ["audit_log"], now=clock.now(), outcome=outcome, detail=detail
        )
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    finally:
        registry.engine.dispose()


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    anchor: Annotated[
        str | None,
        typer.Option("--anchor", help="SEQ:HASH published earlier (the anchor log line): also finds a cut tail."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Walk the hash chain and name every edited, deleted or reordered record; exit 1 when any is found. The check
    is recorded in the audit log afterwards (``audit.verify``, outcome ok or failed)."""
    settings = settings_from(ctx)
    try:
        anc = None if anchor is None else _parse_anchor(anchor)
    except UserError as exc:
        raise _fail(str(exc)) from exc
    registry = open_registry(settings)
    try:
        result = AuditLog(registry.session).verify(anchor=anc)
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    finally:
        registry.engine.dispose()
    detail = {"records": result.count, "problems": len(result.problems), "anchor": anchor}
    _record_audit_read(settings, "audit.verify", detail, "ok" if result.ok else "failed")
    if json_out:
        typer.echo(json.dumps(result.as_json(), indent=1))
    else:
        for p in result.problems:
            typer.echo(p.line())
        state = "intact" if result.ok else f"{len(result.problems)} problem(s)"
        typer.echo(f"{result.count} record(s), head {result.last_seq}:{result.last_hash}: {state}", err=True)
    if not result.ok:
        raise typer.Exit(1)


def _audit_rows(
    ctx: typer.Context,
    actor: str | None,
    action: str | None,
    target: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> list[AuditRecord]:
    settings = settings_from(ctx)
    try:
        s, u = _parse_time(since, "--since"), _parse_time(until, "--until")
    except UserError as exc:
        raise _fail(str(exc)) from exc
    registry = open_registry(settings)
    try:
        return list(
            AuditLog(registry.session).records(actor=actor, action=action, target=target, since=s, until=u, limit=limit)
        )
    except StoreUnavailable as exc:
        raise _fail(str(exc)) from exc
    finally:
        registry.engine.dispose()


ActorOpt = Annotated[str | None, typer.Option("--actor", help="Who (a user name; 'alice' finds 'alice (admin)').")]
ActionOpt = Annotated[str | None, typer.Option("--action", help="What, e.g. provision, rule.override.put.")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="On what, exactly as recorded.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="From this time (ISO 8601; UTC when no offset).")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Before this time (ISO 8601).")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV.")]


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    target: TargetOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000, help="At most this many, newest first.")] = 100,
    json_out: JsonOpt = False,
    csv_out: CsvOpt = False,
) -> None:
    """Audit records, newest first, filtered; the reading is audited (``audit.list``)."""
    rows = _audit_rows(ctx, actor, action, target, since, until, limit)
    filters = {"actor": actor, "action": action, "target": target, "since": since, "until": until}
    _record_audit_read(settings_from(ctx), "audit.list", {"records": len(rows), **filters})
    _print_audit(rows, json_out=json_out, csv_out=csv_out)


@audit_app.command("export")
def audit_export(
    ctx: typer.Context,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    target: TargetOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Every matching record in chain order (oldest first) as CSV, or JSON with --json; the export is audited."""
    rows = _audit_rows(ctx, actor, action, target, since, until, 10_000_000)
    rows.reverse()
    filters = {"actor": actor, "action": action, "target": target, "since": since, "until": until}
    _record_audit_read(settings_from(ctx), "audit.export", {"records": len(rows), **filters})
    _print_audit(rows, json_out=json_out, csv_out=not json_out)


def _print_audit(rows: list[AuditRecord], *, json_out: bool, csv_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps([audit_json(r) for r in rows], indent=1, ensure_ascii=False))
    elif csv_out:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(AUDIT_CSV_FIELDS)
        w.writerows(audit_csv_row(r) for r in rows)
        typer.echo(buf.getvalue(), nl=False)
    else:
        for r in rows:
            typer.echo(f"{r.seq}\t{utc_instant(r.ts)}\t{r.actor}\t{r.origin}\t{r.action}\t{r.target}\t{r.outcome}")
        typer.echo(f"{len(rows)} record(s)", err=True)
