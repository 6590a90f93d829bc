"""Mosquitto for Lianfang: generated configuration, the dynamic-security bootstrap file, a child process.

The configuration sizes the broker for at-least-once delivery (persistence on, large in-flight and queue
limits for an ingest outage budget, TCP_NODELAY) and enables the dynamic-security plugin with default deny
and no anonymous access. Accounts created at bootstrap:

- ``admin``: administers dynamic security over ``$CONTROL/dynamic-security/v1`` only;
- the platform account (``mqtt.username``): subscribes to every device topic (also as a shared
  subscription) and publishes commands;
- ``lianfang-sim`` (dev only, when a password is given): publishes on behalf of simulated devices, for
  benchmarks that need one fast connection instead of thousands;
- ``lianfang-gateway``: the HTTP ingress publishes a device's message (after checking the device's own secret) on
  that device's ``telemetry`` / ``event`` topic, and nothing else. Its password is derived from the admin
  password (:func:`derive_gateway_password`) unless one is configured, so it needs no extra secret file.

Device identities live in a Mosquitto password file (``devices.passwd``) with pattern ACLs (``devices.acl``,
``%u``: a device may use only its own topics), which the broker reloads on SIGHUP without dropping anyone
(docs/adr/0006-live-provisioning.md; devices/broker_adapter_passwd.py writes them). The dynsec plugin is asked
first, so the built-in accounts above, and device identities an older version created there, keep working.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from core.errors import BrokerUnavailable, UserError

logger = logging.getLogger(__name__)

DYNSEC_PLUGIN_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
PBKDF2_ITERATIONS = 101  # what mosquitto 2.0's dynsec writes; it verifies with the iterations stored per client
GATEWAY_USERNAME = "lianfang-gateway"
GATEWAY_ROLE = "lf-gateway"
DEVICE_PASSWD_FILE = "devices.passwd"
DEVICE_ACL_FILE = "devices.acl"
BROKER_PID_FILE = "mosquitto.pid"
# What PROTOCOL.md allows a device, as Mosquitto pattern ACLs (%u: the username, which is the device id). Mosquitto
# 2.0's acl_file grants every SUBSCRIBE and filters at delivery ("read"): a device subscribed to '#' receives only
# its own cmd. The dynsec plugin decides for the accounts it knows, so these lines apply to device users only.
DEVICE_ACL_PATTERNS = (
    "pattern write lf/v1/%u/telemetry",
    "pattern write lf/v1/%u/event",
    "pattern write lf/v1/%u/status",
    "pattern read lf/v1/%u/cmd",
)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    directory: Path
    port: int
    host: str = "127.0.0.1"
    admin_password: str = ""
    platform_username: str = "lianfang-platform"
    platform_password: str = ""
    sim_password: str | None = None
    # The HTTP ingress account; None: derived from admin_password (derive_gateway_password).
    gateway_password: str | None = None
    max_inflight_messages: int = 2000
    max_queued_messages: int = 2_000_000
    # Broker persistence (docs/reliability.md has the measurements): with autosave_on_changes false, mosquitto
    # rewrites its whole persistence file every autosave_interval seconds, and a crash (not a restart) loses what
    # it accepted since the last save finished; with true, autosave_interval counts changes (queued messages,
    # subscriptions, retained) instead, which bounds the loss in messages but makes every save's cost grow with the
    # backlog. 1 s: a shorter loss window than 5 s (median 1.1-1.3 s vs 1.6-2.3 s, worst case 64-73 % less) for
    # 14 % of throughput into a backlog, at a bounded cost however long an ingest outage lasts; resend (PROTOCOL.md
    # v1.1) recovers the rest from devices that keep a buffer.
    persistence: bool = True
    autosave_interval_s: int = 1
    autosave_on_changes: bool = False
    tls_port: int | None = None
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    tls_cafile: Path | None = None
    # $SYS counters every this many seconds; the platform reads $SYS/broker/publish/messages/dropped (messages the
    # broker dropped past max_queued_messages) into lianfang_broker_dropped_messages_total (ingest/broker_drops.py).
    sys_interval_s: int = 10
    # Device identities in a password file + pattern ACL file reloaded on SIGHUP (ADR 0006; `lianfang serve` turns it
    # on); False: dynsec only. With the ACL file, Mosquitto grants every SUBSCRIBE that dynsec does not decide and
    # filters at delivery instead (nothing outside a device's own cmd reaches it), so it is a choice per broker.
    device_passwd: bool = False
    # With device_passwd: the devices' own listener (password file + pattern ACLs, client id := username); the
    # listener on `port` then knows only the dynsec (platform) accounts. Default: port + 1.
    device_port: int | None = None

    @property
    def device_listener_port(self) -> int:
        if not self.device_passwd:
            return self.port
        return self.device_port if self.device_port is not None else self.port + 1

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def dynsec_path(self) -> Path:
        return self.directory / "dynamic-security.json"

    @property
    def passwd_path(self) -> Path:
        return self.directory / DEVICE_PASSWD_FILE

    @property
    def acl_path(self) -> Path:
        return self.directory / DEVICE_ACL_FILE

    @property
    def pid_path(self) -> Path:
        return self.directory / BROKER_PID_FILE


def find_dynsec_plugin() -> str:
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    raise UserError(
        "mosquitto_dynamic_security.so not found: install the 'mosquitto' package (apt-get install mosquitto)"
    )


def render_config(cfg: BrokerConfig) -> str:
    """mosquitto.conf. With ``device_passwd`` the auth settings are per listener (ADR 0006): the platform listener
    loads dynsec only; the device listener (and the TLS one, which is for devices) loads the password file and the
    pattern ACLs and replaces each client id with the username, so a device cannot take another's client id (the
    binding PROTOCOL.md asks of the broker, which dynsec does by refusing a foreign client id at CONNECT)."""
    d = cfg.directory.resolve()
    dynsec = [f"plugin {find_dynsec_plugin()}", f"plugin_opt_config_file {cfg.dynsec_path.resolve()}"]
    per_listener = cfg.device_passwd
    device_auth = (
        [
            "use_username_as_clientid true",
            f"password_file {cfg.passwd_path.resolve()}",
            f"acl_file {cfg.acl_path.resolve()}",
        ]
        if per_listener
        else []
    )
    listeners = [
        f"listener {cfg.port} {cfg.host}",
        "protocol mqtt",
        *(["allow_anonymous false", *dynsec] if per_listener else []),
    ]
    if per_listener:
        listeners += [
            f"listener {cfg.device_listener_port} {cfg.host}",
            "protocol mqtt",
            "allow_anonymous false",
            *device_auth,
        ]
    if cfg.tls_port is not None:
        if not (cfg.tls_certfile and cfg.tls_keyfile and cfg.tls_cafile):
            raise UserError("broker TLS listener needs certfile, keyfile and cafile (run 'lianfang certs init')")
        listeners += [
            f"listener {cfg.tls_port} {cfg.host}",
            "protocol mqtt",
            f"certfile {cfg.tls_certfile.resolve()}",
            f"keyfile {cfg.tls_keyfile.resolve()}",
            f"cafile {cfg.tls_cafile.resolve()}",
            "tls_version tlsv1.2",
            *(["allow_anonymous false", *device_auth] if per_listener else []),
        ]
    lines = [
        "# Generated by Lianfang (devices/broker.py). Edit the settings, not this file.",
        f"per_listener_settings {'true' if per_listener else 'false'}",
        # Started as root (CI, make run), mosquitto would drop to the 'mosquitto' user and lose access to a
        # private data directory; as a child of the platform it runs as the platform's user instead.
        *(["user root"] if os.geteuid() == 0 else []),
        *([] if per_listener else ["allow_anonymous false"]),
        # At-least-once: keep sessions and queued QoS 1 messages across broker restarts.
        f"persistence {'true' if cfg.persistence else 'false'}",
        f"persistence_location {d}/",
        f"autosave_interval {cfg.autosave_interval_s}",
        f"autosave_on_changes {'true' if cfg.autosave_on_changes else 'false'}",
        "persistent_client_expiration 14d",
        # Sized for the ingest batch (in flight) and an ingest outage budget (queued).
        f"max_inflight_messages {cfg.max_inflight_messages}",
        f"max_queued_messages {cfg.max_queued_messages}",
        "max_queued_bytes 0",
        # Larger than the protocol's 64 KiB so an oversized payload reaches ingest and is rejected with a reason.
        "max_packet_size 1048576",
        "set_tcp_nodelay true",
        *([] if per_listener else dynsec),
        f"log_dest file {d}/mosquitto.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        f"sys_interval {cfg.sys_interval_s}",
        # Listeners last: with per_listener_settings, the auth lines after each apply to that listener only.
        *listeners,
    ]
    return "\n".join(lines) + "\n"


def device_acl_text() -> str:
    return (
        "# Generated by Lianfang (devices/broker.py): device topics, PROTOCOL.md.\n"
        + "\n".join(DEVICE_ACL_PATTERNS)
        + "\n"
    )


def passwd_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One Mosquitto 2.0 password-file line (``$7$``: PBKDF2-HMAC-SHA512, 101 iterations, as mosquitto_passwd)."""
    fields = hash_password(password, salt=salt)
    return f"{username}:$7${fields['iterations']}${fields['salt']}${fields['password']}"


