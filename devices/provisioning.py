"""Device credentials: create, rotate, disable/enable, delete, reprovision, check, reconcile, export config.

Each device gets a random secret (``secrets.token_urlsafe(32)``: 256 bits), shown once to the installer and
stored here only as a salted scrypt hash; the broker keeps its own PBKDF2 copy. On the broker (Mosquitto's
dynamic-security plugin) the device is a client whose username and client id are the device id, holding one
role ``lf-dev-{id}`` with exactly the ACLs of PROTOCOL.md; everything else is denied by default.

Nothing is reported as done before it was read back from the broker: single changes with ``getClient`` /
``getRole``, bulk changes with ``listClients`` / ``listRoles``. Registry rows are written only for what was
verified, so an interrupted run can simply be run again.

The broker side goes through a ``devices.broker_adapter.BrokerAdapter``: ``DynsecAdapter`` (dynsec clients and
roles over ``$CONTROL``; the default) or ``PasswdFileAdapter`` (a Mosquitto password file with pattern ACLs,
reloaded by SIGHUP: the live bulk path of ``lianfang devices import`` into a running ``lianfang serve``, ADR 0006).
Mosquitto 2.0 rewrites its whole dynsec JSON file after every single command, so a large dynsec import into a
running broker costs O(n^2) file writes; with dynsec, a caller that owns the broker process can merge the
identities into the file while the broker is briefly stopped (``offline_threshold``), which drops every
connection for a moment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import DateTime, ForeignKey, String, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base
from core.errors import BrokerUnavailable, LianfangError, StoreUnavailable, UserError
from core.protocol import DEVICE_ID_RE
from devices.audit import Actor, AuditLog
from devices.broker import MosquittoProcess
from devices.broker_adapter import BrokerAdapter, DynsecAdapter, takeover_commands
from devices.dynsec import DynsecClient, DynsecCommandError, device_acls, role_name
from devices.models import Device
from devices.registry import Registry

logger = logging.getLogger(__name__)

SECRET_BYTES = 32
NOT_AUTHORIZED = 135  # MQTT v5 reason code "Not authorized" (CONNACK, PUBACK, SUBACK)


class DeviceCredential(Base):
    __tablename__ = "device_credentials"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProvisioningError(LianfangError):
    """Some devices could not be provisioned. ``failed`` maps id -> reason; ``provisioned`` maps id -> the new
    secret of every device that DID make it (verified and recorded), so the caller can still hand them out."""

    def __init__(self, failed: Mapping[str, str], provisioned: Mapping[str, str]) -> None:
        self.failed = dict(failed)
        self.provisioned = dict(provisioned)
        ids = sorted(self.failed)
        shown = ", ".join(f"{i} ({self.failed[i]})" for i in ids[:20])
        more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
        super().__init__(f"{len(ids)} device(s) not provisioned: {shown}{more}")


# --- secrets and their hashes (pure) --------------------------------------------------------------------------


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


@dataclass(frozen=True, slots=True)
class SecretHasher:
    """Salted scrypt; the parameters are stored in each hash, so they can be raised without breaking old ones.

    Device secrets carry 256 random bits, so the work factor is defence in depth rather than what protects
    them (NIST SP 800-63B: secrets with >= 112 bits of entropy need only a salted one-way function); the
    default (n=2**8, r=8: 256 KiB, about a millisecond) keeps a 10,000-device import and HTTP-ingress
    verification fast (bench/provision.py, docs/performance.md).
    """

    n: int = 2**8
    r: int = 8
    p: int = 1

    def hash(self, secret: str) -> str:
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(secret.encode(), salt=salt, n=self.n, r=self.r, p=self.p, dklen=32)
        b64 = base64.urlsafe_b64encode
        return f"scrypt${self.n}${self.r}${self.p}${b64(salt).decode()}${b64(digest).decode()}"

    def hash_many(self, values: Sequence[str], *, workers: int = 2) -> list[str]:
        if len(values) < 64 or workers <= 1:
            return [self.hash(v) for v in values]
        with ThreadPoolExecutor(workers, thread_name_prefix="lf-hash") as pool:
            return list(pool.map(self.hash, values, chunksize=64))


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time check of a presented secret against a stored ``scrypt$...`` hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.urlsafe_b64decode(digest)
        got = hashlib.scrypt(
            secret.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(want)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def write_secrets_file(path: Path, device_secrets: Mapping[str, str]) -> None:
    """Write ``device_id,secret`` lines to a file only its owner can read (mode 0600), replacing it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write("device_id,secret\n")
            for device_id, secret in device_secrets.items():
                f.write(f"{device_id},{secret}\n")
    finally:
        if fd >= 0:
            os.close(fd)


