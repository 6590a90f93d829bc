"""Device identities in a Mosquitto password file with pattern ACLs, reloaded by SIGHUP (ADR 0006).

The broker (devices/broker.py) loads ``devices.passwd`` (``id:$7$101$salt$hash``, PBKDF2-SHA512 as
``mosquitto_passwd`` writes it) and ``devices.acl`` (``pattern write lf/v1/%u/telemetry`` ...). A change is one
atomic rewrite of the file and one SIGHUP: Mosquitto 2.0 re-reads both files, keeps every connection whose
credentials still check, and disconnects the ones that no longer do (rotated, disabled, removed). Measured: 20,000
entries reload in well under a second; 10,000 new devices go in with one rewrite instead of 20,000 dynsec saves.

A disabled device keeps its line, commented out (``#disabled:id:$7$...``), so enabling it again restores the same
secret. Every rewrite also carries a one-time canary account (``_lianfang_reload``, not a valid device id) whose
login proves the broker has loaded this very version of the file before anything is verified.

Verification logs in as each device with its secret (MQTT 3.1.1 CONNECT under a throwaway client id, then
DISCONNECT: the device's own session is not touched) and reads the file back for the enabled state. What this
mechanism gives up against dynsec: a foreign client id is not refused at CONNECT; the device listener replaces it
with the username (see ADR 0006 and docs/security.md), and topics follow the username, so no device can publish or
read as another.

Identities that an older version created in dynsec (a client with its ``lf-dev-<id>`` role; "legacy") keep
working on the platform listener (``legacy_port``, mqtt.port), which loads dynsec: with a ``dynsec`` client the
adapter lists them, verifies them as the dynsec adapter does (binding, role, enabled state; no login, which would
take the device's session over) and enables or disables them in dynsec; (re)provisioning, rotation and removal
move them out of dynsec: the new secret goes into the file (the device then connects to the device listener) and
the dynsec client and role are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import ssl
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core.errors import BrokerUnavailable, UserError
from core.settings import Settings
from devices.broker import BROKER_PID_FILE, DEVICE_PASSWD_FILE, BrokerConfig, passwd_line
from devices.broker_adapter import RESERVED_USERNAMES, BrokerIdentity, DynsecAdapter, Progress
from devices.dynsec import DynsecClient, role_name

logger = logging.getLogger(__name__)

CANARY_USERNAME = "_lianfang_reload"
DISABLED_PREFIX = "#disabled:"
HEADER = "# Device identities of Lianfang (devices/broker_adapter_passwd.py). Written by Lianfang: do not edit.\n"
CONNACK_OK = 0


# --- the file (pure) ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    hash: str  # "$7$101$salt$hash"
    enabled: bool = True


def parse_passwd(text: str) -> dict[str, Entry]:
    """Device entries of a password file (comments other than disabled entries, and the canary, are skipped)."""
    out: dict[str, Entry] = {}
    for raw in text.splitlines():
        line = raw.strip()
        enabled = True
        if line.startswith(DISABLED_PREFIX):
            line, enabled = line[len(DISABLED_PREFIX) :], False
        elif not line or line.startswith("#"):
            continue
        username, sep, hashed = line.partition(":")
        if sep and hashed and username != CANARY_USERNAME:
            out[username] = Entry(hashed, enabled)
    return out


def render_passwd(entries: Mapping[str, Entry], canary: str | None = None) -> str:
    lines = [HEADER]
    if canary is not None:
        lines.append(canary + "\n")
    for username in sorted(entries):
        e = entries[username]
        lines.append(f"{'' if e.enabled else DISABLED_PREFIX}{username}:{e.hash}\n")
    return "".join(lines)


def _hash_of(username: str, secret: str) -> str:
    return passwd_line(username, secret).split(":", 1)[1]


# --- reloading the broker ---------------------------------------------------------------------------------------


class PidFileReload:
    """SIGHUP to the broker whose pid ``MosquittoProcess`` wrote (the embedded broker of ``lianfang serve``)."""

    def __init__(self, pid_path: Path, conf_path: Path) -> None:
        self.pid_path, self.conf_path = pid_path, conf_path

    def __call__(self) -> None:
        try:
            pid = int(self.pid_path.read_text(encoding="utf-8").strip())
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(
                f"the embedded broker is not running ({self.pid_path}: {exc}); start 'lianfang serve' first"
            ) from exc
        conf = args[args.index("-c") + 1] if "-c" in args[:-1] else ""
        if "mosquitto" not in args[0] or not conf or (cwd / conf).resolve() != self.conf_path.resolve():
            raise BrokerUnavailable(f"{self.pid_path} names pid {pid}, which is not this broker ({' '.join(args)!r})")
        os.kill(pid, signal.SIGHUP)


# --- logging in as devices --------------------------------------------------------------------------------------


def _utf8(value: str) -> bytes:
    b = value.encode()
    return len(b).to_bytes(2, "big") + b


def _connect_packet(client_id: str, username: str, password: str) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")  # v3.1.1, username+password, clean session
    body += _utf8(client_id) + _utf8(username) + _utf8(password)
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x10]) + bytes(length) + body


async def _login(host: str, port: int, ctx: ssl.SSLContext | None, user: str, pw: str, timeout: float) -> int:
    """CONNACK return code of one login (0 accepted, 5 not authorised), -1 if the broker did not answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout)
    except (OSError, TimeoutError):
        return -1
    try:
        writer.write(_connect_packet(f"lianfang-verify-{uuid.uuid4().hex[:12]}", user, pw))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readexactly(4), timeout)
        if ack[0] != 0x20:
            return -1
        if ack[3] == CONNACK_OK:
            writer.write(b"\xe0\x00")  # DISCONNECT: no will, nothing kept
            await writer.drain()
        return ack[3]
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return -1
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