def passwd_matches(entry: str, password: str) -> bool:
    """Whether a ``$7$iterations$salt$hash`` entry (without the username) is ``password``'s hash."""
    try:
        _, scheme, iterations, salt, digest = entry.split("$")
        if scheme != "7":
            return False
        want = base64.b64decode(digest)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations), len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The password fields of a dynamic-security client (PBKDF2-HMAC-SHA512, as mosquitto writes them)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def _acl(acltype: str, topic: str, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow}


# The platform reads the broker's counters (dropped messages); the dev simulator answers resend commands.
# lf/internal/v1/#: ingest -> alert engine batches and ingest status (ingest/forward.py); platform only.
PLATFORM_SYS_ACLS = (
    _acl("subscribePattern", "$SYS/broker/#"),
    _acl("publishClientReceive", "$SYS/broker/#"),
    _acl("publishClientSend", "lf/internal/v1/#"),
    _acl("subscribePattern", "lf/internal/v1/#"),
    _acl("publishClientReceive", "lf/internal/v1/#"),
)
SIM_CMD_ACLS = (_acl("subscribePattern", "lf/v1/+/cmd"), _acl("publishClientReceive", "lf/v1/+/cmd"))


def _add_role_acls(doc: dict[str, Any], rolename: str, acls: tuple[dict[str, Any], ...]) -> bool:
    """Add the ACLs a role of an older dynsec file lacks; True if it changed."""
    changed = False
    for role in doc.get("roles", []):
        if role.get("rolename") != rolename:
            continue
        have = {(a.get("acltype"), a.get("topic")) for a in role.setdefault("acls", [])}
        for acl in acls:
            if (acl["acltype"], acl["topic"]) not in have:
                role["acls"].append(dict(acl))
                changed = True
    return changed