def read_secret_file(path: Path, device_id: str) -> str:
    """The secret of ``device_id`` from a file written by write_secrets_file, or a file holding only a secret."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read secret file {path}: {exc.strerror}") from exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1 and "," not in lines[0]:
        return lines[0]
    for ln in lines:
        dev, _, secret = ln.partition(",")
        if dev == device_id and secret:
            return secret
    raise UserError(f"{path}: no secret for device {device_id}")


# --- what the broker should hold (pure) ----------------------------------------------------------------------


def expected_acls(device_id: str) -> set[tuple[str, str, bool]]:
    return {(a["acltype"], a["topic"], bool(a["allow"])) for a in device_acls(device_id)}


def acl_set(role: Mapping[str, Any]) -> set[tuple[str, str, bool]]:
    return {(str(a.get("acltype")), str(a.get("topic")), bool(a.get("allow"))) for a in role.get("acls", [])}


def client_problems(device_id: str, client: Mapping[str, Any] | None, role: Mapping[str, Any] | None) -> list[str]:
    """What is wrong with a device's identity on the broker (empty: as it should be, enabled or not)."""
    if client is None:
        return ["client missing"]
    problems = []
    if client.get("clientid") != device_id:
        problems.append(f"client id {client.get('clientid')!r} is not bound to the username")
    roles = [r.get("rolename") for r in client.get("roles", []) if isinstance(r, dict)]
    if roles != [role_name(device_id)]:
        problems.append(f"roles {roles} instead of [{role_name(device_id)}]")
    if client.get("groups"):
        problems.append("member of groups")
    if role is None:
        problems.append("role missing")
    elif acl_set(role) != expected_acls(device_id):
        problems.append("role ACLs differ from PROTOCOL.md")
    return problems


def installer_config(
    device_id: str,
    *,
    host: str,
    port: int,
    tls_port: int | None,
    secret: str | None = None,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """What an installer types into the device."""
    root = f"lf/v1/{device_id}"
    return {
        "host": host,
        "port": port,
        "tls_port": tls_port,
        "tls_ca": ca_file,
        "protocol": "MQTT v5 (v3.1.1 also accepted)",
        "client_id": device_id,
        "username": device_id,
        "password": secret if secret is not None else "<the secret issued at provisioning; not stored in clear>",
        "keepalive_s": 60,
        "clean_start": False,
        "publish": {
            "telemetry": {"topic": f"{root}/telemetry", "qos": 1, "retain": False},
            "event": {"topic": f"{root}/event", "qos": 1, "retain": False},
            "status": {"topic": f"{root}/status", "qos": 1, "retain": True},
        },
        "subscribe": {"cmd": {"topic": f"{root}/cmd", "qos": 1}},
        "last_will": {"topic": f"{root}/status", "payload": '{"state":"offline"}', "qos": 1, "retain": True},
        "on_connect": {"topic": f"{root}/status", "payload": '{"state":"online"}', "qos": 1, "retain": True},
    }


@dataclass(frozen=True, slots=True)
class Expiring:
    device_id: str
    expires_at: datetime


@dataclass(slots=True)
class Drift:
    device_id: str
    kind: str  # missing_on_broker | wrong_on_broker | enabled_mismatch | orphan_on_broker | unprovisioned
    detail: str
    fixed: bool = False


@dataclass(slots=True)
class ReconcileReport:
    drift: list[Drift] = field(default_factory=list)
    new_secrets: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> int:
        return sum(1 for d in self.drift if d.fixed)


@dataclass(frozen=True, slots=True)
class Probe:
    action: str  # connect | publish | subscribe
    topic: str
    expect_allowed: bool
    allowed: bool
    reason: str

    @property
    def ok(self) -> bool:
        return self.expect_allowed == self.allowed


@dataclass(slots=True)
class CheckReport:
    device_id: str
    probes: list[Probe] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.probes) and all(p.ok for p in self.probes)


def expiring(registry: Registry, now: datetime, within: timedelta) -> list[Expiring]:
    """Credentials that expire before ``now + within`` (already expired ones included), soonest first.
    The alert engine raises its warning from this list."""
    with registry.session() as s:
        rows = s.execute(
            select(DeviceCredential.device_id, DeviceCredential.expires_at)
            .where(DeviceCredential.expires_at.is_not(None), DeviceCredential.expires_at <= now + within)
            .order_by(DeviceCredential.expires_at, DeviceCredential.device_id)
        ).all()
    return [Expiring(d, e) for d, e in rows if e is not None]


def device_secret_ok(registry: Registry, device_id: str, secret: str) -> bool:
    """Whether ``secret`` is the current secret of an enabled device (HTTP ingress ``Bearer`` check)."""
    with registry.session() as s:
        row = s.execute(
            select(DeviceCredential.secret_hash, Device.enabled)
            .join(Device, Device.id == DeviceCredential.device_id)
            .where(DeviceCredential.device_id == device_id)
        ).first()
    return row is not None and bool(row[1]) and verify_secret(secret, row[0])