async def _logins(
    host: str, port: int, ctx: ssl.SSLContext | None, creds: Sequence[tuple[str, str]], concurrency: int, t: float
) -> list[int]:
    sem = asyncio.Semaphore(concurrency)

    async def one(user: str, pw: str) -> int:
        async with sem:
            return await _login(host, port, ctx, user, pw, t)

    return list(await asyncio.gather(*(one(u, p) for u, p in creds)))


def login_codes(
    host: str,
    port: int,
    creds: Sequence[tuple[str, str]],
    *,
    tls_ca: Path | None = None,
    concurrency: int = 32,
    timeout: float = 10.0,
) -> list[int]:
    """Log in with each ``(username, password)`` (own event loop in a worker thread: callable from anywhere)."""
    ctx = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca is not None else None
    with ThreadPoolExecutor(1, thread_name_prefix="lf-verify") as pool:
        return pool.submit(asyncio.run, _logins(host, port, ctx, creds, concurrency, timeout)).result()


# --- the adapter ------------------------------------------------------------------------------------------------


class PasswdFileAdapter:
    """Device identities in ``passwd_path``, the broker reloaded by ``reload`` (a SIGHUP) after each change."""

    name = "mosquitto-passwd"

    def __init__(
        self,
        passwd_path: Path,
        *,
        host: str,
        port: int,
        reload: Callable[[], None],
        tls_ca: Path | None = None,
        dynsec: DynsecClient | None = None,
        timeout: float = 30.0,
        progress: Progress | None = None,
        legacy_port: int | None = None,
    ) -> None:
        self.path = passwd_path
        self.host, self.port, self.tls_ca = host, port, tls_ca
        # where legacy (dynsec) device identities log in: the platform listener (login_port); None: unknown
        self.legacy_port = legacy_port
        self.reload = reload
        self.dynsec = dynsec
        self.timeout = timeout
        self._progress = progress

    @classmethod
    def for_broker(
        cls, cfg: BrokerConfig, *, dynsec: DynsecClient | None = None, progress: Progress | None = None
    ) -> PasswdFileAdapter:
        """The adapter of a broker run with devices/broker.py's config (the embedded broker, tests, benchmarks)."""
        if not cfg.device_passwd:
            raise UserError("this broker keeps device identities in dynsec only (device_passwd is off)")
        return cls(
            cfg.passwd_path,
            host=cfg.host,
            port=cfg.device_listener_port,
            reload=PidFileReload(cfg.pid_path, cfg.conf_path.resolve()),
            dynsec=dynsec,
            progress=progress,
            legacy_port=cfg.port,
        )

    def _tick(self, what: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(what, done, total)

    # --- reading and changing the file ---------------------------------------------------------------------

    def read(self) -> dict[str, Entry]:
        try:
            return parse_passwd(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BrokerUnavailable(f"cannot read the broker's device file {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Entry]]:
        """Read-modify-write under an exclusive lock (serve and a CLI import may change it at the same time);
        the file is replaced atomically and the broker reloaded before the lock is released."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self.read()
            yield entries
            self._write_and_reload(entries)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write_and_reload(self, entries: Mapping[str, Entry]) -> None:
        nonce = secrets.token_urlsafe(24)
        text = render_passwd(entries, canary=passwd_line(CANARY_USERNAME, nonce))
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self.reload()
        deadline = time.monotonic() + self.timeout
        while True:  # the broker has loaded this version when the canary's one-time password is accepted
            (code,) = login_codes(self.host, self.port, [(CANARY_USERNAME, nonce)], tls_ca=self.tls_ca, timeout=5)
            if code == CONNACK_OK:
                break
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the broker at {self.host}:{self.port} did not load {self.path} within {self.timeout:g} s "
                    f"(last CONNACK {code})"
                )
            time.sleep(0.05)

    def _legacy(self, device_ids: Collection[str] | None = None) -> dict[str, bool]:
        """Device identities an older version created in dynsec (a client holding its ``lf-dev-<id>`` role), of
        ``device_ids`` (None: all): ``{device_id: enabled}``. Empty without a dynsec client or ids to look up."""
        if self.dynsec is None or (device_ids is not None and not device_ids):
            return {}
        wanted = None if device_ids is None else set(device_ids)
        out: dict[str, bool] = {}
        for c in self.dynsec.list_clients():
            user = c.get("username")
            if not isinstance(user, str) or (wanted is not None and user not in wanted):
                continue
            if any(r.get("rolename") == role_name(user) for r in c.get("roles", [])):
                out[user] = not bool(c.get("disabled"))
        return out

    def login_port(self, device_id: str) -> int:
        """Where this device logs in: the device listener, or the platform listener for a legacy dynsec identity."""
        if self.legacy_port is not None and device_id not in self.read() and self._legacy([device_id]):
            return self.legacy_port
        return self.port

    def _drop_legacy(self, device_ids: Collection[str]) -> dict[str, str]:
        """Delete dynsec identities of these devices (created by an older version): dynsec is asked first."""
        if self.dynsec is None or not device_ids:
            return {}
        legacy = [c["username"] for c in self.dynsec.list_clients() if c.get("username") in device_ids]
        roles = {r["rolename"] for r in self.dynsec.list_roles()}
        cmds: list[dict[str, str]] = []
        owner: list[str] = []
        for d in legacy:
            cmds.append({"command": "deleteClient", "username": d})
            owner.append(d)
            if role_name(d) in roles:
                cmds.append({"command": "deleteRole", "rolename": role_name(d)})
                owner.append(d)
        errors: dict[str, str] = {}
        for d, cmd, resp in zip(owner, cmds, self.dynsec.execute(cmds), strict=True):
            if resp.error is not None and "not found" not in resp.error.lower():
                errors.setdefault(d, f"legacy dynsec {cmd['command']}: {resp.error}")
        return errors

    # --- BrokerAdapter ---------------------------------------------------------------------------------------

    def add(self, device_secrets: Mapping[str, str], *, disabled: Collection[str] = ()) -> dict[str, str]:
        reserved = sorted(set(device_secrets) & RESERVED_USERNAMES)
        errors = {d: "the name of a built-in broker account" for d in reserved}
        todo = {d: s for d, s in device_secrets.items() if d not in errors}
        self._tick("broker", 0, len(todo))
        hashes = {d: _hash_of(d, s) for d, s in todo.items()}
        errors.update(self._drop_legacy(list(todo)))
        with self._locked() as entries:
            for d, h in hashes.items():
                if d not in errors:
                    entries[d] = Entry(h, d not in disabled)
        self._tick("broker", len(todo), len(todo))
        return errors

    def rotate(self, device_secrets: Mapping[str, str]) -> dict[str, str]:
        """New secrets; a legacy dynsec identity moves into the file with its new secret (enabled as it was)."""
        hashes = {d: _hash_of(d, s) for d, s in device_secrets.items()}
        present = self.read()
        legacy = self._legacy([d for d in device_secrets if d not in present])
        errors: dict[str, str] = {}
        with self._locked() as entries:
            for d, h in hashes.items():
                if d in entries:
                    entries[d] = Entry(h, entries[d].enabled)
                elif d in legacy:
                    entries[d] = Entry(h, legacy[d])
                else:
                    errors[d] = "missing on the broker"
        errors.update(self._drop_legacy([d for d in legacy if d not in errors]))
        return errors

    def set_enabled(self, device_ids: Sequence[str], enabled: bool) -> dict[str, str]:
        """In the file; a legacy dynsec identity is enabled or disabled in dynsec (its secret is not known here,
        so it cannot move into the file: it stays where the device logs in)."""
        errors: dict[str, str] = {}
        present = self.read()
        legacy = self._legacy([d for d in device_ids if d not in present])
        if any(d in present for d in device_ids) or not legacy:
            with self._locked() as entries:
                for d in device_ids:
                    if d in entries:
                        entries[d].enabled = enabled
                    elif d not in legacy:
                        errors[d] = "missing on the broker"
        if legacy and self.dynsec is not None:
            command = "enableClient" if enabled else "disableClient"
            ids = sorted(legacy)
            for d, resp in zip(
                ids, self.dynsec.execute([{"command": command, "username": d} for d in ids]), strict=True
            ):
                if resp.error is not None:
                    errors[d] = f"legacy dynsec {command}: {resp.error}"
        if not enabled:  # a left-over dynsec twin of an identity in the file must not keep accepting its old secret
            twins = [d for d in device_ids if d in present]
            errors.update({d: why for d, why in self._drop_legacy(twins).items() if d not in errors})
        return errors

    def remove(self, device_ids: Sequence[str]) -> dict[str, str]:
        with self._locked() as entries:
            for d in device_ids:
                entries.pop(d, None)
        return self._drop_legacy(device_ids)

    def verify(
        self,
        device_ids: Sequence[str],
        *,
        device_secrets: Mapping[str, str] | None = None,
        disabled: Collection[str] = (),
    ) -> dict[str, str]:
        """The file holds each identity in the expected state, and the broker accepts every enabled device's secret
        (a real login each) and refuses a disabled one's."""
        entries = self.read()
        legacy = self._legacy([d for d in device_ids if d not in entries])
        out: dict[str, str] = {}
        if legacy and self.dynsec is not None:
            # as the dynsec adapter reads them: binding, role, ACLs, enabled state (a login as the device would
            # take its session over: dynsec binds the client id)
            out.update(DynsecAdapter(self.dynsec).verify(sorted(legacy), disabled=set(disabled) & set(legacy)))
        logins: list[tuple[str, str]] = []
        for d in device_ids:
            if d in legacy:
                continue
            e = entries.get(d)
            if e is None:
                out[d] = "missing on the broker"
                continue
            out[d] = "" if e.enabled == (d not in disabled) else ("disabled" if not e.enabled else "enabled")
            if device_secrets is not None and d in device_secrets:
                logins.append((d, device_secrets[d]))
        self._tick("verify", 0, len(logins))
        codes = login_codes(self.host, self.port, logins, tls_ca=self.tls_ca, timeout=self.timeout)
        for (d, _), code in zip(logins, codes, strict=True):
            want_ok = d not in disabled
            if want_ok and code != CONNACK_OK:
                out[d] = "; ".join(filter(None, [out[d], f"login refused (CONNACK {code})"]))
            elif not want_ok and code == CONNACK_OK:
                out[d] = "; ".join(filter(None, [out[d], "disabled but its login is accepted"]))
        self._tick("verify", len(logins), len(logins))
        return out

    def verify_removed(self, device_ids: Sequence[str]) -> dict[str, str]:
        entries = self.read()
        out = {d: "still in the broker's device file" for d in device_ids if d in entries}
        if self.dynsec is not None:
            legacy = {c["username"] for c in self.dynsec.list_clients()}
            out.update({d: "still a dynsec client" for d in device_ids if d in legacy})
        return out

    def list(self) -> dict[str, BrokerIdentity]:
        """The file's identities and the legacy dynsec ones (the file's entry wins)."""
        out = DynsecAdapter(self.dynsec).list() if self.dynsec is not None else {}
        out.update({d: BrokerIdentity(d, e.enabled) for d, e in self.read().items()})
        return out


def adapter_for(
    settings: Settings, dynsec: DynsecClient, *, progress: Progress | None = None
) -> PasswdFileAdapter | None:
    """The adapter for the configured broker: the embedded broker's password file when its generated config loads
    one (``lianfang serve`` writes it so, ADR 0006); for an external broker, the password file in
    ``mqtt.broker_dir`` when ``mqtt.device_identities`` is ``password_file`` (compose: a volume shared with the
    broker container, whose docker/mosquitto/run.sh installs each new version and reloads the broker: the canary
    login waits for that); None otherwise (the caller uses dynsec)."""
    directory = settings.mqtt.broker_dir
    if not settings.mqtt.embedded_broker:
        if settings.mqtt.device_identities != "password_file":
            return None
        return PasswdFileAdapter(
            directory / DEVICE_PASSWD_FILE,
            host=settings.mqtt.host,
            port=settings.mqtt.device_listener_port,
            reload=lambda: None,  # the broker's side watches the file (docker/mosquitto/run.sh)
            tls_ca=settings.mqtt.tls_ca,
            dynsec=dynsec,
            progress=progress,
            legacy_port=settings.mqtt.port,  # identities an older version created in dynsec
        )
    conf = directory / "mosquitto.conf"
    try:
        text = conf.read_text(encoding="utf-8")
    except OSError:
        return None
    if f"password_file {(directory / DEVICE_PASSWD_FILE).resolve()}" not in text:
        return None
    return PasswdFileAdapter(
        directory / DEVICE_PASSWD_FILE,
        host=settings.mqtt.host,
        port=settings.mqtt.device_listener_port,
        reload=PidFileReload(directory / BROKER_PID_FILE, conf.resolve()),
        tls_ca=settings.mqtt.tls_ca,
        dynsec=dynsec,
        progress=progress,
        legacy_port=settings.mqtt.port,  # identities an older version created in dynsec
    )