def derive_gateway_password(admin_password: str) -> str:
    """The HTTP ingress account's password, derived one-way from the dynsec admin password (HMAC-SHA256).

    Whoever holds the admin password can already do anything on the broker; the gateway process gets only this
    derived value, which cannot give the admin password back."""
    if not admin_password:
        raise UserError("cannot derive the gateway password: the broker admin password is empty")
    digest = hmac.new(admin_password.encode(), b"lianfang-gateway/v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def gateway_role() -> dict[str, Any]:
    """Publish on any device's telemetry and event topics (HTTP ingress, after the device's secret was checked);
    no status (retained, the device's own), no commands, no subscriptions."""
    return {
        "rolename": GATEWAY_ROLE,
        "acls": [_acl("publishClientSend", "lf/v1/+/telemetry"), _acl("publishClientSend", "lf/v1/+/event")],
    }


def gateway_client(password: str) -> dict[str, Any]:
    return {
        "username": GATEWAY_USERNAME,
        "textName": "Lianfang gateway (HTTP ingress)",
        **hash_password(password),
        "roles": [{"rolename": GATEWAY_ROLE}],
    }


def _gateway_password(cfg: BrokerConfig) -> str | None:
    if cfg.gateway_password:
        return cfg.gateway_password
    return derive_gateway_password(cfg.admin_password) if cfg.admin_password else None


def bootstrap_dynsec(cfg: BrokerConfig) -> dict[str, Any]:
    """The initial dynamic-security document: default deny, admin, platform and (dev) simulator accounts."""
    clients = [
        {
            "username": "admin",
            "textName": "Lianfang dynsec admin",
            **hash_password(cfg.admin_password),
            "roles": [{"rolename": "admin"}],
        },
        {
            "username": cfg.platform_username,
            "textName": "Lianfang platform (ingest, commands)",
            **hash_password(cfg.platform_password),
            "roles": [{"rolename": "lf-platform"}],
        },
    ]
    gateway_password = _gateway_password(cfg)
    if gateway_password is not None:
        clients.append(gateway_client(gateway_password))
    roles: list[dict[str, Any]] = [
        {
            "rolename": "admin",
            "acls": [
                _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
                _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
                _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
                _acl("unsubscribePattern", "#"),
            ],
        },
        {
            "rolename": "lf-platform",
            "acls": [
                _acl("subscribePattern", "lf/v1/#"),
                _acl("subscribePattern", "$share/+/lf/v1/#"),
                _acl("publishClientReceive", "lf/v1/#"),
                _acl("publishClientSend", "lf/v1/+/cmd"),
                *PLATFORM_SYS_ACLS,
                _acl("unsubscribePattern", "#"),
            ],
        },
        gateway_role(),
    ]
    if cfg.sim_password:
        clients.append(
            {
                "username": "lianfang-sim",
                "textName": "Lianfang simulator (dev only)",
                **hash_password(cfg.sim_password),
                "roles": [{"rolename": "lf-sim"}],
            }
        )
        roles.append(
            {
                "rolename": "lf-sim",
                "acls": [
                    _acl("publishClientSend", "lf/v1/+/telemetry"),
                    _acl("publishClientSend", "lf/v1/+/event"),
                    _acl("publishClientSend", "lf/v1/+/status"),
                    *SIM_CMD_ACLS,
                ],
            }
        )
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": roles,
    }


