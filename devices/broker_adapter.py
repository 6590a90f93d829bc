"""The broker-adapter interface: how device identities get onto a broker, in bulk, verified.

``devices.provisioning.Provisioner`` keeps the registry's credentials and the broker in step through one
:class:`BrokerAdapter`. Implementations:

- :class:`DynsecAdapter` (this module): Mosquitto's dynamic-security plugin over ``$CONTROL`` (a client and a
  role per device, client id bound to the username). Mosquitto 2.0 rewrites its whole dynsec file after every
  command, so bulk changes into a running broker are quadratic; kept for external brokers configured that way
  and for identities created by older versions.
- ``devices.broker_adapter_passwd.PasswdFileAdapter``: a Mosquitto password file with pattern ACLs, reloaded by
  SIGHUP (ADR 0006): 10,000 devices into a running broker in seconds, nobody disconnected.
- ``devices.broker_adapter_emqx.EmqxAdapter``: EMQX's built-in authentication and authorization HTTP API
  (skeleton, request shapes only).

Every method takes and returns plain maps: ``{device_id: secret}`` in, ``{device_id: reason}`` out for what
failed (empty: everything done). Nothing is reported done before ``verify`` read it back from the broker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from devices.broker import MosquittoProcess, hash_password
from devices.dynsec import DynsecClient, device_acls, role_name

# The accounts of devices/broker.py; a device may not take one of these names.
RESERVED_USERNAMES = frozenset({"admin", "lianfang-platform", "lianfang-gateway", "lianfang-sim"})

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class BrokerIdentity:
    """A device identity as the broker holds it."""

    device_id: str
    enabled: bool
    problems: tuple[str, ...] = ()  # what is wrong with it (client id not bound, ACLs differ, ...); () if fine


class BrokerAdapter(Protocol):
    """Add, rotate, enable/disable, remove device identities in bulk; verify and list them."""

    name: str

    def add(self, device_secrets: Mapping[str, str], *, disabled: Collection[str] = ()) -> dict[str, str]:
        """Create identities (or take over existing ones with the new secret, kicking any session)."""
        ...

    def rotate(self, device_secrets: Mapping[str, str]) -> dict[str, str]:
        """New secrets for existing identities; sessions on the old secret are disconnected; enabled state kept."""
        ...

    def set_enabled(self, device_ids: Sequence[str], enabled: bool) -> dict[str, str]:
        """Refuse (disconnecting a session) or accept again; the secret is kept."""
        ...

    def remove(self, device_ids: Sequence[str]) -> dict[str, str]:
        """Delete identities (a connected session is disconnected); an absent one is not an error."""
        ...

    def verify(
        self,
        device_ids: Sequence[str],
        *,
        device_secrets: Mapping[str, str] | None = None,
        disabled: Collection[str] = (),
    ) -> dict[str, str]:
        """Read identities back: ``{id: problems}`` with ``""`` for each one as it should be (enabled unless in
        ``disabled``; with ``device_secrets``, the broker accepts those secrets where the adapter can prove it)."""
        ...

    def verify_removed(self, device_ids: Sequence[str]) -> dict[str, str]:
        """``{id: problem}`` for each identity still on the broker."""
        ...

    def list(self) -> dict[str, BrokerIdentity]:
        """Every device identity on the broker."""
        ...


def _client_problems(device_id: str, client: Mapping[str, Any] | None, role: Mapping[str, Any] | None) -> list[str]:
    from devices.provisioning import client_problems

    return client_problems(device_id, client, role)


def _create_client_command(device_id: str, secret: str) -> dict[str, Any]:
    return {
        "command": "createClient",
        "username": device_id,
        "clientid": device_id,
        "password": secret,
        "roles": [{"rolename": role_name(device_id), "priority": 0}],
    }


def takeover_commands(device_id: str, secret: str, *, keep_disabled: bool = False) -> list[dict[str, Any]]:
    """Set a new password and binding on an existing client, then kick any session (disable, re-enable)."""
    cmds: list[dict[str, Any]] = [
        {
            "command": "modifyClient",
            "username": device_id,
            "clientid": device_id,
            "password": secret,
            "roles": [{"rolename": role_name(device_id), "priority": 0}],
            "groups": [],
        },
        {"command": "disableClient", "username": device_id},
    ]
    if not keep_disabled:
        cmds.append({"command": "enableClient", "username": device_id})
    return cmds


class DynsecAdapter:
    """Device identities as dynsec clients + roles, over ``$CONTROL`` (``dynsec`` must be connected).

    ``process``: the broker process when the caller owns it; then batches of at least ``offline_threshold`` new
    identities are merged into the dynsec file with the broker briefly stopped (connected clients are dropped
    and reconnect: not for a live system, see ADR 0006)."""

    name = "mosquitto-dynsec"

    def __init__(
        self,
        dynsec: DynsecClient,
        *,
        process: MosquittoProcess | None = None,
        offline_threshold: int = 1000,
        progress: Progress | None = None,
    ) -> None:
        self.dynsec = dynsec
        self.process = process
        self.offline_threshold = offline_threshold
        self._progress = progress

    def _tick(self, what: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(what, done, total)

    def _execute(self, owner: Sequence[str], commands: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        errors: dict[str, str] = {}
        step = max(1, self.dynsec.batch_size)
        for start in range(0, len(commands), step):
            part = commands[start : start + step]
            for dev, cmd, resp in zip(owner[start : start + step], part, self.dynsec.execute(part), strict=True):
                if resp.error is not None and not (
                    cmd["command"] in ("deleteClient", "deleteRole") and "not found" in resp.error.lower()
                ):
                    errors.setdefault(dev, f"{cmd['command']}: {resp.error}")
            self._tick("broker", min(len(commands), start + step), len(commands))
        return errors

    def add(self, device_secrets: Mapping[str, str], *, disabled: Collection[str] = ()) -> dict[str, str]:
        if self.process is not None and len(device_secrets) >= self.offline_threshold:
            return self._add_offline(device_secrets, disabled)
        existing_clients = {c["username"]: c for c in self.dynsec.list_clients()}
        existing_roles = {r["rolename"] for r in self.dynsec.list_roles()}
        commands: list[dict[str, Any]] = []
        owner: list[str] = []
        for device_id, secret in device_secrets.items():
            role = role_name(device_id)
            cmds: list[dict[str, Any]] = []
            if role not in existing_roles:
                cmds.append({"command": "createRole", "rolename": role, "acls": device_acls(device_id)})
            if device_id in existing_clients:
                cmds += takeover_commands(device_id, secret, keep_disabled=device_id in disabled)
            else:
                cmds.append(_create_client_command(device_id, secret))
                if device_id in disabled:
                    cmds.append({"command": "disableClient", "username": device_id})
            commands += cmds
            owner += [device_id] * len(cmds)
        return self._execute(owner, commands)

    def _add_offline(self, device_secrets: Mapping[str, str], disabled: Collection[str]) -> dict[str, str]:
        """Stop the owned broker, merge identities into its dynsec file, start it, reconnect."""
        assert self.process is not None
        path = self.process.cfg.dynsec_path
        self.dynsec.close()
        self.process.stop()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            clients = {c["username"]: c for c in doc.get("clients", [])}
            roles = {r["rolename"]: r for r in doc.get("roles", [])}
            for device_id, secret in device_secrets.items():
                role = role_name(device_id)
                roles[role] = {"rolename": role, "acls": device_acls(device_id)}
                old = clients.get(device_id, {})
                off = bool(old.get("disabled")) or device_id in disabled
                clients[device_id] = {
                    "username": device_id,
                    "clientid": device_id,
                    **({"disabled": True} if off else {}),
                    "roles": [{"rolename": role}],
                    **hash_password(secret),
                }
            doc["clients"], doc["roles"] = list(clients.values()), list(roles.values())
            tmp = path.with_suffix(".lianfang-tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(doc, separators=(",", ":")))  # the C encoder: json.dump() is pure Python
            tmp.replace(path)
        finally:
            self.process.start()
            self.dynsec.connect()
        self._tick("broker", len(device_secrets), len(device_secrets))
        return {}

    def rotate(self, device_secrets: Mapping[str, str]) -> dict[str, str]:
        clients = {d: self.dynsec.get_client(d) for d in device_secrets}
        commands: list[dict[str, Any]] = []
        owner: list[str] = []
        errors: dict[str, str] = {}
        for device_id, secret in device_secrets.items():
            client = clients[device_id]
            if client is None:
                errors[device_id] = "missing on the broker"
                continue
            cmds = takeover_commands(device_id, secret, keep_disabled=bool(client.get("disabled")))
            commands += cmds
            owner += [device_id] * len(cmds)
        errors.update(self._execute(owner, commands))
        return errors

    def set_enabled(self, device_ids: Sequence[str], enabled: bool) -> dict[str, str]:
        command = "enableClient" if enabled else "disableClient"
        return self._execute(device_ids, [{"command": command, "username": d} for d in device_ids])

    def remove(self, device_ids: Sequence[str]) -> dict[str, str]:
        commands: list[dict[str, Any]] = []
        owner: list[str] = []
        for d in device_ids:
            commands += [
                {"command": "deleteClient", "username": d},
                {"command": "deleteRole", "rolename": role_name(d)},
            ]
            owner += [d, d]
        return self._execute(owner, commands)

    def _read(self, device_ids: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        if len(device_ids) <= 50:
            cmds: list[dict[str, Any]] = []
            for d in device_ids:
                cmds += [{"command": "getClient", "username": d}, {"command": "getRole", "rolename": role_name(d)}]
            resp = self.dynsec.execute(cmds)
            clients = {d: resp[2 * k].data.get("client") for k, d in enumerate(device_ids) if resp[2 * k].ok}
            roles = {role_name(d): resp[2 * k + 1].data.get("role") for k, d in enumerate(device_ids)}
            return clients, {k: v for k, v in roles.items() if v is not None}
        return (
            {c["username"]: c for c in self.dynsec.list_clients()},
            {r["rolename"]: r for r in self.dynsec.list_roles()},
        )

    def verify(
        self,
        device_ids: Sequence[str],
        *,
        device_secrets: Mapping[str, str] | None = None,
        disabled: Collection[str] = (),
    ) -> dict[str, str]:
        """dynsec cannot prove a password without logging in as the device (which takes its session over), so
        this checks binding, role, ACLs and enabled state only."""
        if not device_ids:
            return {}
        clients, roles = self._read(device_ids)
        out: dict[str, str] = {}
        for d in device_ids:
            client = clients.get(d)
            problems = _client_problems(d, client, roles.get(role_name(d)))
            if client is not None and bool(client.get("disabled")) != (d in disabled):
                problems.append("disabled" if client.get("disabled") else "enabled")
            out[d] = "; ".join(problems)
        return out

    def verify_removed(self, device_ids: Sequence[str]) -> dict[str, str]:
        if not device_ids:
            return {}
        clients, roles = self._read(device_ids)
        return {d: "still on the broker" for d in device_ids if d in clients or role_name(d) in roles}

    def list(self) -> dict[str, BrokerIdentity]:
        roles = {r["rolename"]: r for r in self.dynsec.list_roles()}
        out: dict[str, BrokerIdentity] = {}
        for c in self.dynsec.list_clients():
            username = str(c.get("username"))
            if any(r.get("rolename") == role_name(username) for r in c.get("roles", [])):
                problems = tuple(_client_problems(username, c, roles.get(role_name(username))))
                out[username] = BrokerIdentity(username, not c.get("disabled"), problems)
        return out