# --- the provisioner ---------------------------------------------------------------------------------------


class Provisioner:
    """Keeps the registry's device credentials and the broker's device identities in step.

    ``dynsec`` must be connected. ``adapter``: where device identities live (default: a ``DynsecAdapter`` on
    ``dynsec``). ``process``: the broker process when the caller owns it; then, with the dynsec adapter, batches
    of at least ``offline_threshold`` new identities are merged into the dynsec file with the broker stopped.
    """

    def __init__(
        self,
        registry: Registry,
        dynsec: DynsecClient,
        *,
        actor: Actor,
        validity: timedelta | None = timedelta(days=365),
        hasher: SecretHasher | None = None,
        process: MosquittoProcess | None = None,
        offline_threshold: int = 1000,
        progress: Callable[[str, int, int], None] | None = None,
        adapter: BrokerAdapter | None = None,
    ) -> None:
        self.registry = registry
        self.dynsec = dynsec
        self.actor = actor
        self.validity = validity
        self.hasher = hasher or SecretHasher()
        self.process = process
        self.offline_threshold = offline_threshold
        self.audit = AuditLog(registry.session)
        self._progress = progress
        self.adapter: BrokerAdapter = adapter or DynsecAdapter(
            dynsec, process=process, offline_threshold=offline_threshold, progress=self._tick
        )

    @property
    def _dynsec_mode(self) -> bool:
        return isinstance(self.adapter, DynsecAdapter)

    # --- reading the registry ---------------------------------------------------------------------------

    def credential(self, device_id: str) -> DeviceCredential | None:
        with self.registry.session() as s:
            return s.get(DeviceCredential, device_id)

    def credentials(self) -> dict[str, DeviceCredential]:
        with self.registry.session() as s:
            return {c.device_id: c for c in s.scalars(select(DeviceCredential))}

    def expiring(self, now: datetime, within: timedelta) -> list[Expiring]:
        return expiring(self.registry, now, within)

    def _device(self, device_id: str) -> Device:
        device = self.registry.device(device_id)
        if device is None:
            raise UserError(f"device {device_id!r} does not exist in the registry")
        return device

    def _expires(self, now: datetime) -> datetime | None:
        return None if self.validity is None else now + self.validity

    def _tick(self, what: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(what, done, total)

    # --- bulk ----------------------------------------------------------------------------------------------

    def provision_new(self, device_ids: Sequence[str], now: datetime) -> dict[str, str]:
        """Create broker identities for devices that have none yet; return ``{device_id: secret}`` for those.

        Devices that already hold a credential are left alone (re-running is harmless). A device whose broker
        client exists without a registry credential (an earlier run interrupted between broker and registry)
        gets a new secret. Raises ProvisioningError naming every id that did not make it, after recording the
        ones that did (their secrets are on the exception).
        """
        ids = list(dict.fromkeys(device_ids))
        bad = [i for i in ids if not DEVICE_ID_RE.match(i)]
        if bad:
            raise UserError(f"invalid device id(s): {', '.join(bad[:20])}")
        with self.registry.session() as s:
            known = set(s.scalars(select(Device.id).where(Device.id.in_(ids)))) if ids else set()
            have = set(s.scalars(select(DeviceCredential.device_id).where(DeviceCredential.device_id.in_(ids))))
        failed: dict[str, str] = {i: "not in the registry" for i in ids if i not in known}
        todo = [i for i in ids if i in known and i not in have]
        if not todo:
            if failed:
                raise ProvisioningError(failed, {})
            return {}
        self._tick("hash", 0, len(todo))
        fresh = {i: new_secret() for i in todo}
        hashes = dict(zip(todo, self.hasher.hash_many(list(fresh.values())), strict=True))
        self._tick("hash", len(todo), len(todo))
        errors = self.adapter.add(fresh)
        failed.update(errors)
        verified = self.adapter.verify([i for i in todo if i not in errors], device_secrets=fresh)
        failed.update({i: why for i, why in verified.items() if why})
        ok = [i for i in todo if i not in failed]
        self._record_new(ok, hashes, now, action="provision")
        if failed:
            self.audit.write(self.actor, "provision", sorted(failed), now=now, outcome="failed")
            logger.warning("provisioned %d device(s), %d failed", len(ok), len(failed))
            raise ProvisioningError(failed, {i: fresh[i] for i in ok})
        logger.info("provisioned %d device(s)", len(ok))
        return {i: fresh[i] for i in ok}

    def _record_new(self, ids: Sequence[str], hashes: Mapping[str, str], now: datetime, *, action: str) -> None:
        if not ids:
            return
        expires = self._expires(now)
        try:
            with self.registry.session() as s, s.begin():
                for start in range(0, len(ids), 1000):
                    part = ids[start : start + 1000]
                    s.execute(
                        insert(DeviceCredential),
                        [
                            {
                                "device_id": i,
                                "secret_hash": hashes[i],
                                "created_at": now,
                                "rotated_at": None,
                                "expires_at": expires,
                            }
                            for i in part
                        ],
                    )
                self.audit.write(self.actor, action, ids, now=now, session=s)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry write of {len(ids)} credential(s) failed: {exc}") from exc

    # --- single device -----------------------------------------------------------------------------------------

    def create(self, device_id: str, now: datetime) -> str:
        """Provision one device; UserError if it already has a credential (use rotate or reprovision)."""
        self._device(device_id)
        if self.credential(device_id) is not None:
            raise UserError(f"device {device_id} already has a credential: use rotate or reprovision")
        try:
            return self.provision_new([device_id], now)[device_id]
        except ProvisioningError as exc:
            raise BrokerUnavailable(f"device {device_id} was not provisioned: {exc.failed[device_id]}") from exc

    def rotate(self, device_id: str, now: datetime) -> str:
        """New secret; a connected device is disconnected and its old secret refused from now on."""
        self._device(device_id)
        cred = self.credential(device_id)
        if cred is None:
            raise UserError(f"device {device_id} has no credential yet: provision it first")
        if not self._dynsec_mode:
            secret = new_secret()
            errors = self.adapter.rotate({device_id: secret})
            if errors.get(device_id) == "missing on the broker":
                raise UserError(
                    f"device {device_id} is missing on the broker: run 'lianfang credentials reprovision {device_id}'"
                )
            self._adapter_check(errors, device_id, secret)
            self._update_secret(device_id, self.hasher.hash(secret), now, action="rotate")
            return secret
        client = self.dynsec.get_client(device_id)
        if client is None:
            raise UserError(
                f"device {device_id} is missing on the broker: run 'lianfang credentials reprovision {device_id}'"
            )
        secret = new_secret()
        cmds = _takeover_commands(device_id, secret, keep_disabled=bool(client.get("disabled")))
        self._run(cmds)
        self._verify_one(device_id, disabled=bool(client.get("disabled")))
        self._update_secret(device_id, self.hasher.hash(secret), now, action="rotate")
        return secret

    def reprovision(self, device_id: str, now: datetime) -> str:
        """After a factory reset (or a lost identity): a new secret and a fresh broker identity matching the
        registry; the registry row and its history stay."""
        device = self._device(device_id)
        if not self._dynsec_mode:
            secret = new_secret()
            off = [] if device.enabled else [device_id]
            self._adapter_check(self.adapter.add({device_id: secret}, disabled=off), device_id, secret, off)
            self._update_secret(device_id, self.hasher.hash(secret), now, action="reprovision")
            return secret
        client = self.dynsec.get_client(device_id)
        role = self.dynsec.get_role(role_name(device_id))
        secret = new_secret()
        cmds: list[dict[str, Any]] = []
        if role is None:
            cmds.append({"command": "createRole", "rolename": role_name(device_id), "acls": device_acls(device_id)})
        elif acl_set(role) != expected_acls(device_id):
            cmds += _fix_acl_commands(device_id, role)
        if client is None:
            cmds.append(_create_client_command(device_id, secret))
            if not device.enabled:
                cmds.append({"command": "disableClient", "username": device_id})
        else:
            cmds += _takeover_commands(device_id, secret, keep_disabled=not device.enabled)
        self._run(cmds)
        self._verify_one(device_id, disabled=not device.enabled)
        self._update_secret(device_id, self.hasher.hash(secret), now, action="reprovision")
        return secret

    def disable(self, device_id: str, now: datetime) -> None:
        """Refuse the device on the broker (a connected session is kicked) and mark it disabled in the registry."""
        self._set_enabled(device_id, False, now)

    def enable(self, device_id: str, now: datetime) -> None:
        self._set_enabled(device_id, True, now)

    def _set_enabled(self, device_id: str, enabled: bool, now: datetime) -> None:
        self._device(device_id)
        if self.credential(device_id) is None:
            raise UserError(f"device {device_id} has no credential: nothing to {'en' if enabled else 'dis'}able")
        if self._dynsec_mode:
            self._run([{"command": "enableClient" if enabled else "disableClient", "username": device_id}])
            self._verify_one(device_id, disabled=not enabled)
        else:
            off = [] if enabled else [device_id]
            self._adapter_check(self.adapter.set_enabled([device_id], enabled), device_id, None, off)
        self.registry.set_enabled(device_id, enabled, now=now)
        self.audit.write(self.actor, "enable" if enabled else "disable", [device_id], now=now)

    def delete(self, device_id: str, now: datetime) -> None:
        """Remove the broker identity (a connected session is kicked) and the credential; the registry row stays
        (history), disabled, so ingest rejects anything that still arrives."""
        self._device(device_id)
        if self._dynsec_mode:
            resp = self.dynsec.execute(
                [
                    {"command": "deleteClient", "username": device_id},
                    {"command": "deleteRole", "rolename": role_name(device_id)},
                ]
            )
            for r in resp:
                if r.error is not None and "not found" not in r.error.lower():
                    raise DynsecCommandError(r.command, device_id, r.error)
        else:
            errors = self.adapter.remove([device_id])
            if errors:
                raise BrokerUnavailable(f"device {device_id}: {errors[device_id]}")
        if self.adapter.verify_removed([device_id]):
            raise BrokerUnavailable(f"device {device_id} is still on the broker after delete")
        try:
            with self.registry.session() as s, s.begin():
                s.execute(delete(DeviceCredential).where(DeviceCredential.device_id == device_id))
                s.execute(update(Device).where(Device.id == device_id).values(enabled=False, updated_at=now))
                self.audit.write(self.actor, "delete", [device_id], now=now, session=s)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry write failed: {exc}") from exc

    def _adapter_check(
        self, errors: Mapping[str, str], device_id: str, secret: str | None, disabled: Sequence[str] = ()
    ) -> None:
        """Raise if the adapter reported an error, or the read-back (a login with ``secret``) fails."""
        if errors:
            raise BrokerUnavailable(f"device {device_id}: {errors[device_id]}")
        secrets_ = {device_id: secret} if secret is not None else None
        problem = self.adapter.verify([device_id], device_secrets=secrets_, disabled=disabled).get(device_id)
        if problem:
            raise BrokerUnavailable(f"device {device_id}: broker read-back failed: {problem}")

    def _run(self, cmds: Sequence[Mapping[str, Any]]) -> None:
        for cmd, resp in zip(cmds, self.dynsec.execute(cmds), strict=True):
            if resp.error is not None:
                target = str(cmd.get("username") or cmd.get("rolename") or "")
                raise DynsecCommandError(str(cmd.get("command")), target, resp.error)

    def _verify_one(self, device_id: str, *, disabled: bool) -> None:
        client = self.dynsec.get_client(device_id)
        problems = client_problems(device_id, client, self.dynsec.get_role(role_name(device_id)))
        if client is not None and bool(client.get("disabled")) != disabled:
            problems.append("disabled" if client.get("disabled") else "enabled")
        if problems:
            raise BrokerUnavailable(f"device {device_id}: broker read-back failed: {'; '.join(problems)}")

    def _update_secret(self, device_id: str, secret_hash: str, now: datetime, *, action: str) -> None:
        try:
            with self.registry.session() as s, s.begin():
                row = s.get(DeviceCredential, device_id)
                if row is None:
                    s.add(
                        DeviceCredential(
                            device_id=device_id,
                            secret_hash=secret_hash,
                            created_at=now,
                            rotated_at=None,
                            expires_at=self._expires(now),
                        )
                    )
                else:
                    row.secret_hash, row.rotated_at, row.expires_at = secret_hash, now, self._expires(now)
                self.audit.write(self.actor, action, [device_id], now=now, session=s)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"registry write failed: {exc}") from exc

    # --- reconcile ---------------------------------------------------------------------------------------------

    def reconcile(self, now: datetime, *, fix: bool = True, reprovision_missing: bool = False) -> ReconcileReport:
        """Compare the registry with the broker; report drift and (``fix``) repair it. Running it twice changes
        nothing the second time. Broker passwords cannot be read back, so a device missing on the broker is
        re-created (with a NEW secret, returned in the report) only with ``reprovision_missing``."""
        if not self._dynsec_mode:
            return self._reconcile_adapter(now, fix=fix, reprovision_missing=reprovision_missing)
        report = ReconcileReport()
        creds = self.credentials()
        with self.registry.session() as s:
            devices = {d: bool(e) for d, e in s.execute(select(Device.id, Device.enabled))}
        clients = {c["username"]: c for c in self.dynsec.list_clients()}
        roles = {r["rolename"]: r for r in self.dynsec.list_roles()}
        fixes: list[tuple[Drift, list[dict[str, Any]]]] = []
        for device_id in sorted(creds):
            client, role = clients.get(device_id), roles.get(role_name(device_id))
            enabled = devices.get(device_id, False)
            if client is None:
                drift = Drift(device_id, "missing_on_broker", "credential in the registry, no client on the broker")
                report.drift.append(drift)
                if fix and reprovision_missing:
                    report.new_secrets[device_id] = self.reprovision(device_id, now)
                    drift.fixed = True
                continue
            problems = client_problems(device_id, client, role)
            if problems:
                cmds: list[dict[str, Any]] = []
                if role is None:
                    cmds.append(
                        {"command": "createRole", "rolename": role_name(device_id), "acls": device_acls(device_id)}
                    )
                elif acl_set(role) != expected_acls(device_id):
                    cmds += _fix_acl_commands(device_id, role)
                cmds.append(
                    {
                        "command": "modifyClient",
                        "username": device_id,
                        "clientid": device_id,
                        "roles": [{"rolename": role_name(device_id), "priority": 0}],
                        "groups": [],
                    }
                )
                fixes.append((Drift(device_id, "wrong_on_broker", "; ".join(problems)), cmds))
            if bool(client.get("disabled")) == enabled:
                state = "enabled" if enabled else "disabled"
                cmd = {"command": "enableClient" if enabled else "disableClient", "username": device_id}
                fixes.append((Drift(device_id, "enabled_mismatch", f"registry {state}, broker not"), [cmd]))
        for username, client in sorted(clients.items()):
            ours = any(r.get("rolename") == role_name(username) for r in client.get("roles", []))
            if ours and username not in creds:
                cmds = [{"command": "deleteClient", "username": username}]
                if role_name(username) in roles:
                    cmds.append({"command": "deleteRole", "rolename": role_name(username)})
                fixes.append((Drift(username, "orphan_on_broker", "device client without a registry credential"), cmds))
        for rolename in sorted(roles):
            dev = rolename.removeprefix("lf-dev-")
            if rolename.startswith("lf-dev-") and dev not in creds and dev not in clients:
                cmd = {"command": "deleteRole", "rolename": rolename}
                fixes.append((Drift(dev, "orphan_on_broker", "device role without a client"), [cmd]))
        for device_id in sorted(set(devices) - set(creds) - set(clients)):
            report.drift.append(Drift(device_id, "unprovisioned", "no credential yet (provision it)"))
        for drift, cmds in fixes:
            report.drift.append(drift)
            if fix:
                self._run(cmds)
                drift.fixed = True
        touched = sorted({d.device_id for d, _ in fixes} if fix else set())
        if touched:
            self._verify_after_reconcile(touched, creds, devices)
            self.audit.write(self.actor, "reconcile", touched, now=now, detail={"changes": len(fixes)})
        report.drift.sort(key=lambda d: (d.device_id, d.kind))
        return report

    def _reconcile_adapter(self, now: datetime, *, fix: bool, reprovision_missing: bool) -> ReconcileReport:
        """reconcile through a non-dynsec adapter: missing, enabled state, orphans (the ACLs are the adapter's own
        patterns, the same for every device, so there is no per-device ACL drift)."""
        report = ReconcileReport()
        creds = self.credentials()
        with self.registry.session() as s:
            devices = {d: bool(e) for d, e in s.execute(select(Device.id, Device.enabled))}
        idents = self.adapter.list()
        enable: list[str] = []
        disable: list[str] = []
        for device_id in sorted(creds):
            ident = idents.get(device_id)
            if ident is None:
                drift = Drift(device_id, "missing_on_broker", "credential in the registry, no identity on the broker")
                report.drift.append(drift)
                if fix and reprovision_missing:
                    report.new_secrets[device_id] = self.reprovision(device_id, now)
                    drift.fixed = True
            elif ident.enabled != devices.get(device_id, False):
                state = "enabled" if devices.get(device_id, False) else "disabled"
                report.drift.append(Drift(device_id, "enabled_mismatch", f"registry {state}, broker not", fixed=fix))
                (enable if devices.get(device_id, False) else disable).append(device_id)
        orphans = sorted(set(idents) - set(creds))
        for device_id in orphans:
            report.drift.append(
                Drift(device_id, "orphan_on_broker", "device identity without a registry credential", fixed=fix)
            )
        for device_id in sorted(set(devices) - set(creds) - set(idents)):
            report.drift.append(Drift(device_id, "unprovisioned", "no credential yet (provision it)"))
        if fix and (enable or disable or orphans):
            errors: dict[str, str] = {}
            if enable:
                errors.update(self.adapter.set_enabled(enable, True))
            if disable:
                errors.update(self.adapter.set_enabled(disable, False))
            if orphans:
                errors.update(self.adapter.remove(orphans))
            bad = {d: p for d, p in self.adapter.verify(enable + disable, disabled=disable).items() if p}
            bad.update(self.adapter.verify_removed(orphans))
            bad.update(errors)
            if bad:
                raise BrokerUnavailable(
                    f"reconcile read-back failed for: {', '.join(f'{d} ({p})' for d, p in bad.items())}"
                )
            touched = sorted(enable + disable + orphans)
            self.audit.write(self.actor, "reconcile", touched, now=now, detail={"changes": len(touched)})
        report.drift.sort(key=lambda d: (d.device_id, d.kind))
        return report

    def _verify_after_reconcile(
        self, touched: Sequence[str], creds: Mapping[str, DeviceCredential], devices: Mapping[str, bool]
    ) -> None:
        clients = {c["username"]: c for c in self.dynsec.list_clients()}
        roles = {r["rolename"]: r for r in self.dynsec.list_roles()}
        bad = []
        for d in touched:
            if d in creds:
                client = clients.get(d)
                problems = client_problems(d, client, roles.get(role_name(d)))
                if client is not None and bool(client.get("disabled")) == devices.get(d, False):
                    problems.append("enabled state")
            else:
                problems = ["still on the broker"] if d in clients or role_name(d) in roles else []
            if problems:
                bad.append(f"{d} ({'; '.join(problems)})")
        if bad:
            raise BrokerUnavailable(f"reconcile read-back failed for: {', '.join(bad)}")

    # --- check -------------------------------------------------------------------------------------------------

    def check(
        self, device_id: str, secret: str, *, host: str, port: int, now: datetime, timeout: float = 5.0
    ) -> CheckReport:
        """Connect as the device and prove what it may and may not do (see ``check_device``)."""
        self._device(device_id)
        # the password file's device listener; a legacy dynsec identity is checked on the platform's (dynsec decides)
        passwd = getattr(self.adapter, "name", "") == "mosquitto-passwd" and port == getattr(self.adapter, "port", port)
        report = check_device(device_id, secret, host=host, port=port, timeout=timeout, pattern_acls=passwd)
        self.audit.write(self.actor, "check", [device_id], now=now, outcome="ok" if report.ok else "failed")
        return report


