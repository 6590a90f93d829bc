"""Client for Mosquitto's dynamic-security plugin (the broker side of device credentials).

Commands are JSON published to ``$CONTROL/dynamic-security/v1``; the plugin answers every request message with
one message on ``$CONTROL/dynamic-security/v1/response`` holding one response per command. Every admin client
subscribed to that topic sees every response, so each command carries its own ``correlationData`` and we
match answers by it. Several commands go in one request message (``execute``), which is what makes bulk
provisioning fast.

Nothing here ever waits without a deadline: connecting, subscribing and every request are bounded by
``timeout`` and raise :class:`core.errors.BrokerUnavailable` with a message that says what did not answer.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from core.errors import BrokerUnavailable, LianfangError, UserError

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
DEFAULT_BATCH = 500
# The generated broker config accepts packets up to 1 MiB; stay well below.
MAX_MESSAGE_BYTES = 512 * 1024


class DynsecCommandError(LianfangError):
    """The dynamic-security plugin answered a command with an error (e.g. "Client not found")."""

    def __init__(self, command: str, target: str, error: str) -> None:
        self.command = command
        self.target = target
        self.error = error
        super().__init__(f"dynsec {command} {target}: {error}")


@dataclass(frozen=True, slots=True)
class DynsecResponse:
    command: str
    error: str | None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def device_acls(device_id: str) -> list[dict[str, Any]]:
    """The ACLs of a device's role: exactly what PROTOCOL.md allows, nothing else (default deny does the rest)."""
    root = f"lf/v1/{device_id}"
    return [
        {"acltype": "publishClientSend", "topic": f"{root}/telemetry", "allow": True, "priority": 0},
        {"acltype": "publishClientSend", "topic": f"{root}/event", "allow": True, "priority": 0},
        {"acltype": "publishClientSend", "topic": f"{root}/status", "allow": True, "priority": 0},
        {"acltype": "subscribePattern", "topic": f"{root}/cmd", "allow": True, "priority": 0},
        {"acltype": "publishClientReceive", "topic": f"{root}/cmd", "allow": True, "priority": 0},
        {"acltype": "unsubscribePattern", "topic": f"{root}/cmd", "allow": True, "priority": 0},
    ]


def role_name(device_id: str) -> str:
    return f"lf-dev-{device_id}"