def _write_dynsec(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, separators=(",", ":")))
    tmp.replace(path)


def _add_gateway_account(cfg: BrokerConfig) -> None:
    """Upgrade a dynsec file written before the gateway account existed (the broker is not running)."""
    try:
        doc = json.loads(cfg.dynsec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the broker's dynsec file {cfg.dynsec_path}: {exc}") from exc
    clients = doc.setdefault("clients", [])
    roles = doc.setdefault("roles", [])
    has_client = any(c.get("username") == GATEWAY_USERNAME for c in clients)
    has_role = any(r.get("rolename") == GATEWAY_ROLE for r in roles)
    if has_client and has_role:
        return
    if not has_role:
        roles.append(gateway_role())
    password = _gateway_password(cfg)
    if not has_client and password is not None:
        clients.append(gateway_client(password))
    _write_dynsec(cfg.dynsec_path, doc)
    logger.info("broker: added the %s account to %s", GATEWAY_USERNAME, cfg.dynsec_path)


def write_broker_files(cfg: BrokerConfig) -> None:
    """Write mosquitto.conf (always) and the dynsec file (only if absent: the plugin owns it afterwards; an older
    file only gets the gateway account added, while the broker is stopped)."""
    cfg.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # private: the dynsec file and the persistence
    cfg.conf_path.write_text(render_config(cfg), encoding="utf-8")
    if cfg.device_passwd:
        cfg.acl_path.write_text(device_acl_text(), encoding="utf-8")
        if not cfg.passwd_path.exists():
            fd = os.open(cfg.passwd_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
    if not cfg.dynsec_path.exists():
        _write_dynsec(cfg.dynsec_path, bootstrap_dynsec(cfg))
    else:
        if _gateway_password(cfg) is not None:
            _add_gateway_account(cfg)
        _upgrade_role_acls(cfg)
        if cfg.device_passwd:
            _warn_about_legacy_devices(cfg)


def legacy_device_clients(doc: Mapping[str, Any]) -> list[str]:
    """Device identities in a dynsec document (a client holding its own ``lf-dev-<id>`` role): what versions before
    the password-file default created."""
    out = []
    for c in doc.get("clients", []):
        user = c.get("username") if isinstance(c, dict) else None
        if isinstance(user, str) and any(r.get("rolename") == f"lf-dev-{user}" for r in c.get("roles", [])):
            out.append(user)
    return out


def _warn_about_legacy_devices(cfg: BrokerConfig) -> None:
    """With the password file (embedded default, ADR 0006), devices an older version created in dynsec
    log in only on the platform's listener: say so once at start, with the way out."""
    try:
        legacy = legacy_device_clients(json.loads(cfg.dynsec_path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return
    if legacy:
        tls = f"; not on the TLS listener {cfg.tls_port}" if cfg.tls_port is not None else ""
        logger.warning(
            "broker: %d device identities (e.g. %s) are still in dynamic security (created before the password "
            "file became the default): they log in on the platform's port %d only%s. Rotate or reprovision them "
            "('lianfang credentials rotate ID': the new secret goes into the password file, the device then uses "
            "port %d), or keep them in dynsec with mqtt.device_identities: dynsec (docs/adr/0006-live-provisioning.md)",
            len(legacy),
            legacy[0],
            cfg.port,
            tls,
            cfg.device_listener_port,
        )


def _upgrade_role_acls(cfg: BrokerConfig) -> None:
    """A dynsec file written before the $SYS and command ACLs existed gets them (the broker is not running)."""
    try:
        doc = json.loads(cfg.dynsec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the broker's dynsec file {cfg.dynsec_path}: {exc}") from exc
    changed = _add_role_acls(doc, "lf-platform", PLATFORM_SYS_ACLS)
    changed = _add_role_acls(doc, "lf-sim", SIM_CMD_ACLS) or changed
    if changed:
        _write_dynsec(cfg.dynsec_path, doc)
        logger.info("broker: added the $SYS / command ACLs to the platform and simulator roles")


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"nothing is listening on {host}:{port} after {timeout:.0f} s") from exc
            time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child before exec: have the kernel stop mosquitto if the platform process dies (even SIGKILL).

    Linux ties this to the thread that started the child, so start the broker from a long-lived thread (the
    main thread, as ``lianfang serve`` does). Without glibc the broker simply outlives a killed parent."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MosquittoProcess:
    """Mosquitto as a child process with the generated configuration."""

    def __init__(self, cfg: BrokerConfig, *, binary: str | None = None) -> None:
        self.cfg = cfg
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        if not os.path.exists(self.binary):
            raise UserError("mosquitto is not installed: apt-get install mosquitto (make run does this)")
        if _port_in_use(self.cfg.host, self.cfg.port):
            raise BrokerUnavailable(
                f"port {self.cfg.port} on {self.cfg.host} is already in use (another broker or an old Lianfang "
                f"still running?): stop it or choose another port (LIANFANG_MQTT__PORT)"
            )
        if self.cfg.device_passwd and _port_in_use(self.cfg.host, self.cfg.device_listener_port):
            raise BrokerUnavailable(
                f"port {self.cfg.device_listener_port} on {self.cfg.host}, the devices' listener (mqtt.device_port, "
                f"default mqtt.port + 1), is already in use: stop what holds it or choose another port "
                f"(LIANFANG_MQTT__DEVICE_PORT)"
            )
        write_broker_files(self.cfg)
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.cfg.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            wait_for_port(self.cfg.host, self.cfg.port, timeout)
            if self.cfg.device_passwd:  # the devices' listener too (the demo's fleet connects right after)
                wait_for_port(self.cfg.host, self.cfg.device_listener_port, timeout)
        except BrokerUnavailable as exc:
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            self.stop()
            detail = err.decode(errors="replace").strip()
            raise BrokerUnavailable(f"mosquitto did not start on port {self.cfg.port}: {detail}") from exc
        # Other Lianfang processes (`lianfang devices import`) signal this broker to reload its device file.
        self.cfg.pid_path.write_text(f"{self.proc.pid}\n", encoding="utf-8")
        logger.info("mosquitto started pid=%s port=%s dir=%s", self.proc.pid, self.cfg.port, self.cfg.directory)

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.cfg.pid_path.unlink()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        logger.info("mosquitto stopped (%s)", "killed" if kill else "terminated")
        self.proc = None

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