def _create_client_command(device_id: str, secret: str) -> dict[str, Any]:
    return {
        "command": "createClient",
        "username": device_id,
        "clientid": device_id,
        "password": secret,
        "roles": [{"rolename": role_name(device_id), "priority": 0}],
    }


_takeover_commands = takeover_commands


def _fix_acl_commands(device_id: str, role: Mapping[str, Any]) -> list[dict[str, Any]]:
    want = expected_acls(device_id)
    have = acl_set(role)
    rolename = role_name(device_id)
    cmds: list[dict[str, Any]] = [
        {"command": "removeRoleACL", "rolename": rolename, "acltype": t, "topic": topic}
        for t, topic, allow in sorted(have - want)
    ]
    cmds += [
        {"command": "addRoleACL", "rolename": rolename, "acltype": t, "topic": topic, "allow": allow, "priority": 0}
        for t, topic, allow in sorted(want - have)
    ]
    return cmds


# --- proving a device's rights with its own credentials --------------------------------------------------------


class _Session:
    """A short MQTT v5 session that records CONNACK, PUBACK and SUBACK reason codes."""

    def __init__(self, host: str, port: int, username: str | None, password: str | None, client_id: str) -> None:
        self.host, self.port = host, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.acks: dict[int, int] = {}
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.received: list[str] = []
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any = None) -> None:
        with self.cond:
            self.connack = rc
            self.cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any = None) -> None:
        with self.cond:
            self.acks[mid] = rc.value
            self.cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any = None) -> None:
        with self.cond:
            self.acks[mid] = rcs[0].value if rcs else 128
            self.cond.notify_all()

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(cond, timeout):
                raise BrokerUnavailable(f"{what}: no answer from {self.host}:{self.port} within {timeout:g} s")

    def ack(self, mid: int, timeout: float, what: str) -> int:
        self.wait(lambda: mid in self.acks, timeout, what)
        return self.acks[mid]

    def connect(self, timeout: float) -> ReasonCode:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise BrokerUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.client.loop_start()
        self.wait(lambda: self.connack is not None, timeout, "CONNACK")
        assert self.connack is not None
        return self.connack

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _reason(code: int) -> str:
    if code == NOT_AUTHORIZED:
        return "Not authorized (135)"
    return "Success" if code < 128 else f"refused ({code})"