class DynsecClient:
    """A connection as the dynsec ``admin`` account. Use as a context manager or call connect()/close()."""

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        username: str = "admin",
        timeout: float = 10.0,
        tls_ca: Path | None = None,
        batch_size: int = DEFAULT_BATCH,
        per_command_timeout: float = 0.25,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.host, self.port, self.timeout, self.batch_size = host, port, timeout, batch_size
        self.per_command_timeout = per_command_timeout
        self._username, self._password, self._tls_ca = username, password, tls_ca
        self._cond = threading.Condition()
        self._client: mqtt.Client | None = None
        self._connack: ReasonCode | None = None
        self._subscribed = False
        self._disconnected = False
        self._pending: dict[str, DynsecResponse | None] = {}

    # --- connection ---------------------------------------------------------------------------------------

    def connect(self) -> DynsecClient:
        """Connect (or reconnect after close()) and subscribe to the response topic, within ``timeout``."""
        self.close()
        where = f"{self.host}:{self.port}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"lianfang-dynsec-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set(self._username, self._password)
        if self._tls_ca is not None:
            client.tls_set(ca_certs=str(self._tls_ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.connect_timeout = self.timeout
        with self._cond:
            self._connack, self._subscribed, self._disconnected = None, False, False
        try:
            client.connect(self.host, self.port, keepalive=max(5, int(self.timeout * 3)))
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"cannot connect to the MQTT broker at {where}: {exc}") from exc
        self._client = client
        client.loop_start()
        try:
            self._wait(lambda: self._connack is not None, f"the broker at {where} did not accept the connection")
            assert self._connack is not None
            if self._connack.is_failure:
                raise UserError(
                    f"the broker at {where} refused the dynsec admin login ({self._connack.getName()}): "
                    "check mqtt.admin_password"
                )
            client.subscribe(RESPONSE_TOPIC, qos=1)
            self._wait(lambda: self._subscribed, f"the broker at {where} did not confirm the response subscription")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> DynsecClient:
        return self.connect()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- paho callbacks (network thread: only hand off) --------------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any = None) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any = None) -> None:
        with self._cond:
            self._subscribed = all(not rc.is_failure for rc in rcs)
            if not self._subscribed:
                self._connack = rcs[0] if rcs else self._connack
            self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any = None) -> None:
        with self._cond:
            self._disconnected = True
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            responses = doc.get("responses", []) if isinstance(doc, dict) else []
        except ValueError:
            logger.warning("dynsec: ignoring a response that is not JSON (%d bytes)", len(msg.payload))
            return
        with self._cond:
            for item in responses:
                if not isinstance(item, dict):
                    continue
                corr = item.get("correlationData")
                if isinstance(corr, str) and corr in self._pending:
                    data = item.get("data")
                    self._pending[corr] = DynsecResponse(
                        str(item.get("command", "")),
                        str(item["error"]) if item.get("error") else None,
                        data if isinstance(data, dict) else {},
                    )
            self._cond.notify_all()

    def _wait(self, cond: Any, what: str, timeout: float | None = None) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while not cond():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(f"{what} within {timeout:g} s")
                if self._disconnected and self._connack is not None:
                    raise BrokerUnavailable(f"lost the connection to the broker at {self.host}:{self.port} ({what})")
                self._cond.wait(min(left, 0.5))

    # --- requests -----------------------------------------------------------------------------------------

    def execute(self, commands: Sequence[Mapping[str, Any]]) -> list[DynsecResponse]:
        """Send commands, several per request message; the responses come back in the same order.

        A message holds at most ``batch_size`` commands and about ``MAX_MESSAGE_BYTES`` of JSON. Each message
        must be answered within ``timeout + per_command_timeout * len(message)`` seconds (Mosquitto 2.0 rewrites
        its whole dynsec file after every change, so big batches on a big broker take a while), otherwise
        BrokerUnavailable is raised.
        """
        out: list[DynsecResponse] = []
        chunk: list[Mapping[str, Any]] = []
        size = 0
        for cmd in commands:
            n = len(json.dumps(cmd, separators=(",", ":"))) + 50
            if chunk and (len(chunk) >= self.batch_size or size + n > MAX_MESSAGE_BYTES):
                out.extend(self._execute_one_message(chunk))
                chunk, size = [], 0
            chunk.append(cmd)
            size += n
        out.extend(self._execute_one_message(chunk))
        return out

    def _execute_one_message(self, commands: Sequence[Mapping[str, Any]]) -> list[DynsecResponse]:
        if not commands:
            return []
        if self._client is None:
            raise BrokerUnavailable("dynsec client is not connected (call connect() first)")
        ids = [uuid.uuid4().hex for _ in commands]
        body = {"commands": [{**cmd, "correlationData": cid} for cmd, cid in zip(commands, ids, strict=True)]}
        with self._cond:
            for cid in ids:
                self._pending[cid] = None
        try:
            info = self._client.publish(CONTROL_TOPIC, json.dumps(body, separators=(",", ":")), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerUnavailable(
                    f"cannot send dynsec commands to {self.host}:{self.port}: {mqtt.error_string(info.rc)}"
                )
            self._wait(
                lambda: all(self._pending[c] is not None for c in ids),
                f"the dynamic-security plugin at {self.host}:{self.port} did not answer "
                f"{len(commands)} command(s) ({commands[0].get('command')}...)",
                self.timeout + self.per_command_timeout * len(commands),
            )
            with self._cond:
                return [r for r in (self._pending[c] for c in ids) if r is not None]
        finally:
            with self._cond:
                for cid in ids:
                    self._pending.pop(cid, None)

    def call(self, command: Mapping[str, Any]) -> dict[str, Any]:
        """One command; raises DynsecCommandError if the plugin reports an error."""
        (resp,) = self.execute([command])
        if resp.error is not None:
            target = str(command.get("username") or command.get("rolename") or "")
            raise DynsecCommandError(str(command.get("command")), target, resp.error)
        return resp.data

    # --- typed helpers --------------------------------------------------------------------------------------

    def get_client(self, username: str) -> dict[str, Any] | None:
        """The client's record (username, clientid, disabled, roles, ...), or None if it does not exist."""
        (resp,) = self.execute([{"command": "getClient", "username": username}])
        if resp.error is not None:
            if "not found" in resp.error.lower():
                return None
            raise DynsecCommandError("getClient", username, resp.error)
        client = resp.data.get("client")
        return client if isinstance(client, dict) else None

    def get_role(self, rolename: str) -> dict[str, Any] | None:
        (resp,) = self.execute([{"command": "getRole", "rolename": rolename}])
        if resp.error is not None:
            if "not found" in resp.error.lower():
                return None
            raise DynsecCommandError("getRole", rolename, resp.error)
        role = resp.data.get("role")
        return role if isinstance(role, dict) else None

    def list_clients(self, *, page: int = 10_000) -> list[dict[str, Any]]:
        """Every client, verbose (username, clientid, disabled, roles), fetched page by page."""
        return list(self._list("listClients", "clients", page))

    def list_roles(self, *, page: int = 10_000) -> list[dict[str, Any]]:
        return list(self._list("listRoles", "roles", page))

    def _list(self, command: str, key: str, page: int) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            data = self.call({"command": command, "verbose": True, "count": page, "offset": offset})
            items = data.get(key, [])
            for item in items:
                if isinstance(item, dict):
                    yield item
            total = int(data.get("totalCount", 0))
            offset += len(items)
            if not items or offset >= total:
                return