def check_device(
    device_id: str, secret: str, *, host: str, port: int, timeout: float = 5.0, pattern_acls: bool = False
) -> CheckReport:
    """Connect with the device's credentials and prove its rights with v5 reason codes.

    The check IS the device for the broker (same client id): a connected device is taken over (disconnected,
    it reconnects afterwards) and its persistent session is started afresh. Run it at installation, or while
    the device is offline.

    Allowed: publish to its own telemetry/event/status, subscribe to its own cmd. Refused (135): publish to
    another device's topics, its own cmd, ``$CONTROL/...`` and ``$SYS/...``; subscribe to ``#``, ``$SYS/#``,
    ``$CONTROL/#`` and another device's cmd; and the same secret with a different client id at CONNECT.
    The allowed publishes are real messages ingest will see: a ``cmd_result`` event marked as a check,
    a non-retained ``online`` status and an empty telemetry object (a heartbeat for gates, a schema rejection
    for other types).

    ``pattern_acls``: the device lives in the broker's password file (ADR 0006). There Mosquitto grants every
    SUBSCRIBE and filters at delivery, so the forbidden filters are proven by what arrives: subscribed to them,
    the device publishes to its own topics and must receive nothing but its own ``cmd``. The client id is not
    bound to the username there, so the other-client-id probe expects the connection to be accepted.
    """
    report = CheckReport(device_id)
    other = "lf-check-other" if device_id != "lf-check-other" else "lf-check-another"
    root = f"lf/v1/{device_id}"
    probe_id = f"lianfang-check-{uuid.uuid4().hex[:8]}"
    # The client id must be bound to the username: the same secret under another client id is refused.
    wrong = _Session(host, port, device_id, secret, f"{device_id}-check-{uuid.uuid4().hex[:6]}")
    try:
        rc = wrong.connect(timeout)
        report.probes.append(Probe("connect", "(other client id)", pattern_acls, not rc.is_failure, _reason(rc.value)))
    finally:
        wrong.close()
    sess = _Session(host, port, device_id, secret, device_id)
    try:
        rc = sess.connect(timeout)
        report.probes.append(Probe("connect", f"(client id {device_id})", True, not rc.is_failure, _reason(rc.value)))
        if rc.is_failure:
            return report
        event = json.dumps(
            {"type": "cmd_result", "cmd_id": probe_id, "ok": True, "detail": "lianfang credential check"}
        )
        publishes: list[tuple[str, bytes, bool]] = [
            (f"{root}/telemetry", b"{}", True),
            (f"{root}/event", event.encode(), True),
            (f"{root}/status", b'{"state":"online","fw":"lianfang-check"}', True),
            (f"{root}/cmd", b"{}", False),
            (f"lf/v1/{other}/telemetry", b"{}", False),
            (f"lf/v1/{other}/status", b'{"state":"offline"}', False),
            ("$CONTROL/dynamic-security/v1", b'{"commands":[]}', False),
            ("$SYS/lianfang-check", b"{}", False),
        ]
        for topic, payload, expect in publishes:
            info = sess.client.publish(topic, payload, qos=1)
            code = sess.ack(info.mid, timeout, f"PUBACK for {topic}")
            report.probes.append(Probe("publish", topic, expect, code < 128, _reason(code)))
        subscribes = [
            (f"{root}/cmd", True),
            ("#", False),
            (f"lf/v1/{other}/cmd", False),
            ("lf/v1/+/cmd", False),
            ("$SYS/#", False),
            ("$CONTROL/#", False),
        ]
        for topic, expect in subscribes:
            _res, mid = sess.client.subscribe(topic, qos=1)
            if mid is None:
                raise BrokerUnavailable(f"cannot subscribe to {topic} on {host}:{port}")
            code = sess.ack(mid, timeout, f"SUBACK for {topic}")
            if expect or not pattern_acls:
                report.probes.append(Probe("subscribe", topic, expect, code < 128, _reason(code)))
        if pattern_acls:
            for topic, payload in ((f"{root}/telemetry", b"{}"), (f"{root}/status", b'{"state":"online"}')):
                info = sess.client.publish(topic, payload, qos=1)
                sess.ack(info.mid, timeout, f"PUBACK for {topic}")
            time.sleep(min(1.0, timeout))
            with sess.cond:
                got = list(sess.received)
            for topic, expect in subscribes[1:]:
                leaked = [t for t in got if mqtt.topic_matches_sub(topic, t) and t != f"{root}/cmd"]
                why = f"received {leaked[0]}" if leaked else "nothing delivered (read ACL)"
                report.probes.append(Probe("receive", topic, expect, bool(leaked), why))
    finally:
        sess.close()
    return report


class ProvisionOnWrite:
    """A ``devices.imports.DevicesWritten`` hook: gives every written device that has no credential yet its broker
    identity (``provision_new``), collecting the new secrets in ``secrets`` for the caller to show once or write
    to a 0600 file. A ProvisioningError propagates after the successful ones were recorded (and collected)."""

    def __init__(self, provisioner: Provisioner, now: datetime) -> None:
        self.provisioner = provisioner
        self.now = now
        self.secrets: dict[str, str] = {}

    def __call__(self, created_ids: Sequence[str], updated_ids: Sequence[str]) -> None:
        try:
            self.secrets.update(self.provisioner.provision_new([*created_ids, *updated_ids], self.now))
        except ProvisioningError as exc:
            self.secrets.update(exc.provisioned)
            raise
